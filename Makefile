# Bone-age research framework. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BONEAGE := $(VENV)/bin/boneage
EXP ?=
ARGS ?=
CKPT ?= best
RESUME ?=
# cluster and sweeps: make slurm EXP=... [NODES=1] [GPUS=4] [SBATCH=sbatch]; make sweep EXP=... [COUNT=]
NODES ?= 1
GPUS ?= 4
SBATCH ?= sbatch
COUNT ?=
WANDB_PROJECT ?= boneage
SLURM_DIR ?= lightning_logs/$(EXP)/slurm
# torch wheels for the machine; override for another platform, e.g. TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

EXPERIMENTS := $(sort $(basename $(notdir $(wildcard experiments/*.yaml))))

.PHONY: help install demo train eval test test-slow lint check-exp slurm sweep

help:
	@echo "make install                 virtual environment + package (seconds when already installed)"
	@echo "make demo                    phantom RSNA data, train a small regressor on CPU, print the MAE table"
	@echo "make train EXP=name [ARGS=...] [RESUME=1]   boneage fit --config experiments/name.yaml"
	@echo "make eval EXP=name [CKPT=best|last|path]    boneage test on the held-out split"
	@echo "make slurm EXP=name [NODES=1] [GPUS=4] [ARGS=...]   fill experiments/slurm/*.sbatch and submit it"
	@echo "make sweep EXP=name [COUNT=n]               create the W&B sweep experiments/sweeps/name.yaml, start an agent"
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

check-exp:
	@if [ -z "$(EXP)" ] || [ ! -f experiments/$(EXP).yaml ]; then \
	  echo "Unknown experiment '$(EXP)'. Available experiments:"; \
	  for e in $(EXPERIMENTS); do echo "  $$e"; done; exit 2; fi

train: install check-exp
	$(BONEAGE) fit --config experiments/$(EXP).yaml $(if $(RESUME),--ckpt_path last,) $(ARGS)

eval: install check-exp
	$(BONEAGE) test --config experiments/$(EXP).yaml --ckpt_path $(CKPT) $(ARGS)

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
	 EXP=$(EXP) ARGS='$(ARGS)' $(SBATCH) --export=ALL $$job

sweep: install check-exp
	@test -f experiments/sweeps/$(EXP).yaml || { echo "no sweep for $(EXP); sweeps: $$(ls experiments/sweeps)"; exit 2; }
	@export PATH="$(abspath $(VENV))/bin:$$PATH"; \
	 id=$$(wandb sweep --project $(WANDB_PROJECT) experiments/sweeps/$(EXP).yaml 2>&1 | tee /dev/stderr \
	       | sed -n 's/.*wandb agent \([^ ]*\).*/\1/p' | tail -n 1); \
	 test -n "$$id" || { echo "wandb sweep failed: log in first (wandb login) or set WANDB_API_KEY"; exit 1; }; \
	 echo "sweep $$id: starting an agent (more agents: wandb agent $$id)"; \
	 wandb agent $(if $(COUNT),--count $(COUNT),) $$id

# Paper-specific targets (tables, pipelines, exports) live in mk/<paper>.mk.
-include mk/*.mk
