"""Every experiments/*.yaml runs through the real CLI (fit and test, fast_dev_run) on tiny
phantom data made by its DataModule. Optional tiny-scale overrides: tests/configs/<exp>.yaml."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


def data_class(config: dict):
    path = config["data"]["class_path"]
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.fixture(scope="session")
def phantom_roots(tmp_path_factory):
    cache: dict[str, dict] = {}

    def get(cls) -> dict:
        if cls.__name__ not in cache:
            cache[cls.__name__] = cls.phantom_args(tmp_path_factory.mktemp(cls.__name__), n=48, seed=0)
        return cache[cls.__name__]

    return get


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_runs(path, phantom_roots, run_cli):
    config = yaml.safe_load(path.read_text())
    data_args = phantom_roots(data_class(config))
    args = ["--config", str(path)]
    tiny = ROOT / "tests" / "configs" / path.name
    if tiny.is_file():
        args += ["--config", str(tiny)]
    for key, value in data_args.items():
        args += [f"--data.init_args.{key}", str(value)]
    args += ["--data.init_args.num_workers", "0", "--trainer.fast_dev_run", "true"]
    run_cli("fit", *args)
    run_cli("test", *args)
