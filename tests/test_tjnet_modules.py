"""TJ-Net layers and network: CBAM against timm and hand values, blocks, flags, freezing."""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers.cbam import CbamModule

from boneage.models.tjnet import TJNet, tjnet_tiny
from boneage.nn.cbam import CBAM
from boneage.nn.inception import Inception1, Inception2, IncRes1, IncRes2


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_cbam_matches_timm_cbam():
    torch.manual_seed(0)
    ours, ref = CBAM(32, rd_channels=2), CbamModule(32, rd_channels=2)
    state = {k.replace("spatial.conv.conv.", "spatial.conv.").replace("spatial.conv.bn.", "spatial.bn."): v
             for k, v in ref.state_dict().items()}
    ours.load_state_dict(state)
    x = torch.randn(3, 32, 9, 11)
    for mode in (True, False):  # batch statistics and running statistics
        ours.train(mode)
        ref.train(mode)
        torch.testing.assert_close(ours(x), ref(x))


def test_cbam_hand_computed():
    """2 channels on a 1x2 image; every weight set by hand, BN in eval mode (identity up to eps)."""
    cbam = CBAM(2, rd_channels=1).eval()
    with torch.no_grad():
        cbam.channel.fc1.weight.copy_(torch.tensor([[1.0, -1.0]]).view(1, 2, 1, 1))
        cbam.channel.fc2.weight.copy_(torch.tensor([[1.0], [2.0]]).view(2, 1, 1, 1))
        cbam.spatial.conv.weight.zero_()
        cbam.spatial.conv.weight[0, 0, 3, 3] = 0.5  # weight on the channel mean
        cbam.spatial.conv.weight[0, 1, 3, 3] = -1.0  # weight on the channel max
    x = torch.tensor([[[[1.0, 3.0]], [[2.0, 0.0]]]])  # ch0 = [1, 3], ch1 = [2, 0]
    # channel gate: avg = (2, 1), max = (3, 2); fc1 -> (1) and (1); relu; fc2 -> (1, 2) each;
    # summed (2, 4); scale = sigmoid(2), sigmoid(4)
    c0, c1 = _sig(2.0), _sig(4.0)
    ref = []
    for a, b in [(1.0, 2.0), (3.0, 0.0)]:
        a, b = a * c0, b * c1
        z = (0.5 * (a + b) / 2 - 1.0 * max(a, b)) / math.sqrt(1.0 + 1e-5)
        ref.append((a * _sig(z), b * _sig(z)))
    expected = torch.tensor([[[[ref[0][0], ref[1][0]]], [[ref[0][1], ref[1][1]]]]])
    torch.testing.assert_close(cbam(x), expected)


@pytest.mark.parametrize(("block", "out_ch", "stride"), [
    (IncRes1(16), 16, 1), (IncRes2(16), 16, 1), (IncRes1(16, shortcut=False), 16, 1),
    (Inception1(16, 24, stride=2), 24, 2), (Inception2(16, 24, stride=2), 24, 2),
    (Inception1(16, 24), 24, 1), (Inception2(16, 24), 24, 1)])
def test_inception_blocks_shapes_and_grads(block, out_ch, stride):
    x = torch.randn(2, 16, 15, 14)
    y = block(x)
    assert y.shape == (2, out_ch, math.ceil(15 / stride), math.ceil(14 / stride))
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_incres_shortcut_flag_changes_function():
    torch.manual_seed(0)
    a, b = IncRes1(8).eval(), IncRes1(8, shortcut=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 8, 6, 6)
    # with the shortcut the output is ReLU(x + branch): x itself shows through
    torch.testing.assert_close(a(x), torch.relu(x + a.proj(a.mix(x))))
    torch.testing.assert_close(b(x), torch.relu(b.proj(b.mix(x))))


def test_tjnet_paper_size_shapes():
    net = TJNet().eval()
    with torch.no_grad():
        feats = net.forward_features(torch.zeros(1, 1, 500, 500))
        age, sex = net(torch.zeros(1, 1, 500, 500), torch.ones(1))
    assert [f.shape[1:] for f in feats] == [(64, 125, 125), (128, 63, 63), (256, 32, 32), (512, 16, 16)]
    assert age.shape == (1, 77) and sex.shape == (1, 2)
    assert len(net.cbam_modules()) == 3


def test_tjnet_tiny_every_parameter_gets_gradient():
    torch.manual_seed(0)
    net = tjnet_tiny(num_classes=23)
    age, sex = net(torch.randn(4, 1, 64, 64), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert age.shape == (4, 23) and sex.shape == (4, 2)
    (age.logsumexp(1).mean() + sex.logsumexp(1).mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_tjnet_sex_input_changes_age_output():
    torch.manual_seed(0)
    net = tjnet_tiny().eval()
    x = torch.randn(1, 1, 64, 64)
    assert not torch.allclose(net.predict(x, torch.zeros(1)), net.predict(x, torch.ones(1)))


def test_tjnet_ablation_flags():
    no_joint = tjnet_tiny(joint_learning=False)
    out = no_joint(torch.randn(2, 1, 48, 48), torch.ones(2))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 77)
    assert no_joint.block5 is None
    with pytest.raises(RuntimeError, match="joint_learning=False"):
        no_joint.sex_logits(no_joint.forward_features(torch.randn(1, 1, 48, 48)))
    assert tjnet_tiny(use_cbam=False).cbam_modules() == []
    flat = tjnet_tiny(incres_shortcut=False)
    assert all(not m.shortcut for m in flat.modules() if isinstance(m, IncRes1 | IncRes2))
    # the age head's predictions do not depend on block 5
    torch.manual_seed(0)
    joint = tjnet_tiny().eval()
    x, s = torch.randn(2, 1, 48, 48), torch.ones(2)
    torch.testing.assert_close(joint(x, s)[0], joint.predict(x, s))


def test_freeze_blocks_really_freezes():
    torch.manual_seed(0)
    net = tjnet_tiny()
    net.freeze_blocks(3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    net.train()
    for _ in range(2):
        age, sex = net(torch.randn(4, 1, 48, 48), torch.tensor([0.0, 1.0, 0.0, 1.0]))
        opt.zero_grad()
        (age.logsumexp(1).mean() + sex.logsumexp(1).mean()).backward()
        opt.step()
    after = net.state_dict()
    for name, value in before.items():
        block = int(name.split(".")[1]) if name.startswith("blocks.") else None
        changed = not torch.equal(value, after[name])
        if block is not None and block < 3:
            assert not changed, f"{name} changed although blocks 1-3 are frozen (params and BN stats)"
        elif name.startswith("blocks.3.") and name.endswith("weight") and value.dtype.is_floating_point:
            assert changed, f"{name} did not train"
    assert all(not b.training for b in net.blocks[:3]) and net.blocks[3].training
    with pytest.raises(ValueError, match="0..4"):
        net.freeze_blocks(5)
