"""FID with the standard FID Inception-v3 through torch-fidelity, from a local weights file.

The weights file is made here: random weights saved as the state dict of torch-fidelity's
``FeatureExtractorInceptionV3`` (the format of ``pt_inception-2015-12-05-6726825d.pth``), so
nothing downloads; the numbers are not FIDs anyone publishes, the path is the one real files take.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_fidelity", reason="the Inception FID path needs torch-fidelity (pip install boneage[fid])")

from boneage.metrics.fid import create_fid, resolve_extractor, to_fid_input  # noqa: E402


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random He-scaled weights (features neither vanish nor explode) in torch-fidelity's format."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as mp:   # build the module without its download
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    path = tmp_path_factory.mktemp("weights") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def test_auto_takes_the_inception_file_through_torch_fidelity(inception_file: Path, monkeypatch) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from boneage.models.bapgan import create_bapgan
    from boneage.systems.bapgan import BAPGANSystem

    metric = create_fid("auto", str(inception_file))
    assert metric.name == "fid_inception"
    assert isinstance(metric.inception, FeatureExtractorInceptionV3)
    saved = torch.load(inception_file, weights_only=True)
    loaded = metric.inception.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    system = BAPGANSystem(create_bapgan("caae", image_size=32, width=0.125), fid_feature_extractor="auto",
                          inception_weights=str(inception_file))
    assert system.fid_name == "fid_inception"
    # the file without the package that runs it: an error saying what to install, not a silent fallback
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_fidelity" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"boneage\[fid\]"):
        resolve_extractor("auto", str(inception_file))


@pytest.mark.slow(reason="Inception-v3 at 299 px and a 2048 x 2048 float64 eigendecomposition on the CPU: "
                         "~2-3 min on 2 shared cores")
def test_inception_fid_of_a_shifted_set(inception_file: Path) -> None:
    torch.manual_seed(0)
    real = torch.rand(3, 1, 32, 32) * 2 - 1
    fid = create_fid("inception", str(inception_file))
    fid.update(to_fid_input(real), real=True)
    fid.update(to_fid_input(real), real=False)   # the same images give the same 2048 features
    assert torch.allclose(fid.real_features_sum, fid.fake_features_sum)
    assert fid.real_features_sum.abs().sum() > 0
    fid.reset()
    fid.update(to_fid_input(real), real=True)
    fid.update(to_fid_input((real * 0.3 + 0.6).clamp(-1, 1)), real=False)
    shifted = float(fid.compute())
    assert torch.isfinite(torch.tensor(shifted)) and shifted > 1.0
