# BAPGAN (Nakazawa et al. 2022): phantoms, the eight Table 1 experiments, evaluation, tables.
# Evaluation targets read runs (lightning_logs/<exp>/<run id>/): RUN=<fit run id> names one, default the newest fit run.
# make bapgan-phantoms            femur (317, paper age imbalance) and phalange (2000, imbalance) phantoms in data/
# make bapgan-train-all           train the 4 Table 1 rows on both data sets (GPU: hours each)
# make bapgan-eval [CKPT=best]    whole-data FID of the newest fit run of every trained experiment, then Table 1
# make bapgan-table1 [TABLE1_RUNS="exp=id ..."]   Table 1 from the newest (or the named) fit runs
# make bapgan-figures EXP=bapgan_femur [RUN=id]   progression grid + 8-year pairs into <run>/bapgan_eval/
# make bapgan-tsne DATASET=femur [CAAE_RUN=id] [BAPGAN_RUN=id]   Fig. 5 (real vs CAAE vs BAPGAN)
# make bapgan-vtt EXP=bapgan_femur [RUN=id]       visual Turing test export into <run>/vtt/
# make bapgan-vtt-score EXP=bapgan_femur [RUN=id] READERS="A=DIR_A B=DIR_B"   Tables 2, 3 into <run>/vtt/scores/
BAPGAN_EXPS := $(foreach d,femur phalange,bapgan_caae_$(d) bapgan_caae_age_ls_$(d) bapgan_caae_sa_$(d) bapgan_$(d))
BAPGAN_RUNS ?= lightning_logs
DATASET ?= femur
READERS ?=
RUN ?=
TABLE1_RUNS ?=
CAAE_RUN ?=
BAPGAN_RUN ?=
BAPGAN_RUN_ARGS = --runs-dir $(BAPGAN_RUNS) --experiment $(EXP) $(if $(RUN),--run $(RUN),) --ckpt $(CKPT)

.PHONY: bapgan-phantoms bapgan-train-all bapgan-eval bapgan-table1 bapgan-figures bapgan-tsne bapgan-vtt bapgan-vtt-score

bapgan-phantoms: install
	$(VENV)/bin/boneage-phantom bones --bone femur --out data/femur --n 317 --seed 0 --age-distribution paper
	$(VENV)/bin/boneage-phantom bones --bone phalange --out data/phalange --n 2000 --seed 1 --age-distribution paper

bapgan-train-all: install
	@for e in $(BAPGAN_EXPS); do $(BONEAGE) fit --config experiments/$$e.yaml --runs_dir $(BAPGAN_RUNS) $(ARGS) || exit 1; done

# An experiment whose newest fit run cannot be evaluated (no checkpoint yet) is reported and the
# others still are; the target fails at the end.
bapgan-eval: install
	@failed=; for e in $(BAPGAN_EXPS); do \
	  if $(PY) -c "import sys; from boneage.runs import find_runs; sys.exit(not find_runs('$(BAPGAN_RUNS)', '$$e'))"; then \
	    $(PY) -m boneage.analysis.bapgan_eval fid --runs-dir $(BAPGAN_RUNS) --experiment $$e --ckpt $(CKPT) \
	      || failed="$$failed $$e"; \
	  else echo "skip $$e (no fit run in $(BAPGAN_RUNS)/$$e)"; fi; done; \
	$(PY) -m boneage.analysis.bapgan_table1 --runs-dir $(BAPGAN_RUNS) --out $(BAPGAN_RUNS)/bapgan_table1.csv \
	  && { test -z "$$failed" || { echo "FID failed for:$$failed"; exit 1; }; }

bapgan-table1: install
	$(PY) -m boneage.analysis.bapgan_table1 --runs-dir $(BAPGAN_RUNS) $(foreach r,$(TABLE1_RUNS),--run $(r)) \
	  --out $(BAPGAN_RUNS)/bapgan_table1.csv

bapgan-figures: install check-exp
	$(PY) -m boneage.analysis.bapgan_eval figures $(BAPGAN_RUN_ARGS)

bapgan-tsne: install
	$(PY) -m boneage.analysis.bapgan_eval tsne --runs-dir $(BAPGAN_RUNS) --dataset $(DATASET) --ckpt $(CKPT) \
	  --caae bapgan_caae_$(DATASET)$(if $(CAAE_RUN),/$(CAAE_RUN),) --bapgan bapgan_$(DATASET)$(if $(BAPGAN_RUN),/$(BAPGAN_RUN),)

bapgan-vtt: install check-exp
	$(PY) -m boneage.analysis.bapgan_eval vtt $(BAPGAN_RUN_ARGS)

bapgan-vtt-score: install check-exp
	$(PY) -m boneage.analysis.bapgan_vtt score --runs-dir $(BAPGAN_RUNS) --experiment $(EXP) $(if $(RUN),--run $(RUN),) \
	  $(foreach r,$(READERS),--reader $(r))
