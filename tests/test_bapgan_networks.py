"""BAPGAN networks: shapes at paper and tiny scale, gradients, spectral norm, attention, prior."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from boneage.models.bapgan import BAPGAN, VARIANTS, create_bapgan, sample_prior, tile_label
from boneage.nn.attention import SelfAttention2d
from boneage.systems.gan_losses import smooth_age_labels


def _labels(b: int = 2) -> torch.Tensor:
    return smooth_age_labels(torch.arange(b) % 5)


@pytest.mark.parametrize("image_size,width", [(128, 1.0), (32, 0.125)])
def test_shapes_at_paper_and_tiny_scale(image_size: int, width: float) -> None:
    torch.manual_seed(0)
    model = create_bapgan("bapgan", image_size=image_size, width=width).eval()
    x = torch.rand(2, 1, image_size, image_size) * 2 - 1
    z = model.encoder(x)
    assert z.shape == (2, 50)
    out = model.generator(z, _labels())
    assert out.shape == x.shape
    logit, age_logits = model.d_img(x, _labels())
    assert logit.shape == (2,) and age_logits.shape == (2, 5)
    assert model.d_id(z).shape == (2,)


def test_generator_uses_the_label() -> None:
    torch.manual_seed(0)
    model = create_bapgan("bapgan", image_size=32, width=0.25).eval()
    z = sample_prior(2, 50)
    young = model.generator(z, smooth_age_labels(torch.tensor([0, 0])))
    old = model.generator(z, smooth_age_labels(torch.tensor([4, 4])))
    assert (young - old).abs().max() > 1e-4


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_parameter_gets_a_gradient(variant: str) -> None:
    torch.manual_seed(0)
    model = create_bapgan(variant, image_size=32, width=0.25)
    for m in model.modules():   # gamma = 0 at init blocks the attention branch's gradient
        if isinstance(m, SelfAttention2d):
            nn.init.constant_(m.gamma, 0.5)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    labels = _labels(4)
    z = model.encoder(x)
    rec = model.generator(z, labels)
    logit, age = model.d_img(rec, labels)
    total = rec.sum() + logit.sum() + model.d_id(z).sum() + (age.sum() if age is not None else 0)
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert missing == []


def _sn_weights(module: nn.Module) -> set[str]:
    return {name for name, m in module.named_modules()
            if parametrize.is_parametrized(m, "weight")}


def test_spectral_norm_on_every_discriminator_layer_and_nowhere_else() -> None:
    model = create_bapgan("bapgan", image_size=32, width=0.25)
    for disc in (model.d_id, model.d_img):
        weighted = {n for n, m in disc.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        assert weighted and weighted == _sn_weights(disc)
    assert _sn_weights(model.encoder) == set() and _sn_weights(model.generator) == set()
    assert _sn_weights(create_bapgan("caae", image_size=32, width=0.25)) == set()


def test_spectral_norm_bounds_the_largest_singular_value() -> None:
    torch.manual_seed(0)
    model = create_bapgan("bapgan", image_size=32, width=0.25).train()
    x = torch.randn(4, 1, 32, 32)
    for _ in range(20):   # power iteration converges in training-mode forwards
        model.d_img(x, _labels(4))
    w = model.d_img.img.fc[0].weight
    assert torch.linalg.matrix_norm(w.detach(), ord=2) == pytest.approx(1.0, abs=0.05)


def test_ablation_flags_add_and_remove_modules() -> None:
    def count(model: BAPGAN) -> int:
        return sum(isinstance(m, SelfAttention2d) for m in model.modules())
    assert count(create_bapgan("bapgan", image_size=32, width=0.25)) == 3   # G, D_img, D_age
    assert count(create_bapgan("caae_sa", image_size=32, width=0.25)) == 2  # G, D_img
    assert count(create_bapgan("caae", image_size=32, width=0.25)) == 0
    assert create_bapgan("caae", image_size=32, width=0.25).d_img.age is None
    with pytest.raises(ValueError, match="unknown BAPGAN variant"):
        create_bapgan("cae")
    with pytest.raises(ValueError, match="power of two"):
        BAPGAN(image_size=100)


def test_attention_starts_as_identity_and_mixes_positions() -> None:
    torch.manual_seed(0)
    sa = SelfAttention2d(16)
    x = torch.randn(2, 16, 6, 6)
    assert torch.equal(sa(x), x)
    attn = sa.attention(x)
    assert torch.allclose(attn.sum(-1), torch.ones(2, 36), atol=1e-5)
    nn.init.constant_(sa.gamma, 1.0)
    y = sa(x)
    x2 = x.clone()
    x2[:, :, 0, 0] += 5.0   # a change at one position reaches a far one
    assert (sa(x2)[:, :, 5, 5] - y[:, :, 5, 5]).abs().max() > 1e-4


def test_prior_sampler_is_uniform_on_minus_one_one() -> None:
    g = torch.Generator().manual_seed(0)
    z = sample_prior(20000, 50, generator=g)
    assert z.shape == (20000, 50)
    assert z.mean().item() == pytest.approx(0.0, abs=0.01)
    assert z.var().item() == pytest.approx(1.0 / 3.0, abs=0.01)   # Var U(-1, 1) = 1/3
    hist = torch.histc(z, bins=10, min=-1, max=1) / z.numel()   # samples outside [-1, 1] are not counted
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.005)


def test_label_tiling_follows_caae() -> None:
    code = tile_label(torch.tensor([[0.0, 0.2, 0.6, 0.2, 0.0]]), z_dim=50)
    assert code.shape == (1, 50)
    assert torch.allclose(code[0, :10], torch.full((10,), -1.0))
    assert torch.allclose(code[0, 20:30], torch.full((10,), 0.2))
