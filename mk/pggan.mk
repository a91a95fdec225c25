# Paper 001: PGGAN hand radiographs, Xception bone-age regressor, latent-space age analysis.
# make pggan-train | xception-train | xception-eval | pggan-analysis (all steps) | pggan-<step> | pggan-demo (CPU, phantom)
# The analysis reads runs: GAN_RUN / REGRESSOR_RUN name fit runs (id or run directory; default the newest fit
# run of pggan_rsna / xception_rsna); outputs go to <gan run>/analysis unless PGGAN_OUT is set.
PGGAN_CONFIG ?= experiments/pggan_rsna.yaml
XCEPTION_CONFIG ?= experiments/xception_rsna.yaml
PGGAN_RUNS ?= lightning_logs
GAN_RUN ?=
REGRESSOR_RUN ?=
PGGAN_OUT ?=
PGGAN_N ?= 200000
PGGAN_DEVICES ?= auto
# PGGAN_PRESET=1gpu: the official 1-GPU preset (default: the paper's 4 GPUs, the official 4-GPU preset in
# the YAML); PGGAN_DDP=1: all visible GPUs (experiments/presets/ddp_gan.yaml); XCEPTION_TEST200=1: the
# paper's test set, the RSNA challenge's 200 test images (give it to xception-eval too)
PGGAN_PRESET ?=
PGGAN_DDP ?=
XCEPTION_TEST200 ?=
PGGAN_TRAIN_CONFIGS = --config $(PGGAN_CONFIG) $(if $(PGGAN_PRESET),--config experiments/presets/pggan_official_$(PGGAN_PRESET).yaml) \
	$(if $(PGGAN_DDP),--config experiments/presets/ddp_gan.yaml)
XCEPTION_CONFIGS = --config $(XCEPTION_CONFIG) $(if $(XCEPTION_TEST200),--config experiments/presets/xception_rsna_test200.yaml)
LATENT = $(PY) -m boneage.analysis.latent
PGGAN_COMMON = --runs-dir $(PGGAN_RUNS) $(if $(GAN_RUN),--gan-run $(GAN_RUN)) \
	$(if $(REGRESSOR_RUN),--regressor-run $(REGRESSOR_RUN)) $(if $(PGGAN_OUT),--out $(PGGAN_OUT)) \
	--devices $(PGGAN_DEVICES) $(ARGS)
PGGAN_STEPS := regressor-errors generate lasso neighbours walk control

.PHONY: pggan-help pggan-train xception-train xception-eval pggan-analysis pggan-demo $(addprefix pggan-,$(PGGAN_STEPS))

pggan-help:
	@echo "make xception-train [RESUME=1] [XCEPTION_TEST200=1]   Xception regressor on RSNA (experiments/xception_rsna.yaml)"
	@echo "make xception-eval [RUN=id] [CKPT=best|last] [XCEPTION_TEST200=1]   test a regressor fit run (default the newest)"
	@echo "make pggan-train [RESUME=1] [PGGAN_PRESET=1gpu] [PGGAN_DDP=1]   progressive GAN to 1024 px (experiments/pggan_rsna.yaml)"
	@echo "make pggan-analysis              all latent-space steps: $(PGGAN_STEPS)"
	@echo "make pggan-<step>                one step; GAN_RUN=id REGRESSOR_RUN=id PGGAN_N=200000 PGGAN_DEVICES=4 PGGAN_OUT=..."
	@echo "make pggan-demo                  the whole paper at CPU scale on the hand phantom (a few minutes)"

xception-train: install
	$(BONEAGE) fit $(XCEPTION_CONFIGS) $(if $(RESUME),--ckpt_path last,) $(ARGS)

xception-eval: install
	$(BONEAGE) test $(XCEPTION_CONFIGS) --ckpt_path $(CKPT) $(if $(RUN),--run $(RUN)) $(ARGS)

pggan-train: install
	$(BONEAGE) fit $(PGGAN_TRAIN_CONFIGS) $(if $(RESUME),--ckpt_path last,) $(ARGS)

pggan-generate: install
	$(LATENT) generate $(PGGAN_COMMON) --n $(PGGAN_N)

$(addprefix pggan-,$(filter-out generate,$(PGGAN_STEPS))): pggan-%: install
	$(LATENT) $* $(PGGAN_COMMON)

pggan-analysis: install
	$(LATENT) all $(PGGAN_COMMON) --n $(PGGAN_N)

# CPU demo: phantom hands, a small Xception (64 px), a PGGAN grown 4 -> 32 px, and every analysis step on
# the two runs just trained (the newest fit runs of xception_rsna_demo and pggan_rsna_demo).
PGGAN_DEMO_DATA ?= data/phantom_rsna
pggan-demo: install
	@test -f $(PGGAN_DEMO_DATA)/phantom.json || $(VENV)/bin/boneage-phantom rsna --out $(PGGAN_DEMO_DATA) --n 400 --seed 0 --size 128
	$(BONEAGE) fit --config experiments/xception_rsna.yaml --config tests/configs/xception_demo.yaml \
		--experiment xception_rsna_demo --runs_dir $(PGGAN_RUNS)
	@set -e; reg_ckpt=$$($(PY) -c "from boneage.runs import resolve_run; \
	  print(resolve_run('$(PGGAN_RUNS)', 'xception_rsna_demo').checkpoint('last'))"); \
	  $(BONEAGE) fit --config experiments/pggan_rsna.yaml --config tests/configs/pggan_demo.yaml \
		--experiment pggan_rsna_demo --runs_dir $(PGGAN_RUNS) \
		--trainer.callbacks.init_args.regressor_checkpoint $$reg_ckpt
	$(LATENT) all --runs-dir $(PGGAN_RUNS) --gan-experiment pggan_rsna_demo \
		--regressor-experiment xception_rsna_demo --regressor-ckpt last \
		--n 2000 --batch-size 200 --thumb-size 32 --tolerance-years 1.0 --devices 1
