"""Runs you can trust: every command gets its own run directory, `best` means the best score of the
named run, the saved config is a recipe, and expected problems end with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from scale_helpers import ROOT, phantom_data_args

from boneage.runs import find_runs

TINY = ["--config", "experiments/regressor_rsna.yaml", "--config", "tests/configs/scale/regressor_tiny.yaml"]
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
       "--trainer.enable_model_summary", "false"]


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    out.pop("BONEAGE_RUN", None)
    return out


def boneage(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "boneage.cli", *args], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_fits_started_together_get_their_own_runs(tmp_path, rsna_phantom):
    args = ["fit", *TINY, *phantom_data_args(rsna_phantom), *CPU, "--runs_dir", str(tmp_path)]
    procs = [boneage(*args), boneage(*args)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    runs = find_runs(tmp_path, "regressor_rsna")
    assert len(runs) == 2 and runs[0].path != runs[1].path
    for run in runs:
        assert run.info["status"] == "finished"
        assert {p.name for p in run.checkpoints()} >= {"last.ckpt"} and len(run.checkpoints()) == 2
        metrics = run.metrics()
        assert sorted(metrics["epoch"].unique()) == [0, 1] and metrics["train/loss"].notna().sum() == 2
        assert len(list(run.path.glob("events.out.tfevents.*"))) == 1  # one writer per run


def test_best_is_the_best_score_of_the_named_run_and_eval_records_it(tmp_path, rsna_phantom):
    """A user's own ModelCheckpoint (no dirpath, mode max) is kept and writes into the run; `best`
    follows its scores, not file times; `make eval CKPT=best [RUN=]` tests that file and says so."""
    data = phantom_data_args(rsna_phantom)
    own = ["--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint", "--trainer.callbacks.monitor=val/mae",
           "--trainer.callbacks.mode=max", "--trainer.callbacks.save_top_k=-1",
           "--trainer.callbacks.filename={epoch}"]
    first = boneage("fit", *TINY, *data, *CPU, "--runs_dir", str(tmp_path), "--trainer.max_epochs", "3", *own)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    second = boneage("fit", *TINY, *data, *CPU, "--runs_dir", str(tmp_path), "--trainer.max_epochs", "1")
    assert second.wait(timeout=600) == 0, second.stderr.read()[-3000:]
    older, newer = find_runs(tmp_path, "regressor_rsna")

    # the user's callback only (no defaults beside it), in the run's checkpoints/
    assert sorted(p.name for p in older.checkpoints()) == ["epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"]
    val = older.metrics().dropna(subset=["val/mae"]).set_index("epoch")["val/mae"]
    assert val.nunique() == 3  # three different scores
    assert older.checkpoint("best").name == f"epoch={val.idxmax()}.ckpt"  # mode max: the highest val/mae

    for run_arg, source in (([f"RUN={older.id}"], older), ([], newer)):
        out = subprocess.run(["make", "-s", "-o", ".venv/.installed", "eval", "EXP=regressor_rsna", "CKPT=best",
                              f"RUNS_DIR={tmp_path}", *run_arg, "ARGS=" + " ".join(CPU)],
                             cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        test = find_runs(tmp_path, "regressor_rsna", stage="test")[-1]
        assert test.info["source_run"] == source.id and test.info["ckpt_path"] == str(source.checkpoint("best"))
        assert f"run regressor_rsna/{source.id}, checkpoint {source.checkpoint('best').name}" in out.stderr
        assert test.predictions()["true_months"].notna().all()


def test_saved_config_is_a_recipe_for_a_new_run(run_cli, rsna_phantom, tmp_path):
    runs = run_cli("fit", *TINY, *phantom_data_args(rsna_phantom), "--trainer.max_epochs", "1",
                   "--data.init_args.image_size", "[24, 24]")
    (old,) = find_runs(runs, "regressor_rsna")
    before = {p: p.read_bytes() for p in old.path.rglob("*") if p.is_file()}
    run_cli("fit", "--config", str(old.path / "config.yaml"))
    old_again, new = find_runs(runs, "regressor_rsna")
    assert old_again == old and new.path != old.path
    assert {p: p.read_bytes() for p in old.path.rglob("*") if p.is_file()} == before  # the old run untouched
    assert new.config()["data"]["init_args"]["image_size"] == [24, 24]  # same settings
    assert (new.path / "checkpoints" / "last.ckpt").is_file() and new.metrics()["val/mae"].notna().any()


def test_continuing_a_run_with_other_settings_is_refused(run_cli, rsna_phantom, capsys):
    args = [*TINY, *phantom_data_args(rsna_phantom), "--trainer.max_epochs", "1"]
    runs = run_cli("fit", *args)
    (run,) = find_runs(runs, "regressor_rsna")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *args, "--run", run.id, "--model.init_args.optimizer.init_args.lr", "0.5")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "model.init_args.optimizer.init_args.lr: 0.001 -> 0.5" in err and "Traceback" not in err


def test_unknown_run_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    args = ["test", *TINY, "--runs_dir", str(tmp_path), "--ckpt_path", "best", "--run", "nope"]
    out = subprocess.run([sys.executable, "-m", "boneage.cli", *args], cwd=ROOT, env=env(), capture_output=True,
                         text=True, timeout=300)
    lines = [line for line in out.stderr.splitlines() if line.startswith("boneage:")]
    assert out.returncode == 2 and lines == [
        f"boneage: no fit run of 'regressor_rsna' in {tmp_path / 'regressor_rsna'}: train it first "
        f"(make train EXP=regressor_rsna) or give --runs_dir"]
    assert "Traceback" not in out.stderr and "Tip:" not in out.stderr + out.stdout

    from boneage.cli import main
    from boneage.runs import RunError

    monkeypatch.chdir(ROOT)
    with pytest.raises(RunError, match="no fit run of 'regressor_rsna'"):  # --debug: the exception itself
        main([*args, "--debug"])


def test_a_moved_lightning_internal_is_named_at_the_start_of_fit(monkeypatch):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from boneage.resume import ExactResume, missing_lightning_internals

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    assert missing_lightning_internals(trainer) == []  # every internal exact resume uses is there
    monkeypatch.delattr(ModelCheckpoint, "_monitor_candidates")
    with pytest.raises(RuntimeError, match=r"ModelCheckpoint\._monitor_candidates.*pytorch-lightning>=2.6,<2.7"):
        ExactResume().setup(trainer, pl.LightningModule(), "fit")


def test_run_json_says_what_ran(run_cli, rsna_phantom):
    runs = run_cli("fit", *TINY, *phantom_data_args(rsna_phantom), "--trainer.max_epochs", "1")
    run_cli("test", *TINY, *phantom_data_args(rsna_phantom), "--ckpt_path", "last")
    (fit,), (test,) = (find_runs(runs, "regressor_rsna", stage=s) for s in ("fit", "test"))
    assert fit.evaluations("test") == [test]
    info = json.loads((test.path / "run.json").read_text())
    assert info["source_run"] == fit.id and info["ckpt_path"] == str(fit.checkpoint("last"))
    assert pd.read_csv(test.path / "metrics.csv")["test/mae"].notna().any()
