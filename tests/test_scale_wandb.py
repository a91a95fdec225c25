"""W&B in the run layout: the preset logs each run (offline without credentials) into the run's own
directory; a run stopped mid-epoch and resumed continues the same W&B run; online/offline follows
wandb's credential lookup (API key, or netrc for the configured host); sweeps are created through
wandb's API, their parameters reach the model, and two trials started at once keep apart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml
from scale_helpers import ROOT, fit_run, phantom_data_args

SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))
WANDB_REGRESSOR = ["--config", "experiments/regressor_rsna.yaml", "--config", "tests/configs/scale/regressor_tiny.yaml",
                   "--config", "experiments/presets/wandb.yaml"]
API_KEY = "k" * 40


@pytest.fixture
def offline(monkeypatch):
    """No credentials, offline W&B, no sweep agent around; every W&B run is closed afterwards."""
    import wandb

    for key in ("WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_SWEEP_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield
    wandb.finish()


def run_info(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def offline_runs(run_dir: Path) -> list[Path]:
    """The run's W&B folders, oldest first (wandb names them offline-run-<time>-<W&B id>)."""
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def logged_images(wandb_dir: Path) -> set[str]:
    return {p.name.rsplit("_", 2)[0] for p in (wandb_dir / "files" / "media" / "images" / "figures").glob("*.png")}


def epoch_values(run_dir: Path, key: str) -> pd.Series:
    frame = pd.read_csv(run_dir / "metrics.csv")
    return frame.dropna(subset=[key]).groupby("epoch")[key].last()


# ------------------------------------------------------------------------------ runs
def test_wandb_preset_logs_metrics_config_figures_and_samples_offline(run_cli, rsna_phantom, offline):
    import wandb

    from boneage.runs import find_runs

    args = [*WANDB_REGRESSOR, *phantom_data_args(rsna_phantom), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.limit_test_batches", "2"]
    runs = run_cli("fit", *args)
    fit = fit_run(runs / "regressor_rsna")
    wandb_id = run_info(fit)["wandb_id"]
    run = wandb.run  # still open in this process: read what it received
    assert run.id == wandb_id and run.settings._offline  # the id run.json records; no network needed
    assert run.config["cli"]["model"]["init_args"]["network"]["init_args"]["backbone"] == "test_efficientnet"
    assert run.summary["val/mae"] == pytest.approx(epoch_values(fit, "val/mae").iloc[-1])  # and CSV stays
    wandb.finish()
    (fit_wandb,) = offline_runs(fit)  # inside the fit run's directory
    assert fit_wandb.name.endswith(f"-{wandb_id}")
    assert "training_samples" in logged_images(fit_wandb)

    run_cli("test", *args, "--ckpt_path", "last")
    (test,) = find_runs(runs, "regressor_rsna", stage="test")
    test_id = run_info(test.path)["wandb_id"]
    assert test_id != wandb_id and wandb.run.id == test_id  # the evaluation is a W&B run of its own
    test_mae = pd.read_csv(test.path / "metrics.csv")["test/mae"].dropna().iloc[-1]
    assert wandb.run.summary["test/mae"] == pytest.approx(test_mae)
    wandb.finish()
    (test_wandb,) = offline_runs(test.path)
    assert test_wandb.name.endswith(f"-{test_id}")
    assert {"predicted_vs_true", "error_by_group"} <= logged_images(test_wandb)


def test_resumed_run_continues_its_wandb_run(run_cli, rsna_phantom, offline, tmp_path):
    """SIGTERM mid-epoch 1, then --ckpt_path last: one W&B id throughout (run.json and wandb's
    folders), and the resumed epoch's metrics reach that W&B run."""
    import wandb

    args = [*WANDB_REGRESSOR, *phantom_data_args(rsna_phantom)]
    with pytest.raises(SystemExit):
        run_cli("fit", *args, "--trainer.callbacks+=boneage.resume.Preempt", "--trainer.callbacks.at_step=9")
    wandb.finish()  # where the pre-empted process would have ended
    stopped = fit_run(tmp_path / "runs" / "regressor_rsna")
    wandb_id = run_info(stopped)["wandb_id"]
    assert run_info(stopped)["status"] == "interrupted"

    run_cli("fit", *args, "--ckpt_path", "last")
    assert fit_run(tmp_path / "runs" / "regressor_rsna") == stopped  # the same run directory ...
    assert run_info(stopped)["wandb_id"] == wandb_id and run_info(stopped)["status"] == "finished"
    resumed = wandb.run
    assert resumed.id == wandb_id  # ... and the same W&B run
    assert resumed.summary["epoch"] == 1
    assert resumed.summary["val/mae"] == pytest.approx(epoch_values(stopped, "val/mae")[1])
    wandb.finish()
    folders = offline_runs(stopped)  # one folder per attempt, all of the one W&B run (wandb sync joins them)
    assert len(folders) == 2 and all(f.name.endswith(f"-{wandb_id}") for f in folders), folders
    assert b"val/mae" in (folders[-1] / f"run-{wandb_id}.wandb").read_bytes()  # the resumed epoch's history


def test_two_trials_started_at_once_keep_their_own_files(rsna_phantom, tmp_path):
    """Two agents of one sweep on one machine: each trial (its own WANDB_RUN_ID, the agent's
    WANDB_DIR) gets a run directory with its own run.json, W&B run, checkpoints and metrics."""
    from boneage.cli import RUN_ENV
    from boneage.runs import find_runs

    runs, agent_dir = tmp_path / "runs", tmp_path / "agent"
    agent_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != RUN_ENV}
    env.update(WANDB_MODE="offline", WANDB_SWEEP_ID="sw33p1d", WANDB_DIR=str(agent_dir), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    command = [sys.executable, "-m", "boneage.cli", "fit", *WANDB_REGRESSOR, *phantom_data_args(rsna_phantom),
               "--runs_dir", str(runs), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    trials = [subprocess.Popen(command, env={**env, "WANDB_RUN_ID": f"trial{i}"}, cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    for trial in trials:
        out = trial.communicate(timeout=600)[0]
        assert trial.returncode == 0, out[-4000:]

    found = find_runs(runs, "regressor_rsna")
    assert len(found) == 2
    assert sorted(run_info(r.path)["wandb_id"] for r in found) == ["trial0", "trial1"]
    for run in found:
        info = run_info(run.path)
        assert info["status"] == "finished" and info["wandb_sweep"] == "sw33p1d"
        assert [f.name.rsplit("-", 1)[1] for f in offline_runs(run.path)] == [info["wandb_id"]]
        assert torch.load(run.checkpoint("last"), map_location="cpu", weights_only=False)["global_step"] == 12
        assert run.checkpoint("best").name.startswith("best-")
        for key in ("train/loss", "val/mae"):  # every epoch of the run, once
            assert list(epoch_values(run.path, key).index) == [0, 1], key
    assert not list(agent_dir.rglob("*")), list(agent_dir.rglob("*"))  # the agent's shared WANDB_DIR: untouched


# ------------------------------------------------------------------------------ online or offline
@pytest.mark.parametrize("base_url,settings_url,netrc_host,mode", [
    ("https://wandb.example.org", None, "wandb.example.org", "online"),  # self-hosted, WANDB_BASE_URL
    (None, "https://wandb.example.org", "wandb.example.org", "online"),  # `wandb login --host` saved the host
    (None, None, "api.wandb.ai", "online"),  # `wandb login` for wandb.ai
    ("https://wandb.example.org", None, "api.wandb.ai", "offline"),  # credentials for another host
    ("https://wandb.example.org", None, None, "offline"),  # no credentials at all
], ids=["self-hosted-env", "self-hosted-settings", "wandb.ai", "other-host", "none"])
def test_online_when_wandb_finds_credentials_for_its_host(base_url, settings_url, netrc_host, mode, monkeypatch,
                                                          tmp_path):
    from boneage.cli import wandb_mode

    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))  # wandb's settings file, not the user's
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # wandb 0.31 reads NETRC (wbauth/wbnetrc.py)
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    if settings_url:
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "settings").write_text(f"[default]\nbase_url = {settings_url}\n")
    if netrc_host:
        (tmp_path / "netrc").write_text(f"machine {netrc_host}\n  login user\n  password local-{API_KEY}\n")
        (tmp_path / "netrc").chmod(0o600)
    assert wandb_mode() == mode


def test_api_key_means_online_and_wandb_mode_wins(monkeypatch, tmp_path):
    from boneage.cli import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


# ------------------------------------------------------------------------------ sweeps
@pytest.fixture
def fake_wandb_api(monkeypatch):
    """wandb.sweep and the agent launch recorded instead of reaching the network; credentials present."""
    import wandb

    from boneage import sweep

    calls: dict = {}
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)

    def fake_sweep(config, entity=None, project=None, prior_runs=None):
        calls["sweep"] = {"config": config, "entity": entity, "project": project}
        return "abc123xy"

    def fake_agent(command, env, cwd):
        calls["agent"] = {"command": command, "env": env, "cwd": Path(cwd)}
        return 0

    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    monkeypatch.setattr(wandb, "Api", lambda *a, **k: SimpleNamespace(default_entity="me"))
    monkeypatch.setattr(sweep, "run_agent", fake_agent)
    return calls


def test_sweep_id_from_the_api_reaches_the_agent(fake_wandb_api, capsys):
    from boneage.sweep import main

    assert main(["tjnet_rsna", "--count", "3", "--entity", "lab"]) == 0
    created = fake_wandb_api["sweep"]
    assert created["config"] == yaml.safe_load((ROOT / "experiments" / "sweeps" / "tjnet_rsna.yaml").read_text())
    assert (created["project"], created["entity"]) == ("boneage", "lab")
    agent = fake_wandb_api["agent"]
    assert agent["command"][-4:] == ["agent", "--count", "3", "lab/boneage/abc123xy"]
    assert "sweep lab/boneage/abc123xy" in capsys.readouterr().out
    assert agent["cwd"] == ROOT  # the sweep's command names its configs relative to the repository
    # the trials run this environment's boneage (the sweep's command is `${env} boneage fit ...`)
    assert shutil.which("boneage", path=agent["env"]["PATH"]) == str(Path(sys.executable).parent / "boneage")


def test_create_only_takes_the_default_entity_and_starts_no_agent(fake_wandb_api, capsys):
    from boneage.sweep import main

    assert main(["bapgan_femur", "--project", "mine", "--create-only"]) == 0
    assert fake_wandb_api["sweep"]["project"] == "mine" and "agent" not in fake_wandb_api
    assert "sweep me/mine/abc123xy" in capsys.readouterr().out


def test_sweep_errors_are_one_line(fake_wandb_api, monkeypatch, tmp_path, capsys):
    from boneage.sweep import main

    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert "no sweep 'nope'" in err and "tjnet_rsna" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    assert main(["tjnet_rsna"]) == 2
    err = capsys.readouterr().err
    assert "wandb login" in err and "WANDB_API_KEY" in err and len(err.strip().splitlines()) == 1
    assert "sweep" not in fake_wandb_api  # nothing was created


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_command_puts_the_sampled_args_after_the_configs(path):
    command = yaml.safe_load(path.read_text())["command"]
    configs = [command[i + 1] for i, a in enumerate(command) if a == "--config"]
    assert "experiments/presets/wandb.yaml" in configs  # the trial reports to the sweep
    assert command.index("${args}") > max(i for i, a in enumerate(command) if a == "--config") + 1  # args win


def agent_args(sweep: dict) -> list[str]:
    """The command as `wandb agent` runs it: ${args} replaced by --key=value for sampled values."""
    args = []
    for key, spec in sweep["parameters"].items():
        value = spec["values"][-1] if "values" in spec else spec.get("value", spec.get("max"))
        args.append(f"--{key}={value}")
    command = [a for a in sweep["command"] if a not in ("${env}", "${interpreter}", "${program}")]
    i = command.index("${args}")
    return command[:i] + args + command[i + 1:]


def lookup(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_parameters_reach_the_model(path, tmp_path, monkeypatch):
    from boneage.cli import RUN_ENV, BoneAgeCLI

    sweep = yaml.safe_load(path.read_text())
    exp = path.stem
    if not (ROOT / "experiments" / f"{exp}.yaml").is_file():
        pytest.skip(f"experiment {exp} is not in this checkout")
    command = agent_args(sweep)
    assert command[:4] == ["boneage", "fit", "--config", f"experiments/{exp}.yaml"]
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(RUN_ENV, raising=False)
    cli = BoneAgeCLI(args=[*command[2:], "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                           "--wandb", "false", "--runs_dir", str(tmp_path)], run=False)
    os.environ.pop(RUN_ENV, None)  # the CLI's run, not for later tests
    assert sweep["metric"]["name"] == cli.model.monitor  # the sweep optimises what the system monitors
    assert sweep["metric"]["goal"] == {"min": "minimize", "max": "maximize"}[cli.model.mode]
    for key, spec in sweep["parameters"].items():
        expected = spec["values"][-1] if "values" in spec else spec.get("value", spec.get("max"))
        assert lookup(cli.config, key) == pytest.approx(expected), key  # parsed into the config ...
        section, *rest = key.split(".")
        target = cli.model if section == "model" else cli.datamodule
        rest = [p for p in rest if p != "init_args"]
        if rest[-1] == "lr" and rest[0] == "optimizer":  # ... and into the objects built from it
            optimizer = cli.model.configure_optimizers()
            optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
        elif rest[0] == "network":
            assert _attr_or_module_value(target.network, rest[-1]) == pytest.approx(expected), key
        else:
            value = getattr(target, rest[-1], None)
            value = target.hparams[rest[-1]] if value is None and hasattr(target, "hparams") else value
            assert value == pytest.approx(expected), key


def _attr_or_module_value(network, name: str):
    """A network's constructor value: attribute, or a Dropout layer's p for ``dropout``."""
    if hasattr(network, name) and not callable(getattr(network, name)):
        return getattr(network, name)
    if name == "dropout":
        ps = {m.p for m in network.modules() if isinstance(m, torch.nn.Dropout)}
        assert len(ps) == 1, ps
        return ps.pop()
    raise AssertionError(f"{type(network).__name__} has no {name}")
