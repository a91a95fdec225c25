"""W&B is one switch on any experiment (experiments/presets/wandb.yaml), offline without an API
key: metrics, the resolved config, figures and sample images reach the run, CSV stays; and the
sweeps' parameters, formatted as the W&B agent formats them, reach the model through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from scale_helpers import ROOT, phantom_data_args

SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))


def test_wandb_preset_logs_metrics_config_figures_and_samples_offline(run_cli, rsna_phantom, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["--config", "experiments/regressor_rsna.yaml", "--config", "tests/configs/scale/regressor_tiny.yaml",
            "--config", "experiments/presets/wandb.yaml", *phantom_data_args(rsna_phantom),
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_test_batches", "2"]
    try:
        runs = run_cli("fit", *args)
        run_cli("test", *args, "--ckpt_path", "last")
        run = wandb.run  # the run is still open: read what it received
        assert run is not None and run.settings._offline  # no network needed
        assert run.config["cli"]["model"]["init_args"]["network"]["init_args"]["backbone"] == "test_efficientnet"
        assert {"val/mae", "test/mae"} <= set(run.summary.keys())
    finally:
        wandb.finish()
    exp_dir = runs / "regressor_rsna"
    assert (exp_dir / "version_0" / "metrics.csv").is_file()  # CSV stays
    (run_dir,) = (exp_dir / "wandb").glob("offline-run-*")
    images = {p.name.rsplit("_", 2)[0] for p in (run_dir / "files" / "media" / "images" / "figures").glob("*.png")}
    assert {"training_samples", "predicted_vs_true", "error_by_group"} <= images, images  # samples and figures


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
    from boneage.cli import BoneAgeCLI

    sweep = yaml.safe_load(path.read_text())
    exp = path.stem
    if not (ROOT / "experiments" / f"{exp}.yaml").is_file():
        pytest.skip(f"experiment {exp} is not in this checkout")
    command = agent_args(sweep)
    assert command[:4] == ["boneage", "fit", "--config", f"experiments/{exp}.yaml"]  # the config before ${args}
    monkeypatch.chdir(ROOT)
    cli = BoneAgeCLI(args=[*command[2:], "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                           "--wandb", "false", "--runs_dir", str(tmp_path)], run=False)
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
    assert os.environ.get("WANDB_MODE") in (None, "offline", "disabled", "online")


def _attr_or_module_value(network, name: str):
    """A network's constructor value: attribute, or a Dropout layer's p for ``dropout``."""
    import torch

    if hasattr(network, name) and not callable(getattr(network, name)):
        return getattr(network, name)
    if name == "dropout":
        ps = {m.p for m in network.modules() if isinstance(m, torch.nn.Dropout)}
        assert len(ps) == 1, ps
        return ps.pop()
    raise AssertionError(f"{type(network).__name__} has no {name}")


def test_offline_without_a_key(monkeypatch, tmp_path):
    from boneage.cli import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    assert Path(ROOT / "experiments" / "presets" / "wandb.yaml").is_file()
