"""`make phantoms EXP=<exp>` and the hint of a missing data set: from a fresh clone to training.

Every test works in a copy of experiments/ (and the Makefile) under tmp_path, so the data paths the
YAMLs name (data/rsna, ...) are written there, never into the checkout.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from boneage.phantoms import experiment as phx
from boneage.phantoms.cli import main as phantom_cli
from boneage.runs import instantiate
from data_modules.base import DataError

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
# each family's phantom and its label file, by the DataModule an experiment names
FAMILY = {
    "data_modules.rsna.RSNADataModule": ("rsna", "boneage-training-dataset.csv"),
    "data_modules.tongji.TongjiDataModule": ("tongji", "labels.csv"),
    "data_modules.bones.FemurDataModule": ("bones", "labels.csv"),
    "data_modules.bones.PhalangeDataModule": ("bones", "labels.csv"),
    "data_modules.scintigraphy.ScintigraphyDataModule": ("scintigraphy", "labels.csv"),
    "data_modules.wholebody.WholeBodyCTDataModule": ("wholebody_ct", "labels.csv"),
}
TINY = {"rsna": ["--n", "24", "--size", "64"], "tongji": ["--n", "12", "--size", "64"],
        "bones": ["--n", "12", "--size", "32"], "scintigraphy": ["--n", "8", "--width", "48", "--height", "160"],
        "wholebody_ct": ["--n", "8", "--height", "64", "--width", "32"]}


@pytest.fixture
def clone(tmp_path, monkeypatch) -> Path:
    """A working directory with the checkout's experiments/ and Makefile and no data."""
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(phx.RUN_ENV, raising=False)
    return tmp_path


def data_spec(exp: str) -> dict:
    spec = yaml.safe_load((ROOT / "experiments" / f"{exp}.yaml").read_text())["data"]
    spec["init_args"]["num_workers"] = 0
    return spec


def test_every_experiment_dispatches_to_its_familys_phantom_where_its_yaml_reads(clone):
    for exp in EXPERIMENTS:
        spec = data_spec(exp)
        generator, label = FAMILY[spec["class_path"]]
        args = spec["init_args"]
        p = phx.plan(exp)
        assert p.argv[0] == generator, exp
        assert p.argv[p.argv.index("--out") + 1] == str(p.out)
        if p.source:  # stage 2 of the ROI pipeline reads a run's export: the phantom is stage 1's
            assert args["csv_path"].startswith(f"lightning_logs/{p.source}/") and p.path == args["csv_path"]
            assert p.out == Path(data_spec(p.source)["init_args"]["csv_path"]).parent
        elif "data_dir" in args:
            assert p.out == Path(args["data_dir"]) and p.label_file == p.out / label
        else:
            assert p.label_file == Path(args["csv_path"])
        if "Femur" in spec["class_path"] or "Phalange" in spec["class_path"]:
            assert p.argv[p.argv.index("--bone") + 1] == spec["class_path"].rsplit(".")[-1][:-len("DataModule")].lower()


def test_each_data_set_is_rendered_once_and_every_experiment_loads_it(clone, capsys):
    plans, skipped = phx.plans()
    assert not skipped and len(plans) == len(EXPERIMENTS)
    # the dry run names each data set once
    assert phx.run([], dry_run=True) == 0
    would = [line for line in capsys.readouterr().out.splitlines() if line.startswith("would run: ")]
    assert len(would) == len({p.out for p in plans}) == 6
    # render each at a tiny size with the planned command, then every experiment's DataModule reads it
    for line in would:
        argv = shlex.split(line.removeprefix("would run: boneage-phantom "))
        assert phantom_cli([*argv, *TINY[argv[0]]]) == 0
    for exp in EXPERIMENTS:
        p = phx.plan(exp)
        spec = data_spec(exp)
        if p.source:
            spec["init_args"]["csv_path"] = str(p.label_file)  # what the export would be made from
        table = instantiate(spec)._checked_table()
        assert len(table) >= 8, exp
    # a second run keeps what is there
    assert phx.run(["tjnet_rsna", "bapgan_phalange"]) == 0
    out = capsys.readouterr().out
    assert out.count("already there") == 2 and "would run" not in out and "boneage-phantom rsna" not in out


def test_make_train_without_data_ends_with_one_line_whose_command_makes_the_data(clone, capsys):
    from boneage.cli import main as boneage

    tiny = str(ROOT / "tests" / "configs" / "tjnet_rsna.yaml")
    with pytest.raises(SystemExit) as exit_:
        boneage(["fit", "--config", "experiments/tjnet_rsna.yaml", "--config", tiny,
                 "--runs_dir", str(clone / "runs"), "--trainer.accelerator", "cpu"])
    assert exit_.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("boneage: RSNA data folder data/rsna does not exist")
    command = re.search(r"`(make phantoms EXP=\S+)`", last).group(1)
    assert command == "make phantoms EXP=tjnet_rsna"  # the experiment being run, of the five reading data/rsna

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    done = subprocess.run([*shlex.split(command), f"VENV={Path(sys.executable).parents[1]}", "PHANTOM_DEPS=",
                           "PHANTOM_ARGS=--n 24 --size 64"], cwd=clone, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "boneage-phantom rsna --out data/rsna --n 24 --size 64" in done.stdout
    dm = instantiate(data_spec("tjnet_rsna"))
    dm.setup("fit")
    assert sum(len(dm.table(s)) for s in ("train", "val", "test")) == 24

    csv = clone / "data" / "rsna" / "boneage-training-dataset.csv"
    before = csv.read_bytes()
    again = subprocess.run([*shlex.split(command), f"VENV={Path(sys.executable).parents[1]}", "PHANTOM_DEPS="],
                           cwd=clone, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already there" in again.stdout and csv.read_bytes() == before


def test_hint_for_a_label_csv_names_the_experiment_or_the_generator_command(clone):
    from data_modules.tongji import TongjiDataModule

    with pytest.raises(DataError) as err:
        TongjiDataModule(csv_path="data/tongji/labels.csv").setup("fit")
    assert "label CSV data/tongji/labels.csv does not exist" in str(err.value)
    assert "`make phantoms EXP=tjnet_tongji`" in str(err.value) and "\n" not in str(err.value)

    # a path no experiment names: the generator's own command, which makes loadable data there
    mine = clone / "elsewhere" / "labels.csv"
    with pytest.raises(DataError) as err:
        TongjiDataModule(csv_path=str(mine)).setup("fit")
    command = shlex.split(re.search(r"`(boneage-phantom [^`]+)`", str(err.value)).group(1))
    assert phantom_cli([*command[1:], *TINY["tongji"]]) == 0
    assert len(pd.read_csv(mine)) == 12
    dm = TongjiDataModule(csv_path=str(mine), image_size=(32, 32))
    dm.setup("fit")
    assert len(dm.table("train")) > 0


def test_stage_two_of_the_roi_pipeline_points_at_the_run_and_stage_one_phantom(clone):
    from data_modules.scintigraphy import ScintigraphyDataModule

    path = data_spec("roi_regressor_scinti")["init_args"]["csv_path"]
    with pytest.raises(DataError) as err:
        ScintigraphyDataModule(csv_path=path).setup("fit")
    message = str(err.value)
    assert "a roi_localizer_scinti run writes it" in message and "make roi-export" in message
    assert "`make phantoms EXP=roi_localizer_scinti`" in message


def test_a_folder_with_other_files_is_not_written_into(clone, capsys):
    (clone / "data" / "tongji").mkdir(parents=True)
    (clone / "data" / "tongji" / "notes.txt").write_text("real data, another layout")
    assert phx.run(["tjnet_tongji"]) == 2
    assert "not writing a phantom into it" in capsys.readouterr().err
    assert sorted(p.name for p in (clone / "data" / "tongji").iterdir()) == ["notes.txt"]
    with pytest.raises(DataError) as err:  # and the training hint does not send the user there either
        instantiate(data_spec("tjnet_tongji")).setup("fit")
    assert "make phantoms" not in str(err.value)


def test_unknown_experiment_and_misplaced_generator_flags_are_one_clear_line(clone, capsys):
    assert phantom_cli(["experiment", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        phantom_cli(["rsna", "--out", str(clone / "x"), "--", "--n", "3"])
    assert "for 'experiment' only" in capsys.readouterr().err
