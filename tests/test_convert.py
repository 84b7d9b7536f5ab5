"""fastgan.nn.convert and FusedConv2d on the models users already have.

The main client is the DCGAN of the PyTorch tutorial, written out here as a user writes it from
that architecture's description (64x64 images; G: ConvTranspose2d/BatchNorm2d/ReLU then Tanh,
D: Conv2d/LeakyReLU(0.2)/BatchNorm2d then Sigmoid; BCELoss; Adam(2e-4, betas=(0.5, 0.999))),
with the widths scaled down so the tests run in seconds on a CPU.
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan.nn as fnn
from fastgan.nn import (FusedBatchNormAct2d, FusedConv2d, FusedConvTranspose2d, FusedInstanceNormAct2d, FusedLeakyReLU,
                        convert)
from conftest import DEVICES

NZ, NGF, NDF, NC = 16, 8, 8, 3


class Generator(nn.Module):
    def __init__(self, nz=NZ, ngf=NGF, nc=NC):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, input):
        return self.main(input)


class Discriminator(nn.Module):
    def __init__(self, nc=NC, ndf=NDF):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input)


def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


def tutorial_pair(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    G, D = Generator(), Discriminator()
    G.apply(weights_init)
    D.apply(weights_init)
    return G.to(dtype), D.to(dtype)  # initialised in float32, so every dtype starts from the same weights


def train(G, D, steps, dtype, seed=1, batch=4):
    """The tutorial's loop: D on real (label 1) and fake (label 0) with BCELoss, then G with label 1."""
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(D.parameters(), lr=0.0002, betas=(0.5, 0.999))
    optG = torch.optim.Adam(G.parameters(), lr=0.0002, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        # drawn in float64 and rounded, so every dtype sees the same data
        real = (torch.rand(batch, NC, 64, 64, generator=gen, dtype=torch.float64) * 2 - 1).to(dtype)
        noise = torch.randn(batch, NZ, 1, 1, generator=gen, dtype=torch.float64).to(dtype)
        D.zero_grad()
        label = torch.full((batch,), 1.0, dtype=dtype)
        errD_real = criterion(D(real).view(-1), label)
        errD_real.backward()
        fake = G(noise)
        label.fill_(0.0)
        errD_fake = criterion(D(fake.detach()).view(-1), label)
        errD_fake.backward()
        optD.step()
        G.zero_grad()
        label.fill_(1.0)
        errG = criterion(D(fake).view(-1), label)
        errG.backward()
        optG.step()
        losses.append((errD_real + errD_fake).item())
    return losses


def assert_state_close(a: nn.Module, b: nn.Module, **tol):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        torch.testing.assert_close(sa[k], sb[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


# ---- the tutorial DCGAN -----------------------------------------------------------------------
def test_tutorial_dcgan_structure_and_keys():
    G, D = tutorial_pair()
    keys_g, keys_d = list(G.state_dict()), list(D.state_dict())
    params = [id(p) for p in list(G.parameters()) + list(D.parameters())]
    assert convert(G) is G and convert(D) is D
    assert list(G.state_dict()) == keys_g and list(D.state_dict()) == keys_d
    assert [id(p) for p in list(G.parameters()) + list(D.parameters())] == params  # same objects
    g, d = G.main, D.main
    assert [type(m) for m in g] == [FusedConvTranspose2d, FusedBatchNormAct2d, nn.Identity] * 4 + \
        [FusedConvTranspose2d, nn.Identity]
    assert [m.activation for m in g[1:12:3]] == ["relu"] * 4 and g[12].activation == "tanh"
    assert all(g[i].activation is None for i in (0, 3, 6, 9))
    assert type(d[0]) is FusedConv2d and d[0].activation == "lrelu" and d[0].negative_slope == 0.2
    assert [type(m) for m in d[2:11]] == [FusedConv2d, FusedBatchNormAct2d, nn.Identity] * 3
    assert all(d[i].activation == "lrelu" and d[i].negative_slope == 0.2 for i in (3, 6, 9))
    assert type(d[11]) is FusedConv2d and d[11].activation == "sigmoid" and type(d[12]) is nn.Identity
    # isinstance still holds for the drop-ins (code that walks for nn.Conv2d keeps working)
    assert isinstance(d[0], nn.Conv2d) and isinstance(g[0], nn.ConvTranspose2d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tutorial_dcgan_outputs_and_gradients(dtype):
    G, D = tutorial_pair(dtype)
    Gc, Dc = convert(copy.deepcopy(G)), convert(copy.deepcopy(D))
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=2e-5)
    z = torch.randn(4, NZ, 1, 1, dtype=dtype)
    outs = []
    for g, d in ((G, D), (Gc, Dc)):
        zz = z.clone().requires_grad_(True)
        fake = g(zz)
        p = d(fake)
        # a nonlinear function of the outputs so no gradient is constant
        loss = F.binary_cross_entropy(p.view(-1), torch.linspace(0.1, 0.9, 4, dtype=dtype)) + fake.square().mean()
        loss.backward()
        outs.append((fake, p, zz.grad, [q.grad for q in g.parameters()], [q.grad for q in d.parameters()]))
    (f0, p0, z0, gg0, gd0), (f1, p1, z1, gg1, gd1) = outs
    torch.testing.assert_close(f1, f0, **tol)
    torch.testing.assert_close(p1, p0, **tol)
    torch.testing.assert_close(z1, z0, **tol)
    for a, b in zip(gg1 + gd1, gg0 + gd0):
        torch.testing.assert_close(a, b, **tol)
    assert_state_close(Gc, G, **tol)  # running statistics updated alike
    assert_state_close(Dc, D, **tol)


def test_tutorial_dcgan_twenty_training_steps_float64():
    G, D = tutorial_pair(torch.float64)
    Gc, Dc = convert(copy.deepcopy(G)), convert(copy.deepcopy(D))
    l0 = train(G, D, 20, torch.float64)
    l1 = train(Gc, Dc, 20, torch.float64)
    assert_state_close(Gc, G, atol=1e-9, rtol=1e-9)
    assert_state_close(Dc, D, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(torch.tensor(l1), torch.tensor(l0), atol=1e-9, rtol=1e-9)
    assert int(G.main[1].num_batches_tracked) == 20 and int(Gc.main[1].num_batches_tracked) == 20


def _flat(*models):
    return torch.cat([v.double().flatten() for m in models for v in m.state_dict().values() if v.is_floating_point()])


def test_tutorial_dcgan_training_float32():
    """float32: 5 steps equal the unconverted model's to round-off; after 20 the GAN game has amplified
    round-off (Adam divides gradients near zero by their own size: 1 vs 2 threads already moves eager
    by 0.4% of the training's movement), so both are held to the float64 trajectory instead."""
    start = _flat(*tutorial_pair(torch.float64))
    ref = tutorial_pair(torch.float64)
    train(*ref, 20, torch.float64)
    ref = _flat(*ref)
    G, D = tutorial_pair(torch.float32)
    Gc, Dc = convert(copy.deepcopy(G)), convert(copy.deepcopy(D))
    l0, l1 = train(G, D, 5, torch.float32), train(Gc, Dc, 5, torch.float32)
    assert_state_close(Gc, G, atol=1e-5, rtol=1e-4)
    assert_state_close(Dc, D, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(l1), torch.tensor(l0), atol=1e-5, rtol=1e-5)
    Gc, Dc = convert(tutorial_pair(torch.float32)[0]), convert(tutorial_pair(torch.float32)[1])
    train(Gc, Dc, 20, torch.float32)
    moved = (ref - start).norm()
    assert (_flat(Gc, Dc) - ref).norm() < 1e-2 * moved


def test_optimizer_built_before_conversion_keeps_training_the_model():
    G, D = tutorial_pair()
    Dr = copy.deepcopy(D)
    criterion = nn.BCELoss()
    opt = torch.optim.Adam(D.parameters(), lr=0.0002, betas=(0.5, 0.999))
    opt_r = torch.optim.Adam(Dr.parameters(), lr=0.0002, betas=(0.5, 0.999))
    convert(D)
    x = torch.randn(4, NC, 64, 64, dtype=torch.float64)
    for d, o in ((D, opt), (Dr, opt_r)):
        for _ in range(3):
            o.zero_grad()
            criterion(d(x).view(-1), torch.ones(4, dtype=torch.float64)).backward()
            o.step()
    assert_state_close(D, Dr, atol=1e-10, rtol=1e-10)
    assert not torch.equal(D.main[0].weight, tutorial_pair()[1].main[0].weight)  # it did train


def test_checkpoints_load_across_conversion(tmp_path):
    G, D = tutorial_pair()
    train(G, D, 2, torch.float64)  # running statistics and num_batches_tracked not at their init
    path = tmp_path / "before.pt"
    torch.save({"G": G.state_dict(), "D": D.state_dict()}, path)
    # saved before conversion -> loads after it, strictly
    G2, D2 = tutorial_pair(seed=5)
    convert(G2), convert(D2)
    ck = torch.load(path, weights_only=True)
    G2.load_state_dict(ck["G"]), D2.load_state_dict(ck["D"])
    assert_state_close(G2, G, atol=0, rtol=0)
    z = torch.randn(3, NZ, 1, 1, dtype=torch.float64)
    G.eval(), G2.eval(), D.eval(), D2.eval()
    torch.testing.assert_close(D2(G2(z)), D(G(z)), atol=1e-10, rtol=1e-10)
    # saved after conversion -> loads into the unconverted model
    train(G2.train(), D2.train(), 1, torch.float64)
    buf = io.BytesIO()
    torch.save(G2.state_dict(), buf)
    buf.seek(0)
    G3 = tutorial_pair(seed=7)[0]
    G3.load_state_dict(torch.load(buf, weights_only=True))
    assert_state_close(G3, G2, atol=0, rtol=0)


def test_verbose_table_tutorial(capsys):
    G, D = tutorial_pair()
    convert(D, verbose=True)
    out = capsys.readouterr().out
    assert "main.0 + main.1" in out and "Conv2d + LeakyReLU" in out and "FusedConv2d(activation='lrelu')" in out
    assert "main.3 + main.4" in out and "BatchNorm2d + LeakyReLU" in out
    assert "main.11 + main.12" in out and "Conv2d + Sigmoid" in out
    assert "main.2 " in out and "no activation follows (next: BatchNorm2d)" in out
    assert out.strip().splitlines()[-1] == "3 replaced, 5 fused pairs, 0 left"
    convert(G, verbose=True)
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "4 replaced, 5 fused pairs, 0 left"


def test_idempotent_and_not_inplace(capsys):
    G, D = tutorial_pair()
    Dc = convert(D, inplace=False)
    assert Dc is not D and type(D.main[0]) is nn.Conv2d  # the original is untouched
    before = [type(m) for m in Dc.modules()], copy.deepcopy(Dc.state_dict()), repr(Dc)
    assert convert(Dc, verbose=True) is Dc
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("0 replaced, 0 fused pairs")
    assert ([type(m) for m in Dc.modules()], repr(Dc)) == (before[0], before[2])
    assert_state_close(Dc, D, atol=0, rtol=0)


def test_root_module_is_returned_converted():
    c = nn.Conv2d(3, 4, 3)
    f = convert(c)
    assert type(f) is FusedConv2d and f.weight is c.weight and f.bias is c.bias
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(f(x), c(x))
    assert type(convert(nn.LeakyReLU(0.3))) is FusedLeakyReLU


# ---- other models: what is and is not converted ----------------------------------------------
class ResnetBlock(nn.Module):
    """CycleGAN's residual block: reflection padding, conv, InstanceNorm, ReLU, twice; x + block(x)."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


def test_cyclegan_resnet_block(capsys):
    m = ResnetBlock(6).double()
    ref = copy.deepcopy(m)
    convert(m, verbose=True)
    out = capsys.readouterr().out
    cb = m.conv_block
    assert type(cb[1]) is FusedConv2d and cb[1].activation is None and type(cb[5]) is FusedConv2d
    assert type(cb[2]) is FusedInstanceNormAct2d and cb[2].activation == "relu" and type(cb[3]) is nn.Identity
    assert type(cb[6]) is nn.InstanceNorm2d  # the block's last norm has no activation after it
    assert "no activation follows (next: InstanceNorm2d)" in out
    assert "conv_block.2 + conv_block.3" in out and "InstanceNorm2d + ReLU" in out
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = ref(x), m(x2)
    torch.testing.assert_close(y2, y, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(y)
    y.backward(g), y2.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-10, rtol=1e-10)
    for (n, p), p2 in zip(ref.named_parameters(), m.parameters()):
        torch.testing.assert_close(p2.grad, p.grad, atol=1e-10, rtol=1e-10, msg=n)


class ConditionalG(nn.Module):
    """A conditional generator: a label embedding multiplied into z, a Linear stem applied with a
    functional activation in forward(), then a Sequential that convert can fuse."""

    def __init__(self, classes=10, nz=12, ch=8):
        super().__init__()
        self.embed = nn.Embedding(classes, nz)
        self.fc = nn.Linear(nz, ch * 4 * 4)
        self.stem = nn.Conv2d(ch, ch, 3, padding=1)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(ch, ch, 4, 2, 1), nn.LeakyReLU(0.1),
            nn.ConvTranspose2d(ch, 3, 4, 2, 1), nn.Tanh())
        self.ch = ch

    def forward(self, z, y):
        h = self.fc(z * self.embed(y)).view(-1, self.ch, 4, 4)
        h = F.relu(self.stem(h))  # applied functionally: convert cannot see it
        return self.up(h)


def test_conditional_model_with_embedding(capsys):
    m = ConditionalG().double()
    ref = copy.deepcopy(m)
    convert(m, verbose=True)
    out = capsys.readouterr().out
    assert type(m.embed) is nn.Embedding and type(m.fc) is nn.Linear
    assert type(m.stem) is FusedConv2d and m.stem.activation is None
    assert type(m.up[0]) is FusedConvTranspose2d and m.up[0].activation == "lrelu" and m.up[0].negative_slope == 0.1
    assert m.up[2].activation == "tanh"
    lines = {ln.split()[0]: ln for ln in out.splitlines()}
    assert "no fastgan counterpart" in lines["embed"] and "no fastgan counterpart" in lines["fc"]
    assert "not in an nn.Sequential" in lines["stem"]
    z = torch.randn(5, 12, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 3, 1])
    torch.testing.assert_close(m(z, y), ref(z, y), atol=1e-10, rtol=1e-10)


def test_subclasses_hooks_and_parametrizations_are_respected(capsys):
    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    seen = []
    hooked = nn.Conv2d(3, 4, 3)
    hooked.register_forward_hook(lambda mod, i, o: seen.append(o.detach().clone()))
    param = nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 4, 3))
    sn = nn.utils.spectral_norm(nn.Conv2d(4, 4, 3))  # hook-based: a forward pre-hook sets weight
    m = nn.Sequential(MyConv(3, 3, 1), nn.ReLU(), hooked, nn.LeakyReLU(0.2), param, nn.LeakyReLU(0.2),
                      sn, nn.LeakyReLU(0.2)).double()
    ref = copy.deepcopy(m)
    convert(m, verbose=True)
    out = capsys.readouterr().out
    assert type(m[0]) is MyConv and "subclass of nn.Conv2d" in out
    assert type(m[2]) is FusedConv2d and m[2].activation is None and type(m[3]) is FusedLeakyReLU
    assert "a hook on one of the pair" in out
    assert type(m[4]) is type(ref[4]) and type(m[5]) is FusedLeakyReLU  # parametrized: left alone
    assert type(m[6]) is FusedConv2d and m[6].activation == "lrelu" and type(m[7]) is nn.Identity
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    ref.eval(), m.eval()  # spectral norm's power iteration does not move in eval
    torch.testing.assert_close(m(x), ref(x), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(seen[-1], seen[-2], atol=1e-10, rtol=1e-10)  # the hook saw the conv output


# ---- FusedConv2d as an op: second derivatives, layouts, dtypes, compile, devices --------------
@pytest.mark.parametrize("act", ["lrelu", "relu", "linear", "sigmoid", "tanh", "gelu"])
def test_r1_through_converted_discriminator(act):
    """R1 = |d D(x) / d x|^2 through a converted D: its parameter gradients (a second derivative)
    equal those through the unconverted D."""
    acts = {"lrelu": nn.LeakyReLU(0.2), "relu": nn.ReLU(), "linear": nn.Identity(), "sigmoid": nn.Sigmoid(),
            "tanh": nn.Tanh(), "gelu": nn.GELU()}
    D = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), copy.deepcopy(acts[act]), nn.Conv2d(6, 8, 3, 2, 1),
                      nn.BatchNorm2d(8), copy.deepcopy(acts[act]), nn.Conv2d(8, 1, 4)).double()
    Dc = convert(copy.deepcopy(D))
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    grads = []
    for d in (D, Dc):
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(d(xr).sum(), xr, create_graph=True)
        r1 = g.square().sum()
        grads.append(torch.autograd.grad(r1, list(d.parameters()), allow_unused=True, materialize_grads=True))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("act", ["lrelu", "sigmoid", "gelu", "linear"])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_conv2d_gradcheck_gradgradcheck(act, bias):
    m = FusedConv2d(2, 3, 3, stride=2, padding=1, bias=bias, activation=act, gain=1.5).double()
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)

    def f(x, w, *b):
        return torch.func.functional_call(m, {"weight": w, **({"bias": b[0]} if b else {})}, (x,))
    inputs = (x, m.weight.detach().clone().requires_grad_(True)) + \
        ((m.bias.detach().clone().requires_grad_(True),) if bias else ())
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_fused_conv2d_keeps_a_mask_not_the_preactivation():
    """Conv2d + LeakyReLU keeps the float pre-activation for backward; FusedConv2d keeps a 1-byte mask."""
    def saved_bytes(m, x):
        seen = {}

        def pack(t):
            seen[(t.data_ptr(), t.dtype)] = t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(x)
        return sum(v for (p, _), v in seen.items() if p not in (x.data_ptr(), m[0].weight.data_ptr()))
    eager = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.LeakyReLU(0.2))
    fused = convert(copy.deepcopy(eager))
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    n = 4 * 16 * 16 * 16
    assert saved_bytes(eager, x) == 4 * n
    assert saved_bytes(fused, x) == n


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_converted_model_in_half_precision(dtype):
    G, D = tutorial_pair(torch.float32)
    G, D = G.to(dtype), D.to(dtype)
    Gc, Dc = convert(copy.deepcopy(G)), convert(copy.deepcopy(D))
    assert Gc.main[0].weight.dtype == dtype and Dc.main[3].running_mean.dtype == dtype
    z = torch.randn(2, NZ, 1, 1).to(dtype)
    out, outc = D(G(z)), Dc(Gc(z))
    assert outc.dtype == dtype
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.float16 else dict(atol=6e-2, rtol=6e-2)
    torch.testing.assert_close(outc.float(), out.float(), **tol)


def test_channels_last_model():
    G, D = tutorial_pair(torch.float32)
    G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    Gc, Dc = convert(copy.deepcopy(G)), convert(copy.deepcopy(D))
    assert Dc.main[2].weight.is_contiguous(memory_format=torch.channels_last)
    z = torch.randn(3, NZ, 1, 1)
    fake, fakec = G(z), Gc(z)
    assert fakec.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fakec, fake, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(Dc(fakec), D(fake), atol=2e-5, rtol=2e-5)


def test_compile_wrapper_and_compiled_converted_model():
    import torch._dynamo
    torch._dynamo.reset()
    G, D = tutorial_pair(torch.float32)
    ref = copy.deepcopy(D)
    x = torch.randn(2, NC, 64, 64)
    compiled = torch.compile(D)
    compiled(x)
    assert convert(compiled) is compiled  # a wrapper is walked, not replaced
    assert type(D.main[0]) is FusedConv2d
    torch.testing.assert_close(compiled(x), ref(x), atol=2e-5, rtol=2e-5)
    Dc = torch.compile(convert(copy.deepcopy(ref)), fullgraph=True)
    xr = x.clone().requires_grad_(True)
    out = Dc(xr)
    torch.testing.assert_close(out, ref(x), atol=2e-5, rtol=2e-5)
    out.sum().backward()
    assert xr.grad is not None and torch.isfinite(xr.grad).all()


def test_ddp_wrapper(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        G, D = tutorial_pair(torch.float32)
        ref = copy.deepcopy(D)
        ddp = nn.parallel.DistributedDataParallel(convert(D))
        x = torch.randn(2, NC, 64, 64)
        torch.testing.assert_close(ddp(x), ref(x), atol=2e-5, rtol=2e-5)
        ddp(x).sum().backward()
        ref(x).sum().backward()
        for p, q in zip(ddp.module.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, atol=2e-5, rtol=2e-5)
        # converting through an existing wrapper reaches the model inside it
        ddp2 = nn.parallel.DistributedDataParallel(copy.deepcopy(ref))
        convert(ddp2)
        assert type(ddp2.module.main[0]) is FusedConv2d
        torch.testing.assert_close(ddp2(x), ref(x), atol=2e-5, rtol=2e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("device", DEVICES)
def test_converted_small_dcgan_on_each_device(device):
    """The converted tutorial G and D (tiny widths) on every kernel path, the emulated CUDA kernels
    included, against the unconverted model on the CPU."""
    torch.manual_seed(0)
    G, D = Generator(nz=4, ngf=2, nc=1).double(), Discriminator(nc=1, ndf=2).double()
    G.apply(weights_init), D.apply(weights_init)
    Gc, Dc = convert(copy.deepcopy(G)).to(device), convert(copy.deepcopy(D)).to(device)
    z = torch.randn(2, 4, 1, 1, dtype=torch.float64)
    out = D(G(z))
    outc = Dc(Gc(z.to(device)))
    torch.testing.assert_close(outc.cpu(), out, atol=1e-10, rtol=1e-10)
    out.sum().backward()
    outc.sum().backward()
    for p, q in zip(list(G.parameters()) + list(D.parameters()), list(Gc.parameters()) + list(Dc.parameters())):
        torch.testing.assert_close(q.grad.cpu(), p.grad, atol=1e-10, rtol=1e-10)


def test_every_matched_activation_fuses_exactly():
    acts = [nn.ReLU(), nn.LeakyReLU(0.3), nn.Tanh(), nn.Sigmoid(), nn.ELU(0.7), nn.SELU(), nn.SiLU(), nn.GELU()]
    for act in acts:
        for head in (nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(3, 4, 3, 2), nn.BatchNorm2d(3),
                     nn.InstanceNorm2d(3, affine=True, track_running_stats=True)):
            m = nn.Sequential(copy.deepcopy(head), copy.deepcopy(act)).double()
            ref = copy.deepcopy(m)
            convert(m)
            assert type(m[1]) is nn.Identity, (head, act)
            x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
            torch.testing.assert_close(m(x), ref(x), atol=1e-10, rtol=1e-10, msg=f"{head} + {act}")
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(approximate="tanh"))
    convert(m)
    assert type(m[0]) is FusedConv2d and m[0].activation is None and type(m[1]) is nn.GELU


def test_fnn_exports():
    assert fnn.convert is convert and fnn.FusedConv2d is FusedConv2d
