"""Every CUDA kernel of fastgan, executed on the SIMT emulator at the shapes that take each of its code
paths, against the float64 reference, with the same bits under every thread and block order where
the kernel is deterministic.

The op tests elsewhere already run on the emulator through their "simt" device parameter; this file
goes through the launchers' branches one by one: vector widths and tails, 16-byte-misaligned storage
offsets, channels_last, odd channel counts, several blocks and grid-stride loops (the emulated device
has config sm_count SMs, 2 by default, 1 here where a loop must wrap), partial warps, one-value
reductions, every dtype; the conv-transpose tensor-core kernel at the DCGAN shapes and at edge sizes,
and its first-use verification, path cache and fallbacks.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import fastgan
import fastgan.simt as simt
from fastgan.ops import reference as R
from fastgan.ops.bias_act import ref_kind
from conftest import DTYPES, TOL

pytestmark = pytest.mark.simt
S = torch.ops.fastgan_simt if simt.available() else None
F64 = torch.float64


def bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def same_bits(results):
    """Every run of a deterministic kernel gave identical tensors, bit for bit (NaN == NaN)."""
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first, other):
            assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
            assert torch.equal(bits(a), bits(b))


def misaligned(t):
    """t's values at a storage offset of one element: the data pointer is not 16-byte aligned."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = flat[1:].view(t.shape)
    out.copy_(t)
    assert out.data_ptr() % 16 != 0
    return out


@pytest.fixture
def sm1():
    old = simt.configure(sm_count=1)
    yield
    simt.configure(sm_count=old["sm_count"])


# ---- bias_act -----------------------------------------------------------------------------------------
BIAS_SHAPES = {  # name: (shape, channels_last, bias) -> the forward mode and backward kernel it takes
    "empty": ((0, 4, 3, 3), False, True),
    "one element": ((1,), False, False),
    "tail, no bias": ((37,), False, False),
    "rows (S % VEC == 0)": ((3, 5, 4, 4), False, True),
    "columns (channels_last, C % VEC == 0)": ((2, 16, 3, 3), True, True),
    "per element (S = 9)": ((3, 5, 3, 3), False, True),
    "per element (channels_last, C = 5)": ((2, 5, 3, 3), True, True),
    "bias on the last dim": ((4, 3, 7), False, True),
}


def bias_act_case(shape, cl, has_bias, dtype, act, offset=False):
    x64 = torch.randn(shape, dtype=F64)
    b64 = torch.randn(shape[-1] if name_last(shape) else shape[1 if len(shape) > 1 else 0], dtype=F64)
    x = x64.to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if offset:
        x = misaligned(x)
    return x, (b64.to(dtype) if has_bias else None)


def name_last(shape):
    return len(shape) == 3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act,clamp", [("lrelu", -1.0), ("linear", 0.8), ("tanh", 0.9), ("gelu", -1.0),
                                       ("linear", -1.0)])
@pytest.mark.parametrize("case", sorted(BIAS_SHAPES))
def test_bias_act_forward_and_backward(case, act, clamp, dtype):
    shape, cl, has_bias = BIAS_SHAPES[case]
    dim = 2 if name_last(shape) else (1 if len(shape) > 1 else 0)
    for offset in (False, True):
        if offset and 0 in shape:
            continue
        x, b = bias_act_case(shape, cl, has_bias, dtype, act, offset)
        g = torch.randn(shape, dtype=F64).to(dtype)
        if offset and g.numel():
            g = misaligned(g)
        kind = ref_kind(act, clamp)

        def run():
            y, mask = S.bias_act(x, b, dim, act, 0.2, 1.3, clamp)
            ref = {"mask": mask, "y": y, "x": x, "none": g}[kind]
            gx, gb = S.bias_act_backward(g, ref, b if kind == "x" else None, dim, act, 0.2, 1.3, clamp, False)
            return y, mask, gx

        outs = simt.schedules(run)
        same_bits(outs)
        y, mask, gx = outs[0]
        cl_kw = dict(act=act, alpha=0.2, gain=1.3, clamp=None if clamp < 0 else clamp, dim=dim)
        want = R.bias_act(x.double(), None if b is None else b.double(), **cl_kw)
        tol = TOL[dtype]
        torch.testing.assert_close(y.double(), want, **tol)
        assert y.stride() == torch.empty_like(x).stride()
        with simt.native():
            y_cpu, mask_cpu = torch.ops.fastgan.bias_act(x, b, dim, act, 0.2, 1.3, clamp)
        if kind == "mask":  # the class of each element, as the CPU kernel finds it (away from the edges)
            z = (x.double() + (0 if b is None else b.double().view([-1] + [1] * (x.dim() - 1 - dim))))
            edge = (z.abs() < 1e-2) | ((want.abs() - clamp).abs() < 2e-2)
            assert torch.equal(mask[~edge], mask_cpu[~edge])
        xr = x.double().requires_grad_()
        yr = R.bias_act(xr, None if b is None else b.double(), **cl_kw)
        (gx_want,) = torch.autograd.grad(yr, xr, g.double())
        far = ((want.abs() - (clamp if clamp >= 0 else 1e9)).abs() > 3e-2) if dtype != F64 else torch.ones_like(want, dtype=torch.bool)
        torch.testing.assert_close((gx.double() * far), gx_want * far, atol=tol["atol"] * 10, rtol=tol["rtol"] * 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["rows", "columns", "per element"])
def test_bias_act_bias_gradient(layout, dtype, sm1):
    """The fused bias-gradient reductions (a warp per channel and row range; a thread per VEC channels;
    the elementwise kernel + a sum), over several blocks and grid-stride iterations."""
    shape = {"rows": (64, 24, 8, 8), "columns": (96, 32, 4, 4), "per element": (40, 5, 5, 5)}[layout]
    x = torch.randn(shape, dtype=dtype)
    if layout == "columns":
        x = x.contiguous(memory_format=torch.channels_last)
    b = torch.randn(shape[1], dtype=dtype)
    g = torch.randn(shape, dtype=dtype)
    y, mask = S.bias_act(x, b, 1, "lrelu", 0.2, 1.0, -1.0)
    gx, gb = S.bias_act_backward(g, mask, None, 1, "lrelu", 0.2, 1.0, -1.0, True)
    want_gx = torch.where(x.double() + b.double().view(1, -1, 1, 1) > 0, g.double(), 0.2 * g.double())
    torch.testing.assert_close(gx.double(), want_gx, **TOL[dtype])
    n = x.numel() // shape[1]
    torch.testing.assert_close(gb.double(), want_gx.sum((0, 2, 3)), atol=TOL[dtype]["atol"] * n, rtol=1e-3)


def test_bias_act_bias_gradient_deterministic_when_asked(sm1):
    """With torch.use_deterministic_algorithms(True), the bias gradient has the same bits under every
    block and thread order (the atomicAdd reductions are not used)."""
    x = torch.randn(64, 24, 8, 8)
    b = torch.randn(24)
    g = torch.randn_like(x)
    mask = S.bias_act(x, b, 1, "lrelu", 0.2, 1.0, -1.0)[1]
    run = lambda: S.bias_act_backward(g, mask, None, 1, "lrelu", 0.2, 1.0, -1.0, True)  # noqa: E731
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        same_bits(simt.schedules(run))
    finally:
        torch.use_deterministic_algorithms(was)
    # without the flag the sum order follows the blocks: equal up to rounding
    outs = simt.schedules(run)
    for o in outs[1:]:
        torch.testing.assert_close(o[1], outs[0][1], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_bias_act_grid_stride_and_inplace(dtype, sm1):
    """More vectors than threads (one SM: 8 blocks of 256), and the in-place op on aligned and
    misaligned buffers (the misaligned one goes through an aligned copy)."""
    x = torch.randn(70001, dtype=dtype)
    want = F.leaky_relu(x.double(), 0.2)
    same_bits(simt.schedules(lambda: S.bias_act(x, None, 0, "lrelu", 0.2, 1.0, -1.0)))
    torch.testing.assert_close(S.bias_act(x, None, 0, "lrelu", 0.2, 1.0, -1.0)[0].double(), want, **TOL[dtype])
    for xx in (x.clone(), misaligned(x)):
        mask = S.bias_act_(xx, None, 0, "lrelu", 0.2, 1.0, -1.0)
        torch.testing.assert_close(xx.double(), want, **TOL[dtype])
        assert mask.shape == x.shape and mask.dtype == torch.uint8


# ---- batch_norm_act -------------------------------------------------------------------------------------
BN_SHAPES = {  # the reduction kernels: S > 1 (a block per channel and split), S == 1 (32 x 8 blocks)
    "NCHW": ((4, 5, 6, 7), False),
    "NCHW 4x4 batch 64 (many splits)": ((64, 3, 4, 4), False),
    "channels_last, C = 5 (partial columns)": ((4, 5, 3, 3), True),
    "channels_last, C = 40 (two column blocks)": ((8, 40, 2, 2), True),
    "one value per channel per sample": ((7, 3, 1, 1), False),
    "N = 1": ((1, 4, 5, 5), False),
    "instance_norm_act's planes view (1, N*C, H, W)": ((1, 96, 8, 8), False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", sorted(BN_SHAPES))
def test_batch_norm_act(case, training, dtype):
    shape, cl = BN_SHAPES[case]
    C = shape[1]
    x = (torch.randn(shape, dtype=F64) * 2 + 0.5).to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    acc = F64 if dtype == F64 else torch.float32
    w, b = torch.rand(C, dtype=acc) + 0.5, torch.randn(C, dtype=acc)
    rm, rv = torch.randn(C, dtype=acc), torch.rand(C, dtype=acc) + 0.5
    g = torch.randn(shape, dtype=F64).to(dtype)
    for offset in (False, True):
        xx, gg = (misaligned(x), misaligned(g)) if offset else (x, g)

        def run():
            y, mean, var = S.batch_norm_act(xx, w, b, rm, rv, training, 1e-5, "lrelu", 0.2, False)
            gx, gw, gb = S.batch_norm_act_backward(gg, y, mean, var, w, b, None, None, training, 1e-5, "lrelu",
                                                   0.2, True)
            rm2, rv2 = rm.clone(), rv.clone()
            S.batch_norm_act_update_stats_(rm2, rv2, mean, var, None, 0.1, xx.numel() // C)
            return y, mean, var, gx, gw, gb, rm2, rv2

        outs = simt.schedules(run)
        same_bits(outs)
        y, mean, var, gx, gw, gb, rm2, rv2 = outs[0]
        xr = x.double().requires_grad_()
        wr, br = w.double().requires_grad_(), b.double().requires_grad_()
        rmr, rvr = rm.double().clone(), rv.double().clone()
        yr = R.batch_norm_act(xr, wr, br, rmr, rvr, training=training, act="lrelu", alpha=0.2)
        grads = torch.autograd.grad(yr, (xr, wr, br), g.double())
        tol = TOL[dtype]
        scale = dict(atol=tol["atol"] * 10, rtol=tol["rtol"] * 10)
        torch.testing.assert_close(y.double(), yr, **scale)
        n = x.numel() // C
        torch.testing.assert_close(gx.double(), grads[0], **scale)
        torch.testing.assert_close(gw.double(), grads[1], atol=tol["atol"] * n, rtol=tol["rtol"] * 10)
        torch.testing.assert_close(gb.double(), grads[2], atol=tol["atol"] * n, rtol=tol["rtol"] * 10)
        if training:
            torch.testing.assert_close(rm2.double(), rmr, atol=1e-5 if dtype != F64 else 1e-12, rtol=1e-4)
            torch.testing.assert_close(rv2.double(), rvr, atol=1e-5 if dtype != F64 else 1e-12, rtol=1e-4)


CBN_SHAPES = {  # class_batch_norm_act: a block per (sample, channel) in the backward's sums
    "NCHW, vectors (S % VEC == 0)": ((5, 3, 4, 4), False),
    "NCHW, per element (S = 9)": ((4, 5, 3, 3), False),
    "channels_last, C = 8 (vectors of consecutive channels)": ((3, 8, 3, 3), True),
    "channels_last, C = 5": ((4, 5, 2, 3), True),
    "one channel": ((6, 1, 3, 3), False),
    "1x1 maps": ((9, 4, 1, 1), False),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", sorted(CBN_SHAPES))
def test_class_batch_norm_act(case, training, dtype):
    shape, cl = CBN_SHAPES[case]
    N, C, K = shape[0], shape[1], 4
    x = (torch.randn(shape, dtype=F64) * 2 + 0.5).to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    acc = F64 if dtype == F64 else torch.float32
    y = torch.arange(N) % K
    w, b = torch.rand(K, C, dtype=acc) + 0.5, torch.randn(K, C, dtype=acc)
    rm, rv = torch.randn(C, dtype=acc), torch.rand(C, dtype=acc) + 0.5
    g = torch.randn(shape, dtype=F64).to(dtype)
    gm, gv = torch.randn(C, dtype=acc), torch.randn(C, dtype=acc)
    for offset in (False, True):
        xx, gg = (misaligned(x), misaligned(g)) if offset else (x, g)

        def run():
            out, mean, var = S.class_batch_norm_act(xx, y, w, b, rm, rv, training, 1e-5, "lrelu", 0.2)
            gx, gw, gb = S.class_batch_norm_act_backward(gg, xx, y, mean, var, w, b, gm, gv, training, 1e-5,
                                                         "lrelu", 0.2)
            return out, mean, var, gx, gw, gb

        outs = simt.schedules(run)
        same_bits(outs)
        out, mean, var, gx, gw, gb = outs[0]
        xr = x.double().requires_grad_()
        wr, br = w.double().requires_grad_(), b.double().requires_grad_()
        outr = R.class_batch_norm_act(xr, y, wr, br, rm.double().clone(), rv.double().clone(), training=training,
                                      act="lrelu", alpha=0.2)
        grads = torch.autograd.grad(outr, (xr, wr, br), g.double())
        if training:  # the gradients reaching the mean/var outputs (double backward) add gm/M + 2 gv u/M
            M = x.numel() // C
            u = x.double() - mean.double().reshape(1, C, 1, 1)
            grads = (grads[0] + (gm.double().reshape(1, C, 1, 1) + 2 * gv.double().reshape(1, C, 1, 1) * u) / M,
                     ) + grads[1:]
        tol = TOL[dtype]
        scale = dict(atol=tol["atol"] * 10, rtol=tol["rtol"] * 10)
        torch.testing.assert_close(out.double(), outr, **scale)
        torch.testing.assert_close(gx.double(), grads[0], **scale)
        n = x.numel() // C
        torch.testing.assert_close(gw.double(), grads[1], atol=tol["atol"] * n, rtol=tol["rtol"] * 10)
        torch.testing.assert_close(gb.double(), grads[2], atol=tol["atol"] * n, rtol=tol["rtol"] * 10)


def test_class_batch_norm_act_label_out_of_range():
    """Labels on the host are checked by the launcher, naming 'y' (on a GPU the coefficient kernel
    traps instead: reading them would cost a device sync)."""
    x = torch.randn(2, 3, 2, 2)
    w, b = torch.ones(2, 3), torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match=r"y.*class labels in \[0, 2\)"):
        S.class_batch_norm_act(x, torch.tensor([0, 5]), w, b, None, None, True, 1e-5, "relu", 0.0)


def test_batch_norm_act_momentum_none_reads_counter_on_device():
    C = 3
    rm, rv = torch.zeros(C), torch.ones(C)
    mean, var = torch.randn(C), torch.rand(C) + 0.5
    nbt = torch.tensor(4, dtype=torch.long)
    S.batch_norm_act_update_stats_(rm, rv, mean, var, nbt, None, 10)
    torch.testing.assert_close(rm, mean / 4)
    torch.testing.assert_close(rv, 0.75 + var * 10 / 9 / 4)


# ---- gan_loss and the penalties ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 5, 511, 512, 513, 5000])
@pytest.mark.parametrize("kind", ["ns", "hinge", "wgan", "lsgan", "rals", "rpgan"])
def test_gan_loss(kind, n, dtype):
    real = (torch.randn(n, dtype=F64) * 3).to(dtype)
    fake = (torch.randn(n if kind == "rpgan" else n // 2 + 1, dtype=F64) * 3).to(dtype)
    rel = kind in ("rals", "rpgan")
    outs = simt.schedules(lambda: S.gan_d_loss(real, fake, kind, "mean", 0.9, 0.0, True)[:4]
                          + S.gan_g_loss(fake, real if rel else None, kind, "sum"))
    same_bits(outs)
    d, stats, gr, gdf, g, gf, ggr = outs[0]
    rr, ff = real.double().requires_grad_(), fake.double().requires_grad_()
    want_d = R.d_loss(rr, ff, kind, real_label=0.9)
    want_gr, want_gdf = torch.autograd.grad(want_d, (rr, ff))
    want_g = R.g_loss(ff, kind, real_logits=rr if rel else None, reduction="sum")
    want_gf, want_ggr = torch.autograd.grad(want_g, (ff, rr), allow_unused=True)
    tol = TOL[F64] if dtype == F64 else TOL[torch.float32]
    torch.testing.assert_close(d.double(), want_d.detach(), **tol)
    torch.testing.assert_close(g.double(), want_g.detach(), atol=tol["atol"] * n, rtol=tol["rtol"])
    torch.testing.assert_close(gr.double(), want_gr, **tol)
    torch.testing.assert_close(gdf.double(), want_gdf, **tol)
    torch.testing.assert_close(gf.double(), want_gf, **tol)
    if rel:  # the G loss's gradient for the real logits too
        torch.testing.assert_close(ggr.double(), want_ggr, **tol)
    else:
        assert ggr.numel() == 0
    torch.testing.assert_close(stats.double(), torch.stack([torch.sigmoid(real.double()).mean(),
                                                            torch.sigmoid(fake.double()).mean()]), **tol)
    go = torch.tensor(0.7, dtype=d.dtype)
    a, b = S.gan_loss_backward(go, gr, gr[:1], dtype)
    torch.testing.assert_close(a.double(), (0.7 * gr.double()).to(dtype).double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["ns", "rals", "rpgan"])
def test_gan_loss_grid_version(kind, dtype):
    """Above 2^17 logits the loss runs on a grid (partials per block, added in block order; rals also
    reduces its means first and adds its gradient constants last; rpgan's blocks own pairs): same bits
    in every order."""
    real = (torch.randn(150_001, dtype=F64) * 3).to(dtype)
    fake = (torch.randn(150_001 if kind == "rpgan" else 70_000, dtype=F64) * 3).to(dtype)
    rel = kind in ("rals", "rpgan")
    outs = simt.schedules(lambda: S.gan_d_loss(real, fake, kind, "mean", 1.0, 0.0, True)
                          + S.gan_g_loss(fake, real if rel else None, kind, "mean"))
    same_bits(outs)
    d, stats, gr, gdf, g, gf, ggr = outs[0]
    rr, ff = real.double().requires_grad_(), fake.double().requires_grad_()
    want_d = R.d_loss(rr, ff, kind)
    want_g = R.g_loss(ff, kind, real_logits=rr if rel else None)
    want_gr, want_gdf = torch.autograd.grad(want_d, (rr, ff))
    want_gf, want_ggr = torch.autograd.grad(want_g, (ff, rr), allow_unused=True)
    torch.testing.assert_close(gdf.double(), want_gdf, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(stats[1].double(), torch.sigmoid(fake.double()).mean(), rtol=1e-5, atol=1e-7)
    if rel:
        torch.testing.assert_close(ggr.double(), want_ggr, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(d.double(), want_d.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), want_g.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gr.double(), want_gr, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(gf.double(), want_gf, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(stats[0].double(), torch.sigmoid(real.double()).mean(), rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # 1024 blocks
def test_gan_loss_backward_grid_stride():
    """More elements than 1024 blocks x 256 threads: the elementwise backward loops."""
    g0, g1 = torch.randn(200_000), torch.randn(100_001)
    a, b = S.gan_loss_backward(torch.tensor(1.5), g0, g1, torch.bfloat16)
    torch.testing.assert_close(a, (1.5 * g0).bfloat16())
    torch.testing.assert_close(b, (1.5 * g1).bfloat16())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (5, 3, 7, 7), (2, 5000), (6, 3, 8, 8)])
@pytest.mark.parametrize("center", [None, 1.0])
def test_grad_penalty(shape, center, dtype):
    gin = (torch.randn(shape, dtype=F64) * 0.3).to(dtype)
    squared = center is None
    outs = simt.schedules(lambda: S.grad_penalty(gin, 0.0 if squared else center, 2.5, squared)
                          + (S.grad_penalty_backward(torch.tensor(0.5, dtype=torch.float32 if dtype != F64 else F64),
                                                     gin, S.grad_penalty(gin, 0.0 if squared else center, 2.5,
                                                                         squared)[1], 0.0 if squared else center,
                                                     2.5, squared),))
    same_bits(outs)
    pen, norms, gg = outs[0]
    gr = gin.double().requires_grad_()
    want = R.grad_norm_penalty(gr, 2.5, center=center)
    (want_g,) = torch.autograd.grad(want * 0.5, gr)
    tol = TOL[F64] if dtype == F64 else TOL[torch.float32]
    torch.testing.assert_close(pen.double(), want.detach(), **tol)
    torch.testing.assert_close(norms.double(), gin.double().flatten(1).norm(dim=1), **tol)
    torch.testing.assert_close(gg.double(), want_g.to(dtype).double(), **TOL[dtype])


@pytest.mark.slow  # 65535 blocks: seconds plain, many minutes under TSan
def test_grad_penalty_more_samples_than_grid_rows():
    """N > 65535: the blocks of the second grid dimension loop over samples."""
    gin = torch.randn(70_000, 3)
    pen, norms = S.grad_penalty(gin, 0.0, 1.0, True)
    torch.testing.assert_close(pen, gin.double().square().sum(1).mean().float())


# ---- diff_augment -------------------------------------------------------------------------------------------
AUG_SHAPES = {  # shape, channels_last, misaligned
    "one pixel": ((1, 3, 1, 1), False, False),
    "fewer pixels than threads": ((3, 3, 8, 8), False, False),
    "more pixels than threads (17 x 19)": ((2, 3, 17, 19), False, False),
    "channels_last, 4 channels": ((3, 4, 9, 7), True, False),
    "misaligned, one channel": ((5, 1, 16, 16), False, True),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", AUG_SHAPES)
def test_diff_augment(case, dtype):
    """Forward (with and without b) and backward: the reference's values and the same bits in every
    thread order (the per-sample sum is the fixed-tree block reduction)."""
    from fastgan.ops import diff_augment_params
    shape, cl, mis = AUG_SHAPES[case]
    x64 = torch.rand(shape, dtype=F64) * 2 - 1
    g64 = torch.randn(shape, dtype=F64)
    params, hw = diff_augment_params(x64, p=0.9, generator=torch.Generator().manual_seed(len(case)))
    x, g = x64.to(dtype), g64.to(dtype)
    if cl:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    if mis:
        x, g = misaligned(x), misaligned(g)
    outs = simt.schedules(lambda: (S.diff_augment(x, params, list(hw), True), S.diff_augment(x, params, list(hw), False),
                                   S.diff_augment_backward(g, params, list(hw))))
    same_bits(outs)
    y, y0, gx = outs[0]
    assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    xr = x.double().requires_grad_(True)
    want = R.diff_augment_apply(xr, params, hw)
    (want_g,) = torch.autograd.grad(want, xr, g.double())
    # without b: the linear part (the augmentation of x less that of zeros)
    want0 = R.diff_augment_apply(xr.detach(), params, hw) - R.diff_augment_apply(torch.zeros_like(xr), params, hw)
    torch.testing.assert_close(y.double(), want.detach(), **TOL[dtype])
    torch.testing.assert_close(y0.double(), want0, **TOL[dtype])
    torch.testing.assert_close(gx.double(), want_g, **TOL[dtype])


@pytest.mark.slow  # 65535 blocks: seconds plain, many minutes under TSan
def test_diff_augment_more_samples_than_blocks():
    """N > 65535: the blocks loop over samples."""
    from fastgan.ops import diff_augment_params
    x = torch.rand(70_000, 3, 1, 2)
    params, hw = diff_augment_params(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(S.diff_augment(x, params, list(hw), True).double(),
                               R.diff_augment_apply(x.double(), params, hw), **TOL[torch.float32])


# ---- conv_transpose2d_act: the tensor-core kernel ------------------------------------------------------------
# The DCGAN layers take seconds each on the emulator (minutes under TSan): marked slow.
CONV_CASES = {  # (n, cin, cout, h, w, k, s, p, op)
    "DCGAN 4x4 -> 8x8 (512 -> 256)": (1, 512, 256, 4, 4, 4, 2, 1, 0),
    "DCGAN 8x8 -> 16x16 (256 -> 128)": (1, 256, 128, 8, 8, 4, 2, 1, 0),
    "DCGAN 16x16 -> 32x32 (128 -> 64)": (1, 128, 64, 16, 16, 4, 2, 1, 0),
    "DCGAN 32x32 -> 64x64 (64 -> 3)": (1, 64, 3, 32, 32, 4, 2, 1, 0),
    "DCGAN z -> 4x4 (gemm mode, 128 -> 512)": (2, 128, 512, 1, 1, 4, 1, 0, 0),
    "odd tiles, output padding": (3, 16, 24, 5, 7, 4, 2, 1, 1),
    "stride 3, k 3": (2, 8, 8, 9, 3, 3, 3, 0, 2),
    "stride 1, k 5, Cout 72": (2, 32, 72, 6, 6, 5, 1, 2, 0),
    "stride 4, Cin = VEC, Cout 1": (2, 8, 1, 3, 3, 4, 4, 0, 0),
    "gemm mode, N = 1": (1, 24, 8, 1, 1, 4, 1, 0, 0),
    "gemm mode, k 3 s 2": (3, 200, 16, 1, 1, 3, 2, 0, 0),
}
CONV_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
CONV_TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 4e-3}


def conv_inputs(case, dtype, seed=0):
    n, cin, cout, h, w, k, s, p, op = CONV_CASES[case]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(cin, cout, k, k, generator=g) / math.sqrt(cin)).to(dtype)
    b = torch.randn(cout, generator=g).to(dtype)
    return x, wt, b, (s, p, op)


def conv_call(x, wt, b, geo, act="lrelu", clamp=-1.0):
    s, p, op = geo
    return S.conv_transpose2d_act(x, wt, b, [s, s], [p, p], [op, op], 1, [1, 1], act, 0.2, 1.3, clamp)


@pytest.fixture
def conv_path(monkeypatch):
    def set_path(p):
        monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", p)
    return set_path


@pytest.mark.parametrize("dtype", CONV_DTYPES, ids=str)
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.startswith("DCGAN") else c
                                  for c in sorted(CONV_CASES)])
def test_conv_transpose_fused_kernel(case, dtype, conv_path):
    """The WMMA kernel (forced) against F.conv_transpose2d in float64, y and the backward's mask."""
    conv_path("fused")
    x, wt, b, geo = conv_inputs(case, dtype)
    s, p, op = geo
    big = x.shape[1] >= 256
    orders = ("fwd", "rev") if big else simt.SCHEDULES
    outs = simt.schedules(lambda: conv_call(x, wt, b, geo, "lrelu", 3.0), orders)
    same_bits(outs)
    y, mask = outs[0]
    ref = R.conv_transpose2d_act(x.double(), wt.double(), b.double(), s, p, op, act="lrelu", alpha=0.2, gain=1.3,
                                 clamp=3.0)
    tol = CONV_TOL[dtype]
    if x.shape[2] > 1 or x.shape[3] > 1:  # x is unambiguously channels_last: so is y, without a copy
        assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), ref, atol=tol * ref.abs().max().item(), rtol=tol)
    z = F.conv_transpose2d(x.double(), wt.double(), b.double(), s, p, op)
    out = F.leaky_relu(z, 0.2) * 1.3
    want_mask = torch.where(out.abs() > 3.0, 0, torch.where(z > 0, 1, 2)).to(torch.uint8)
    certain = (z.abs() > 0.05 * z.abs().max()) & ((out.abs() - 3.0).abs() > 0.05 * out.abs().max())
    assert torch.equal(mask[certain], want_mask[certain])
    if not big:  # both fragment layouts: the epilogue must not depend on one
        old = simt.configure(wmma_map="blocked")
        try:
            y2, _ = conv_call(x, wt, b, geo, "lrelu", 3.0)
        finally:
            simt.configure(wmma_map=old["wmma_map"])
        torch.testing.assert_close(y2.double(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


@pytest.mark.parametrize("act", ["gelu", "linear", "tanh"])
def test_conv_transpose_fused_epilogues(act, conv_path):
    """The pre-activation output (gelu), no ref (linear), y-kind (tanh), in NCHW gemm mode too."""
    conv_path("fused")
    for case in ("odd tiles, output padding", "gemm mode, k 3 s 2"):
        x, wt, b, (s, p, op) = conv_inputs(case, torch.float16)
        if case.startswith("gemm"):
            x = x.contiguous()  # a 1x1 input: either layout
        y, ref_out = conv_call(x, wt, b, (s, p, op), act)
        z = F.conv_transpose2d(x.double(), wt.double(), None, s, p, op)
        want = R.bias_act(z, b.double(), act=act, gain=1.3)
        torch.testing.assert_close(y.double(), want, atol=4e-3 * want.abs().max().item(), rtol=4e-3)
        if act == "gelu":
            torch.testing.assert_close(ref_out.double(), z, atol=4e-3 * z.abs().max().item(), rtol=4e-3)
        else:
            assert ref_out.numel() == 0


def test_conv_transpose_backward_through_the_emulated_ops(conv_path):
    """The module's forward (fused kernel) and backward (bias_act_backward + convolution_backward). The
    reference backward takes the forward's own mask: where TF32 rounding puts a pre-activation on the
    other side of zero than float64 does, the slopes differ, and that is not the backward's error."""
    conv_path("fused")
    m = fastgan.nn.FusedConvTranspose2d(16, 8, 4, 2, 1, activation="lrelu").to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    with simt.backend():
        y = m(x)
        gy = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, m.weight, m.bias), gy)
    mask = S.conv_transpose2d_act(x.detach(), m.weight.detach(), m.bias.detach(), [2, 2], [1, 1], [0, 0], 1,
                                  [1, 1], "lrelu", 0.2, 1.0, -1.0)[1]
    ref = R.conv_transpose2d_act(x.double(), m.weight.double(), m.bias.double(), 2, 1, act="lrelu")
    torch.testing.assert_close(y.double(), ref, atol=1e-2, rtol=1e-2)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, m.weight, m.bias))
    z = F.conv_transpose2d(xd, wd, bd, 2, 1)
    slope = torch.where(mask == 1, 1.0, 0.2).double()
    want = torch.autograd.grad(z, (xd, wd, bd), gy.double() * slope)
    for a, w in zip(got, want):
        torch.testing.assert_close(a.double(), w, atol=1e-4, rtol=1e-4)


# ---- conv_transpose2d_act: the launcher's first-use check, path cache and fallbacks --------------------------
@pytest.fixture
def fresh_paths(monkeypatch):
    """The auto path, an empty path cache, and the emulator's settings restored afterwards."""
    monkeypatch.delenv("FASTGAN_CONV_TRANSPOSE_PATH", raising=False)
    simt._simt.clear_conv_transpose_paths()
    old = simt.configure()
    yield lambda: list(simt._simt.conv_transpose_paths())
    simt._simt.clear_conv_transpose_paths()
    simt.configure(**{k: v for k, v in old.items() if k != "strict_sites"})


def aten_reference(x, wt, b, geo, act="lrelu", clamp=-1.0):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTGAN_CONV_TRANSPOSE_PATH", "aten")
        return conv_call(x, wt, b, geo, act, clamp)


def test_conv_first_use_checks_times_and_caches(fresh_paths):
    x, wt, b, geo = conv_inputs("odd tiles, output padding", torch.float16)
    y1 = conv_call(x, wt, b, geo)
    (entry,) = fresh_paths()
    assert entry[1] in ("fused", "aten") and entry[2] > 0 and entry[3] > 0  # both timed
    y2 = conv_call(x, wt, b, geo)
    assert fresh_paths() == [entry]  # the second call uses the cache
    torch.testing.assert_close(y1[0], y2[0])


def test_conv_first_use_on_zeros_decides_nothing(fresh_paths):
    x, wt, b, geo = conv_inputs("stride 3, k 3", torch.bfloat16)
    y, _ = conv_call(torch.zeros_like(x), wt, b, geo)
    assert fresh_paths() == []  # all-zero input: no verdict, the next call checks again
    torch.testing.assert_close(y, aten_reference(torch.zeros_like(x), wt, b, geo)[0])
    conv_call(x, wt, b, geo)
    assert len(fresh_paths()) == 1


@pytest.mark.slow
def test_conv_first_use_catches_an_error_in_one_tile(fresh_paths, capfd, recwarn):
    """A tensor-core error in one element of one tile (emulated): smaller than 1% of max |y| (what a
    whole-tensor check would let through) but far beyond that element's rounding bound."""
    x, wt, b, geo = conv_inputs("DCGAN 16x16 -> 32x32 (128 -> 64)", torch.float16)
    clean = aten_reference(x, wt, b, geo, act="linear")[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTGAN_CONV_TRANSPOSE_PATH", "fused")
        simt.configure(wmma_fault=2e-3)
        faulty = conv_call(x, wt, b, geo, "linear")[0]
    diff = (faulty.double() - clean.double()).abs()
    assert 0 < diff.max() < 0.01 * clean.abs().max(), "the injected error is hidden from a whole-tensor check"
    y = conv_call(x, wt, b, geo, "linear")[0]
    # TORCH_WARN: a Python warning under autograd, else printed by c10
    said = capfd.readouterr().err + " ".join(str(w.message) for w in recwarn)
    assert "disagreed with cuDNN" in said and "8 of 65536 outputs differ" in said
    (entry,) = fresh_paths()
    assert entry[1] == "aten" and "disagreed" in entry[4]
    torch.testing.assert_close(y, clean)


def test_conv_deterministic_algorithms_choose_without_timing(fresh_paths):
    x, wt, b, geo = conv_inputs("odd tiles, output padding", torch.bfloat16)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        conv_call(x, wt, b, geo)
    finally:
        torch.use_deterministic_algorithms(was)
    (entry,) = fresh_paths()
    assert entry[1] == "fused" and entry[2] == entry[3] == 0 and "not timed" in entry[4]


def test_conv_untuned_shape_in_graph_capture_runs_aten(fresh_paths):
    x, wt, b, geo = conv_inputs("odd tiles, output padding", torch.float16)
    simt.configure(capturing=True)
    y, mask = conv_call(x, wt, b, geo)
    assert fresh_paths() == []  # no tuning (it would synchronise) inside a capture
    ya, ma = aten_reference(x, wt, b, geo)
    assert torch.equal(y, ya) and torch.equal(mask, ma)


def test_conv_timing_failure_leaks_no_events(fresh_paths):
    x, wt, b, geo = conv_inputs("odd tiles, output padding", torch.float16)
    before = simt._simt.live_events()
    simt.configure(fail_event_record_at=4)  # fails inside the timing loop
    with pytest.raises(RuntimeError, match="CUDA error"):
        conv_call(x, wt, b, geo)
    assert simt._simt.live_events() == before
    assert fresh_paths() == []


def test_conv_too_many_columns_falls_back_to_aten(fresh_paths, conv_path):
    """The 1x1-input (gemm) mode puts kernel_h * kernel_w * out_channels columns on the grid's y
    dimension: past 65535 blocks of 64, the auto path takes the aten path instead of failing."""
    x = torch.randn(1, 8, 1, 1, dtype=torch.bfloat16)
    wt = torch.randn(8, 65536 * 64 // 16 + 1, 4, 4, dtype=torch.bfloat16) * 0.3
    y, _ = conv_call(x, wt, None, (1, 0, 0), "linear")
    assert fresh_paths() == []  # not even tried
    torch.testing.assert_close(y.double(), F.conv_transpose2d(x.double(), wt.double()) * 1.3, atol=0.05, rtol=0.02)
    conv_path("fused")
    with pytest.raises(RuntimeError, match="too many output columns"):
        conv_call(x, wt, None, (1, 0, 0), "linear")


@pytest.mark.parametrize("case", ["gemm mode, k 3 s 2", "gemm mode, N = 1"])
def test_conv_gemm_mode_weight_at_any_address(case, conv_path):
    """The gemm mode's packed weight can be a view of the user's weight: one that is not 16-byte
    aligned (a view into a flat parameter buffer) must not reach the 16-byte cp.async."""
    conv_path("fused")
    x, wt, b, geo = conv_inputs(case, torch.float16)
    wv = misaligned(wt)
    y, _ = conv_call(x, wv, b, geo)
    ya, _ = aten_reference(x, wt, b, geo)
    torch.testing.assert_close(y.double(), ya.double(), atol=4e-3 * ya.abs().max().item(), rtol=4e-3)


def test_conv_packed_weight_cache_follows_the_weight(conv_path):
    """The packed weight is reused for the same weight tensor, and repacked after any in-place update."""
    conv_path("fused")
    x, wt, b, geo = conv_inputs("odd tiles, output padding", torch.float16)
    y1 = conv_call(x, wt, b, geo)[0]
    assert torch.equal(conv_call(x, wt, b, geo)[0], y1)
    with torch.no_grad():
        wt.mul_(-1)  # same storage, new version
    y2 = conv_call(x, wt, b, geo)[0]
    torch.testing.assert_close(y2, aten_reference(x, wt, b, geo)[0], atol=0.05, rtol=0.01)
    w_new = wt.clone()  # another tensor, maybe at a recycled address
    del wt
    torch.testing.assert_close(conv_call(x, w_new, b, geo)[0], y2)


def test_conv_before_sm80_takes_the_aten_path(fresh_paths, conv_path):
    x, wt, b, geo = conv_inputs("odd tiles, output padding", torch.float16)
    simt.configure(cc=(7, 5))
    y, _ = conv_call(x, wt, b, geo)
    assert fresh_paths() == []
    assert torch.equal(y, aten_reference(x, wt, b, geo)[0])
    conv_path("fused")
    with pytest.raises(RuntimeError, match="compute capability 8.0"):
        conv_call(x, wt, b, geo)
