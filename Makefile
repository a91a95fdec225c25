# Bone-age research framework. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BONEAGE := $(VENV)/bin/boneage
EXP ?=
ARGS ?=
CKPT ?= best
RESUME ?=
# torch wheels for the machine; override for another platform, e.g. TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

EXPERIMENTS := $(sort $(basename $(notdir $(wildcard experiments/*.yaml))))

.PHONY: help install demo train eval test test-slow lint check-exp

help:
	@echo "make install                 virtual environment + package (seconds when already installed)"
	@echo "make demo                    phantom RSNA data, train a small regressor on CPU, print the MAE table"
	@echo "make train EXP=name [ARGS=...] [RESUME=1]   boneage fit --config experiments/name.yaml"
	@echo "make eval EXP=name [CKPT=best|last|path]    boneage test on the held-out split"
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

# Paper-specific targets (tables, pipelines, exports) live in mk/<paper>.mk.
-include mk/*.mk
