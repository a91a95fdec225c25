"""Helpers shared by the tests/test_scale_*.py files (run dirs, checkpoints, metrics)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
from pytorch_lightning.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]


def phantom_data_args(rsna_phantom: Path) -> list[str]:
    return ["--data.init_args.data_dir", str(rsna_phantom), "--data.init_args.num_workers", "0"]


def fit_run(exp_dir: Path) -> Path:
    """The newest fit run directory of an experiment (lightning_logs/<exp>/<run id>)."""
    from boneage.runs import find_runs

    found = find_runs(exp_dir.parent, exp_dir.name, stage="fit")
    assert found, f"no fit run in {exp_dir}"
    return found[-1].path


def last_weights(exp_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(fit_run(exp_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {k: v for k, v in ckpt["state_dict"].items() if torch.is_tensor(v) and v.is_floating_point()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5,
                        rtol: float = 1e-6) -> None:
    """Every floating tensor of two state dicts equal within ``atol + rtol * |b|``: the weights, and the
    metric accumulators the checkpoints carry (sums over an epoch, 1e4-1e6 in size, whose last float32
    digits depend on how the steps' inputs were grouped before summing)."""
    assert a.keys() == b.keys()
    worst, key = max((((a[k] - b[k]).abs() - rtol * b[k].abs()).max().item(), k) for k in a)
    assert worst <= atol, f"{key} differs by up to {worst:.3g} beyond rtol {rtol:g}"


def epoch_metrics(exp_dir: Path) -> pd.DataFrame:
    """Epoch-level logged metrics of all versions of an experiment: one row per epoch."""
    frames = [pd.read_csv(p) for p in sorted(exp_dir.glob("*/metrics.csv"))]
    frame = pd.concat(frames, ignore_index=True)
    cols = [c for c in frame.columns if c not in ("step",) and not c.endswith("_step")]
    frame = frame[cols].groupby("epoch").agg(lambda s: s.dropna().iloc[-1] if s.notna().any() else math.nan)
    return frame.drop(columns=[c for c in frame.columns if frame[c].isna().all()])


def step_frame(exp_dir: Path) -> pd.DataFrame:
    """Step-level training logs (train/* columns logged per step) of all versions, indexed by step."""
    frames = [pd.read_csv(p) for p in sorted(exp_dir.glob("*/metrics.csv"))]
    frame = pd.concat(frames, ignore_index=True)
    cols = [c for c in frame.columns if c.startswith("train/") and not c.endswith("_epoch")]
    frame = frame.dropna(subset=cols, how="all")[["step", *cols]]
    return frame.groupby("step").last()


# --- module families: one experiment each, tiny (used by the DDP, bf16 and resume tests) -------
FAMILIES = {
    "regressor": ("regressor_rsna", "tests/configs/scale/regressor_tiny.yaml"),
    "tjnet": ("tjnet_rsna", "tests/configs/tjnet_rsna.yaml"),
    "bapgan": ("bapgan_femur", "tests/configs/bapgan_femur.yaml"),
    "pggan": ("pggan_rsna", "tests/configs/pggan_rsna.yaml"),
    "roi_localizer": ("roi_localizer_scinti", "tests/configs/roi_localizer_scinti.yaml"),
}


def present_families() -> list[str]:
    """Families whose experiment is in this checkout (the GANs arrive from their branches)."""
    return [f for f, (exp, _) in FAMILIES.items() if (ROOT / "experiments" / f"{exp}.yaml").is_file()]


def family_args(family: str, data_root: Path) -> list[str]:
    """CLI arguments running a family's experiment at tiny scale on a phantom rendered into data_root."""
    import importlib

    import yaml

    exp, tiny = FAMILIES[family]
    config = yaml.safe_load((ROOT / "experiments" / f"{exp}.yaml").read_text())
    module, name = config["data"]["class_path"].rsplit(".", 1)
    data_args = getattr(importlib.import_module(module), name).phantom_args(data_root, n=48, seed=0)
    args = ["--config", f"experiments/{exp}.yaml"]
    if (ROOT / tiny).is_file():
        args += ["--config", tiny]
    for key, value in data_args.items():
        args += [f"--data.init_args.{key}", str(value)]
    return args + ["--data.init_args.num_workers", "0", "--trainer.num_sanity_val_steps", "0"]


class RankWeights(Callback):
    """Every rank writes its final weights to ``out_dir/rank<N>.pt`` (given by class path in DDP tests)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items() if torch.is_tensor(v)}
        torch.save({"state": state, "world_size": trainer.world_size, "global_step": trainer.global_step},
                   Path(self.out_dir) / f"rank{trainer.global_rank}.pt")
