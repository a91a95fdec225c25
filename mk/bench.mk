# Benchmarks (issue 10): framework overhead against plain PyTorch, options, data loading.
#   make bench                                   small CPU configuration, a few minutes
#   make bench ARGS="--device cuda --precision bf16-mixed --scale paper --compile --workers 0,4,8"
#   make bench-data                              the data-loading (cold-path) tables alone, minutes
# Writes bench/results.md (tables) and bench/results.json (raw figures); bench-data writes
# bench/results-data.md and .json. See docs/performance.md.
.PHONY: bench bench-data

bench: install
	$(PY) -m boneage.bench --out bench $(ARGS)

bench-data: install
	$(PY) -m boneage.bench --out bench --data-only $(ARGS)
