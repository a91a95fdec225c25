"""Every module family trains under DDP with 2 CPU processes (gloo), launched the way a user
launches it: `boneage fit --config <exp> --config experiments/presets/ddp_cpu.yaml`. The ranks
train on different samples of the split, yet end with the same weights (gradients and, for GANs,
every optimizer's step are synchronised); the run writes one run directory and its checkpoints,
and the logged metrics are finite."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from scale_helpers import ROOT, family_args, fit_run, present_families

SLOW_DDP = pytest.mark.slow(reason="a 2-process DDP run costs 1-2 min on 2 shared cores; "
                                   "the regressor's runs in make test")


def run_ddp(args: list[str], out_dir, runs_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1"}
    env.pop("BONEAGE_RUN", None)
    cmd = [sys.executable, "-m", "boneage.cli", "fit", *args, "--config", "experiments/presets/ddp_cpu.yaml",
           "--runs_dir", str(runs_dir), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
           "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--trainer.callbacks+=probes.RankBatches", f"--trainer.callbacks.out_dir={out_dir}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("family", [f if f == "regressor" else pytest.param(f, marks=SLOW_DDP)
                                    for f in present_families()])
def test_family_trains_under_ddp_on_two_cpu_processes(family, tmp_path):
    out = run_ddp(family_args(family, tmp_path / "data"), tmp_path, tmp_path / "runs")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks) and ranks[0]["global_step"] > 0
    # each rank its own share of the training split (DistributedSampler): equal weights below then
    # come from synchronised updates, not from two ranks computing the same thing
    seen = [json.loads((tmp_path / f"rank{r}_indices.json").read_text()) for r in (0, 1)]
    assert seen[0] and len(seen[0]) == len(seen[1]), seen
    shared = set(seen[0]) & set(seen[1])
    assert len(shared) <= 1, f"both ranks trained on samples {sorted(shared)}"  # <= 1: padding of an odd split
    a, b = ranks[0]["state"], ranks[1]["state"]
    # batch-norm statistics stay per rank on CPU (SyncBatchNorm needs GPUs): compare the rest
    params = [k for k, v in a.items() if v.is_floating_point() and "running_" not in k and v.numel() > 0]
    worst = max((a[k] - b[k]).abs().max().item() for k in params)
    assert worst < 1e-5, f"ranks drifted apart by {worst}"
    exp_dirs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(exp_dirs) == 1 and len(list(exp_dirs[0].iterdir())) == 1  # both ranks wrote one run directory
    run = fit_run(exp_dirs[0])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = pd.read_csv(run / "metrics.csv")
    epoch_values = [v for c in metrics.columns if c.startswith(("val/", "train/")) for v in metrics[c].dropna()]
    assert epoch_values and all(math.isfinite(v) for v in epoch_values)


@pytest.mark.slow(reason="three 2-process DDP runs: about 100 s on 2 cores")
@pytest.mark.parametrize("phase,step", [("train", 5), ("validation", 4)])
def test_ddp_run_stopped_by_sigterm_resumes_to_the_same_weights(phase, step, tmp_path, rsna_phantom):
    """2-process DDP: SIGTERM mid-epoch (or during validation) saves last.ckpt on every rank's
    behalf; the resumed DDP run ends with the weights of the DDP run left alone."""
    from scale_helpers import assert_same_weights, last_weights, phantom_data_args

    base = ["--config", "experiments/regressor_rsna.yaml", "--config", "tests/configs/scale/regressor_tiny.yaml",
            *phantom_data_args(rsna_phantom), "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4"]

    def fit(name: str, *extra: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
        env.pop("BONEAGE_RUN", None)
        cmd = [sys.executable, "-m", "boneage.cli", "fit", *base, "--config", "experiments/presets/ddp_cpu.yaml",
               "--runs_dir", str(tmp_path / "runs"), "--experiment", name, "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", *extra]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    straight = fit("straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = fit("stopped", "--trainer.callbacks+=boneage.resume.Preempt", f"--trainer.callbacks.at_step={step}",
                  f"--trainer.callbacks.phase={phase}")
    assert stopped.returncode != 0 and "saved" in stopped.stderr, stopped.stderr[-3000:]
    resumed = fit("stopped", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = tmp_path / "runs"
    assert len(list((runs / "stopped").iterdir())) == 1  # the resume continued the one run directory
    assert_same_weights(last_weights(runs / "straight"), last_weights(runs / "stopped"))
