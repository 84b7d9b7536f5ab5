"""fastgan.ops.diff_augment (fused DiffAugment) against its float64 reference on every backend: forward,
backward and double backward; the drawn parameters' distributions; known answers per transform;
layouts; opcheck and torch.compile; bad input."""
import pytest
import torch

import fastgan
from fastgan.ops import diff_augment, diff_augment_apply, diff_augment_params
from fastgan.ops import reference as R
from conftest import DEVICES, DTYPES, TOL

F64 = torch.float64
POLICIES = ["color,translation,cutout", "color", "translation", "cutout", "translation,cutout"]
SHAPES = [(6, 3, 16, 16), (4, 1, 8, 12), (3, 4, 7, 5), (1, 3, 1, 1), (2, 2, 2, 9)]


def images(shape, dtype=F64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, dtype=F64, generator=g) * 2 - 1).to(dtype).to(device)


def draw(x, policy="color,translation,cutout", p=1.0, seed=1):
    return diff_augment_params(x, policy, p, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, policy, dtype, device):
    x64 = images(shape, seed=sum(shape))
    params, hw = draw(x64, policy, 0.8, seed=len(policy))
    x = x64.to(dtype).to(device).requires_grad_(True)
    y = diff_augment_apply(x, params.to(device), hw)
    assert y.dtype == dtype and y.shape == x.shape
    xr = x.detach().double().cpu().requires_grad_(True)
    want = R.diff_augment_apply(xr, params, hw)
    torch.testing.assert_close(y.double().cpu(), want, **TOL[dtype])
    gy64 = images(shape, seed=7)
    (gx,) = torch.autograd.grad(y, x, gy64.to(dtype).to(device))
    (gw,) = torch.autograd.grad(want, xr, gy64)
    torch.testing.assert_close(gx.double().cpu(), gw, **TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    x = images((3, 3, 6, 7), device=device).requires_grad_(True)
    params, hw = draw(x)
    params[1, 3:5] = torch.tensor([-2.0, 3.0])  # a shift whose cutout falls partly outside
    params[2, 5:] = torch.tensor([-2.0, 5.0])
    fn = lambda t: diff_augment_apply(t, params.to(device), hw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_r1_through_the_augmentation(device):
    """R1 on augmented reals (the gradient w.r.t. the data, through the augmentation): its gradient
    w.r.t. D's weights is a double backward through the op, as in the reference."""
    torch.manual_seed(3)
    d = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    x = images((4, 3, 8, 8))
    d(x.float())  # materialises the lazy layer
    d = d.double().to(device)
    params, hw = draw(x)

    def r1(aug):
        xi = x.to(device).requires_grad_(True)
        (g,) = torch.autograd.grad(d(aug(xi)).sum(), xi, create_graph=True)
        pen = g.square().sum()
        return torch.autograd.grad(pen, list(d.parameters())[:3])  # (the last bias does not move grad x)

    got = r1(lambda t: diff_augment_apply(t, params.to(device), hw))
    want = r1(lambda t: R.diff_augment_apply(t, params.to(device), hw))
    assert max(float(w.abs().max()) for w in want) > 1e-3
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL[F64])


def test_params_distribution():
    x = torch.zeros(20_000, 3, 32, 24)
    params, hw = draw(x, seed=5)
    b, s, k, ty, tx, top, left = params.unbind(1)
    assert hw == (16, 12) and params.dtype == torch.float32
    assert b.min() >= -0.5 and b.max() < 0.5 and abs(b.mean()) < 0.01
    assert s.min() >= 0 and s.max() < 2 and abs(s.mean() - 1) < 0.02
    assert k.min() >= 0.5 and k.max() < 1.5 and abs(k.mean() - 1) < 0.01
    for t, r in ((ty, 4), (tx, 3)):  # round(0.125 * 32) = 4, round(0.125 * 24) = 3: every shift in [-r, r]
        assert torch.equal(t, t.round()) and set(t.long().tolist()) == set(range(-r, r + 1))
        assert torch.bincount(t.long() + r).min() > 20_000 / (2 * r + 1) * 0.9
    # the cutout's centre is uniform over the image
    assert set((top + 8).long().tolist()) == set(range(32)) and set((left + 6).long().tolist()) == set(range(24))


def test_probability_and_policy():
    x = torch.zeros(20_000, 3, 16, 16)
    ident = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 16.0, 0.0])
    params, _ = draw(x, p=0.0)
    assert torch.equal(params, ident.expand_as(params))
    params, _ = draw(x, p=0.3)
    applied = torch.stack([params[:, 0] != 0, params[:, 1] != 1, params[:, 2] != 1,
                           (params[:, 3] != 0) | (params[:, 4] != 0), params[:, 5] != 16], 1).double().mean(0)
    # each transform independently with probability 0.3 (a translation of (0, 0) is possible: 1/81 of them)
    assert ((applied[:3] - 0.3).abs() < 0.015).all() and abs(applied[3] - 0.3 * 80 / 81) < 0.015
    assert abs(applied[4] - 0.3) < 0.015
    params, _ = draw(x, "translation")
    assert torch.equal(params[:, :3], ident[:3].expand(20_000, 3)) and torch.equal(params[:, 5], ident[5].expand(20_000))
    params, _ = draw(x, "cutout")
    assert torch.equal(params[:, :5], ident[:5].expand(20_000, 5)) and (params[:, 5] != 16).all()
    params, _ = draw(x, "color")
    assert torch.equal(params[:, 3:], ident[3:].expand(20_000, 4))


def test_generator_makes_it_reproducible():
    x = images((8, 3, 8, 8))
    a = diff_augment(x, generator=torch.Generator().manual_seed(4))
    b = diff_augment(x, generator=torch.Generator().manual_seed(4))
    c = diff_augment(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(9)
    d = diff_augment(x)
    torch.manual_seed(9)
    assert torch.equal(d, diff_augment(x))  # the global RNG without a generator


@pytest.mark.parametrize("device", DEVICES)
def test_known_answers(device):
    x = images((2, 3, 5, 6), device=device)
    row = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 5.0, 0.0])

    def run(*changes, cut=(0, 0)):
        p = row.repeat(2, 1)
        for col, v in changes:
            p[:, col] = v
        return diff_augment_apply(x, p.to(device), cut)

    assert torch.equal(run(), x)  # the identity row changes nothing, bit for bit
    torch.testing.assert_close(run((0, 0.25)), x + 0.25)  # brightness
    grey = run((1, 0.0))  # saturation 0: every channel becomes the pixel's channel mean
    torch.testing.assert_close(grey, x.mean(1, keepdim=True).expand_as(x))
    flat = run((2, 0.0))  # contrast 0: every element becomes the sample's mean
    torch.testing.assert_close(flat, x.mean((1, 2, 3), keepdim=True).expand_as(x))
    torch.testing.assert_close(run((2, 1.7)).mean((1, 2, 3)), x.mean((1, 2, 3)))  # contrast keeps the mean
    down = run((3, 2.0))  # translation by two rows down: the top two rows are zeros
    assert (down[:, :, :2] == 0).all() and torch.equal(down[:, :, 2:], x[:, :, :3])
    left = run((4, -1.0))
    assert (left[..., -1] == 0).all() and torch.equal(left[..., :-1], x[..., 1:])
    cut = run((5, 1.0), (6, 4.0), cut=(2, 3))  # rows 1-2, columns 4-5 (the last one clipped at the edge)
    mask = torch.ones(5, 6, dtype=torch.bool, device=device)
    mask[1:3, 4:] = False
    assert (cut[..., ~mask] == 0).all() and torch.equal(cut[..., mask], x[..., mask])
    gone = run((3, 5.0))  # shifted out of the image entirely
    assert (gone == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_layouts(device):
    x = images((4, 3, 6, 6), device=device)
    params, hw = draw(x)
    params = params.to(device)
    want = diff_augment_apply(x, params, hw)
    cl = x.contiguous(memory_format=torch.channels_last)
    y = diff_augment_apply(cl, params, hw)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, want)
    wide = images((4, 3, 6, 9), device=device)
    wide[..., :6] = x
    y = diff_augment_apply(wide[..., :6], params, hw)  # non-contiguous: read through the strides
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    flat = torch.empty(x.numel() + 1, dtype=x.dtype, device=device)
    mis = flat[1:].view(x.shape)
    mis.copy_(x)
    torch.testing.assert_close(diff_augment_apply(mis, params, hw), want, rtol=0, atol=0)
    e = torch.empty(0, 3, 6, 6, device=device, requires_grad=True)
    y = diff_augment_apply(e, params[:0], hw)
    assert y.shape == e.shape
    y.sum().backward()
    assert e.grad.shape == e.shape


def test_opcheck():
    x = images((3, 2, 5, 4)).requires_grad_(True)
    params, hw = draw(x)
    torch.library.opcheck(torch.ops.fastgan.diff_augment.default, (x, params, list(hw), True))
    torch.library.opcheck(torch.ops.fastgan.diff_augment.default, (x, params, list(hw), False))
    g = images((3, 2, 5, 4), seed=3).requires_grad_(True)
    torch.library.opcheck(torch.ops.fastgan.diff_augment_backward.default, (g, params, list(hw)))


def test_compile_fullgraph():
    x = images((4, 3, 8, 8), dtype=torch.float32)
    params, hw = draw(x)

    def f(t):
        return (diff_augment_apply(t, params, hw) * 1.5).square().sum()

    c = torch.compile(f, fullgraph=True, backend="aot_eager")
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    va, vb = f(xa), c(xb)
    va.backward()
    vb.backward()
    torch.testing.assert_close(vb, va)
    torch.testing.assert_close(xb.grad, xa.grad)


def test_autocast_keeps_the_input_dtype():
    x = images((2, 3, 4, 4), dtype=torch.bfloat16)
    params, hw = draw(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert diff_augment_apply(x, params, hw).dtype == torch.bfloat16
        assert diff_augment_apply(x.float(), params, hw).dtype == torch.float32


def test_bad_inputs():
    x = images((2, 3, 4, 4))
    params, hw = draw(x)
    with pytest.raises(TypeError, match="argument 'x' must be a floating-point"):
        diff_augment(torch.zeros(2, 3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"argument 'x' must be images \(N, C, H, W\), got shape \(3, 4, 4\)"):
        diff_augment(x[0])
    with pytest.raises(ValueError, match="argument 'policy' must name some of color, translation, cutout"):
        diff_augment(x, "color,flip")
    with pytest.raises(ValueError, match="argument 'policy'"):
        diff_augment(x, "color,color")
    with pytest.raises(TypeError, match="argument 'policy' must be a comma-separated string"):
        diff_augment(x, ["color"])
    with pytest.raises(ValueError, match=r"argument 'p' must be a number in \[0, 1\], got 1.5"):
        diff_augment(x, p=1.5)
    with pytest.raises(ValueError, match="argument 'p'"):
        diff_augment(x, p=float("nan"))
    with pytest.raises(TypeError, match="argument 'generator' must be a torch.Generator"):
        diff_augment(x, generator=3)
    with pytest.raises(ValueError, match=r"argument 'params' must be float32 of shape \(2, 7\)"):
        diff_augment_apply(x, params[:1], hw)
    with pytest.raises(ValueError, match="argument 'params' must be float32"):
        diff_augment_apply(x, params.double(), hw)
    with pytest.raises(ValueError, match="argument 'cutout' must be two ints >= 0"):
        diff_augment_apply(x, params, (2, -1))
    with pytest.raises(RuntimeError, match="argument 'params' is on meta"):
        diff_augment_apply(x, params.to("meta"), hw)
    # the ops themselves name the argument too
    op = torch.ops.fastgan
    with pytest.raises(RuntimeError, match="argument 'x'.*floating"):
        op.diff_augment(x.long(), params, list(hw), True)
    with pytest.raises(RuntimeError, match=r"argument 'x'.*\(N, C, H, W\)"):
        op.diff_augment(x[0], params, list(hw), True)
    with pytest.raises(RuntimeError, match=r"argument 'params'.*shape \(2, 7\)"):
        op.diff_augment(x, params.t().contiguous(), list(hw), True)
    with pytest.raises(RuntimeError, match="argument 'params'.*float32"):
        op.diff_augment(x, params.double(), list(hw), True)
    with pytest.raises(RuntimeError, match="argument 'cutout'"):
        op.diff_augment(x, params, [1, -2], True)
    with pytest.raises(RuntimeError, match="argument 'grad'.*floating"):
        op.diff_augment_backward(x.int(), params, list(hw))


def test_exported():
    assert fastgan.ops.diff_augment is diff_augment
    assert "diff_augment" in fastgan.info()["ops"] and "diff_augment_backward" in fastgan.info()["ops"]


def test_bench_eager_contender_is_the_same_augmentation():
    """fastgan bench times the fused op against fastgan.bench.diff_augment.eager: the same math."""
    from fastgan.bench.diff_augment import eager
    x = images((5, 3, 12, 10)).requires_grad_(True)
    params, hw = draw(x, p=0.9)
    xr = x.detach().clone().requires_grad_(True)
    want = R.diff_augment_apply(xr, params, hw)
    got = eager(x, params, hw)
    torch.testing.assert_close(got, want, **TOL[F64])
    gy = images((5, 3, 12, 10), seed=4)
    torch.testing.assert_close(torch.autograd.grad(got, x, gy)[0], torch.autograd.grad(want, xr, gy)[0], **TOL[F64])
