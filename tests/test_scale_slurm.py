"""SLURM: the sbatch template under a fake srun/scontrol and SLURM's environment. Every job has its
own run (``slurm-<job id>``); whatever ends an attempt (SIGUSR1 before the time limit, SIGTERM
pre-emption, a node failure), the requeued job continues its own run from its own last.ckpt."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scale_helpers import ROOT

FAKE_SRUN = '#!/bin/bash\nexec "$@"\n'
FAKE_SCONTROL = '#!/bin/bash\necho "$@" >> "$SCONTROL_LOG"\n'


def run_job(tmp_path: Path, data_dir: Path, restart: int, job: str = "4242", signal_name: str = "SIGUSR1",
            at_step: int = 9) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    args = ["--config", "tests/configs/scale/regressor_tiny.yaml", "--runs_dir", str(tmp_path / "runs"),
            "--trainer.accelerator", "cpu", "--trainer.strategy", "auto", "--trainer.sync_batchnorm", "false",
            "--trainer.enable_model_summary", "false", "--data.init_args.data_dir", str(data_dir),
            "--trainer.callbacks+=boneage.resume.Preempt", f"--trainer.callbacks.at_step={at_step}",
            f"--trainer.callbacks.signal_name={signal_name}"]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PY": sys.executable,
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1",
           "EXP": "regressor_rsna", "ARGS": shlex.join(args), "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
           "SLURM_JOB_ID": job, "SLURM_JOB_NAME": "boneage", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
           "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "SLURM_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_RESTART_COUNT": str(restart)}
    env.pop("BONEAGE_RUN", None)
    return subprocess.run(["bash", str(ROOT / "experiments/slurm/one_node.sbatch")], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def spaced(tmp_path: Path, rsna_phantom: Path) -> Path:
    """The phantom behind a path with a space: ARGS must reach the job with its quoting intact."""
    link = tmp_path / "my data"
    link.symlink_to(rsna_phantom)
    return link


def test_sigusr1_requeues_and_the_requeued_job_continues_its_own_run(tmp_path, rsna_phantom):
    data = spaced(tmp_path, rsna_phantom)
    run = tmp_path / "runs" / "regressor_rsna" / "slurm-4242"
    first = run_job(tmp_path, data, restart=0)
    log = first.stdout + first.stderr
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"], log[-3000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 9 and saved["epoch"] == 1, log[-3000:]  # at a batch boundary, mid-epoch
    assert not list(run.glob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue path is off

    second = run_job(tmp_path, data, restart=1)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "ExactResume: continuing epoch 1 after batch 3" in log
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 12 and final["epoch"] == 1  # two epochs of 6 batches, finished
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # no second requeue
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and [a["slurm_restart"] for a in info["attempts"]] == ["1"]
    assert str(data) in (run / "config.yaml").read_text()  # the quoted path with a space arrived whole
    assert [p.name for p in run.parent.iterdir()] == ["slurm-4242"]  # one job, one run


@pytest.mark.parametrize("signal_name,resumed_from", [
    ("SIGTERM", "continuing epoch 1 after batch 3"),  # pre-emption: saved where it stopped
    pytest.param("SIGKILL", None, marks=pytest.mark.slow(reason="a third job; same resume path")),
])
def test_preempted_or_killed_job_resumes_its_own_run_and_no_other(signal_name, resumed_from, tmp_path,
                                                                   rsna_phantom):
    runs = tmp_path / "runs" / "regressor_rsna"
    first = run_job(tmp_path, rsna_phantom, restart=0, signal_name=signal_name)
    assert first.returncode != 0
    assert not (tmp_path / "scontrol.log").exists()  # SLURM requeues a pre-empted job itself
    saved = torch.load(runs / "slurm-4242" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # SIGTERM: saved at the signal; SIGKILL (node failure): the last periodic last.ckpt, end of epoch 0
    assert saved["global_step"] == (9 if signal_name == "SIGTERM" else 6)

    other = run_job(tmp_path, rsna_phantom, restart=0, job="5151", at_step=100)  # another job: starts afresh
    assert other.returncode == 0 and "continuing run" not in other.stderr, other.stderr[-3000:]
    second = run_job(tmp_path, rsna_phantom, restart=1, at_step=100)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert f"continuing run regressor_rsna/slurm-4242 from {runs / 'slurm-4242' / 'checkpoints' / 'last.ckpt'}" in log
    if resumed_from:
        assert resumed_from in log
    for job in ("4242", "5151"):
        final = torch.load(runs / f"slurm-{job}" / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=False)
        assert final["global_step"] == 12


@pytest.mark.parametrize("nodes,template", [("1", "one_node"), ("3", "multi_node")])
def test_make_slurm_fills_the_template_and_passes_quoted_args(nodes, template, tmp_path):
    """The written job is the node count's template with exactly the node, GPU, job-name and
    interpreter lines set (GPUs and interpreter to values no template has); ARGS reach sbatch's
    environment with their quoting."""
    fake = tmp_path / "sbatch"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$ARGS" > "$(dirname "$0")/args.txt"\n')
    fake.chmod(0o755)
    out = subprocess.run(["make", "-s", "slurm", "EXP=tjnet_rsna", f"NODES={nodes}", "GPUS=8", f"SBATCH={fake}",
                          f"SLURM_DIR={tmp_path}", "VENV=/opt/env",
                          "ARGS=--data.init_args.data_dir 'my data' --x \"it's\""],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    filled = {"#SBATCH --nodes=": nodes, "#SBATCH --ntasks-per-node=": "8", "#SBATCH --gres=gpu:": "8",
              "#SBATCH --job-name=": "tjnet_rsna", 'PY="${PY:-': '/opt/env/bin/python}"'}
    expected = [next((key + value for key, value in filled.items() if line.startswith(key)), line)
                for line in (ROOT / "experiments" / "slurm" / f"{template}.sbatch").read_text().splitlines()]
    written = (tmp_path / "tjnet_rsna.sbatch").read_text().splitlines()
    assert all(any(line.startswith(key) for line in written) for key in filled)
    assert written == expected  # the template of this node count, only those lines changed
    passed = (tmp_path / "args.txt").read_text().strip()
    assert shlex.split(passed) == ["--data.init_args.data_dir", "my data", "--x", "it's"]
