"""BAPGAN evaluation commands end to end: tiny CLI runs, then FID, figures, VTT, t-SNE, Table 1."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow(reason="two tiny CLI trainings and four evaluation commands: ~1-2 min on 2 shared cores")
def test_evaluation_commands(tmp_path: Path, run_cli) -> None:
    from boneage.analysis import bapgan_eval, bapgan_table1, bapgan_vtt
    from data_modules.bones import FemurDataModule

    data = FemurDataModule.phantom_args(tmp_path / "femur", n=120, seed=0)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(
        "trainer: {max_steps: 6, check_val_every_n_epoch: 1, limit_val_batches: 1}\n"
        "model: {init_args: {network: {init_args: {image_size: 32, width: 0.125}},"
        " fid_feature_extractor: randconv}}\n"
        "data: {init_args: {image_size: [32, 32], batch_size: 8, num_workers: 0,"
        f" csv_path: {data['csv_path']}}}}}\n")
    runs = tmp_path / "runs"
    for exp in ("bapgan_caae_femur", "bapgan_femur"):
        run_cli("fit", "--config", str(ROOT / "experiments" / f"{exp}.yaml"), "--config", str(tiny))
    (run,) = [p.parent for p in (runs / "bapgan_femur").glob("*/run.json")]
    common = ["--runs-dir", str(runs), "--ckpt", "last"]
    one = [*common, "--experiment", "bapgan_femur"]
    assert bapgan_eval.main(["fid", *one]) == 0
    summary = json.loads((run / "bapgan_eval" / "fid.json").read_text())
    assert summary["metric"] == "fid_randconv" and summary["n_images"] == 120 and summary["value"] > 0
    assert bapgan_eval.main(["figures", *one, "--run", run.name]) == 0
    assert (run / "bapgan_eval" / "progression_grid.png").is_file()
    assert bapgan_eval.main(["vtt", *one, "--n_real", "4", "--n_synthetic", "4", "--n_pairs", "3"]) == 0
    key = pd.read_csv(run / "vtt" / "answer_key" / "realism.csv")
    assert sorted(key.truth.value_counts().tolist()) == [4, 4]
    assert len(list((run / "vtt" / "readers" / "realism").glob("*.png"))) == len(key)
    assert json.loads((run / "vtt" / "answer_key" / "study.json").read_text())["run"] == run.name
    perfect = tmp_path / "perfect"   # a reader who is always right, scored from the run's study
    perfect.mkdir()
    key.rename(columns={"truth": "answer"})[["case", "answer"]].to_csv(perfect / "realism_sheet.csv", index=False)
    for task in bapgan_vtt.TASKS:   # 120 images hold 3 pairs of each task
        pairs = pd.read_csv(run / "vtt" / "answer_key" / f"{task}.csv")
        assert len(pairs) == 3
        pairs[["pair", "answer"]].to_csv(perfect / f"{task}_sheet.csv", index=False)
    assert bapgan_vtt.main(["score", "--runs-dir", str(runs), "--experiment", "bapgan_femur",
                            "--reader", f"P={perfect}"]) == 0
    assert pd.read_csv(run / "vtt" / "scores" / "table2.csv").loc[0, "accuracy"] == 100.0
    assert bapgan_eval.main(["tsne", "--dataset", "femur", *common, "--per_group", "6"]) == 0
    assert (run / "bapgan_eval" / "tsne.png").is_file()
    table = bapgan_table1.table1(runs).set_index("experiment")
    assert table.loc["bapgan_femur", "scope"] == "all splits" and table.loc["bapgan_femur", "run"] == run.name
