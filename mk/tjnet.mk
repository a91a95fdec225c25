# TJ-Net (paper 003): baselines, ablations, transfer (Table 2) and the tables. See docs/tjnet.md.
#   make train EXP=tjnet_rsna                      TJ-Net on RSNA (paper defaults)
#   make tjnet-ablations                           no shortcuts / no CBAM / no joint learning (fit + test)
#   make tjnet-baselines                           VGG16, Inception V3/V4, ResNet50 heads (fit + test)
#   make tjnet-transfer [INIT=ckpt]                Tongji: freeze blocks 1..k for k = 1..4 (fit + test)
#   make tjnet-tables                              Table 1, ablation rows, Table 2, Fig. 6 comparison
#   make tjnet-all                                 everything above, in order
TJNET_INIT ?= $(if $(INIT),$(INIT),lightning_logs/tjnet_rsna/checkpoints/last.ckpt)
TJNET_BASELINES ?= vgg16:vgg16_bn inception_v3:inception_v3 inception_v4:inception_v4 resnet50:resnet50
TJNET_ABLATIONS ?= no_shortcut:incres_shortcut no_cbam:use_cbam no_joint:joint_learning
TJNET_FREEZE ?= 1 2 3 4

.PHONY: tjnet-rsna tjnet-ablations tjnet-baselines tjnet-transfer tjnet-tables tjnet-all

# fit then test one run: $(call tjnet_run,config,experiment,extra args)
define tjnet_run
	$(BONEAGE) fit --config experiments/$(1).yaml --experiment $(2) $(3) $(ARGS)
	$(BONEAGE) test --config experiments/$(1).yaml --experiment $(2) $(3) --ckpt_path best $(ARGS)

endef

tjnet-rsna: install
	$(call tjnet_run,tjnet_rsna,tjnet_rsna,)

tjnet-ablations: install
	$(foreach a,$(TJNET_ABLATIONS),$(call tjnet_run,tjnet_rsna,tjnet_rsna_$(word 1,$(subst :, ,$(a))),--model.init_args.network.init_args.$(word 2,$(subst :, ,$(a))) false))

tjnet-baselines: install
	$(foreach b,$(TJNET_BASELINES),$(call tjnet_run,tjnet_rsna_baseline,tjnet_rsna_$(word 1,$(subst :, ,$(b))),--model.init_args.network.init_args.backbone $(word 2,$(subst :, ,$(b)))))

tjnet-transfer: install
	@test -f "$(TJNET_INIT)" || { echo "no TJ-Net RSNA checkpoint at $(TJNET_INIT): run 'make train EXP=tjnet_rsna' first or pass INIT=path/to.ckpt"; exit 2; }
	$(foreach k,$(TJNET_FREEZE),$(call tjnet_run,tjnet_tongji,tjnet_tongji_freeze$(k),--model.init_args.freeze_blocks $(k) --model.init_args.init_checkpoint $(TJNET_INIT)))

tjnet-tables: install
	$(PY) -m boneage.analysis.tjnet_tables --logs lightning_logs --out lightning_logs/tjnet_tables

tjnet-all: tjnet-rsna tjnet-ablations tjnet-baselines tjnet-transfer tjnet-tables
