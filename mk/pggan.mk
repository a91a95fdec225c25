# Paper 001: PGGAN hand radiographs, Xception bone-age regressor, latent-space age analysis.
# make pggan-train | xception-train | pggan-analysis (all steps) | pggan-<step> | pggan-demo (CPU, phantom)
PGGAN_CKPT ?= lightning_logs/pggan_rsna/checkpoints/last.ckpt
XCEPTION_CKPT ?= lightning_logs/xception_rsna/checkpoints/last.ckpt
PGGAN_CONFIG ?= experiments/pggan_rsna.yaml
XCEPTION_CONFIG ?= experiments/xception_rsna.yaml
PGGAN_OUT ?= lightning_logs/pggan_rsna/analysis
PGGAN_N ?= 200000
PGGAN_DEVICES ?= auto
LATENT = $(PY) -m boneage.analysis.latent
PGGAN_COMMON = --gan-ckpt $(PGGAN_CKPT) --gan-config $(PGGAN_CONFIG) --regressor-ckpt $(XCEPTION_CKPT) \
	--regressor-config $(XCEPTION_CONFIG) --out $(PGGAN_OUT) --devices $(PGGAN_DEVICES) $(ARGS)
PGGAN_STEPS := regressor-errors generate lasso neighbours walk control

.PHONY: pggan-help pggan-train xception-train xception-eval pggan-analysis pggan-demo $(addprefix pggan-,$(PGGAN_STEPS))

pggan-help:
	@echo "make xception-train [RESUME=1]   Xception regressor on RSNA (experiments/xception_rsna.yaml)"
	@echo "make pggan-train [RESUME=1]      progressive GAN to 1024 px (experiments/pggan_rsna.yaml)"
	@echo "make pggan-analysis              all latent-space steps: $(PGGAN_STEPS)"
	@echo "make pggan-<step>                one step; PGGAN_N=200000 PGGAN_DEVICES=4 PGGAN_OUT=..."
	@echo "make pggan-demo                  the whole paper at CPU scale on the hand phantom (a few minutes)"

xception-train: install
	$(BONEAGE) fit --config $(XCEPTION_CONFIG) $(if $(RESUME),--ckpt_path last,) $(ARGS)

xception-eval: install
	$(BONEAGE) test --config $(XCEPTION_CONFIG) --ckpt_path $(CKPT) $(ARGS)

pggan-train: install
	$(BONEAGE) fit --config $(PGGAN_CONFIG) $(if $(RESUME),--ckpt_path last,) $(ARGS)

pggan-generate: install
	$(LATENT) generate $(PGGAN_COMMON) --n $(PGGAN_N)

$(addprefix pggan-,$(filter-out generate,$(PGGAN_STEPS))): pggan-%: install
	$(LATENT) $* $(PGGAN_COMMON)

pggan-analysis: install
	$(LATENT) all $(PGGAN_COMMON) --n $(PGGAN_N)

# CPU demo: phantom hands, a small Xception (64 px), a PGGAN grown 4 -> 32 px, and every analysis step.
PGGAN_DEMO_DATA ?= data/phantom_rsna
pggan-demo: install
	@test -f $(PGGAN_DEMO_DATA)/phantom.json || $(VENV)/bin/boneage-phantom rsna --out $(PGGAN_DEMO_DATA) --n 400 --seed 0 --size 128
	$(BONEAGE) fit --config experiments/xception_rsna.yaml --config tests/configs/xception_demo.yaml \
		--experiment xception_rsna_demo
	$(BONEAGE) fit --config experiments/pggan_rsna.yaml --config tests/configs/pggan_demo.yaml \
		--experiment pggan_rsna_demo
	$(LATENT) all --gan-ckpt lightning_logs/pggan_rsna_demo/checkpoints/last.ckpt \
		--gan-config experiments/pggan_rsna.yaml tests/configs/pggan_demo.yaml \
		--regressor-ckpt lightning_logs/xception_rsna_demo/checkpoints/last.ckpt \
		--regressor-config experiments/xception_rsna.yaml tests/configs/xception_demo.yaml \
		--out lightning_logs/pggan_rsna_demo/analysis --n 2000 --batch-size 200 --thumb-size 32 \
		--tolerance-years 1.0 --devices 1
