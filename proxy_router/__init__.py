"""proxy-router: an LLM inference marketplace settled in MOR on an EVM chain."""

__version__ = "0.1.0"
