"""SLURM requeue path: the sbatch template runs under a fake srun/scontrol with SLURM's
environment; SIGUSR1 mid-epoch makes Lightning's auto-requeue save hpc_ckpt and call
`scontrol requeue`, and the requeued job resumes from it and finishes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from scale_helpers import ROOT

FAKE_SRUN = '#!/bin/bash\nexec "$@"\n'
FAKE_SCONTROL = '#!/bin/bash\necho "$@" >> "$SCONTROL_LOG"\n'


def run_job(tmp_path: Path, rsna_phantom: Path, restart: int) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    args = ["--config", "tests/configs/scale/regressor_tiny.yaml", "--runs_dir", str(tmp_path / "runs"),
            "--trainer.accelerator", "cpu", "--trainer.strategy", "auto", "--trainer.sync_batchnorm", "false",
            "--trainer.enable_model_summary", "false", "--data.init_args.data_dir", str(rsna_phantom),
            "--trainer.callbacks+=boneage.resume.Preempt", "--trainer.callbacks.at_step=9",
            "--trainer.callbacks.signal_name=SIGUSR1"]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PY": sys.executable,
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1",
           "EXP": "regressor_rsna", "ARGS": " ".join(args), "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "boneage", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
           "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "SLURM_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_RESTART_COUNT": str(restart)}
    env.pop("BONEAGE_RUN_VERSION", None)
    return subprocess.run(["bash", str(ROOT / "experiments/slurm/one_node.sbatch")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_sigusr1_requeues_and_the_requeued_job_resumes(tmp_path, rsna_phantom):
    exp_dir = tmp_path / "runs" / "regressor_rsna"
    first = run_job(tmp_path, rsna_phantom, restart=0)
    log = first.stdout + first.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"], log[-3000:]
    hpc = exp_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), log[-3000:]
    saved = torch.load(hpc, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 9 and saved["epoch"] == 1  # at a batch boundary, mid-epoch
    assert not (exp_dir / "version_0" / "checkpoints").exists()

    second = run_job(tmp_path, rsna_phantom, restart=1)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert f"Restoring states from the checkpoint path at {hpc}" in log, log[-3000:]
    assert "ExactResume: continuing epoch 1 after batch 3" in log
    final = torch.load(exp_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 12 and final["epoch"] == 1  # two epochs of 6 batches, finished
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # no second requeue


def test_make_slurm_fills_the_template(tmp_path):
    out = subprocess.run(["make", "-s", "slurm", "EXP=tjnet_rsna", "NODES=2", "GPUS=8", "SBATCH=true",
                          f"SLURM_DIR={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (tmp_path / "tjnet_rsna.sbatch").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gres=gpu:8",
                 "#SBATCH --job-name=tjnet_rsna", "#SBATCH --signal=SIGUSR1@90", "#SBATCH --requeue"):
        assert line in text.splitlines(), line
    assert "srun" in text and "--config experiments/presets/cluster.yaml" in text


def test_make_train_resume_continues_from_last():
    out = subprocess.run(["make", "-n", "train", "EXP=regressor_rsna", "RESUME=1"], cwd=ROOT, capture_output=True,
                         text=True)
    assert "fit --config experiments/regressor_rsna.yaml --ckpt_path last" in out.stdout, out.stdout + out.stderr
