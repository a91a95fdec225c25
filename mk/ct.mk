# Whole-body CT bone age with hierarchical-feature VGG (paper 002, issue 7): docs/ct.md.
#   make ct-phantom                     phantom data set in data/wholebody_ct (813 images, 3000x900)
#   make ct-train [ARGS=...]            train every model of Tables 1-3 (one new fit run each)
#   make ct-eval [CKPT=best|last]       test every model: the newest fit run of each, or RUN_<exp>=<run id>
#   make ct-late-fusion [CKPT=best]     test the three fine-tuned members, average their predictions
#   make ct-tables [CT_LABELS=...]      Tables 1/2, 3, 4 and Fig. 4 (age and sex distribution) from each model's
#                                       newest fit run (or RUN_<exp>=<run id>) and that run's newest test run;
#                                       labels: the CSV the run trained on; CT_REPEATS=<file>: repeated runs
#   make ct-repeat [N=3 | CT_SEEDS="1 2 3"] [CT_TAG=...]   train and test every model once per seed, record the
#                                       runs in $(CT_REPORT)/repeats/<tag>.csv, tables with the best of N (the
#                                       paper's protocol) and mean +- sd in $(CT_REPORT)/repeats/<tag>/
# RUN_<exp>=<run id> (e.g. RUN_ct_hvgg=20261129-213215-3fa3) picks a fit run, or a test run (test-...) for the
# tables; RUN=<run id> does it for all, useful with CT_MODELS=<one experiment>. Runs live in CT_LOGS.
CT_DATA ?= data/wholebody_ct
CT_N ?= 813
CT_LOGS ?= lightning_logs
CT_REPORT ?= reports/ct
CT_LABELS ?=
CT_MEMBERS ?= ct_vgg16 ct_googlenet ct_resnet50
CT_MODELS ?= $(CT_MEMBERS) ct_early_fusion ct_hvgg ct_hvgg_gap ct_hvgg_upper ct_hvgg_lower
# repeats (paper Sec. 4.3: "each model was trained several times and the best performances were picked"):
# one fit run per seed (seed_everything; the data split keeps its own seed, so every run sees the same
# 70/30 split), named <tag>-s<seed>; CT_TAG names a repeat set (default rep<date-time>), and running
# ct-repeat again with the same CT_TAG continues its unfinished runs and tests them again
N ?= 3
CT_SEEDS ?= $(shell seq 1 $(N))
CT_TAG ?=
CT_REPEATS ?=
ct_run = $(or $(RUN_$(1)),$(RUN))
# a model for the tables: EXP (its newest fit run) or EXP/<run id>
ct_spec = $(1)$(if $(call ct_run,$(1)),/$(call ct_run,$(1)))
CT_TABLE_ARGS = --runs-dir $(CT_LOGS) $(if $(CT_LABELS),--labels $(CT_LABELS)) $(if $(CT_REPEATS),--repeats $(CT_REPEATS)) \
  --model "Fine-tuned VGGNet (A)=$(call ct_spec,ct_vgg16)" \
  --model "Fine-tuned GoogLeNet (B)=$(call ct_spec,ct_googlenet)" \
  --model "Fine-tuned ResNet (C)=$(call ct_spec,ct_resnet50)" --late A,B,C

.PHONY: ct-phantom ct-train ct-eval ct-late-fusion ct-tables ct-repeat

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

# the rows of Tables 1-4 (Fig. 4 from the --sex run's data)
CT_ALL_TABLE_ARGS = $(CT_TABLE_ARGS) \
  --model "Early fusion of (A), (B), and (C)=$(call ct_spec,ct_early_fusion)" \
  --model "Our VGGNet with hierarchical features=$(call ct_spec,ct_hvgg)" \
  --model "Hierarchical VGG, global pooling before the connections=$(call ct_spec,ct_hvgg_gap)" \
  --table1 "Fine-tuned VGGNet (A),Our VGGNet with hierarchical features" \
  --upper $(call ct_spec,ct_hvgg_upper) --lower $(call ct_spec,ct_hvgg_lower) --sex $(call ct_spec,ct_hvgg)

ct-tables: install
	$(PY) -m boneage.analysis.ct_tables $(CT_ALL_TABLE_ARGS) --out $(CT_REPORT)

# Each model N times: fit run <tag>-s<seed> with seed_everything <seed>, then its test; every run is
# recorded as experiment,seed,run in $(CT_REPORT)/repeats/<tag>.csv before the tables read it.
ct-repeat: install
	@tag="$(or $(CT_TAG),rep$$(date +%Y%m%d-%H%M%S))"; list="$(CT_REPORT)/repeats/$$tag.csv"; \
	mkdir -p "$(CT_REPORT)/repeats"; [ -f "$$list" ] || echo "experiment,seed,run" > "$$list"; \
	for e in $(CT_MODELS); do for s in $(CT_SEEDS); do run="$$tag-s$$s"; echo "== $$e seed $$s: run $$e/$$run"; \
	  $(BONEAGE) fit --config experiments/$$e.yaml --runs_dir $(CT_LOGS) --seed_everything $$s --run $$run \
	    $(ARGS) || exit 1; \
	  $(BONEAGE) test --config experiments/$$e.yaml --runs_dir $(CT_LOGS) --run $$run --ckpt_path $(CKPT) \
	    $(ARGS) || exit 1; \
	  grep -qx "$$e,$$s,$$run" "$$list" || echo "$$e,$$s,$$run" >> "$$list"; done; done; \
	echo "runs recorded in $$list"; \
	$(PY) -m boneage.analysis.ct_tables $(CT_ALL_TABLE_ARGS) --repeats "$$list" --out "$(CT_REPORT)/repeats/$$tag"
