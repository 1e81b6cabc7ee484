"""proxy-router: an LLM inference marketplace settled in MOR on an EVM chain."""

import py_ecc as _py_ecc  # noqa: F401  (raises the recursion limit on import: undone below)

from proxy_router.bounded_json import restore_recursion_limit as _restore_recursion_limit

__version__ = "0.1.0"

_restore_recursion_limit()
