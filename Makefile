# Two commands do all set-up on a fresh machine:
#   make demo   - install, then run the whole workflow on the embedded default model (offline)
#   make test   - install, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines get a CPU build of torch first, so the dependency below doesn't pull a multi-GB CUDA build.
# Override for your machine, e.g. make demo TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint llama-cpp
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

# llama.cpp's tools for checking and quantizing GGUF exports (`kielo merge --gguf`). PyPI has no wheel with
# llama-quantize, so the llama.cpp vendored in the llama-cpp-python sdist is built once into the cache
# (about 25 minutes on 2 cores); kielo finds it there, or wherever KIELO_LLAMA_CPP points.
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_CPP_DIR ?= $(or $(KIELO_CACHE),$(HOME)/.cache/kielo)/llama.cpp/$(LLAMA_CPP_VERSION)
LLAMA_CPP_JOBS ?= 2
LLAMA_CPP_TOOLS := llama-simple llama-tokenize llama-quantize llama-perplexity
llama-cpp: $(LLAMA_CPP_DIR)/.built

$(LLAMA_CPP_DIR)/.built:
	mkdir -p $(LLAMA_CPP_DIR)
	test -f $(LLAMA_CPP_DIR)/src/CMakeLists.txt || { \
	  python3 -m pip download -q --no-binary :all: --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -d $(LLAMA_CPP_DIR)/sdist && \
	  tar xzf $(LLAMA_CPP_DIR)/sdist/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_CPP_DIR) && \
	  mv $(LLAMA_CPP_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp $(LLAMA_CPP_DIR)/src && \
	  rm -rf $(LLAMA_CPP_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION) $(LLAMA_CPP_DIR)/sdist; }
	# Static, portable binaries: no shared libraries to find at run time, no instructions of this CPU only.
	cmake -S $(LLAMA_CPP_DIR)/src -B $(LLAMA_CPP_DIR)/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
	  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF
	cmake --build $(LLAMA_CPP_DIR)/build -j$(LLAMA_CPP_JOBS) --target $(LLAMA_CPP_TOOLS)
	touch $@
