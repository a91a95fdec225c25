"""The decoded-image cache lives in a user cache folder, not in the data folder (read-only shares)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from data_modules.rsna import RSNADataModule


def make(root: Path, **kw) -> RSNADataModule:
    kw.setdefault("image_size", (32, 32))
    kw.setdefault("batch_size", 8)
    return RSNADataModule(data_dir=str(root), **kw)


def snapshot(folder: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime)
            for p in sorted(folder.rglob("*"))}


def set_writable(folder: Path, writable: bool) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        p.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


@pytest.fixture
def phantom_copy(rsna_phantom, tmp_path):
    dst = tmp_path / "share"
    shutil.copytree(rsna_phantom, dst, ignore=shutil.ignore_patterns(".cache"))
    yield dst
    set_writable(dst, True)  # so that tmp_path can be cleaned up


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "writable"])
def test_a_data_folder_is_only_read(phantom_copy, tmp_path, monkeypatch, read_only):
    """With no cache argument a DataModule sets up and loads, and writes nothing into the data folder."""
    if read_only and os.geteuid() == 0:
        pytest.skip("running as root: chmod cannot make the folder read-only "
                    "(the 'writable' case still checks that nothing is written into it)")
    cache_root = tmp_path / "user-cache"
    monkeypatch.setenv("BONEAGE_CACHE_DIR", str(cache_root))
    if read_only:
        set_writable(phantom_copy, False)
    before = snapshot(phantom_copy)
    dm = make(phantom_copy)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 32, 32)
    dm.setup("test")
    next(iter(dm.test_dataloader()))
    assert snapshot(phantom_copy) == before
    assert list((cache_root / "images").glob("*.npy"))


def test_same_files_and_settings_share_one_cache(phantom_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("BONEAGE_CACHE_DIR", str(tmp_path / "user-cache"))
    first = make(phantom_copy, batch_size=4)
    first.setup("fit")
    files = sorted((tmp_path / "user-cache" / "images").glob("*.npy"))
    assert len(files) == 3  # train, val, test
    second = make(phantom_copy, batch_size=16)  # the loader's batch is no setting of the images
    second.setup("fit")
    assert second.dataset("train").cache.file == first.dataset("train").cache.file
    assert sorted((tmp_path / "user-cache" / "images").glob("*.npy")) == files
    other = make(phantom_copy, image_size=(24, 24))
    other.setup("fit")
    assert other.dataset("train").cache.file not in files  # other settings, another cache


def test_an_explicit_cache_dir_wins(phantom_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("BONEAGE_CACHE_DIR", str(tmp_path / "user-cache"))
    dm = make(phantom_copy, cache_dir=str(tmp_path / "mine"))
    dm.setup("fit")
    assert dm.dataset("train").cache.file.parent == tmp_path / "mine"
    assert list((tmp_path / "mine").glob("*.npy"))
    assert not (tmp_path / "user-cache").exists()


def test_without_the_variable_the_cache_goes_to_the_platform_user_cache(phantom_copy, tmp_path, monkeypatch):
    """No BONEAGE_CACHE_DIR: platformdirs' user cache folder (here pointed at tmp_path through
    XDG_CACHE_HOME, which platformdirs honours on Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("XDG_CACHE_HOME steers platformdirs on Linux only")
    monkeypatch.delenv("BONEAGE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    dm = make(phantom_copy)
    dm.setup("fit")
    assert dm.dataset("train").cache.file.parent == tmp_path / "xdg" / "boneage" / "images"
    assert dm.dataset("train").cache.file.is_file()
