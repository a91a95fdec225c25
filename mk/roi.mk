# Do et al., ROI localization for bone age on whole-body bone scintigraphy (docs/roi.md).
#   make roi-pipeline                stage 1 (ROI_FOLDS cross-fitted fits), ROI export + localization check, stage 2
#                                    with and without sex (fit + test)
#   make roi-stage1 | roi-export [RUN=<cross-fitting group or fit run>] | roi-stage2 [EXPORT_RUN=<export run>]
#   make roi-baselines               the Table 1 baselines on whole images (fit + test)
#   make roi-oracle                  stage 2 on a phantom's TRUE age regions (what perfect localization gives)
#   make roi-table [TABLE_RUNS="<exp>/<run id> ..."]   Table 1 from the newest tested runs (or the named ones)
#   make roi-phantom                 a phantom data set in data/scintigraphy (when you have no data yet)
#   make roi-demo                    CPU miniature on a phantom: ROI pipeline vs whole image, oracle, noise floor
#
# Cross-fitting (ROI_FOLDS=K, default 2; 1: one localizer on every training image): stage 1 trains K localizers
# (fit runs <group>-fold<k>), localizer k on the training images outside fold k; each exports the crops of its
# own fold (every split), and the merged export (run export-<id>) gives every image a crop from a localizer that
# never trained on it. Before stage 2 the export is scored against the phantom's truth when there is one and stops
# below a validation hit rate of ROI_MIN_HIT (0.7) unless ROI_FORCE=1; real data without boxes is not checked.
# Stage 2 trains on the newest export (or EXPORT_RUN=) and prints which one. ROI1_ARGS / ROI2_ARGS / ROI_ARGS add
# CLI overrides to stage 1 / stage 2 and baselines / all stages, e.g. ROI_ARGS="--trainer.max_epochs 5";
# ROI_DEPS= skips `make install`.
ROI_RUNS ?= lightning_logs
ROI_DATA ?= data/scintigraphy
ROI_DEPS ?= install
ROI_ARGS ?=
ROI1_ARGS ?=
ROI2_ARGS ?=
RUN ?=
EXPORT_RUN ?=
ROI_FOLDS ?= 2
ROI_MIN_HIT ?= 0.7
ROI_FORCE ?=
ifeq ($(origin ROI_CV), undefined)
ROI_CV := cv-$(shell date +%Y%m%d-%H%M%S)
endif
TABLE_RUNS ?=
ROI_STAGE1 := roi_localizer_scinti
ROI_STAGE2 ?= roi_regressor_scinti roi_regressor_nosex_scinti
ROI_BASELINES ?= roi_vgg19_scinti roi_vgg19_nosex_scinti roi_resnet50_scinti roi_resnet50_nosex_scinti \
                 roi_xception_scinti roi_xception_nosex_scinti roi_mivgg16_scinti roi_mivgg16_nosex_scinti
# prints the export's labels.csv (and, on stderr, which predict run and stage-1 fit run it is)
ROI_FIND_EXPORT = $(PY) -m boneage.analysis.roi --runs-dir $(ROI_RUNS) $(if $(EXPORT_RUN),--run $(EXPORT_RUN))

.PHONY: roi-pipeline roi-stage1 roi-export roi-check roi-stage2 roi-baselines roi-oracle roi-table roi-phantom roi-demo

roi-pipeline: $(ROI_DEPS)
	$(MAKE) --no-print-directory roi-stage1 ROI_DEPS= ROI_CV=$(ROI_CV)
	$(MAKE) --no-print-directory roi-export ROI_DEPS= $(if $(filter-out 1,$(ROI_FOLDS)),RUN=$(ROI_CV))
	$(MAKE) --no-print-directory roi-stage2 ROI_DEPS=
	@echo "ROI pipeline done: stage 2 runs in $(foreach e,$(ROI_STAGE2),$(ROI_RUNS)/$(e))"

ifeq ($(ROI_FOLDS),1)
roi-stage1: $(ROI_DEPS)
	$(BONEAGE) fit --config experiments/$(ROI_STAGE1).yaml --runs_dir $(ROI_RUNS) $(ROI_ARGS) $(ROI1_ARGS)

roi-export: $(ROI_DEPS)
	$(BONEAGE) predict --config experiments/$(ROI_STAGE1).yaml --runs_dir $(ROI_RUNS) --ckpt_path best \
	  $(if $(RUN),--run $(RUN)) --data.init_args.predict_split all $(ROI_ARGS) $(ROI1_ARGS)
	@$(MAKE) --no-print-directory roi-check ROI_DEPS=
else
roi-stage1: $(ROI_DEPS)
	@set -e; for k in $$(seq 0 $$(($(ROI_FOLDS) - 1))); do \
	  echo "stage 1, fold $$k of $(ROI_FOLDS): fit run $(ROI_CV)-fold$$k"; \
	  $(BONEAGE) fit --config experiments/$(ROI_STAGE1).yaml --runs_dir $(ROI_RUNS) --run $(ROI_CV)-fold$$k \
	    --data.init_args.folds $(ROI_FOLDS) --data.init_args.fold $$k $(ROI_ARGS) $(ROI1_ARGS); \
	done

# each fold's localizer, rebuilt from its own run's config, exports its fold; then one merged export
roi-export: $(ROI_DEPS)
	@set -e; fits=$$($(PY) -m boneage.analysis.roi folds --runs-dir $(ROI_RUNS) $(if $(RUN),--run $(RUN))); \
	for fit in $$fits; do \
	  $(BONEAGE) predict --config $(ROI_RUNS)/$(ROI_STAGE1)/$$fit/config.yaml --runs_dir $(ROI_RUNS) \
	    --ckpt_path best --run $$fit --data.init_args.predict_split all; \
	done; \
	$(PY) -m boneage.analysis.roi merge --runs-dir $(ROI_RUNS) $$(for fit in $$fits; do echo --run $$fit; done)
	@$(MAKE) --no-print-directory roi-check ROI_DEPS=
endif

# the newest export's localization against the phantom's truth (when it has one); stops below ROI_MIN_HIT
roi-check: $(ROI_DEPS)
	@$(PY) -m boneage.analysis.roi localization --runs-dir $(ROI_RUNS) $(if $(EXPORT_RUN),--run $(EXPORT_RUN)) \
	  --min-hit $(ROI_MIN_HIT) $(if $(ROI_FORCE),--force)

roi-stage2: $(ROI_DEPS)
	@set -e; csv=$$($(ROI_FIND_EXPORT)); \
	for exp in $(ROI_STAGE2); do \
	  $(BONEAGE) fit --config experiments/$$exp.yaml --runs_dir $(ROI_RUNS) \
	    --data.init_args.csv_path $$csv $(ROI_ARGS) $(ROI2_ARGS); \
	  $(BONEAGE) test --config experiments/$$exp.yaml --runs_dir $(ROI_RUNS) --ckpt_path best \
	    --data.init_args.csv_path $$csv $(ROI_ARGS) $(ROI2_ARGS); \
	done

roi-baselines: $(ROI_DEPS)
	@set -e; for exp in $(ROI_BASELINES); do \
	  $(BONEAGE) fit --config experiments/$$exp.yaml --runs_dir $(ROI_RUNS) $(ROI_ARGS) $(ROI2_ARGS); \
	  $(BONEAGE) test --config experiments/$$exp.yaml --runs_dir $(ROI_RUNS) --ckpt_path best $(ROI_ARGS) $(ROI2_ARGS); \
	done

# stage 2 (with sex) on the true regions of the newest export's images, same splits; runs in $(ROI_RUNS)/oracle
roi-oracle: $(ROI_DEPS)
	@set -e; csv=$$($(PY) -m boneage.analysis.roi oracle --runs-dir $(ROI_RUNS) --data $(ROI_DATA) \
	  $(if $(EXPORT_RUN),--run $(EXPORT_RUN))); \
	$(BONEAGE) fit --config experiments/roi_regressor_scinti.yaml --runs_dir $(ROI_RUNS)/oracle \
	  --data.init_args.csv_path $$csv $(ROI_ARGS) $(ROI2_ARGS); \
	$(BONEAGE) test --config experiments/roi_regressor_scinti.yaml --runs_dir $(ROI_RUNS)/oracle --ckpt_path best \
	  --data.init_args.csv_path $$csv $(ROI_ARGS) $(ROI2_ARGS)

roi-table: $(ROI_DEPS)
	$(PY) -m boneage.analysis.roi_tables --runs-dir $(ROI_RUNS) $(foreach r,$(TABLE_RUNS),--run $(r)) --paper \
	  --out $(ROI_RUNS)/roi_table1.md

roi-phantom: $(ROI_DEPS)
	@test -f $(ROI_DATA)/labels.csv && echo "$(ROI_DATA)/labels.csv exists: keeping it" || \
	  $(PY) -m boneage.phantoms.cli scintigraphy --out $(ROI_DATA) --n 400

# The CPU miniature (docs/roi.md "Miniature"): 800 phantom scans of 240 x 768 (the paper's 900 x 3000 scaled by
# 0.26, the fine age texture's 4 px period kept), a tiny timm ResNet everywhere, from scratch; stage 1 at 80 x 256
# (the paper's factor 3) with its last stage at stride 8, so Grad-CAM has the paper's 10 x 32 grid; one localizer
# (ROI_DEMO_FOLDS=1: half the miniature's 560 training scans did not start to learn, docs/roi.md); crops
# letterboxed to 64 x 128; the whole-image baseline at 64 x 192 (the paper's 250 x 750 factors).
ROI_DEMO_RUNS ?= lightning_logs/roi_demo
ROI_DEMO_DATA ?= data/roi_demo_phantom
ROI_DEMO_N ?= 800
ROI_DEMO_EPOCHS ?= 40
ROI_DEMO_FOLDS ?= 1
ROI_DEMO_COMMON = --trainer.enable_progress_bar false --data.init_args.num_workers 0 \
  --data.init_args.val_fraction 0.15 --data.init_args.test_fraction 0.15
ROI_DEMO_STAGE1 = --data.init_args.csv_path $(ROI_DEMO_DATA)/labels.csv --data.init_args.image_size [256,80] \
  --trainer.max_epochs $(ROI_DEMO_EPOCHS) --model.init_args.scheduler.init_args.T_max $(ROI_DEMO_EPOCHS) \
  --model.init_args.network.init_args.backbone test_resnet --model.init_args.network.init_args.output_stride 8 \
  --model.init_args.optimizer.init_args.lr 0.002 --model.init_args.optimizer.init_args.weight_decay 0.05 \
  --data.init_args.batch_size 16 --model.init_args.max_figures 8
ROI_DEMO_STAGE2 = --trainer.max_epochs $(ROI_DEMO_EPOCHS) --model.init_args.optimizer.init_args.lr 0.001 \
  --model.init_args.network.init_args.backbone test_resnet --model.init_args.network.init_args.hidden [64,64]
roi-demo: $(ROI_DEPS)
	@test -f $(ROI_DEMO_DATA)/labels.csv || \
	  $(PY) -m boneage.phantoms.cli scintigraphy --out $(ROI_DEMO_DATA) --n $(ROI_DEMO_N) --width 240 --height 768
	$(MAKE) --no-print-directory roi-pipeline ROI_DEPS= ROI_RUNS=$(ROI_DEMO_RUNS) ROI_STAGE2=roi_regressor_scinti \
	  ROI_FOLDS=$(ROI_DEMO_FOLDS) \
	  ROI_ARGS="$(ROI_DEMO_COMMON)" ROI1_ARGS="$(ROI_DEMO_STAGE1)" \
	  ROI2_ARGS="$(ROI_DEMO_STAGE2) --data.init_args.image_size [128,64]"
	$(MAKE) --no-print-directory roi-baselines ROI_DEPS= ROI_RUNS=$(ROI_DEMO_RUNS) ROI_BASELINES=roi_resnet50_scinti \
	  ROI_ARGS="$(ROI_DEMO_COMMON)" ROI2_ARGS="$(ROI_DEMO_STAGE2) --data.init_args.csv_path $(ROI_DEMO_DATA)/labels.csv \
	    --data.init_args.image_size [192,64]"
	$(if $(filter 0,$(ROI_DEMO_ORACLE)),,$(MAKE) --no-print-directory roi-oracle ROI_DEPS= ROI_RUNS=$(ROI_DEMO_RUNS) \
	  ROI_DATA=$(ROI_DEMO_DATA) ROI_ARGS="$(ROI_DEMO_COMMON)" ROI2_ARGS="$(ROI_DEMO_STAGE2) --data.init_args.image_size [128,64]")
	$(PY) -m boneage.analysis.roi_tables --runs-dir $(ROI_DEMO_RUNS) --data $(ROI_DEMO_DATA) \
	  --summary $(ROI_DEMO_RUNS)/roi_demo_summary.json
