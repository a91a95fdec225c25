"""fp16 mixed precision for the manual-optimisation GANs, on CPU: Lightning turns ``16-mixed`` into
bf16 on a CPU, so these tests give the trainer the fp16 plugin with a CPU gradient scaler, which runs
the same scaling arithmetic a GPU run does (float16 autocast, one GradScaler, unscale per optimizer).
Also: a non-finite loss is still caught when the systems read their finiteness flag only every N steps."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from test_bapgan_system import _Poison, _system, _trainer
from torch import nn

from boneage.systems.pggan_losses import gradient_penalty


def _fp16(init_scale: float = 2.0**8) -> MixedPrecision:
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=init_scale))


def test_gradient_penalty_under_loss_scaling_equals_the_float32_one():
    """A critic whose input gradients are ~1e-6: in fp16 without scaling they lose most of their
    digits in the backward (subnormals); scaled and unscaled in float32 they match the reference."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 3, padding=1),
                        nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(8 * 16 * 16, 1))

    def critic(x):
        return net(x) * 1e-5

    real, fake, mix = torch.rand(4, 1, 16, 16) * 2 - 1, torch.rand(4, 1, 16, 16) * 2 - 1, torch.rand(4)
    x = torch.lerp(real, fake, mix.view(-1, 1, 1, 1)).requires_grad_(True)
    target = float(torch.autograd.grad(critic(x).sum(), x)[0].flatten(1).norm(dim=1).mean()) / 3
    reference = gradient_penalty(critic, real, fake, 1.0, target, mix=mix)  # float32: about 4
    scale = torch.amp.GradScaler("cpu", init_scale=2.0**12).scale(torch.ones(()))
    with torch.autocast("cpu", dtype=torch.float16):
        scaled = gradient_penalty(critic, real, fake, 1.0, target, mix=mix, grad_scale=scale)
        unscaled = gradient_penalty(critic, real, fake, 1.0, target, mix=mix)
    scaled, unscaled, reference = (float(v.detach()) for v in (scaled, unscaled, reference))
    assert scaled == pytest.approx(reference, rel=0.01)
    assert abs(unscaled - reference) > 0.5  # what the scaling is for


def _grad_norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))


def test_fp16_bapgan_clips_unscaled_gradients_and_skips_only_the_optimizer_with_inf(loader):
    """One fp16 iteration with clipping, D_id's gradients made inf: the E/G and D_img steps are taken
    with their gradients clipped after Lightning's unscale (their norm ends at the clip value, not at
    clip / scale, as it would if the scaled gradients were clipped); D_id's step alone is skipped."""
    system = _system("bapgan", gradient_clip_val=1e-3, lambda_recon=10.0)  # true E/G norm ~1e3: no fp16 overflow
    net = system.network
    for p in net.d_id.parameters():
        p.register_hook(lambda g: torch.full_like(g, math.inf))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    plugin = _fp16(init_scale=4.0)
    trainer = _trainer(1, plugins=[plugin])
    trainer.fit(system, loader)
    assert trainer.global_step == 3
    changed = {n.split(".")[0] for n, p in net.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed == {"encoder", "generator", "d_img"}
    assert all(torch.isfinite(p).all() for p in net.parameters())
    norms = {"eg": _grad_norm([*net.encoder.parameters(), *net.generator.parameters()]),
             "d_img": _grad_norm(net.d_img.parameters())}
    assert norms == pytest.approx({"eg": 1e-3, "d_img": 1e-3}, rel=1e-3), norms
    assert plugin.scaler.get_scale() < 4.0  # the scaler saw D_id's inf and lowered the scale


def test_fp16_pggan_skips_overflowing_steps_without_calling_them_divergence(tmp_path):
    """A tiny PGGAN under fp16 with the default initial scale (2^16): the scaled gradient penalty
    overflows at first, the scaler skips those D steps and lowers the scale; the run is not stopped
    as diverged, and its weights move and stay finite."""
    from boneage.models.pggan import PGGANDiscriminator, PGGANGenerator
    from boneage.systems.pggan import PGGANSystem

    torch.manual_seed(0)
    system = PGGANSystem(PGGANGenerator(latent_dim=16, resolution=8, width=0.03125),
                         PGGANDiscriminator(resolution=8, width=0.03125), start_resolution=8, batch_sizes={4: 4},
                         total_images=24, check_finite_every_n_steps=1)
    before = [p.detach().clone() for p in system.discriminator.parameters()]
    data = torch.utils.data.DataLoader([{"image": x} for x in torch.rand(24, 1, 8, 8) * 2 - 1], batch_size=4)
    plugin = _fp16(init_scale=2.0**16)
    trainer = pl.Trainer(max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, plugins=[plugin],
                         default_root_dir=tmp_path)
    trainer.fit(system, data)
    assert system.images_shown == 24
    assert plugin.scaler.get_scale() < 2.0**16
    assert any(not torch.equal(b, p) for b, p in zip(before, system.discriminator.parameters()))
    assert all(torch.isfinite(p).all() for p in system.parameters())


@pytest.fixture(scope="module")
def loader(femur_root):
    from test_bapgan_system import _tiny_loader

    return _tiny_loader(femur_root)


@pytest.fixture(scope="module")
def femur_root(tmp_path_factory):
    from boneage.phantoms.bones import render

    root = tmp_path_factory.mktemp("femur")
    render(root, n=64, seed=0, bone="femur", size=48, progress=False)
    return root


def test_a_non_finite_loss_is_caught_within_the_check_interval(loader):
    """Losses read on the host every 2 iterations: an inf from iteration 3 on is not seen by the check
    after iteration 1 but by the one after iteration 3, and the message names iteration 3."""
    system = _system("caae", check_finite_every_n_steps=2)
    trainer = _trainer(20, callbacks=[_Poison(at=3)])
    with pytest.raises(FloatingPointError, match=r"phase 'eg' at iteration 3 \(global_step 9\).*every 2 iter"):
        trainer.fit(system, loader)
    assert trainer.global_step == 3 * 4  # iterations 0-3 ran
