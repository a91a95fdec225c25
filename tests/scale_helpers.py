"""Helpers shared by the tests/test_scale_*.py files (run dirs, checkpoints, metrics)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]


def phantom_data_args(rsna_phantom: Path) -> list[str]:
    return ["--data.init_args.data_dir", str(rsna_phantom), "--data.init_args.num_workers", "0"]


def last_weights(exp_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(exp_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {k: v for k, v in ckpt["state_dict"].items() if torch.is_tensor(v) and v.is_floating_point()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst:.3g}"


def epoch_metrics(exp_dir: Path) -> pd.DataFrame:
    """Epoch-level logged metrics of all versions of an experiment: one row per epoch."""
    frames = [pd.read_csv(p) for p in sorted(exp_dir.glob("version_*/metrics.csv"))]
    frame = pd.concat(frames, ignore_index=True)
    cols = [c for c in frame.columns if c not in ("step",) and not c.endswith("_step")]
    frame = frame[cols].groupby("epoch").agg(lambda s: s.dropna().iloc[-1] if s.notna().any() else math.nan)
    return frame.drop(columns=[c for c in frame.columns if frame[c].isna().all()])


def step_metrics(exp_dir: Path, key: str) -> pd.Series:
    frames = [pd.read_csv(p) for p in sorted(exp_dir.glob("version_*/metrics.csv"))]
    frame = pd.concat(frames, ignore_index=True)
    return frame.dropna(subset=[key]).set_index("step")[key]
