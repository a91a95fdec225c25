# BAPGAN (Nakazawa et al. 2022): phantoms, the eight Table 1 experiments, evaluation, tables.
# Evaluation targets read runs (lightning_logs/<exp>/<run id>/): RUN=<fit run id> names one, default the newest fit run.
# Checkpoint: last.ckpt (the model after the paper's 5.0e4 iterations) unless CKPT= is given, here and in
# `make eval EXP=bapgan_...`; CKPT=best takes the lowest val/recon_l2.
# make bapgan-phantoms            femur (317, paper age imbalance) and phalange (2000, imbalance) phantoms in data/
# make bapgan-train-all           the age regressors, then the 4 Table 1 rows on both data sets (GPU: hours each)
# make bapgan-eval [CKPT=best]    whole-data FID and age accuracy of the newest fit run of every trained
#                                 experiment, then Table 1
# make bapgan-table1 [TABLE1_RUNS="exp=id ..."]   Table 1 from the newest (or the named) fit runs
# make bapgan-figures EXP=bapgan_femur [RUN=id]   progression grid + 8-year pairs into <run>/bapgan_eval/
# make bapgan-tsne DATASET=femur [CAAE_RUN=id] [BAPGAN_RUN=id]   Fig. 5 (real vs CAAE vs BAPGAN)
# make bapgan-vtt EXP=bapgan_femur [RUN=id]       visual Turing test export into <run>/vtt/
# make bapgan-vtt-score EXP=bapgan_femur [RUN=id] READERS="A=DIR_A B=DIR_B"   Tables 2, 3 into <run>/vtt/scores/
BAPGAN_EXPS := $(foreach d,femur phalange,bapgan_caae_$(d) bapgan_caae_age_ls_$(d) bapgan_caae_sa_$(d) bapgan_$(d))
BAPGAN_AGE_EXPS := bapgan_age_regressor_femur bapgan_age_regressor_phalange
ifeq ($(origin CKPT),file)
BAPGAN_CKPT := last
ifneq ($(filter-out bapgan_age_regressor_%,$(filter bapgan_%,$(EXP))),)
CKPT := last
endif
else
BAPGAN_CKPT := $(CKPT)
endif
BAPGAN_RUNS ?= lightning_logs
DATASET ?= femur
READERS ?=
RUN ?=
TABLE1_RUNS ?=
CAAE_RUN ?=
BAPGAN_RUN ?=
BAPGAN_RUN_ARGS = --runs-dir $(BAPGAN_RUNS) --experiment $(EXP) $(if $(RUN),--run $(RUN),) --ckpt $(BAPGAN_CKPT)

.PHONY: bapgan-phantoms bapgan-train-all bapgan-eval bapgan-table1 bapgan-figures bapgan-tsne bapgan-vtt bapgan-vtt-score

bapgan-phantoms: install
	$(VENV)/bin/boneage-phantom bones --bone femur --out data/femur --n 317 --seed 0 --age-distribution paper
	$(VENV)/bin/boneage-phantom bones --bone phalange --out data/phalange --n 2000 --seed 1 --age-distribution paper

bapgan-train-all: install
	@for e in $(BAPGAN_AGE_EXPS) $(BAPGAN_EXPS); do $(BONEAGE) fit --config experiments/$$e.yaml --runs_dir $(BAPGAN_RUNS) $(ARGS) || exit 1; done

# An experiment whose newest fit run cannot be evaluated (no checkpoint yet) is reported and the
# others still are; the target fails at the end. The age accuracy needs the data set's age regressor
# (bapgan_age_regressor_<bone>); without its fit run it is skipped with a line saying so.
bapgan-eval: install
	@has() { $(PY) -c "import sys; from boneage.runs import find_runs; sys.exit(not find_runs('$(BAPGAN_RUNS)', '$$1'))"; }; \
	failed=; for e in $(BAPGAN_EXPS); do \
	  if has $$e; then \
	    $(PY) -m boneage.analysis.bapgan_eval fid --runs-dir $(BAPGAN_RUNS) --experiment $$e --ckpt $(BAPGAN_CKPT) \
	      || failed="$$failed $$e"; \
	    age=bapgan_age_regressor_$${e##*_}; \
	    if has $$age; then \
	      $(PY) -m boneage.analysis.bapgan_eval age --runs-dir $(BAPGAN_RUNS) --experiment $$e --ckpt $(BAPGAN_CKPT) \
	        --age-model $$age || failed="$$failed $$e(age)"; \
	    else echo "skip the age accuracy of $$e (no fit run in $(BAPGAN_RUNS)/$$age: make train EXP=$$age)"; fi; \
	  else echo "skip $$e (no fit run in $(BAPGAN_RUNS)/$$e)"; fi; done; \
	$(PY) -m boneage.analysis.bapgan_table1 --runs-dir $(BAPGAN_RUNS) --out $(BAPGAN_RUNS)/bapgan_table1.csv \
	  && { test -z "$$failed" || { echo "FID failed for:$$failed"; exit 1; }; }

bapgan-table1: install
	$(PY) -m boneage.analysis.bapgan_table1 --runs-dir $(BAPGAN_RUNS) $(foreach r,$(TABLE1_RUNS),--run $(r)) \
	  --out $(BAPGAN_RUNS)/bapgan_table1.csv

bapgan-figures: install check-exp
	$(PY) -m boneage.analysis.bapgan_eval figures $(BAPGAN_RUN_ARGS)

bapgan-tsne: install
	$(PY) -m boneage.analysis.bapgan_eval tsne --runs-dir $(BAPGAN_RUNS) --dataset $(DATASET) --ckpt $(BAPGAN_CKPT) \
	  --caae bapgan_caae_$(DATASET)$(if $(CAAE_RUN),/$(CAAE_RUN),) --bapgan bapgan_$(DATASET)$(if $(BAPGAN_RUN),/$(BAPGAN_RUN),)

bapgan-vtt: install check-exp
	$(PY) -m boneage.analysis.bapgan_eval vtt $(BAPGAN_RUN_ARGS)

bapgan-vtt-score: install check-exp
	$(PY) -m boneage.analysis.bapgan_vtt score --runs-dir $(BAPGAN_RUNS) --experiment $(EXP) $(if $(RUN),--run $(RUN),) \
	  $(foreach r,$(READERS),--reader $(r))
