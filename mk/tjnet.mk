# TJ-Net (paper 003): baselines, ablations, transfer (Table 2) and the tables. See docs/tjnet.md.
#   make tjnet-rsna                                TJ-Net on RSNA, paper defaults (fit + test)
#   make tjnet-ablations                           no shortcuts / no CBAM / no joint learning (fit + test)
#   make tjnet-baselines                           VGG16, Inception V3/V4, ResNet50 heads (fit + test)
#   make tjnet-transfer [SOURCE_RUN=id|INIT=file]  Tongji: freeze blocks 1..k for k = 1..4 (fit + test), from
#                                                  the best checkpoint of tjnet_rsna's fit run SOURCE_RUN (newest)
#   make tjnet-tables [TJNET_RUNS="EXP/id ..."]    Table 1, ablation rows, Table 2 (MAD/RMSE from class labels as the
#                                                  paper, and of the expected age), Fig. 5/6, Fig. 7 (sex-input weights
#                                                  of block 6 and their Hoyer sparsity) into reports/tjnet from each
#                                                  experiment's newest fit run (or the runs named) and its newest test
#   make tjnet-all                                 everything above, in order
# Runs go to TJNET_LOGS (default lightning_logs/<experiment>/<run id>/).
TJNET_LOGS ?= lightning_logs
TJNET_REPORT ?= reports/tjnet
TJNET_RUNS ?=
TJNET_DEPS ?= install
SOURCE_RUN ?=
INIT ?=
TJNET_BASELINES ?= vgg16:vgg16_bn inception_v3:inception_v3 inception_v4:inception_v4 resnet50:resnet50
TJNET_ABLATIONS ?= no_shortcut:incres_shortcut no_cbam:use_cbam no_joint:joint_learning
TJNET_FREEZE ?= 1 2 3 4
# prints the best checkpoint of the tjnet_rsna fit run SOURCE_RUN (default: the newest) and names it
TJNET_SOURCE = $(PY) -m boneage.systems.tjnet --runs-dir $(TJNET_LOGS) --experiment tjnet_rsna \
  $(if $(SOURCE_RUN),--run $(SOURCE_RUN))

.PHONY: tjnet-rsna tjnet-ablations tjnet-baselines tjnet-transfer tjnet-tables tjnet-all

# fit then test one run (test: the best checkpoint of the fit run just made, the newest of the experiment);
# the run's own flags come after ARGS, so a --config in ARGS (e.g. a tiny scale) cannot undo them.
# $(call tjnet_run,config,experiment,extra args)
define tjnet_run
	$(BONEAGE) fit --config experiments/$(1).yaml --experiment $(2) --runs_dir $(TJNET_LOGS) $(ARGS) $(3)
	$(BONEAGE) test --config experiments/$(1).yaml --experiment $(2) --runs_dir $(TJNET_LOGS) $(ARGS) $(3) --ckpt_path best

endef

tjnet-rsna: $(TJNET_DEPS)
	$(call tjnet_run,tjnet_rsna,tjnet_rsna,)

tjnet-ablations: $(TJNET_DEPS)
	$(foreach a,$(TJNET_ABLATIONS),$(call tjnet_run,tjnet_rsna,tjnet_rsna_$(word 1,$(subst :, ,$(a))),--model.init_args.network.init_args.$(word 2,$(subst :, ,$(a))) false))

tjnet-baselines: $(TJNET_DEPS)
	$(foreach b,$(TJNET_BASELINES),$(call tjnet_run,tjnet_rsna_baseline,tjnet_rsna_$(word 1,$(subst :, ,$(b))),--model.init_args.network.init_args.backbone $(word 2,$(subst :, ,$(b)))))

# One source checkpoint for all k (resolved once); each fit run records it in its config.yaml
# (model.init_args.init_checkpoint).
tjnet-transfer: $(TJNET_DEPS)
	@init="$(INIT)"; \
	if [ -z "$$init" ]; then init=$$($(TJNET_SOURCE)) || exit 2; else echo "transfer source: file $$init"; fi; \
	for k in $(TJNET_FREEZE); do \
	  exp="--config experiments/tjnet_tongji.yaml --experiment tjnet_tongji_freeze$$k --runs_dir $(TJNET_LOGS)"; \
	  src="--model.init_args.freeze_blocks $$k --model.init_args.init_checkpoint $$init"; \
	  echo "== tjnet_tongji_freeze$$k from $$init"; \
	  $(BONEAGE) fit $$exp $(ARGS) $$src && $(BONEAGE) test $$exp $(ARGS) $$src --ckpt_path best || exit 1; \
	done

tjnet-tables: $(TJNET_DEPS)
	$(PY) -m boneage.analysis.tjnet_tables --runs-dir $(TJNET_LOGS) --out $(TJNET_REPORT) \
	  $(addprefix --run ,$(TJNET_RUNS))

tjnet-all: tjnet-rsna tjnet-ablations tjnet-baselines tjnet-transfer tjnet-tables
