# Whole-body CT bone age with hierarchical-feature VGG (paper 002, issue 7): docs/ct.md.
#   make ct-phantom                     phantom data set in data/wholebody_ct (813 images, 3000x900)
#   make ct-train [ARGS=...]            train every model of Tables 1-3 (one new fit run each)
#   make ct-eval [CKPT=best|last]       test every model: the newest fit run of each, or RUN_<exp>=<run id>
#   make ct-late-fusion [CKPT=best]     test the three fine-tuned members, average their predictions
#   make ct-tables [CT_LABELS=...]      Tables 1/2, 3, 4 from each model's newest fit run (or RUN_<exp>=<run id>)
#                                       and that run's newest test run; labels: the CSV the run trained on
# RUN_<exp>=<run id> (e.g. RUN_ct_hvgg=20261129-213215-3fa3) picks a fit run, or a test run (test-...) for the
# tables; RUN=<run id> does it for all, useful with CT_MODELS=<one experiment>. Runs live in CT_LOGS.
CT_DATA ?= data/wholebody_ct
CT_N ?= 813
CT_LOGS ?= lightning_logs
CT_REPORT ?= reports/ct
CT_LABELS ?=
CT_MEMBERS ?= ct_vgg16 ct_googlenet ct_resnet50
CT_MODELS ?= $(CT_MEMBERS) ct_early_fusion ct_hvgg ct_hvgg_gap ct_hvgg_upper ct_hvgg_lower
ct_run = $(or $(RUN_$(1)),$(RUN))
# a model for the tables: EXP (its newest fit run) or EXP/<run id>
ct_spec = $(1)$(if $(call ct_run,$(1)),/$(call ct_run,$(1)))
CT_TABLE_ARGS = --runs-dir $(CT_LOGS) $(if $(CT_LABELS),--labels $(CT_LABELS)) \
  --model "Fine-tuned VGGNet (A)=$(call ct_spec,ct_vgg16)" \
  --model "Fine-tuned GoogLeNet (B)=$(call ct_spec,ct_googlenet)" \
  --model "Fine-tuned ResNet (C)=$(call ct_spec,ct_resnet50)" --late A,B,C

.PHONY: ct-phantom ct-train ct-eval ct-late-fusion ct-tables

# $(call ct_test,experiment): test checkpoint CKPT of fit run RUN_<experiment> (default: the newest)
define ct_test
	$(BONEAGE) test --config experiments/$(1).yaml --runs_dir $(CT_LOGS) --ckpt_path $(CKPT) \
	  $(if $(call ct_run,$(1)),--run $(call ct_run,$(1))) $(ARGS)

endef

ct-phantom: install
	$(PY) -m boneage.phantoms.cli wholebody_ct --out $(CT_DATA) --n $(CT_N) --seed 0

ct-train: install
	@for e in $(CT_MODELS); do echo "== $$e"; \
	  $(BONEAGE) fit --config experiments/$$e.yaml --runs_dir $(CT_LOGS) $(ARGS) || exit 1; done

ct-eval: install
	$(foreach e,$(CT_MODELS),$(call ct_test,$(e)))

# Late fusion (Table 2): each member's checkpoint predicts the same test split, then the ages are
# averaged per test image (members may use different input sizes: GoogLeNet sees 299 crops).
ct-late-fusion: install
	$(foreach e,$(CT_MEMBERS),$(call ct_test,$(e)))
	$(PY) -m boneage.analysis.ct_tables $(CT_TABLE_ARGS) --out $(CT_REPORT)/late_fusion

ct-tables: install
	$(PY) -m boneage.analysis.ct_tables $(CT_TABLE_ARGS) --out $(CT_REPORT) \
	  --model "Early fusion of (A), (B), and (C)=$(call ct_spec,ct_early_fusion)" \
	  --model "Our VGGNet with hierarchical features=$(call ct_spec,ct_hvgg)" \
	  --model "Hierarchical VGG, global pooling before the connections=$(call ct_spec,ct_hvgg_gap)" \
	  --table1 "Fine-tuned VGGNet (A),Our VGGNet with hierarchical features" \
	  --upper $(call ct_spec,ct_hvgg_upper) --lower $(call ct_spec,ct_hvgg_lower) --sex $(call ct_spec,ct_hvgg)
