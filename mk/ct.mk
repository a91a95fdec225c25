# Whole-body CT bone age with hierarchical-feature VGG (paper 002, issue 7): docs/ct.md.
#   make ct-phantom                     phantom data set in data/wholebody_ct (813 images, 3000x900)
#   make ct-train [ARGS=...]            train every model of Tables 1-3
#   make ct-late-fusion [CKPT=best]     test the three fine-tuned members, average their predictions
#   make ct-tables [CT_LABELS=...]      Tables 1/2, 3, 4 from the newest finished test runs
CT_DATA ?= data/wholebody_ct
CT_N ?= 813
CT_LOGS ?= lightning_logs
CT_REPORT ?= reports/ct
CT_LABELS ?= $(CT_DATA)/labels.csv
CT_MEMBERS ?= ct_vgg16 ct_googlenet ct_resnet50
CT_MODELS ?= $(CT_MEMBERS) ct_early_fusion ct_hvgg ct_hvgg_gap ct_hvgg_upper ct_hvgg_lower
CT_TABLE_ARGS = --logs $(CT_LOGS) --labels $(CT_LABELS) \
  --model "Fine-tuned VGGNet (A)=ct_vgg16" --model "Fine-tuned GoogLeNet (B)=ct_googlenet" \
  --model "Fine-tuned ResNet (C)=ct_resnet50" --late A,B,C

.PHONY: ct-phantom ct-train ct-eval ct-late-fusion ct-tables

ct-phantom: install
	$(PY) -m boneage.phantoms.cli wholebody_ct --out $(CT_DATA) --n $(CT_N) --seed 0

ct-train: install
	@for e in $(CT_MODELS); do echo "== $$e"; $(BONEAGE) fit --config experiments/$$e.yaml $(ARGS) || exit 1; done

ct-eval: install
	@for e in $(CT_MODELS); do echo "== $$e"; \
	  $(BONEAGE) test --config experiments/$$e.yaml --ckpt_path $(CKPT) $(ARGS) || exit 1; done

# Late fusion (Table 2): each member's checkpoint predicts the same test split, then the ages are
# averaged per test image (members may use different input sizes: GoogLeNet sees 299 crops).
ct-late-fusion: install
	@for e in $(CT_MEMBERS); do echo "== $$e"; \
	  $(BONEAGE) test --config experiments/$$e.yaml --ckpt_path $(CKPT) $(ARGS) || exit 1; done
	$(PY) -m boneage.analysis.ct_tables $(CT_TABLE_ARGS) --out $(CT_REPORT)/late_fusion

ct-tables: install
	$(PY) -m boneage.analysis.ct_tables $(CT_TABLE_ARGS) --out $(CT_REPORT) \
	  --model "Early fusion of (A), (B), and (C)=ct_early_fusion" \
	  --model "Our VGGNet with hierarchical features=ct_hvgg" \
	  --model "Hierarchical VGG, global pooling before the connections=ct_hvgg_gap" \
	  --table1 "Fine-tuned VGGNet (A),Our VGGNet with hierarchical features" \
	  --upper ct_hvgg_upper --lower ct_hvgg_lower --sex ct_hvgg
