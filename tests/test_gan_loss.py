"""Fused GAN losses (fastgan.ops.d_loss / g_loss, fastgan.nn.GANLoss) and gradient penalties
(r1_penalty, gradient_penalty, grad_norm_penalty) against the float64 references."""
import pytest
import torch
from torch import nn

import fastgan
from fastgan.ops import reference as R
from fastgan.ops.gan_loss import KINDS, RELATIVISTIC, REDUCTIONS

from conftest import CUDA_PATHS, DEVICES, DTYPES, TOL, cpu_kernels, too_loose

F64 = torch.float64


def logits(shape, dtype=F64, device="cpu", scale=3.0):
    """Fresh random logits (never zeros), rounded to dtype."""
    return (torch.randn(shape, dtype=F64) * scale).to(device=device, dtype=dtype)


def ref_grads(fn, *xs, go=1.0):
    """Value and input gradients of a reference loss computed in float64 from the same values."""
    xs64 = [x.detach().to(F64).requires_grad_(True) for x in xs]
    out = fn(*xs64)
    loss = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(loss * go, xs64, allow_unused=True)
    return out, grads


def loss_tol(dtype):
    # The loss accumulates in fp32 from the (exactly representable) logits: fp32 tolerance.
    return TOL[F64] if dtype == F64 else TOL[torch.float32]


def grad_tol(dtype, want):
    """TOL[dtype] with atol scaled down to gradients smaller than 1 (a mean over 37 logits is at most
    1/37): the gradient is computed in fp32 and rounded once, so it is good to the dtype's rtol, and
    an absolute 2e-2 (bfloat16) would pass any gradient below 2e-2, zero included."""
    tol = dict(TOL[dtype])
    tol["atol"] *= min(1.0, want.abs().max().item()) if want.numel() else 1.0
    return tol


def assert_grad(got, want, dtype):
    assert got.dtype == dtype
    want = want.to(dtype).to(F64)
    torch.testing.assert_close(got.to(F64), want, **grad_tol(dtype, want))


# ---- values and logit gradients: every kind x reduction x dtype --------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_d_loss_matches_reference(kind, reduction, dtype, device):
    real = logits((37, 1), dtype, device).requires_grad_(True)
    # another size and shape (rpgan pairs the logits: the same shape)
    fake = logits((37, 1) if kind == "rpgan" else (29,), dtype, device).requires_grad_(True)
    loss = fastgan.ops.d_loss(real, fake, kind, reduction=reduction)
    assert loss.dtype == (F64 if dtype == F64 else torch.float32) and loss.shape == ()
    go = 0.7
    gr, gf = torch.autograd.grad(loss * go, (real, fake))
    want, (wr, wf) = ref_grads(lambda r, f: R.d_loss(r, f, kind, reduction=reduction), real, fake, go=go)
    torch.testing.assert_close(loss.to(F64), want.cpu(), **loss_tol(dtype), check_device=False)
    assert_grad(gr, wr, dtype)
    assert_grad(gf, wf, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_g_loss_matches_reference(kind, reduction, dtype, device):
    fake = logits((4, 5), dtype, device).requires_grad_(True)
    real = logits((4, 5) if kind == "rpgan" else (13,), dtype, device).requires_grad_(True)
    loss = fastgan.ops.g_loss(fake, kind, real_logits=real, reduction=reduction)
    assert loss.dtype == (F64 if dtype == F64 else torch.float32)
    gf, gr = torch.autograd.grad(-1.3 * loss, (fake, real), allow_unused=True)
    want, (wf, wr) = ref_grads(lambda f, r: R.g_loss(f, kind, real_logits=r, reduction=reduction),
                               fake, real, go=-1.3)
    torch.testing.assert_close(loss.to(F64), want.cpu(), **loss_tol(dtype), check_device=False)
    assert_grad(gf, wf, dtype)
    if kind in RELATIVISTIC:
        assert_grad(gr, wr, dtype)
    else:
        assert gr is None and wr is None  # only rals and rpgan read the real logits


@pytest.mark.parametrize("kind", ["ns", "minimax"])
@pytest.mark.parametrize("labels", [(0.9, 0.0), (0.9, 0.1), (0.7, 0.25)])
def test_label_smoothing(kind, labels):
    real, fake = logits(50).requires_grad_(True), logits(40).requires_grad_(True)
    rl, fl = labels
    loss = fastgan.ops.d_loss(real, fake, kind, real_label=rl, fake_label=fl)
    got = torch.autograd.grad(loss, (real, fake))
    want, wg = ref_grads(lambda r, f: R.d_loss(r, f, kind, real_label=rl, fake_label=fl), real, fake)
    torch.testing.assert_close(loss, want, **TOL[F64])
    for a, b in zip(got, wg):
        torch.testing.assert_close(a, b, **TOL[F64])
    # and it does change the loss
    assert (loss - fastgan.ops.d_loss(real, fake, kind)).abs() > 1e-3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_extreme_logits(kind, dtype, device):
    """|logit| = 100 (and 30, 15) in every dtype: finite, and equal to the float64 reference."""
    vals = torch.tensor([100.0, -100.0, 30.0, -30.0, 15.0, -15.0, 0.5], dtype=F64)
    real = vals.clone().to(device=device, dtype=dtype).requires_grad_(True)
    fake = vals.flip(0).to(device=device, dtype=dtype).requires_grad_(True)
    for got, ref in ((fastgan.ops.d_loss(real, fake, kind), R.d_loss),
                     (fastgan.ops.g_loss(fake, kind, real_logits=real), None)):
        gr, gf = torch.autograd.grad(got, (real, fake), allow_unused=True)
        if ref is not None:
            want, (wr, wf) = ref_grads(lambda r, f: R.d_loss(r, f, kind), real, fake)
        else:
            want, (wf, wr) = ref_grads(lambda f, r: R.g_loss(f, kind, real_logits=r), fake, real)
        assert torch.isfinite(got)
        torch.testing.assert_close(got.to(F64).cpu(), want, **loss_tol(dtype))
        for g, w in ((gr, wr), (gf, wf)):
            if w is not None:
                assert torch.isfinite(g).all()
                assert_grad(g.cpu(), w, dtype)


def test_nan_propagates():
    real, fake = torch.tensor([1.0, float("nan")]), torch.tensor([0.5, -0.5])
    for kind in KINDS:
        assert torch.isnan(fastgan.ops.d_loss(real, fake, kind))
        assert torch.isnan(fastgan.ops.g_loss(real, kind, real_logits=fake))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, F64], ids=str)
@pytest.mark.parametrize("kind", ["ns", "hinge", "rals", "rpgan"])
def test_stats(kind, dtype, device):
    real, fake = logits(33, dtype, device), logits(33 if kind == "rpgan" else (8, 2), dtype, device)
    loss, stats = fastgan.ops.d_loss(real, fake, kind, return_stats=True)
    assert set(stats) == {"d_real", "d_fake"}
    for key, x in (("d_real", real), ("d_fake", fake)):
        t = stats[key]
        assert isinstance(t, torch.Tensor) and t.shape == () and t.device == real.device
        torch.testing.assert_close(t.to(F64).cpu(), torch.sigmoid(x.to(F64)).mean().cpu(), **loss_tol(dtype))
    torch.testing.assert_close(loss, fastgan.ops.d_loss(real, fake, kind), rtol=0, atol=0)
    # differentiable like the reference's
    r = real.to(F64).requires_grad_(True)
    f = fake.to(F64).requires_grad_(True)
    torch.autograd.gradcheck(lambda r, f: fastgan.ops.d_loss(r, f, kind, return_stats=True)[1]["d_fake"],
                             (r, f))


# ---- derivatives ---------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_gradgradcheck(kind, reduction):
    real = logits((3, 2) if kind == "rpgan" else 6).requires_grad_(True)
    fake = logits((3, 2)).requires_grad_(True)

    def d(r, f):
        return fastgan.ops.d_loss(r, f, kind, reduction=reduction, real_label=0.9, fake_label=0.05)

    def g(r, f):
        return fastgan.ops.g_loss(f, kind, real_logits=r, reduction=reduction)

    for fn in (d, g):
        assert torch.autograd.gradcheck(fn, (real, fake))
        assert torch.autograd.gradgradcheck(fn, (real, fake))


def test_double_backward_through_loss_matches_reference():
    """A penalty on d loss / d x (create_graph through the loss) sees the loss's Hessian."""
    x = logits((6, 3)).requires_grad_(True)
    w = torch.randn(3, 1, dtype=F64, requires_grad=True)
    fake = logits(5)
    for kind in KINDS:
        outs = []
        f = logits((6, 1)) if kind == "rpgan" else fake
        for lib in (fastgan.ops, R):
            (gx,) = torch.autograd.grad(lib.d_loss(x @ w, f, kind), x, create_graph=True)
            outs.append(torch.autograd.grad(gx.pow(2).sum(), w)[0])
        torch.testing.assert_close(outs[0], outs[1], **TOL[F64])


# ---- torch.library.opcheck on every op -------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    ops = torch.ops.fastgan
    r, f = logits((5, 1), device=device), logits(7, device=device)
    rg, fg = r.clone().requires_grad_(True), f.clone().requires_grad_(True)
    h = logits((4, 3), torch.float32, device=device)
    for args in ((r, f, "ns", "mean", 0.9, 0.0, True), (rg, fg, "rals", "sum", 1.0, 0.0, False),
                 (rg, fg, "hinge", "mean", 1.0, 0.0, True), (h, h.t(), "lsgan", "mean", 1.0, 0.0, False),
                 (rg, rg.detach().flip(0) - 0.5, "rpgan", "mean", 1.0, 0.0, True),
                 (h, h.t().contiguous().t(), "rpgan", "sum", 1.0, 0.0, False)):
        torch.library.opcheck(ops.gan_d_loss.default, args)
    for args in ((fg, None, "ns", "mean"), (fg, rg, "rals", "mean"), (f, r, "wgan", "sum"),
                 (rg, rg.detach() * 0.3 + 1, "rpgan", "sum")):
        torch.library.opcheck(ops.gan_g_loss.default, args)
    g0, g1 = torch.randn(5, 1, dtype=F64, device=device), torch.randn(7, dtype=F64, device=device)
    go = torch.tensor(0.3, dtype=F64, device=device)
    torch.library.opcheck(ops.gan_loss_backward.default, (go, g0, g1, torch.float32))
    torch.library.opcheck(ops.gan_loss_backward.default,
                          (go.requires_grad_(True), g0.requires_grad_(True), g1, F64))
    x = torch.randn(3, 2, 4, 4, dtype=F64, device=device)
    for g, sq in ((x, True), (x.requires_grad_(True), False),
                  (x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True), False),
                  (x.detach().transpose(2, 3), True)):
        torch.library.opcheck(ops.grad_penalty.default, (g, 1.0, 2.0, sq))
        pen, norms = ops.grad_penalty(g.detach(), 1.0, 2.0, sq)
        torch.library.opcheck(ops.grad_penalty_backward.default,
                              (go.detach().requires_grad_(True), g, norms, 1.0, 2.0, sq))


# ---- torch.compile ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ns", "rals", "rpgan"])
def test_compile_fullgraph(kind):
    torch._dynamo.reset()

    def step(real, fake):
        d, stats = fastgan.ops.d_loss(real, fake, kind, return_stats=True, real_label=0.9)
        g = fastgan.ops.g_loss(fake, kind, real_logits=real)
        return d + 0.5 * g, stats["d_real"]

    compiled = torch.compile(step, fullgraph=True)
    real = logits(64, torch.float32).requires_grad_(True)
    fake = logits(64 if kind == "rpgan" else (64, 1), torch.float32).requires_grad_(True)
    (a, sa), (b, sb) = compiled(real, fake), step(real, fake)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(sa, sb)
    ga = torch.autograd.grad(a, (real, fake))
    gb = torch.autograd.grad(b, (real, fake))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y)


# ---- layouts and odd shapes ------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_odd_shapes_and_layouts(device):
    base = logits((6, 1, 3, 4), device=device)
    cases = [
        (logits(1, device=device), logits((), device=device)),               # one logit, 0-dim
        (base.contiguous(memory_format=torch.channels_last), logits(3, device=device)),  # patch-GAN
        (base[:, :, ::2, 1:], base.transpose(0, 3)),                          # non-contiguous
        (logits((1,), device=device).expand(9), logits((5, 2), device=device)[:, 0]),  # stride 0
    ]
    paired = [  # rpgan: the same shapes
        (logits((), device=device), logits((), device=device)),
        (base.contiguous(memory_format=torch.channels_last), logits((6, 1, 3, 4), device=device)),
        (base[:, :, ::2, 1:], base[:, :, 1:, :3]),
        (logits((1,), device=device).expand(9), logits((9, 2), device=device)[:, 1]),
    ]
    for real, fake in cases + paired:
        for kind in (["rpgan"] if real.shape == fake.shape else [k for k in KINDS if k != "rpgan"]):
            # leaves that keep the inputs' strides
            r, f = real.detach().requires_grad_(True), fake.detach().requires_grad_(True)
            r_, f_ = real.detach().requires_grad_(True), fake.detach().requires_grad_(True)
            got = fastgan.ops.d_loss(r, f, kind) + fastgan.ops.g_loss(f, kind, real_logits=r)
            want = R.d_loss(r_, f_, kind) + R.g_loss(f_, kind, real_logits=r_)
            torch.testing.assert_close(got, want, **TOL[F64])
            for a, b in zip(torch.autograd.grad(got, (r, f)), torch.autograd.grad(want, (r_, f_))):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, **TOL[F64])


def test_mixed_dtypes_promote():
    real, fake = logits(10, torch.bfloat16).requires_grad_(True), logits(8, torch.float32).requires_grad_(True)
    loss = fastgan.ops.d_loss(real, fake)
    gr, gf = torch.autograd.grad(loss, (real, fake))
    assert loss.dtype == torch.float32 and gr.dtype == torch.bfloat16 and gf.dtype == torch.float32
    torch.testing.assert_close(loss, R.d_loss(real.float(), fake), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast_cpu(dtype):
    lin = nn.Linear(4, 1)
    x, y = torch.randn(16, 4), torch.randn(12, 4)
    with torch.autocast("cpu", dtype=dtype):
        real, fake = lin(x), lin(y)
        assert real.dtype == dtype
        d = fastgan.ops.d_loss(real, fake)
        g = fastgan.ops.g_loss(fake, "rals", real_logits=real.float())  # mixed dtypes under autocast
    assert d.dtype == torch.float32 and g.dtype == torch.float32
    torch.testing.assert_close(d, R.d_loss(real.float(), fake.float()), **TOL[torch.float32])
    d.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


# ---- bad input -------------------------------------------------------------------------------
def test_bad_inputs():
    r, f = logits(4), logits(3)
    with pytest.raises(ValueError, match="'kind'"):
        fastgan.ops.d_loss(r, f, "bce")
    with pytest.raises(ValueError, match="'kind'"):
        fastgan.ops.g_loss(f, "softmax")
    with pytest.raises(ValueError, match="'reduction'"):
        fastgan.ops.d_loss(r, f, reduction="none")
    with pytest.raises(ValueError, match="'reduction'"):
        fastgan.ops.g_loss(f, reduction="avg")
    with pytest.raises(TypeError, match="'real_logits'.*floating"):
        fastgan.ops.d_loss(torch.ones(4, dtype=torch.long), f)
    with pytest.raises(TypeError, match="'fake_logits'.*floating"):
        fastgan.ops.g_loss(torch.ones(4, dtype=torch.int32))
    with pytest.raises(TypeError, match="'fake_logits'.*torch.Tensor"):
        fastgan.ops.d_loss(r, [0.1, 0.2])
    with pytest.raises(ValueError, match="'fake_logits'.*empty"):
        fastgan.ops.d_loss(r, torch.empty(0, 1))
    with pytest.raises(ValueError, match="'fake_logits'.*empty"):
        fastgan.ops.g_loss(torch.empty(0))
    with pytest.raises(ValueError, match="'real_logits'"):
        fastgan.ops.g_loss(f, "rals")
    with pytest.raises(ValueError, match="'real_logits'"):
        fastgan.ops.g_loss(f, "rpgan")
    with pytest.raises(ValueError, match=r"rpgan.*'fake_logits' must have the shape of 'real_logits'.*\(4,\) and \(3,\)"):
        fastgan.ops.d_loss(f, r, "rpgan")
    with pytest.raises(ValueError, match=r"rpgan.*'real_logits' must have the shape.*\(4, 1\)"):
        fastgan.ops.g_loss(r, "rpgan", real_logits=r[:, None])
    with pytest.raises(ValueError, match="'fake_logits'.*device"):
        fastgan.ops.d_loss(r, f.to("meta"))
    with pytest.raises(ValueError, match="'real_logits'.*device"):
        fastgan.ops.g_loss(f, "rals", real_logits=r.to("meta"))
    with pytest.raises(TypeError, match="'real_label'"):
        fastgan.ops.d_loss(r, f, real_label=float("nan"))
    # the ops themselves name the argument too
    with pytest.raises(RuntimeError, match="argument 'kind'"):
        torch.ops.fastgan.gan_d_loss(r, f, "bce", "mean", 1.0, 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'reduction'"):
        torch.ops.fastgan.gan_g_loss(f, None, "ns", "none")
    with pytest.raises(RuntimeError, match="argument 'fake'.*dtype"):
        torch.ops.fastgan.gan_d_loss(r, f.float(), "ns", "mean", 1.0, 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'real'"):
        torch.ops.fastgan.gan_g_loss(f, None, "rals", "mean")
    with pytest.raises(RuntimeError, match="argument 'fake'.*rpgan.*shape"):
        torch.ops.fastgan.gan_d_loss(r, f, "rpgan", "mean", 1.0, 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'real'.*rpgan.*shape"):
        torch.ops.fastgan.gan_g_loss(r, r[:, None], "rpgan", "mean")
    with pytest.raises(RuntimeError, match="argument 'real'.*non-empty"):
        torch.ops.fastgan.gan_d_loss(r[:0], f, "ns", "mean", 1.0, 0.0, False)
    # and so do their fake kernels (torch.compile, FakeTensorMode): the same checks, the same words
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fr, ff = mode.from_tensor(r), mode.from_tensor(f)
        with pytest.raises(RuntimeError, match=r"argument 'fake'.*rpgan.*shape of 'real': got \[3\] and \[4\]"):
            torch.ops.fastgan.gan_d_loss(fr, ff, "rpgan", "mean", 1.0, 0.0, False)
        with pytest.raises(RuntimeError, match=r"argument 'real'.*rpgan.*shape of 'fake': got \[4, 1\] and \[4\]"):
            torch.ops.fastgan.gan_g_loss(fr, fr[:, None], "rpgan", "mean")
        with pytest.raises(RuntimeError, match="argument 'real'.*rals generator loss needs the real logits"):
            torch.ops.fastgan.gan_g_loss(ff, None, "rals", "mean")
        assert torch.ops.fastgan.gan_d_loss(fr, fr, "rpgan", "mean", 1.0, 0.0, False)[2].shape == (4,)
    with pytest.raises(RuntimeError, match="argument 'grad'"):
        torch.ops.fastgan.gan_loss_backward(torch.ones(2, dtype=F64), r, f, F64)
    with pytest.raises(RuntimeError, match="argument 'g'"):
        torch.ops.fastgan.grad_penalty(torch.empty(0, 3), 1.0, 1.0, False)


# ---- GANLoss -----------------------------------------------------------------------------------
def test_ganloss_module():
    real, fake = logits(9), logits(7)
    crit = fastgan.nn.GANLoss("hinge", reduction="sum")
    torch.testing.assert_close(crit.d(real, fake), R.d_loss(real, fake, "hinge", reduction="sum"), **TOL[F64])
    torch.testing.assert_close(crit.g(fake), R.g_loss(fake, "hinge", reduction="sum"), **TOL[F64])
    crit = fastgan.nn.GANLoss("ns", real_label=0.9, return_stats=True)
    loss, stats = crit.d(real, fake)
    torch.testing.assert_close(loss, R.d_loss(real, fake, real_label=0.9), **TOL[F64])
    assert "real_label=0.9" in repr(crit) and "return_stats=True" in repr(crit)
    rals = fastgan.nn.GANLoss("rals")
    torch.testing.assert_close(rals.g(fake, real), R.g_loss(fake, "rals", real_logits=real), **TOL[F64])
    with pytest.raises(ValueError, match="'real_logits'"):
        rals.g(fake)
    with pytest.raises(ValueError, match="'kind'"):
        fastgan.nn.GANLoss("bce")
    with pytest.raises(ValueError, match="'reduction'"):
        fastgan.nn.GANLoss(reduction="none")
    with pytest.raises(TypeError, match="smoothing"):
        fastgan.nn.GANLoss(smoothing=0.1)
    with pytest.raises(TypeError, match=r"\.d\("):
        crit(real, fake)


# ---- gradient penalties ----------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("center", [None, 1.0])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_grad_norm_penalty_matches_reference(layout, center, dtype, device):
    g = logits((5, 3, 4, 6), dtype, device, scale=0.5)
    if layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        g = logits((5, 3, 6, 8), dtype, device, scale=0.5)[:, :, ::2, 1:7].transpose(2, 3)
    g.requires_grad_(True)
    pen = fastgan.ops.grad_norm_penalty(g, 2.5, center=center)
    assert pen.dtype == (F64 if dtype == F64 else torch.float32)
    (got,) = torch.autograd.grad(pen * 0.8, g)
    want, (wg,) = ref_grads(lambda x: R.grad_norm_penalty(x, 2.5, center=center), g, go=0.8)
    torch.testing.assert_close(pen.to(F64).cpu(), want.cpu(), **loss_tol(dtype))
    assert got.shape == g.shape
    assert_grad(got.cpu(), wg.cpu(), dtype)
    if layout == "channels_last":
        assert got.is_contiguous(memory_format=torch.channels_last)


def test_grad_norm_penalty_edge_cases():
    # one sample; a sample with an exactly zero gradient (norm 0: zero gradient, as torch's norm)
    g = logits((3, 8))
    g[1] = 0
    g.requires_grad_(True)
    for center in (None, 1.0):
        got = fastgan.ops.grad_norm_penalty(g, 1.5, center=center)
        want = R.grad_norm_penalty(g, 1.5, center=center)
        torch.testing.assert_close(got, want, **TOL[F64])
        torch.testing.assert_close(torch.autograd.grad(got, g)[0], torch.autograd.grad(want, g)[0], **TOL[F64])
    one = logits((1, 2, 2)).requires_grad_(True)
    torch.testing.assert_close(fastgan.ops.grad_norm_penalty(one, center=0.5),
                               R.grad_norm_penalty(one, center=0.5), **TOL[F64])
    # (N, 0): an empty sample has norm 0
    torch.testing.assert_close(fastgan.ops.grad_norm_penalty(torch.empty(2, 0, dtype=F64), 3.0, center=1.0),
                               torch.tensor(3.0, dtype=F64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_penalty_no_fp16_overflow(dtype):
    """||g||^2 of a large fp16 gradient overflows fp16 (max 65504); the fused op accumulates in fp32."""
    g = (logits((4, 3, 8, 8), scale=1.0).sign() * 300).to(dtype)
    # the naive sum overflows in float16 (max 65504), not in bfloat16 (float32's range)
    assert bool(torch.isinf(g.pow(2).flatten(1).sum(1)).any()) == (dtype == torch.float16)
    for center in (None, 1.0):
        pen = fastgan.ops.grad_norm_penalty(g, 10.0, center=center)
        assert torch.isfinite(pen)
        torch.testing.assert_close(pen.to(F64), R.grad_norm_penalty(g.to(F64), 10.0, center=center),
                                   **TOL[torch.float32])


@pytest.mark.parametrize("center", [None, 1.0, 0.0])
def test_grad_norm_penalty_gradcheck(center):
    g = logits((3, 2, 3), scale=0.7).requires_grad_(True)
    fn = lambda x: fastgan.ops.grad_norm_penalty(x, 1.7, center=center)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (g,))
    assert torch.autograd.gradgradcheck(fn, (g,))


def small_d(act, fused, seed=0, dtype=F64):
    """A small D: Conv2d + bias + act, twice, then a linear head. fused: nn.Conv2d(bias=False) +
    fastgan.nn.FusedBiasAct; else the plain torch twin with the same weights."""
    torch.manual_seed(seed)
    c1, c2 = nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.Conv2d(8, 16, 3, 2, 1, bias=False)
    b1, b2 = torch.randn(8) * 0.3, torch.randn(16) * 0.3
    head = nn.Linear(16 * 2 * 2, 1)

    def block(conv, b):
        if fused:
            fb = fastgan.nn.FusedBiasAct(b.numel(), act=act, alpha=0.2)
            with torch.no_grad():
                fb.bias.copy_(b)
            return [conv, fb]
        conv2 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 2, 1, bias=True)
        with torch.no_grad():
            conv2.weight.copy_(conv.weight)
            conv2.bias.copy_(b)
        return [conv2, nn.LeakyReLU(0.2) if act == "lrelu" else nn.Softplus(threshold=1e9) if act == "softplus"
                else nn.SiLU()]

    layers = block(c1, b1) + block(c2, b2) + [nn.Flatten(), head]
    return nn.Sequential(*layers).to(dtype)


def param_grads(d, loss):
    """d loss / d params; zeros where a parameter does not reach the penalty (the biases inside a
    piecewise-linear D: its input gradient depends on them only through the activation mask)."""
    ps = list(d.parameters())
    gs = torch.autograd.grad(loss, ps, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(ps, gs)]


def same_grads(fused_d, plain_d, g_fused, g_plain):
    """Parameter gradients of the fused D equal the plain D's (bias of FusedBiasAct = conv bias)."""
    fused = dict(zip([n for n, _ in fused_d.named_parameters()], g_fused))
    plain = dict(zip([n for n, _ in plain_d.named_parameters()], g_plain))
    pairs = [("0.weight", "0.weight"), ("1.bias", "0.bias"), ("2.weight", "2.weight"), ("3.bias", "2.bias"),
             ("5.weight", "5.weight"), ("5.bias", "5.bias")]
    for a, b in pairs:
        torch.testing.assert_close(fused[a], plain[b], **TOL[F64])
        if a.endswith("weight"):
            assert fused[a].abs().sum() > 0


@pytest.mark.parametrize("act", ["lrelu", "softplus", "swish"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_r1_matches_autograd(act, channels_last):
    fd, pd = small_d(act, True), small_d(act, False)
    x = logits((4, 3, 8, 8), scale=1.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xf, xp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    pen_f = fastgan.ops.r1_penalty(fd(xf), xf, gamma=10.0)
    pen_p = R.r1_penalty(pd(xp), xp, gamma=10.0)
    torch.testing.assert_close(pen_f, pen_p, **TOL[F64])
    same_grads(fd, pd, param_grads(fd, pen_f), param_grads(pd, pen_p))


@pytest.mark.parametrize("channels_last", [False, True])
def test_r2_matches_autograd(channels_last):
    """R2 at fakes that come out of a generator: the penalty and D's gradients match the plain
    double backward, and nothing reaches the generator (the fakes are detached)."""
    fd, pd = small_d("lrelu", True), small_d("lrelu", False)
    gen = torch.nn.Conv2d(3, 3, 1).double()
    fake = gen(logits((4, 3, 8, 8), scale=1.0))
    if channels_last:
        fake = fake.contiguous(memory_format=torch.channels_last)
    xf, xp = fake.detach().requires_grad_(True), fake.detach().requires_grad_(True)
    pen_f = fastgan.ops.r2_penalty(fd(xf), xf, gamma=3.0)
    pen_p = R.r2_penalty(pd(xp), xp, gamma=3.0)
    (gx,) = torch.autograd.grad(pd(xp).sum(), xp)
    torch.testing.assert_close(pen_f, 1.5 * gx.pow(2).flatten(1).sum(1).mean(), **TOL[F64])
    torch.testing.assert_close(pen_f, pen_p, **TOL[F64])
    same_grads(fd, pd, param_grads(fd, pen_f), param_grads(pd, pen_p))
    assert torch.autograd.grad(pen_f, list(gen.parameters()), allow_unused=True) == (None, None)
    with pytest.raises(ValueError, match="fastgan.ops.r2_penalty: argument 'fake_inputs' must require grad"):
        fastgan.ops.r2_penalty(fd(fake.detach()), fake.detach())
    with pytest.raises(TypeError, match="fastgan.ops.r2_penalty: argument 'gamma'"):
        fastgan.ops.r2_penalty(fd(xf), xf, gamma=float("nan"))


@pytest.mark.parametrize("act", ["lrelu", "softplus"])
def test_wgan_gp_matches_autograd(act):
    fd, pd = small_d(act, True), small_d(act, False)
    real, fake = logits((5, 3, 8, 8), scale=1.0), logits((5, 3, 8, 8), scale=1.0)
    eps = torch.rand(5, dtype=F64)
    pen_f = fastgan.ops.gradient_penalty(fd, real, fake, 10.0, eps=eps)
    pen_p = R.gradient_penalty(pd, real, fake, 10.0, eps=eps, center=1.0)
    torch.testing.assert_close(pen_f, pen_p, **TOL[F64])
    same_grads(fd, pd, param_grads(fd, pen_f), param_grads(pd, pen_p))
    # random eps: a penalty per call, positive, differentiable
    pen = fastgan.ops.gradient_penalty(fd, real, fake, center=0.0)
    assert pen > 0 and pen.requires_grad


def test_penalty_bad_inputs():
    d = small_d("lrelu", True)
    x = logits((2, 3, 8, 8))
    with pytest.raises(ValueError, match="'real_inputs'"):
        fastgan.ops.r1_penalty(d(x), x)
    with pytest.raises(TypeError, match="'real_logits'"):
        fastgan.ops.r1_penalty(None, x.requires_grad_(True))
    y = logits((2, 3, 8, 8)).requires_grad_(True)
    with pytest.raises(ValueError, match="depend"):
        fastgan.ops.r1_penalty(d(logits((2, 3, 8, 8))), y)
    with pytest.raises(TypeError, match="'discriminator'"):
        fastgan.ops.gradient_penalty("D", x, x)
    with pytest.raises(ValueError, match="same shape"):
        fastgan.ops.gradient_penalty(d, x, x[:1])
    with pytest.raises(ValueError, match="'eps'"):
        fastgan.ops.gradient_penalty(d, x, x, eps=torch.rand(3, dtype=F64))
    with pytest.raises(TypeError, match="'weight'"):
        fastgan.ops.gradient_penalty(d, x, x, weight=float("inf"))
    with pytest.raises(TypeError, match="'grad'"):
        fastgan.ops.grad_norm_penalty(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="'grad'"):
        fastgan.ops.grad_norm_penalty(torch.ones(()))


# ---- CUDA only -------------------------------------------------------------------------------
@pytest.mark.parametrize("device", CUDA_PATHS)
@pytest.mark.parametrize("n", [1, 1000, 4096, 65536, 300_000])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu_large_and_deterministic(kind, n, device):
    real = logits(n, torch.float32, device)
    fake = logits(n if kind == "rpgan" else n // 2 + 1, torch.float32, device)
    outs = [torch.ops.fastgan.gan_d_loss(real, fake, kind, "mean", 0.9, 0.0, True) for _ in range(2)]
    for a, b in zip(*outs):
        assert torch.equal(a, b)  # deterministic: same bits every run
    with cpu_kernels():
        cpu = torch.ops.fastgan.gan_d_loss(real.cpu(), fake.cpu(), kind, "mean", 0.9, 0.0, True)
    for a, b in zip(outs[0], cpu):
        torch.testing.assert_close(a.cpu(), b, atol=1e-5, rtol=1e-4)


@pytest.mark.cuda
def test_cuda_graph_capture():
    real, fake = logits(256, torch.float32, "cuda"), logits(256, torch.float32, "cuda")
    real.requires_grad_(True)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        fastgan.ops.d_loss(real, fake).backward()  # warm-up on a side stream
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        loss = fastgan.ops.d_loss(real, fake, "rals")
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(loss.double(), R.d_loss(real.double(), fake.double(), "rals"), **TOL[torch.float32])


@pytest.mark.parametrize("device", CUDA_PATHS)
@pytest.mark.parametrize("shape", [(64, 3, 64, 64), (3, 1), (2, 100_000)])
def test_cuda_penalty_matches_cpu(shape, device):
    g = logits(shape, torch.float32, device, scale=0.1).requires_grad_(True)
    for center in (None, 1.0):
        pen = fastgan.ops.grad_norm_penalty(g, 3.0, center=center)
        (gg,) = torch.autograd.grad(pen, g)
        gc = g.detach().cpu().clone().requires_grad_(True)
        with cpu_kernels():
            pc = fastgan.ops.grad_norm_penalty(gc, 3.0, center=center)
            (gc_grad,) = torch.autograd.grad(pc, gc)
        torch.testing.assert_close(pen.cpu(), pc, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gg.cpu(), gc_grad, atol=1e-6, rtol=1e-5)


# ---- the fp16/bf16 tolerances bite ------------------------------------------------------------
# A kernel off by a little must fail assert_grad on test_d_loss_matches_reference's inputs, while the
# correctly rounded gradient passes: a wrong target (real_label 0.99 for 1: the slope of the BCE in
# the logit), a gain of 1.01, logits biased by 0.01. Where the tolerance is too loose for that, the
# case is a strict xfail that says so (an XPASS, a failure, once the tolerance is tightened).


_BIAS = ("a 0.01 logit bias moves d loss / d logit by at most 0.0025 (sigmoid' <= 1/4): below "
         "TOL[float16]'s rtol 2e-3 plus atol")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype,bug", [
    (torch.float16, "label"), (torch.float16, "gain"), pytest.param(torch.float16, "bias", marks=too_loose(_BIAS)),
    (torch.bfloat16, "label"), (torch.bfloat16, "gain"),
    pytest.param(torch.bfloat16, "bias", marks=too_loose(_BIAS))], ids=str)
def test_grad_tolerance_catches_a_wrong_target_gain_or_bias(dtype, bug, reduction):
    real = logits((37, 1), dtype).requires_grad_(True)
    fake = logits((29,), dtype).requires_grad_(True)
    label, k, shift = {"label": (0.99, 1.0, 0.0), "gain": (1.0, 1.01, 0.0), "bias": (1.0, 1.0, 0.01)}[bug]
    _, want = ref_grads(lambda r, f: R.d_loss(r, f, "ns", reduction=reduction), real, fake, go=0.7)
    _, bad = ref_grads(lambda r, f: k * R.d_loss(r + shift, f + shift, "ns", reduction=reduction, real_label=label),
                       real, fake, go=0.7)
    caught = []
    for b, w in zip(bad, want):
        assert_grad(w.to(dtype), w, dtype)  # the correctly rounded gradient passes
        try:
            assert_grad(b.to(dtype), w, dtype)
        except AssertionError:
            caught.append(True)
    assert caught


def test_grad_tolerance_no_longer_passes_a_zero_gradient():
    """Before grad_tol, a mean over 37 logits (|gradient| < 2e-2) passed the absolute bfloat16 atol
    of the time (2e-2) whatever it was."""
    real, fake = logits((37, 1), torch.bfloat16), logits((29,), torch.bfloat16)
    _, (want, _) = ref_grads(lambda r, f: R.d_loss(r, f, "ns"), real, fake, go=0.7)  # as test_d_loss_...
    assert want.abs().max() < 2e-2
    with pytest.raises(AssertionError):
        assert_grad(torch.zeros_like(want, dtype=torch.bfloat16), want, torch.bfloat16)
    with pytest.raises(AssertionError):
        assert_grad((want * 0.9).to(torch.bfloat16), want, torch.bfloat16)
