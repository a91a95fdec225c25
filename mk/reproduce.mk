# Every paper's CPU miniature, then the report (issue 19; docs/reproduce.md).
#   make reproduce-mini [PAPER=tjnet|ct|roi|bapgan|pggan] [FORCE=1] [ALL=1] [RUNS_DIR=lightning_logs]
#     ALL=1: also the optional stages (ct-members, tjnet-baselines-big, bapgan-phalange), beyond the 2 hours
#   make reproduce-plan [PAPER=...] [FORCE=1]    what would run and what is skipped, nothing runs
# A stage whose runs are in RUNS_DIR is skipped (FORCE=1 runs it again); a failing stage stops with one
# line naming it and its log (RUNS_DIR/reproduce/<stage>.log), and `make reproduce-mini` again goes on
# from there. About 2 hours for everything on a 2-core CPU; PAPER= runs one paper's stages.
PAPER ?=
FORCE ?=
ALL ?=
REPRODUCE_ARGS = --runs-dir $(RUNS_DIR) $(if $(PAPER),--paper $(PAPER)) $(if $(FORCE),--force) $(if $(ALL),--all)

.PHONY: reproduce-mini reproduce-plan

reproduce-mini: install
	$(PY) -m boneage.reproduce $(REPRODUCE_ARGS)
	$(MAKE) --no-print-directory report RUNS_DIR=$(RUNS_DIR)

reproduce-plan: install
	@$(PY) -m boneage.reproduce $(REPRODUCE_ARGS) --dry-run
