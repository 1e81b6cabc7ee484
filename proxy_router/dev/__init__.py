"""Development tooling: the local devnet, the demo, anvil, mock backends, scripts.

Shipped in the package (the devnet and the tests use it) but never imported by the
runtime roles; ``tests/test_import_layers.py`` pins that.
"""
