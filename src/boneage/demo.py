"""``make demo``: the whole pipeline on a phantom, on a CPU, in a few minutes.

1. renders an RSNA-layout phantom (hands with a known label-noise floor) into data/rsna_demo;
2. trains the generic regressor of experiments/regressor_rsna.yaml at a small scale (a
   ResNet-10 at 128x128 instead of Inception-V3 at 500x500) with ``boneage fit``;
3. evaluates the best checkpoint on the held-out split with ``boneage test``;
4. prints test MAE, the phantom's noise floor, MAE / floor and the MAE of always predicting
   the training mean, and where the run wrote its outputs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.cli import main as cli
from boneage.phantoms.common import read_metadata
from boneage.phantoms.rsna import render
from boneage.runs import find_runs

EXPERIMENT = "demo_rsna"


def demo_overrides(data_dir: str, epochs: int) -> list[str]:
    """The small-scale settings the demo applies to regressor_rsna.yaml.

    A ResNet-10 at 128x128 instead of Inception-V3 at 500x500; AdamW with a one-cycle
    schedule (it converges in few epochs on a CPU); horizontal flips only, since the phantom
    already varies pose, scale and exposure.
    """
    return [
        "--config", "experiments/regressor_rsna.yaml",
        "--experiment", EXPERIMENT,
        "--data.init_args.data_dir", data_dir,
        "--data.init_args.image_size", "[128, 128]",
        "--data.init_args.batch_size", "32",
        "--data.init_args.num_workers", "0",
        "--data.init_args.augment", '[{"HorizontalFlip": {"p": 0.5}}]',
        "--model.init_args.network.init_args.backbone", "resnet10t",
        "--model.init_args.network.init_args.hidden", "[64]",
        "--model.init_args.network.init_args.dropout", "0.0",
        "--model.init_args.optimizer",
        '{"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.002, "weight_decay": 0.0001}}',
        "--model.init_args.scheduler",
        '{"class_path": "torch.optim.lr_scheduler.OneCycleLR", "init_args": {"max_lr": 0.002, "pct_start": 0.2}}',
        "--trainer.max_epochs", str(epochs),
        "--trainer.enable_progress_bar", "false",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data/rsna_demo")
    parser.add_argument("--n", type=int, default=1200, help="phantom images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--runs-dir", default="lightning_logs")
    args = parser.parse_args(argv)

    start = time.time()
    data = Path(args.data_dir)
    meta = read_metadata(data)
    if meta is None or meta["n"] != args.n:
        render(data, n=args.n, seed=0, size=256)
        meta = read_metadata(data)
    common = [*demo_overrides(str(data), args.epochs), "--runs_dir", args.runs_dir]
    def latest(stage: str) -> Path:
        return find_runs(args.runs_dir, EXPERIMENT, stage=stage)[-1].path

    print(f"training on {meta['n']} phantom hands (one line per epoch)", flush=True)
    cli(["fit", *common])
    fit_run = latest("fit")
    cli(["test", *common, "--ckpt_path", "best", "--run", fit_run.name])
    run = latest("test")
    pred = pd.read_csv(run / "predictions.csv")
    train = pd.read_csv(data / "boneage-training-dataset.csv")
    test_ids = set(pd.Series(pred["path"]).map(lambda p: Path(p).stem))
    train_mean = train[~train["id"].astype(str).isin(test_ids)]["boneage"].mean()
    mae = float(pred["abs_error"].mean())
    mean_mae = float(np.abs(pred["true_months"] - train_mean).mean())
    floor = float(meta["noise_floor_mae"])
    rows = [("test MAE (months)", f"{mae:.2f}"), ("phantom noise floor (months)", f"{floor:.2f}"),
            ("MAE / floor", f"{mae / floor:.2f}"), ("MAE of predicting the training mean", f"{mean_mae:.2f}"),
            ("test images", str(len(pred))), ("wall time (s)", f"{time.time() - start:.0f}")]
    width = max(len(k) for k, _ in rows)
    print("\n| " + "metric".ljust(width) + " | value |\n|" + "-" * (width + 2) + "|-------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v:>5} |")
    summary = {k: v for k, v in rows}
    (run / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\ntraining run: {fit_run} (config.yaml, metrics.csv: the learning curves)\n"
          f"test run: {run} (metrics.csv, predictions.csv, errors_by_group.csv, figures/)\n"
          f"checkpoints: {fit_run / 'checkpoints'}")


if __name__ == "__main__":
    main()
