"""The command line: typed config errors before any work, experiment listing, run layout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_config_typo_is_caught_before_any_work(run_cli, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", "--config", "experiments/regressor_rsna.yaml",
                "--model.init_args.network.init_args.backbon", "resnet18")
    err = capsys.readouterr().err
    assert "backbon" in err
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing written


def test_unknown_loss_is_rejected():
    import torch

    from boneage.systems.regression import AgeRegressor

    with pytest.raises(ValueError, match="loss must be one of"):
        AgeRegressor(torch.nn.Linear(1, 1), loss="huberish")


def test_make_with_unknown_experiment_lists_the_experiments():
    out = subprocess.run(["make", "-s", "check-exp", "EXP=nope"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert "Unknown experiment 'nope'" in out.stdout and "regressor_rsna" in out.stdout


def test_null_weights_path_on_the_command_line_means_no_weights(monkeypatch, tmp_path):
    """`--...network.init_args.pretrained_path null` trains from scratch, as `null` in YAML does
    (the nested override reaches the network as the string 'None' without the CLI's guard)."""
    import sys

    from boneage.cli import BoneAgeCLI

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    cli = BoneAgeCLI(args=["--config", "experiments/ct_vgg16.yaml", "--runs_dir", str(tmp_path),
                           "--model.init_args.network.init_args.pretrained_path", "null",
                           "--trainer.logger", "false"], run=False)
    assert cli.config.model.init_args.network.init_args.pretrained_path is None


def test_training_from_random_weights_is_said():
    """Xception (and every backbone the papers start from ImageNet) trains from scratch when no weights
    file is given: the fit says so, naming the key to set; a given file silences it."""
    import yaml
    from jsonargparse import dict_to_namespace

    from boneage.cli import random_init_notices

    model = yaml.safe_load((ROOT / "experiments" / "xception_rsna.yaml").read_text())["model"]
    (note,) = random_init_notices(dict_to_namespace(model))  # what the CLI holds
    assert random_init_notices(model) == [note]
    assert note.startswith("model.init_args.network.init_args.pretrained_path is null: legacy_xception")
    model["init_args"]["network"]["init_args"]["pretrained_path"] = "weights/xception.safetensors"
    assert random_init_notices(model) == []


def test_a_missing_weights_file_ends_with_one_line(rsna_phantom, run_cli, tmp_path, capsys):
    """jsonargparse wraps an error raised while it builds a nested network; the user sees that error."""
    with pytest.raises(SystemExit) as stop:
        run_cli("fit", "--config", "experiments/regressor_rsna.yaml", "--config", "tests/configs/regressor_rsna.yaml",
                "--data.init_args.data_dir", str(rsna_phantom),
                "--model.init_args.network.init_args.pretrained_path", str(tmp_path / "missing.pth"))
    err = capsys.readouterr().err
    assert stop.value.code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("boneage: pretrained weights for backbone") and "missing.pth" in last
    assert "Traceback" not in err and "Union subtypes" not in err


def test_a_cpu_run_does_not_ask_nvml_at_every_optimizer_step(monkeypatch, tmp_path):
    """Importing Lightning makes torch.cuda.is_available() ask NVML, uncached without a GPU, and
    torch's Adam asks at every step: on a CPU run the CLI switches that off, so an optimizer step
    does not load the NVML library again (make bench: about 0.35 ms a step on a 2-core CPU)."""
    import sys

    import torch

    from boneage.cli import BoneAgeCLI

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # as importing Lightning leaves it
    BoneAgeCLI(args=["--config", "experiments/regressor_rsna.yaml", "--config", "tests/configs/regressor_rsna.yaml",
                     "--runs_dir", str(tmp_path), "--trainer.accelerator", "cpu", "--trainer.logger", "false"],
               run=False)
    asked = []
    nvml = torch.cuda._raw_device_count_nvml
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: asked.append(1) or nvml())
    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(net.parameters())
    for _ in range(3):
        net(torch.ones(1, 1)).sum().backward()
        optimizer.step()
    assert asked == []


def test_the_cli_draws_its_progress_bar_on_a_clock_unless_the_config_names_one(monkeypatch, tmp_path):
    """A fit from the CLI redraws its bar at most every 0.5 s (tqdm's redraw at every batch cost about
    1 ms a step, make bench); a progress bar the config names is kept as it is."""
    import sys

    from pytorch_lightning.callbacks import TQDMProgressBar

    from boneage.callbacks import TimedProgressBar
    from boneage.cli import BoneAgeCLI

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    base = ["--config", "experiments/regressor_rsna.yaml", "--config", "tests/configs/regressor_rsna.yaml",
            "--runs_dir", str(tmp_path), "--trainer.accelerator", "cpu", "--trainer.logger", "false"]
    bar = BoneAgeCLI(args=base, run=False).trainer.progress_bar_callback
    assert isinstance(bar, TimedProgressBar)
    own = BoneAgeCLI(args=[*base, "--trainer.callbacks+=pytorch_lightning.callbacks.TQDMProgressBar",
                           "--trainer.callbacks.refresh_rate=10"], run=False).trainer.progress_bar_callback
    assert type(own) is TQDMProgressBar and own.refresh_rate == 10
