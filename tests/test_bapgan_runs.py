"""BAPGAN evaluation commands read runs: a run trained with an override is evaluated with it,
the newest fit run is the default, and a missing run or checkpoint is one clear line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from boneage.analysis import bapgan_eval, bapgan_vtt
from data_modules.bones import FemurDataModule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny bapgan_femur fit run (1 iteration, no validation: last.ckpt only) and one tiny age
    regressor run (2 batches, one validation: a best checkpoint), both trained on a 40-image CSV
    given on the command line, not the experiments' data/femur/labels.csv."""
    from boneage.cli import RUN_ENV, main

    root = tmp_path_factory.mktemp("bapgan_runs")
    mine = FemurDataModule.phantom_args(root / "mine", n=40, seed=3)["csv_path"]
    common = ["--data.init_args.csv_path", mine, "--data.init_args.num_workers", "0",
              "--runs_dir", str(root / "runs"), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    for exp, extra in (("bapgan_femur", ["--trainer.max_steps", "3"]),
                       ("bapgan_age_regressor_femur", ["--trainer.max_epochs", "1", "--trainer.limit_train_batches",
                                                       "2", "--trainer.limit_val_batches", "1"])):
        os.environ.pop(RUN_ENV, None)
        main(["fit", "--config", str(ROOT / "experiments" / f"{exp}.yaml"),
              "--config", str(ROOT / "tests" / "configs" / f"{exp}.yaml"), *common, *extra])
    os.environ.pop(RUN_ENV, None)
    return root / "runs"


def _fit_run(runs: Path, exp: str = "bapgan_femur") -> Path:
    (run,) = [p.parent for p in (runs / exp).glob("*/run.json")]
    return run


def test_fid_evaluates_the_run_on_its_own_override_data(runs: Path, capsys) -> None:
    run = _fit_run(runs)
    assert bapgan_eval.main(["fid", "--runs-dir", str(runs), "--experiment", "bapgan_femur"]) == 0
    out = capsys.readouterr().out
    assert f"using run bapgan_femur/{run.name} (the newest fit run)" in out
    # the default checkpoint is last.ckpt, the model at the end of the run's schedule (3 steps = 1 iteration)
    assert f"checkpoint {run / 'checkpoints' / 'last.ckpt'}: iteration 1 of 1\n" in out
    result = json.loads((run / "bapgan_eval" / "fid.json").read_text())
    # all 40 images of the override CSV (the experiment's own CSV does not even exist here)
    assert result["n_images"] == 40 and result["run"] == run.name
    assert result["checkpoint"] == str(run / "checkpoints" / "last.ckpt") and result["iteration"] == 1
    assert result["metric"] == "fid_randconv" and result["value"] > 0


def test_age_accuracy_uses_the_independent_regressor_and_reaches_table1(runs: Path, tmp_path: Path, capsys) -> None:
    from boneage.analysis.bapgan_table1 import table1

    run = _fit_run(runs)
    regressor = _fit_run(runs, "bapgan_age_regressor_femur")
    assert bapgan_eval.main(["age", "--runs-dir", str(runs), "--experiment", "bapgan_femur"]) == 0
    assert f"age model bapgan_age_regressor_femur/{regressor.name}, checkpoint" in capsys.readouterr().out
    result = json.loads((run / "bapgan_eval" / "age.json").read_text())
    test_split = FemurDataModule(csv_path=str(runs.parent / "mine" / "labels.csv")).table("test")
    assert result["n_images"] == len(test_split) and len(result["per_target"]) == 5
    assert sum(map(sum, result["confusion"])) == 5 * len(test_split)     # every test image at every group
    assert result["age_model"] == f"bapgan_age_regressor_femur/{regressor.name}"
    assert "best-" in result["age_model_checkpoint"]
    row = table1(runs).set_index("experiment").loc["bapgan_femur"]
    assert row["age acc %"] == pytest.approx(100 * result["accuracy"])
    assert row[["D_age", "LS", "SA"]].tolist() == [True, True, True]     # from the run's config.yaml

    # an age model that trained on the GAN's test images (another split seed) is refused, in one line
    copied = shutil.copytree(runs, tmp_path / "runs")
    other = _fit_run(copied, "bapgan_age_regressor_femur")
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["data"]["init_args"]["seed"] = 7
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    assert bapgan_eval.main(["age", "--runs-dir", str(copied), "--experiment", "bapgan_femur"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained or validated on" in err and "test images of bapgan_femur/" in err and "\n" not in err


def test_vtt_warns_when_the_data_cannot_supply_the_papers_counts(runs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "vtt"
    assert bapgan_eval.main(["vtt", "--runs-dir", str(runs), "--experiment", "bapgan_femur", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: realism: 40 images in the pool (test 8+val 4+train 28), the paper shows 50 real + 50 " \
           "synthetic; exporting 20 + 20" in err
    study = json.loads((out / "answer_key" / "study.json").read_text())
    assert study["pool"] == ["test", "val", "train"] and study["counts"]["real"] == 20
    key = pd.read_csv(out / "answer_key" / "realism.csv")
    assert sorted(key.truth.value_counts().tolist()) == [20, 20]
    assert key.source.str.startswith(("test: ", "val: ", "train: ")).all()
    assert len(list((out / "readers" / "realism").glob("*.png"))) == 40


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
    err = fails(bapgan_eval, "figures", "--runs-dir", str(runs), "--experiment", "bapgan_femur", "--ckpt", "best")
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
