"""Precision and devices come from YAML or the command line; bf16-mixed is applied and correct on
CPU: each module family trains a few steps in bf16-mixed and in float32 (same batches, same seed).
Inside the bf16 step the layers run under bfloat16 autocast (and in the float32 step under none),
the bf16 run's weights differ from the float32 run's, yet stay finite float32 master weights that
moved the same way, with close logged losses."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from scale_helpers import family_args, fit_run, present_families

STEPS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
         "--trainer.log_every_n_steps", "1"]


def weights(exp_dir) -> dict[str, torch.Tensor]:
    ckpt = torch.load(fit_run(exp_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {k: v for k, v in ckpt["state_dict"].items() if torch.is_tensor(v) and v.is_floating_point()
            and "running_" not in k and v.numel() > 0}


def initial_weights(run_cli_args: list[str]) -> dict[str, torch.Tensor]:
    from boneage.cli import BoneAgeCLI

    cli = BoneAgeCLI(args=[*run_cli_args, "--trainer.accelerator", "cpu", "--trainer.logger", "false"], run=False)
    return {k: v.detach().clone() for k, v in cli.model.named_parameters()}  # parameters only


def autocast_in_step(run_cli, args: list[str], name: str, precision: str, out_dir) -> set[tuple]:
    """Fit with the given precision; the (autocast on, autocast dtype, output dtype) of every layer
    call inside the training steps (tests/probes.py)."""
    out_dir.mkdir()
    run_cli("fit", *args, "--experiment", name, "--trainer.precision", precision,
            "--trainer.callbacks+=probes.AutocastProbe", f"--trainer.callbacks.out_dir={out_dir}")
    return {tuple(r) for r in json.loads((out_dir / "autocast.json").read_text())}


@pytest.mark.parametrize("family", present_families())
def test_bf16_mixed_follows_float32(family, run_cli, tmp_path):
    args = [*family_args(family, tmp_path / "data"), *STEPS]
    seen32 = autocast_in_step(run_cli, args, "fp32", "32-true", tmp_path / "probe32")
    seen16 = autocast_in_step(run_cli, args, "bf16", "bf16-mixed", tmp_path / "probe16")
    # inside the training step: bfloat16 autocast and bfloat16 layer outputs in the bf16 run only
    assert (True, "torch.bfloat16", "torch.bfloat16") in seen16, seen16
    assert seen32 and not any(on or out == "torch.bfloat16" for on, _, out in seen32), seen32
    runs = tmp_path / "runs"
    init = initial_weights(args)
    w32, w16 = weights(runs / "fp32"), weights(runs / "bf16")
    # float32 master weights, finite
    assert all(w16[k].dtype == torch.float32 and torch.isfinite(w16[k]).all() for k in init if k in w16)
    d32 = torch.cat([(w32[k] - init[k]).flatten() for k in w32 if k in init])
    d16 = torch.cat([(w16[k] - init[k]).flatten() for k in w32 if k in init])
    assert d32.abs().max() > 0  # training moved the weights
    assert (d16 - d32).abs().max() > 0, "the bf16 run trained exactly like the float32 one: bf16 was not applied"
    # Adam's first steps are close to lr * sign(grad): where a gradient is tiny, bf16 rounding flips
    # the sign, so the runs agree strongly but not perfectly (unrelated updates: cosine ~ 1/sqrt(n) ~ 0).
    cosine = torch.nn.functional.cosine_similarity(d32, d16, dim=0).item()
    assert cosine > 0.5, f"bf16 updates point elsewhere than float32 ones (cosine {cosine:.3f})"
    m32, m16 = (pd.read_csv(fit_run(runs / e) / "metrics.csv") for e in ("fp32", "bf16"))
    losses = [c for c in m32.columns if c.startswith("train/") and "loss" in c and c.endswith(("loss", "_epoch"))]
    for key in losses:
        a, b = m32[key].dropna().iloc[-1], m16[key].dropna().iloc[-1]
        assert math.isfinite(b) and b == pytest.approx(a, rel=0.1, abs=0.05), key


def test_accelerator_devices_strategy_precision_from_yaml_and_command_line(tmp_path):
    from boneage.cli import BoneAgeCLI

    base = ["--config", "experiments/regressor_rsna.yaml", "--config", "tests/configs/scale/regressor_tiny.yaml",
            "--data.init_args.data_dir", str(tmp_path), "--trainer.logger", "false"]
    cli = BoneAgeCLI(args=[*base, "--config", "experiments/presets/bf16.yaml", "--trainer.accelerator", "cpu"],
                     run=False)
    assert cli.trainer.precision == "bf16-mixed"
    cli = BoneAgeCLI(args=[*base, "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
                           "--trainer.devices", "1", "--trainer.strategy", "ddp"], run=False)
    assert cli.trainer.precision == "32-true" and type(cli.trainer.strategy).__name__ == "DDPStrategy"
    cfg = BoneAgeCLI(args=base, run=False).config["trainer"]  # the experiments' defaults: auto everywhere
    assert (cfg["accelerator"], cfg["devices"], cfg["strategy"]) == ("auto", "auto", "auto")
