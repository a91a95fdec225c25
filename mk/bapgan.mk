# BAPGAN (Nakazawa et al. 2022): phantoms, the eight Table 1 experiments, evaluation, tables.
# make bapgan-phantoms            femur (317, paper age imbalance) and phalange (2000, imbalance) phantoms in data/
# make bapgan-train-all           train the 4 Table 1 rows on both data sets (GPU: hours each)
# make bapgan-eval [CKPT=best]    whole-data FID of every trained experiment, then Table 1
# make bapgan-table1              Table 1 from finished runs
# make bapgan-figures EXP=bapgan_femur    progression grid + 8-year pairs of one experiment
# make bapgan-tsne DATASET=femur  Fig. 5 (real vs CAAE vs BAPGAN)
# make bapgan-vtt EXP=bapgan_femur        visual Turing test export into lightning_logs/<EXP>/vtt/
# make bapgan-vtt-score EXP=bapgan_femur READERS="A=DIR_A B=DIR_B"
BAPGAN_EXPS := $(foreach d,femur phalange,bapgan_caae_$(d) bapgan_caae_age_ls_$(d) bapgan_caae_sa_$(d) bapgan_$(d))
DATASET ?= femur
READERS ?=

.PHONY: bapgan-phantoms bapgan-train-all bapgan-eval bapgan-table1 bapgan-figures bapgan-tsne bapgan-vtt bapgan-vtt-score

bapgan-phantoms: install
	$(VENV)/bin/boneage-phantom bones --bone femur --out data/femur --n 317 --seed 0 --age-distribution paper
	$(VENV)/bin/boneage-phantom bones --bone phalange --out data/phalange --n 2000 --seed 1 --age-distribution paper

bapgan-train-all: install
	@for e in $(BAPGAN_EXPS); do $(BONEAGE) fit --config experiments/$$e.yaml $(ARGS) || exit 1; done

bapgan-eval: install
	@for e in $(BAPGAN_EXPS); do \
	  if ls lightning_logs/$$e/checkpoints/*.ckpt >/dev/null 2>&1; then \
	    $(PY) -m boneage.analysis.bapgan_eval fid --config experiments/$$e.yaml --ckpt $(CKPT) || exit 1; \
	  else echo "skip $$e (not trained)"; fi; done
	$(PY) -m boneage.analysis.bapgan_table1 --out lightning_logs/bapgan_table1.csv

bapgan-table1: install
	$(PY) -m boneage.analysis.bapgan_table1 --out lightning_logs/bapgan_table1.csv

bapgan-figures: install check-exp
	$(PY) -m boneage.analysis.bapgan_eval figures --config experiments/$(EXP).yaml --ckpt $(CKPT)

bapgan-tsne: install
	$(PY) -m boneage.analysis.bapgan_eval tsne --dataset $(DATASET) --ckpt $(CKPT)

bapgan-vtt: install check-exp
	$(PY) -m boneage.analysis.bapgan_eval vtt --config experiments/$(EXP).yaml --ckpt $(CKPT) --out lightning_logs/$(EXP)/vtt

bapgan-vtt-score: install check-exp
	$(PY) -m boneage.analysis.bapgan_vtt score --key lightning_logs/$(EXP)/vtt/answer_key --label $(EXP) \
	  $(foreach r,$(READERS),--reader $(r)) --out lightning_logs/$(EXP)/vtt/scores
