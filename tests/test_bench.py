"""The benchmark (``make bench``): it runs at a tiny size and writes its tables, and its plain
arm really is the framework's training step written by hand (no timing assertions)."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from boneage import bench


class _SeedEachStep(pl.Callback):
    """Same random draws (GAN noise) in both arms: seed right before the step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        torch.manual_seed(123)


def _one_step_both_ways(system: pl.LightningModule, family: bench.Family, batch: dict[str, torch.Tensor],
                        root) -> tuple:
    """One Lightning training step and one hand-written step from the same weights."""
    if family.prepare is not None:
        family.prepare(system)
    state = family.plain_setup(system)
    params = [p for p in system.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         default_root_dir=root,  # figures of a logger-less run (PGGAN's samples) go here
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[_SeedEachStep()])
    trainer.fit(system, DataLoader(bench.Repeat([batch], 1), batch_size=None))
    torch.manual_seed(123)
    family.plain_step(state, batch, bench.PlainLoop(torch.device("cpu"), "32-true"))
    plain = [p for m in state.values() if isinstance(m, torch.nn.Module) and m is not state.get("g_ema")
             for p in m.parameters()]
    return before, params, plain


def _batch(n: int = 6, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
            "age": torch.rand(n, generator=g) * 200 + 10, "sex": (torch.rand(n, generator=g) > 0.5).float(),
            "index": torch.arange(n)}


def _system(family: str) -> tuple[pl.LightningModule, int]:
    if family == "regressor":
        from boneage.models.regressor import SexAwareRegressor
        from boneage.systems.regression import AgeRegressor

        return AgeRegressor(SexAwareRegressor(backbone="resnet10t", use_sex=True, sex_units=4, hidden=[8],
                                              dropout=0.0)), 64
    if family == "tjnet":
        from boneage.models.tjnet import TJNet
        from boneage.systems.tjnet import TJNetSystem

        return TJNetSystem(TJNet(num_classes=77, width=0.125, sex_units=4, age_hidden=[8, 8], sex_hidden=8,
                                 dropout=0.0), heatmap_images=0), 64
    if family == "roi":
        from boneage.models.roi import AgeGroupClassifier
        from boneage.systems.roi import AgeGroupLocalizer

        return AgeGroupLocalizer(AgeGroupClassifier(backbone="test_resnet", num_classes=4), max_figures=0), 32
    if family == "bapgan":
        from boneage.models.bapgan import BAPGAN
        from boneage.systems.bapgan import BAPGANSystem

        return BAPGANSystem(BAPGAN(image_size=32, width=0.125), fid_feature_extractor="randconv"), 32
    from boneage.models.pggan import PGGANDiscriminator, PGGANGenerator
    from boneage.systems.pggan import PGGANSystem

    return PGGANSystem(PGGANGenerator(latent_dim=16, resolution=16, width=0.03125),
                       PGGANDiscriminator(resolution=16, width=0.03125), batch_sizes={4: 4}), 16


@pytest.mark.parametrize("family", [f for f in bench.FAMILIES if bench.FAMILIES[f].present()])
def test_plain_step_equals_the_framework_step(family, tmp_path):
    """Same weights, batch, noise and optimizers: the hand-written step lands on the framework's weights."""
    torch.manual_seed(0)
    system, size = _system(family)
    before, framework, plain = _one_step_both_ways(system, bench.FAMILIES[family], _batch(size=size), tmp_path)
    assert len(plain) == len(framework)
    moved = sum(not torch.equal(b, p) for b, p in zip(before, framework, strict=True))
    assert moved > len(before) // 2, "the framework step changed few weights: nothing to compare"
    for f, p in zip(framework, plain, strict=True):
        torch.testing.assert_close(p, f, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", [f for f in bench.FAMILIES if bench.FAMILIES[f].stand_in])
def test_stand_in_keeps_the_systems_step_and_both_arms_alike(family, tmp_path):
    """The fixed-cost runs swap in a one-layer network: the system's loss and metrics still run on
    outputs of the real network's shapes, and the hand-written arm still does the framework's step."""
    torch.manual_seed(0)
    system, size = _system(family)
    batch = _batch(size=size)
    real = system.network.eval()(batch["image"], *([batch["sex"]] if family != "roi" else []))
    bench.use_stand_in(system, batch)
    stand = system.network(batch["image"], batch["sex"])
    assert [t.shape for t in (real if isinstance(real, tuple) else (real,))] == [
        t.shape for t in (stand if isinstance(stand, tuple) else (stand,))]
    before, framework, plain = _one_step_both_ways(system, bench.FAMILIES[family], batch, tmp_path)
    assert len(framework) == len(plain) and sum(p.numel() for p in framework) < 1000
    assert all(not torch.equal(b, f) for b, f in zip(before, framework, strict=True))
    for f, p in zip(framework, plain, strict=True):
        torch.testing.assert_close(p, f, atol=1e-6, rtol=1e-5)


def test_bench_runs_tiny_and_writes_table_and_json(tmp_path):
    out = tmp_path / "bench"
    res = bench.main(["--out", str(out), "--families", "regressor,tjnet", "--image-size", "64", "--batch", "4",
                      "--warmup", "1", "--block", "2", "--blocks", "2", "--fixed-batches", "2",
                      "--n-images", "30", "--phantom-size", "96", "--workers", "0", "--data-repeats", "1",
                      "--large-phantom-size", "160", "--large-n-images", "10",
                      "--breakdown", "never", "--cost-blocks", "3", "--breakdown-block", "2"])
    saved = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    assert [f["family"] for f in saved["families"]] == ["regressor", "tjnet"]
    for fam in saved["families"]:
        fw, plain = fam["framework"], fam["plain"]
        # interleaved blocks give both arms the same number of timed steps
        assert fw["cycles"] == plain["cycles"] == 2 * 2
        assert fam["ratio_median"] == pytest.approx(fw["median_ms"] / plain["median_ms"])
        assert fam["batch"] == 4 and fam["image_size"] == [64, 64]
        # the framework arm is the CLI's: its loggers and checkpoint callback
        assert {"RunCSVLogger", "TensorBoardLogger"} <= set(fam["loggers"])
        assert "ModelCheckpoint" in fam["callbacks"]
        # the flat headline figures make gpu-check reads; syncs are counted on CUDA only
        assert (fam["framework_ms"], fam["plain_ms"], fam["ratio"]) == (
            fw["median_ms"], plain["median_ms"], fam["ratio_median"])
        assert fam["step_ms"] == fw["step_median_ms"] and fam["syncs_per_step"] is None
        assert f"| {fam['family']} | {fam['network']}" in table
    assert set(saved["options"]["arms"]) == {"default", "channels_last"}
    # the fixed cost per step, from paired blocks at a tiny step, and the ratio it implies above
    for cost, fam in zip(saved["fixed_cost"], saved["families"], strict=True):
        assert cost["family"] == fam["family"] and cost["blocks"] == 3 and cost["image_size"] == [32, 32]
        assert cost["implied_ratio"] == pytest.approx(1 + cost["cost_ms"] / fam["plain"]["median_ms"])
        assert fam["fixed_cost_ms"] == cost["cost_ms"]
        assert cost["network"] == "StandIn"  # the fixed cost's one-layer stand-in of the family's network
        assert f"| {cost['family']} | StandIn | {cost['framework_ms']:.2f} |" in table
    floor = saved["floor"]  # Lightning's own cost, the least a LightningModule can be, beside them
    assert floor["blocks"] == 3
    assert f"| Lightning's floor | Linear(1, 1), bare Trainer | {floor['framework_ms']:.2f} |" in table
    demo, large = saved["data"]["sets"]
    assert large["source_size"][0] > demo["source_size"][0] and large["images"] == 8  # 80% of 10 train
    paths = [r["path"] for r in demo["rows"]]
    assert any("cv2.imread" in p for p in paths) and any(p.startswith("warm") for p in paths)
    assert any(p.startswith("cold: use_cache=False") for p in paths)
    assert not any(r["path"].startswith("warm") for r in large["rows"])
    for row in demo["rows"] + large["rows"]:
        # each rate is compared with the decode limit at its own worker count
        limit = next(r for r in demo["rows"] if r["path"].endswith("(the limit)") and r["workers"] == row["workers"])
        if row in large["rows"]:
            limit = next(r for r in large["rows"] if r["path"].endswith("(the limit)")
                         and r["workers"] == row["workers"])
        assert row["limit_over_rate"] == pytest.approx(limit["images_per_s"] / row["images_per_s"])
        assert f"| {row['path']} | {row['workers']} |" in table
    assert res["machine"]["cpu"] in table


def test_unknown_family_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--families", "regressor,unet"])
    err = capsys.readouterr().err
    assert "unknown families ['unet']" in err and "regressor" in err
