# Benchmarks (issue 10): framework overhead against plain PyTorch, options, data loading.
#   make bench                                   small CPU configuration, a few minutes
#   make bench ARGS="--device cuda --precision bf16-mixed --scale paper --compile --workers 0,4,8"
# Writes bench/results.md (tables) and bench/results.json (raw figures). See docs/performance.md.
.PHONY: bench

bench: install
	$(PY) -m boneage.bench --out bench $(ARGS)
