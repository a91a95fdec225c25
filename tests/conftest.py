"""Shared fixtures: tiny phantom data sets and a CLI runner writing into tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    """Decoded-image caches go to a session folder, never into the user's ~/.cache/boneage."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BONEAGE_CACHE_DIR", str(tmp_path_factory.mktemp("boneage-cache")))
        yield


@pytest.fixture(scope="session")
def rsna_phantom(tmp_path_factory) -> Path:
    """A small RSNA-layout phantom (160 hands at ~128 px), shared by the whole session."""
    from boneage.phantoms.rsna import render

    return render(tmp_path_factory.mktemp("rsna"), n=160, seed=1, size=128, progress_bar=False)


@pytest.fixture(scope="session")
def rsna_phantom_400(tmp_path_factory) -> Path:
    """400 hands: enough for a tiny regressor to learn in a test."""
    from boneage.phantoms.rsna import render

    return render(tmp_path_factory.mktemp("rsna400"), n=400, seed=2, size=96, progress_bar=False)


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    """Run ``boneage <subcommand> ...`` in-process on the CPU, run dirs under tmp_path."""
    from boneage.cli import RUN_ENV, main

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(RUN_ENV, raising=False)

    def run(subcommand: str, *args: str) -> Path:
        os.environ.pop(RUN_ENV, None)
        main([subcommand, *args, "--runs_dir", str(tmp_path / "runs"), "--trainer.accelerator", "cpu",
              "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
              "--trainer.enable_model_summary", "false"])
        return tmp_path / "runs"

    return run
