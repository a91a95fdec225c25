# Paper scale (issue 18); docs/performance.md "Paper scale" and "GPU check".
#   make paper-steps [EXP=name] [PAPER_STEPS_ARGS="--n 24 --steps 2 --device cpu"]
#       every experiments/*.yaml (or EXP) at its own image size: batch 2 (PGGAN 4, grown to 1024 px with one
#       step per phase), 2 training steps on phantom data, one process each; table in bench/paper-scale/
#   make gpu-check [DRY=1]
#       on a GPU machine (<= 8 min on one H200): per family a short paper-scale fit in bf16-mixed and 16-mixed
#       with channels_last, DDP on 2 GPUs when present, the bench at paper scale; table in bench/gpu-check/.
#       DRY=1: the same stages at tiny scale on the CPU
PAPER_STEPS_ARGS ?=
DRY ?=
.PHONY: paper-steps gpu-check

paper-steps: install $(if $(EXP),check-exp)
	$(PY) -m boneage.paperscale steps $(if $(EXP),--experiments $(EXP)) $(PAPER_STEPS_ARGS)

gpu-check: install
	$(PY) -m boneage.paperscale gpu-check $(if $(DRY),--dry) $(ARGS)
