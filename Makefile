# `make run`: bootstrap .venv and run the main job. `make test`: bootstrap and run the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bnncl-installed
SOURCES := pyproject.toml setup.py constraints.txt $(wildcard src/bnncl/device/csrc/*.c src/bnncl/device/csrc/*.h)
# the host models (.safetensors) are a second distribution, installed (not editable) beside bnncl
HOST_MODELS := $(wildcard bnncl-models/pyproject.toml bnncl-models/src/bnncl_models/*)
# every install takes the exact versions of constraints.txt, build tools included (`make lock` refreshes it)
PIP := $(BIN)/python -m pip install -q -c constraints.txt --build-constraint constraints.txt

.PHONY: run test setup lint lock clean

$(STAMP): $(SOURCES) $(HOST_MODELS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt pip setuptools wheel
	$(PIP) -e '.[torch,plot,dev]'
	$(PIP) --force-reinstall --no-deps ./bnncl-models
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/bnncl run

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Re-resolve pyproject.toml's ranges in a fresh venv and pin the result in constraints.txt.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip setuptools wheel
	.lock-venv/bin/python -m pip install -q -e '.[torch,plot,dev]'
	sed -n '/^#/p' constraints.txt > constraints.new
	.lock-venv/bin/python -m pip freeze --all --exclude-editable >> constraints.new
	mv constraints.new constraints.txt && rm -rf .lock-venv
	@echo "constraints.txt updated: rerun make test and the figures (benchmarks/README.md), then commit"

clean:
	rm -rf $(VENV) build src/*.egg-info bnncl-models/build bnncl-models/src/*.egg-info
