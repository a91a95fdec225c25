# Do et al., ROI localization for bone age on whole-body bone scintigraphy (docs/roi.md).
#   make roi-pipeline                stage 1 (fit), ROI export (predict), stage 2 with and without sex (fit + test)
#   make roi-stage1 | roi-export [RUN=<stage-1 fit run>] | roi-stage2 [EXPORT_RUN=<export run>]   one stage
#   make roi-baselines               the Table 1 baselines on whole images (fit + test)
#   make roi-table [TABLE_RUNS="<exp>/<run id> ..."]   Table 1 from the newest tested runs (or the named ones)
#   make roi-phantom                 a phantom data set in data/scintigraphy (when you have no data yet)
#   make roi-demo                    tiny CPU run on a small phantom: ROI pipeline vs whole-image baseline + noise floor
# Each stage finds the previous one by run: the export is a predict run of $(ROI_STAGE1) using the best checkpoint
# of the newest (or RUN=) fit run and writes <predict run>/roi_dataset/labels.csv; stage 2 trains on the newest
# export (or EXPORT_RUN=) and prints which one. ROI1_ARGS / ROI2_ARGS / ROI_ARGS add CLI overrides to stage 1 /
# stage 2 and baselines / all stages, e.g. ROI_ARGS="--trainer.max_epochs 5"; ROI_DEPS= skips `make install`.
ROI_RUNS ?= lightning_logs
ROI_DATA ?= data/scintigraphy
ROI_DEPS ?= install
ROI_ARGS ?=
ROI1_ARGS ?=
ROI2_ARGS ?=
RUN ?=
EXPORT_RUN ?=
TABLE_RUNS ?=
ROI_STAGE1 := roi_localizer_scinti
ROI_STAGE2 ?= roi_regressor_scinti roi_regressor_nosex_scinti
ROI_BASELINES ?= roi_vgg19_scinti roi_vgg19_nosex_scinti roi_resnet50_scinti roi_resnet50_nosex_scinti \
                 roi_xception_scinti roi_xception_nosex_scinti roi_mivgg16_scinti roi_mivgg16_nosex_scinti
# prints the export's labels.csv (and, on stderr, which predict run and stage-1 fit run it is)
ROI_FIND_EXPORT = $(PY) -m boneage.analysis.roi --runs-dir $(ROI_RUNS) $(if $(EXPORT_RUN),--run $(EXPORT_RUN))

.PHONY: roi-pipeline roi-stage1 roi-export roi-stage2 roi-baselines roi-table roi-phantom roi-demo

roi-pipeline: $(ROI_DEPS)
	$(MAKE) --no-print-directory roi-stage1 ROI_DEPS=
	$(MAKE) --no-print-directory roi-export ROI_DEPS=
	$(MAKE) --no-print-directory roi-stage2 ROI_DEPS=
	@echo "ROI pipeline done: stage 2 runs in $(foreach e,$(ROI_STAGE2),$(ROI_RUNS)/$(e))"

roi-stage1: $(ROI_DEPS)
	$(BONEAGE) fit --config experiments/$(ROI_STAGE1).yaml --runs_dir $(ROI_RUNS) $(ROI_ARGS) $(ROI1_ARGS)

roi-export: $(ROI_DEPS)
	$(BONEAGE) predict --config experiments/$(ROI_STAGE1).yaml --runs_dir $(ROI_RUNS) --ckpt_path best \
	  $(if $(RUN),--run $(RUN)) --data.init_args.predict_split all $(ROI_ARGS) $(ROI1_ARGS)
	@$(PY) -m boneage.analysis.roi --runs-dir $(ROI_RUNS) > /dev/null

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

roi-table: $(ROI_DEPS)
	$(PY) -m boneage.analysis.roi_tables --runs-dir $(ROI_RUNS) $(foreach r,$(TABLE_RUNS),--run $(r)) --paper \
	  --out $(ROI_RUNS)/roi_table1.md

roi-phantom: $(ROI_DEPS)
	@test -f $(ROI_DATA)/labels.csv && echo "$(ROI_DATA)/labels.csv exists: keeping it" || \
	  $(PY) -m boneage.phantoms.cli scintigraphy --out $(ROI_DATA) --n 400

# Tiny scale (CPU, minutes): 400 phantom scans of 144 x 480, a tiny timm ResNet everywhere, lr 1e-3
# (from scratch), 12 epochs; stage 1 at 48 x 160 (the paper's factor 3) with Grad-CAM on layer3,
# crops letterboxed to 64 x 128, the ResNet baseline on whole images at 40 x 120 (factor 4).
ROI_DEMO_RUNS ?= lightning_logs/roi_demo
ROI_DEMO_DATA ?= data/roi_demo_phantom
ROI_DEMO_EPOCHS ?= 12
ROI_DEMO_COMMON = --trainer.max_epochs $(ROI_DEMO_EPOCHS) --trainer.enable_progress_bar false --data.init_args.num_workers 0 \
  --model.init_args.optimizer.init_args.lr 0.001
roi-demo: $(ROI_DEPS)
	@test -f $(ROI_DEMO_DATA)/labels.csv || \
	  $(PY) -m boneage.phantoms.cli scintigraphy --out $(ROI_DEMO_DATA) --n 400 --width 144 --height 480
	$(MAKE) --no-print-directory roi-pipeline ROI_DEPS= ROI_RUNS=$(ROI_DEMO_RUNS) ROI_STAGE2=roi_regressor_scinti \
	  ROI_ARGS="$(ROI_DEMO_COMMON)" \
	  ROI1_ARGS="--data.init_args.csv_path $(ROI_DEMO_DATA)/labels.csv --data.init_args.image_size [160,48] \
	    --model.init_args.network.init_args.backbone test_resnet --model.init_args.network.init_args.cam_layer layer3 \
	    --model.init_args.max_figures 8" \
	  ROI2_ARGS="--model.init_args.network.init_args.backbone test_resnet --model.init_args.network.init_args.hidden [64,64] \
	    --data.init_args.image_size [128,64]"
	$(MAKE) --no-print-directory roi-baselines ROI_DEPS= ROI_RUNS=$(ROI_DEMO_RUNS) ROI_BASELINES=roi_resnet50_scinti \
	  ROI_ARGS="$(ROI_DEMO_COMMON)" \
	  ROI2_ARGS="--data.init_args.csv_path $(ROI_DEMO_DATA)/labels.csv --data.init_args.image_size [120,40] \
	    --model.init_args.network.init_args.backbone test_resnet --model.init_args.network.init_args.hidden [64,64]"
	$(PY) -m boneage.analysis.roi_tables --runs-dir $(ROI_DEMO_RUNS) --data $(ROI_DEMO_DATA)
