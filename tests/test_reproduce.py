"""make reproduce-mini's stages: skipped when their runs exist, run again with --force, one paper
with --paper, and a failing stage stops naming itself and its log."""

from __future__ import annotations

import json

import pytest

from boneage.reproduce import PAPERS, File, FitAndTest, FitOnly, Stage, StageFailed, Step, main, plan, run_stages


def _stage(name: str, marker: str, runs, command: str | None = None) -> Stage:
    """A stage whose one step writes ``marker`` into the runs folder (and appends to ``ran.txt``)."""
    command = command or f"echo {name} >> ran.txt && touch {runs}/{marker}"
    return Stage(name, "test", f"stub {name}", [Step(f"make {marker}", [command], [File(marker)])])


def _ran(tmp_path) -> list[str]:
    path = tmp_path / "ran.txt"
    return path.read_text().split() if path.exists() else []


def test_present_stages_are_skipped_and_force_runs_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.done").touch()
    stages = [_stage("a", "a.done", runs), _stage("b", "b.done", runs)]
    lines: list[str] = []
    assert run_stages(stages, runs, log=lines.append) == {"a": "skipped", "b": "ran"}
    assert _ran(tmp_path) == ["b"]
    assert lines[0].startswith("[1/2] a (test)") and "skipped" in lines[0]
    assert any(line.startswith("[2/2] b (test)") and "elapsed" in line for line in lines)
    # a second call finds both; --force runs both again
    assert run_stages(stages, runs, log=lines.append) == {"a": "skipped", "b": "skipped"}
    assert run_stages(stages, runs, force=True, log=lines.append) == {"a": "ran", "b": "ran"}
    assert _ran(tmp_path) == ["b", "a", "b"]
    assert "$ echo b" in (runs / "reproduce" / "b.log").read_text()


def test_failing_stage_names_itself_and_its_log_and_stops(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    stages = [_stage("broken", "x", runs, command="echo 'boom: no data' >&2; exit 3"), _stage("later", "y", runs)]
    with pytest.raises(StageFailed) as err:
        run_stages(stages, runs, log=lambda line: None)
    log = runs / "reproduce" / "broken.log"
    assert "stage broken failed" in str(err.value) and str(log) in str(err.value)
    assert "boom: no data" in log.read_text()  # the command's own error is in the log
    assert _ran(tmp_path) == []  # the later stage did not run

    # the command line: one line on stderr, exit status 1
    monkeypatch.setattr("boneage.reproduce.plan", lambda runs_dir, paper, optional: stages)
    assert main(["--runs-dir", str(runs)]) == 1
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "stage broken failed" in err_lines[0]


def _run_json(path, **info):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps(info))


def test_a_training_step_counts_only_when_its_newest_fit_run_finished_and_was_tested(tmp_path):
    need = FitAndTest("ct_hvgg")
    exp = tmp_path / "ct_hvgg"
    _run_json(exp / "20261130-010000-aaaa", stage="fit", status="finished", created_ts=1)
    assert not need.present(tmp_path)  # fit only
    _run_json(exp / "test-20261130-010500-bbbb", stage="test", status="finished", created_ts=2,
              source_run="20261130-010000-aaaa")
    assert need.present(tmp_path)
    # a newer fit run that crashed is what the tables would read: the step must run again
    _run_json(exp / "20261130-020000-cccc", stage="fit", status="failed", created_ts=3)
    assert not need.present(tmp_path)


def test_a_gan_step_counts_only_when_its_newest_fit_run_holds_the_evaluation(tmp_path):
    need = FitOnly("bapgan_femur", ("bapgan_eval/fid.json",))
    old, new = tmp_path / "bapgan_femur" / "20261130-010000-aaaa", tmp_path / "bapgan_femur" / "20261130-020000-bbbb"
    _run_json(old, stage="fit", status="finished", created_ts=1)
    (old / "bapgan_eval").mkdir()
    (old / "bapgan_eval" / "fid.json").write_text("{}")
    assert need.present(tmp_path)
    _run_json(new, stage="fit", status="finished", created_ts=2)  # newer, not evaluated yet
    assert not need.present(tmp_path)


def test_paper_selects_its_stages_and_dry_run_prints_the_plan(tmp_path, capsys):
    assert {s.paper for s in plan(str(tmp_path))} == set(PAPERS)
    optional = {s.name for s in plan(str(tmp_path), optional=True)} - {s.name for s in plan(str(tmp_path))}
    assert optional == {"ct-members", "tjnet-baselines-big", "bapgan-phalange"}
    assert main(["--runs-dir", str(tmp_path), "--paper", "ct", "--dry-run"]) == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("[")]
    assert len(heads) == 1 and all("(ct)" in h and "would run" in h for h in heads)
    assert "boneage fit --config experiments/ct_hvgg.yaml" in out
    assert not (tmp_path / "reproduce").exists()  # nothing ran
    with pytest.raises(ValueError, match="unknown paper 'nope'"):
        plan(str(tmp_path), "nope")
