# The reproduction report (issue 19): every paper's tables beside ours, its figures and its claims, from
# finished runs only (it trains nothing; any subset of runs works, each missing piece names its command).
#   make report [RUNS_DIR=lightning_logs] [OUT=reports] [RUNS="EXP/<run id> ..."]
# writes $(OUT)/report.md (figures in $(OUT)/figures/) and $(OUT)/report.html (self-contained); RUNS names
# runs to read instead of each experiment's newest fit run and its newest test run.
OUT ?= reports
RUNS ?=
REPORT_DEPS ?= install

.PHONY: report

report: $(REPORT_DEPS)
	$(PY) -m boneage.analysis.report --runs-dir $(RUNS_DIR) --out $(OUT) $(addprefix --run ,$(RUNS))
