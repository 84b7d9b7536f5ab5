"""fastgan.models: DCGAN shapes for every size, fused == torch.nn from one state_dict, MLPs."""
import pytest
import torch
from torch import nn

from conftest import DEVICES
from fastgan import models


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_dcgan_shapes_and_logits(size):
    g = models.DCGANGenerator(z_dim=10, channels=3, image_size=size, width=4)
    d = models.DCGANDiscriminator(channels=3, image_size=size, width=4)
    x = g(torch.randn(2, 10))
    assert x.shape == (2, 3, size, size)
    assert x.abs().max() <= 1  # tanh output
    y = d(x)
    assert y.shape == (2,)
    assert not isinstance(list(d.modules())[-1], nn.Sigmoid)
    # discriminator returns unbounded logits: push inputs far to see values outside (0, 1)
    with torch.no_grad():
        d.out.weight.mul_(100)
    assert (d(x).abs() > 1).any()


def _pair(fused_kind, size, **kw):
    torch.manual_seed(0)
    a = fused_kind(**kw, fused=True)
    b = fused_kind(**kw, fused=False)
    assert list(a.state_dict()) == list(b.state_dict())
    # randomise everything, BN running stats included, so the comparison is not of defaults
    sd = {k: (torch.randn_like(v) * 0.5 + (1 if "var" in k else 0)).abs() if v.is_floating_point() and "var" in k
          else (torch.randn_like(v) * 0.2 if v.is_floating_point() else v) for k, v in a.state_dict().items()}
    a.load_state_dict(sd)
    b.load_state_dict(sd)
    return a, b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [16, 32, 64])
def test_fused_and_torch_nn_dcgan_agree(size, device):
    g, gu = _pair(models.DCGANGenerator, size, z_dim=8, channels=3, image_size=size, width=8)
    d, du = _pair(models.DCGANDiscriminator, size, channels=3, image_size=size, width=8)
    for m in (g, gu, d, du):
        m.to(device).double()
    z = torch.randn(5, 8, device=device, dtype=torch.float64)
    x = torch.randn(5, 3, size, size, device=device, dtype=torch.float64)
    for train in (True, False):
        for m in (g, gu, d, du):
            m.train(train)
        torch.testing.assert_close(g(z), gu(z), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(d(x), du(x), rtol=1e-10, atol=1e-10)
    # the same gradients too
    for m in (g, gu):
        m.zero_grad()
        m.train()
        m(z).square().sum().backward()
    for (n, p), (_, q) in zip(g.named_parameters(), gu.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=n)
    # and the same running statistics after a training forward
    torch.testing.assert_close(g.state_dict(), gu.state_dict(), rtol=1e-12, atol=1e-12)


def test_dcgan_architecture():
    g = models.DCGANGenerator(z_dim=100, channels=3, image_size=64, width=64, fused=False)
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    assert isinstance(list(g.modules())[-1], nn.Tanh)
    d = models.DCGANDiscriminator(channels=3, image_size=64, width=64, fused=False)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert [c.bias is not None for c in convs] == [True, False, False, False, False]
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 3  # no BN in the first block
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))
    # the fused networks use fastgan's modules
    from fastgan import nn as fnn
    gf = models.DCGANGenerator(image_size=32, width=8)
    assert any(isinstance(m, fnn.FusedConvTranspose2d) for m in gf.modules())
    assert any(isinstance(m, fnn.FusedBatchNormAct2d) for m in gf.modules())
    df = models.DCGANDiscriminator(image_size=32, width=8)
    assert any(isinstance(m, fnn.FusedLeakyReLU) for m in df.modules())


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        models.DCGANGenerator(image_size=48)
    with pytest.raises(ValueError, match="width"):
        models.DCGANDiscriminator(width=0)
    with pytest.raises(ValueError, match="'z'"):
        models.DCGANGenerator(z_dim=10, image_size=16, width=4)(torch.randn(2, 11))
    with pytest.raises(ValueError, match="'x'"):
        models.DCGANDiscriminator(channels=1, image_size=16, width=4)(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown model kind"):
        models.build("nope", {}, {})


def test_mlp_and_build():
    g, d = models.build("mlp", {"z_dim": 3, "out_dim": 2, "width": 16, "depth": 2}, {"in_dim": 2, "width": 16, "depth": 2})
    y = g(torch.randn(7, 3))
    assert y.shape == (7, 2) and d(y).shape == (7,)
    y.sum().backward()
    assert all(p.grad is not None for p in g.parameters())
    assert models.kind_of(g) == "mlp" and models.kind_of(nn.Linear(1, 1)) is None
