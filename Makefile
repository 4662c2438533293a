# Two commands do all set-up on a fresh machine:
#   make demo   - install, then run the whole workflow on the embedded default model (offline)
#   make test   - install, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines get a CPU build of torch first, so the dependency below doesn't pull a multi-GB CUDA build.
# Override for your machine, e.g. make demo TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	command -v nvidia-smi >/dev/null 2>&1 || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[demo,eval,dev]"
	touch $@

demo: setup
	$(VENV)/bin/kielo demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check kielo tests data bench
	$(VENV)/bin/ruff format --check kielo tests data bench
