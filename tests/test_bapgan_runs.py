"""BAPGAN evaluation commands read runs: a run trained with an override is evaluated with it,
the newest fit run is the default, and a missing run or checkpoint is one clear line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from boneage.analysis import bapgan_eval, bapgan_vtt
from data_modules.bones import FemurDataModule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny bapgan_femur fit run (1 iteration, no validation: last.ckpt only) trained on a
    40-image CSV given on the command line, not the experiment's data/femur/labels.csv."""
    from boneage.cli import RUN_ENV, main

    root = tmp_path_factory.mktemp("bapgan_runs")
    mine = FemurDataModule.phantom_args(root / "mine", n=40, seed=3)["csv_path"]
    os.environ.pop(RUN_ENV, None)
    main(["fit", "--config", str(ROOT / "experiments" / "bapgan_femur.yaml"),
          "--config", str(ROOT / "tests" / "configs" / "bapgan_femur.yaml"),
          "--data.init_args.csv_path", mine, "--data.init_args.num_workers", "0", "--trainer.max_steps", "3",
          "--runs_dir", str(root / "runs"), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
    os.environ.pop(RUN_ENV, None)
    return root / "runs"


def _fit_run(runs: Path, exp: str = "bapgan_femur") -> Path:
    (run,) = [p.parent for p in (runs / exp).glob("*/run.json")]
    return run


def test_fid_evaluates_the_run_on_its_own_override_data(runs: Path, capsys) -> None:
    run = _fit_run(runs)
    assert bapgan_eval.main(["fid", "--runs-dir", str(runs), "--experiment", "bapgan_femur", "--ckpt", "last"]) == 0
    assert f"using run bapgan_femur/{run.name} (the newest fit run)" in capsys.readouterr().out
    result = json.loads((run / "bapgan_eval" / "fid.json").read_text())
    # all 40 images of the override CSV (the experiment's own CSV does not even exist here)
    assert result["n_images"] == 40 and result["run"] == run.name
    assert result["checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert result["metric"] == "fid_randconv" and result["value"] > 0


def test_missing_run_or_checkpoint_is_one_clear_line(runs: Path, tmp_path: Path, capsys) -> None:
    def fails(module, *argv: str) -> str:
        assert module.main(list(argv)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        return err

    empty = str(tmp_path / "no_runs")
    err = fails(bapgan_eval, "fid", "--runs-dir", empty, "--experiment", "bapgan_femur")
    assert "no fit run of 'bapgan_femur'" in err and "train it first" in err
    err = fails(bapgan_eval, "vtt", "--runs-dir", str(runs), "--experiment", "bapgan_femur", "--run", "nope")
    assert "no fit run 'nope'" in err and _fit_run(runs).name in err        # lists the runs there are
    err = fails(bapgan_eval, "figures", "--runs-dir", str(runs), "--experiment", "bapgan_femur")  # --ckpt best
    assert "no best checkpoint yet" in err
    err = fails(bapgan_eval, "tsne", "--runs-dir", str(runs), "--dataset", "femur")
    assert "no fit run of 'bapgan_caae_femur'" in err
    err = fails(bapgan_vtt, "score", "--runs-dir", str(runs), "--experiment", "bapgan_femur", "--reader", "A=x")
    assert "has no visual Turing test" in err and "bapgan_eval vtt" in err


def test_tsne_takes_its_three_runs_and_refuses_runs_on_other_data(runs: Path, tmp_path: Path, capsys) -> None:
    runs = shutil.copytree(runs, tmp_path / "runs")
    bapgan = _fit_run(runs)
    caae = runs / "bapgan_caae_femur" / "20000101-000000-caae"   # stands in for a CAAE run on the same data
    shutil.copytree(bapgan, caae)
    info = json.loads((caae / "run.json").read_text())
    (caae / "run.json").write_text(json.dumps({**info, "id": caae.name, "experiment": "bapgan_caae_femur"}))
    out = tmp_path / "tsne.png"
    assert bapgan_eval.main(["tsne", "--runs-dir", str(runs), "--dataset", "femur", "--ckpt", "last",
                             "--caae", f"bapgan_caae_femur/{caae.name}", "--per_group", "3",
                             "--out", str(out)]) == 0
    used = json.loads(out.with_suffix(".json").read_text())
    assert used["CAAE"] == f"bapgan_caae_femur/{caae.name}"
    assert used["BAPGAN"] == used["real"] == f"bapgan_femur/{bapgan.name}"
    assert out.is_file()
    capsys.readouterr()

    config = yaml.safe_load((caae / "config.yaml").read_text())
    config["data"]["init_args"]["image_size"] = [64, 64]
    (caae / "config.yaml").write_text(yaml.safe_dump(config))
    assert bapgan_eval.main(["tsne", "--runs-dir", str(runs), "--ckpt", "last", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"bapgan_caae_femur/{caae.name} (CAAE) was trained on other data" in err
