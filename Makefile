# Bone-age research framework. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BONEAGE := $(VENV)/bin/boneage
EXP ?=
ARGS ?=
CKPT ?= best
RESUME ?=
RUN ?=
RUNS_DIR ?= lightning_logs
# cluster and sweeps: make slurm EXP=... [NODES=1] [GPUS=4] [SBATCH=sbatch]; make sweep EXP=... [COUNT=]
NODES ?= 1
GPUS ?= 4
SBATCH ?= sbatch
COUNT ?=
WANDB_PROJECT ?= boneage
SLURM_DIR ?= lightning_logs/$(EXP)/slurm
# torch wheels for the machine; override for another platform, e.g. TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

# ARGS and RUN reach `make slurm`'s job through the environment, quotes and spaces intact.
export ARGS RUN

EXPERIMENTS := $(sort $(basename $(notdir $(wildcard experiments/*.yaml))))

.PHONY: help install demo train eval runs test test-slow lint check-exp slurm sweep

help:
	@echo "make install                 virtual environment + package (seconds when already installed)"
	@echo "make demo                    phantom RSNA data, train a small regressor on CPU, print the MAE table"
	@echo "make train EXP=name [ARGS=...] [RESUME=1] [RUN=id]   a new fit run (RESUME=1: continue the newest, RUN: that run)"
	@echo "make eval EXP=name [CKPT=best|last|path] [RUN=id]    test the newest (or named) fit run with its own config"
	@echo "make runs [EXP=name]                                  list the runs (lightning_logs/<exp>/<run id>/)"
	@echo "make slurm EXP=name [NODES=1] [GPUS=4] [ARGS=...]   fill experiments/slurm/*.sbatch and submit it"
	@echo "make sweep EXP=name [COUNT=n] [WANDB_PROJECT=boneage] [WANDB_ENTITY=team]   create the W&B sweep experiments/sweeps/name.yaml, start an agent"
	@echo "make report [RUNS_DIR=] [OUT=reports]            the reproduction report (tables, figures, claims) from finished runs"
	@echo "make reproduce-mini [PAPER=name] [FORCE=1]       every paper's CPU miniature (resumable), then make report"
	@echo "make paper-steps [EXP=name] | gpu-check [DRY=1]  each YAML at paper size for 2 steps | the prepared GPU check"
	@echo "boneage predict-folder --run EXP/ID ... INPUT | boneage serve --run EXP/ID   use trained runs (README)"
	@echo "make test | test-slow | lint"
	@echo "experiments: $(EXPERIMENTS)"

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@
	@echo "installed: $$($(PY) -c 'import torch, pytorch_lightning as pl; print("torch", torch.__version__, "| lightning", pl.__version__)')"

demo: install
	$(PY) -m boneage.demo

# make phantoms [EXP=name] [PHANTOM_ARGS="--n 100"]: the default phantom of experiment EXP (default: of every
# experiment, each data set once) where its YAML reads its data; data already there is kept. PHANTOM_ARGS go to
# the generator (boneage-phantom <generator> --help); DRY_RUN=1 prints the commands.
PHANTOM_ARGS ?=
PHANTOM_DEPS ?= install
DRY_RUN ?=
.PHONY: phantoms
phantoms: $(PHANTOM_DEPS) $(if $(EXP),check-exp)
	@$(PY) -m boneage.phantoms.cli experiment $(EXP) $(if $(DRY_RUN),--dry-run) $(if $(PHANTOM_ARGS),-- $(PHANTOM_ARGS))

check-exp:
	@if [ -z "$(EXP)" ] || [ ! -f experiments/$(EXP).yaml ]; then \
	  echo "Unknown experiment '$(EXP)'. Available experiments:"; \
	  for e in $(EXPERIMENTS); do echo "  $$e"; done; exit 2; fi

train: install check-exp
	$(BONEAGE) fit --config experiments/$(EXP).yaml --runs_dir $(RUNS_DIR) $(if $(RESUME),--ckpt_path last,) \
	  $(if $(RUN),--run $(RUN),) $(ARGS)

# The fit run's own config.yaml (with the overrides it was trained with), its best/last checkpoint.
eval: install check-exp
	@run=$$($(PY) -m boneage.runs path --runs-dir $(RUNS_DIR) --experiment $(EXP) $(if $(RUN),--run $(RUN),)) && \
	  $(BONEAGE) test --config "$$run/config.yaml" --runs_dir $(RUNS_DIR) --run "$$run" --ckpt_path $(CKPT) $(ARGS)

runs: install
	@$(PY) -m boneage.runs list --runs-dir $(RUNS_DIR) $(if $(EXP),--experiment $(EXP),)

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check .

# SLURM: the template filled with the node/GPU counts is written beside the runs and submitted;
# SBATCH=true only writes it. The job requeues itself on SIGUSR1 and resumes (docs/scale.md).
slurm: check-exp
	@mkdir -p $(SLURM_DIR)
	@tpl=experiments/slurm/$(if $(filter 1,$(NODES)),one_node,multi_node).sbatch; \
	 job=$(SLURM_DIR)/$(EXP).sbatch; \
	 sed -e 's/^#SBATCH --nodes=.*/#SBATCH --nodes=$(NODES)/' \
	     -e 's/^#SBATCH --ntasks-per-node=.*/#SBATCH --ntasks-per-node=$(GPUS)/' \
	     -e 's/^#SBATCH --gres=gpu:.*/#SBATCH --gres=gpu:$(GPUS)/' \
	     -e 's/^#SBATCH --job-name=.*/#SBATCH --job-name=$(EXP)/' \
	     -e 's|^PY="$${PY:-.venv/bin/python}"|PY="$${PY:-$(VENV)/bin/python}"|' $$tpl > $$job; \
	 echo "wrote $$job from $$tpl ($(NODES) node(s) x $(GPUS) GPU(s))"; \
	 EXP=$(EXP) $(SBATCH) --export=ALL $$job

# The sweep is created through wandb's API (python -m boneage.sweep); every trial is its own run.
sweep: install
	@$(PY) -m boneage.sweep $(EXP) --project $(WANDB_PROJECT) $(if $(WANDB_ENTITY),--entity $(WANDB_ENTITY),) \
	  $(if $(COUNT),--count $(COUNT),)

# Paper-specific targets (tables, pipelines, exports) live in mk/<paper>.mk.
-include mk/*.mk
