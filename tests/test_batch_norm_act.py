"""fastgan.ops.batch_norm_act and fastgan.nn.FusedBatchNormAct2d against nn.BatchNorm2d + activation."""
import collections
import copy

import pytest
import torch
from torch import nn

from fastgan.bench.batch_norm_act import saved_bytes
from fastgan.nn import FusedBatchNormAct2d
from fastgan.ops import batch_norm_act, reference

from conftest import CUDA_PATHS, DEVICES, DTYPES, TOL, fails, BUGS

ACTS = [("relu", 0.0), ("lrelu", 0.2), ("linear", 0.0)]
ops = torch.ops.fastgan


def _x(shape=(4, 5, 6, 7), dtype=torch.float64, device="cpu", layout="contiguous"):
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.7).to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # non-contiguous, non-dense: every other column of a wider tensor
        wide = torch.randn(*shape[:3], 2 * shape[3], dtype=torch.float64).to(device=device, dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
        assert not x.is_contiguous()
    return x


def _params(C, device="cpu", dtype=torch.float64):
    w = (torch.randn(C, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype)
    w = torch.where(w.abs() < 0.1, torch.full_like(w, 0.3), w)  # keep the weights away from 0
    b = torch.randn(C, dtype=torch.float64).to(device=device, dtype=dtype)
    rm = torch.randn(C, dtype=torch.float64).to(device=device, dtype=dtype)
    rv = (torch.rand(C, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype)
    return w, b, rm, rv


def _run(fn, x, w, b, rm, rv, g, **kw):
    """y, grads of (x, w, b) and the running stats after one call of fn."""
    x = x.detach().clone().requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = fn(x, w, b, rm, rv, **kw)
    leaves = [t for t in (x, w, b) if t is not None]
    grads = torch.autograd.grad(y, leaves, g)
    return y, grads, rm, rv


def _close(a, b, **tol):
    torch.testing.assert_close(a, b, **tol)


# ---- correctness against the reference (float64) -------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act,alpha", ACTS)
def test_matches_reference(device, layout, training, act, alpha):
    x = _x(device=device, layout=layout)
    w, b, rm, rv = _params(x.shape[1], device)
    g = torch.randn_like(x)
    kw = dict(training=training, momentum=0.1, eps=1e-5, act=act, alpha=alpha)
    y, grads, rm1, rv1 = _run(batch_norm_act, x, w, b, rm, rv, g, **kw)
    y_r, grads_r, rm2, rv2 = _run(reference.batch_norm_act, x, w, b, rm, rv, g, **kw)
    tol = TOL[torch.float64]
    _close(y, y_r, **tol)
    for a, r in zip(grads, grads_r):
        _close(a, r, **tol)
    _close(rm1, rm2, **tol)
    _close(rv1, rv2, **tol)
    if training:
        assert not torch.equal(rm1, rm)  # the update happened
    if layout == "channels_last":  # no copy: the output keeps the input's layout
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("act,alpha", [("lrelu", 0.2), ("linear", 0.0), ("lrelu", -0.5), ("lrelu", 0.0)])
def test_memory_modes_and_affine(memory_efficient, affine, act, alpha):
    x = _x((3, 4, 5, 5))
    w, b, rm, rv = _params(4)
    if not affine:
        w = b = None
    g = torch.randn_like(x)
    kw = dict(training=True, act=act, alpha=alpha)
    y, grads, *_ = _run(lambda *a, **k: batch_norm_act(*a, memory_efficient=memory_efficient, **k),
                        x, w, b, rm, rv, g, **kw)
    y_r, grads_r, *_ = _run(reference.batch_norm_act, x, w, b, rm, rv, g, **kw)
    _close(y, y_r, **TOL[torch.float64])
    for a, r in zip(grads, grads_r):
        _close(a, r, **TOL[torch.float64])


def _tol(dtype, ref):
    """conftest tolerance, with atol relative to the size of the reference values."""
    t = TOL[dtype]
    return dict(rtol=t["rtol"], atol=t["atol"] * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,alpha", [("relu", 0.0), ("lrelu", 0.2)])
def test_dtypes(device, dtype, mixed, act, alpha):
    """Every dtype against the float64 reference; mixed: float32 parameters and running stats (autocast)."""
    if mixed and dtype in (torch.float32, torch.float64):
        pytest.skip("mixed parameters only for fp16/bf16 inputs")
    x64 = _x((8, 6, 5, 5))
    w64, b64, rm64, rv64 = _params(6)
    g64 = torch.randn_like(x64)
    pdt = torch.float32 if mixed else dtype
    # the reference sees the same (rounded) values as the op
    x64, g64 = x64.to(dtype).double(), g64.to(dtype).double()
    w64, b64, rm64, rv64 = (t.to(pdt).double() for t in (w64, b64, rm64, rv64))
    cast = lambda t, d: t.to(device=device, dtype=d)  # noqa: E731
    y, grads, rm, rv = _run(batch_norm_act, cast(x64, dtype), cast(w64, pdt), cast(b64, pdt), cast(rm64, pdt),
                            cast(rv64, pdt), cast(g64, dtype), training=True, act=act, alpha=alpha)
    y_r, grads_r, rm_r, rv_r = _run(reference.batch_norm_act, x64, w64, b64, rm64, rv64, g64,
                                    training=True, act=act, alpha=alpha)
    assert y.dtype == dtype and grads[0].dtype == dtype
    assert grads[1].dtype == pdt and rm.dtype == pdt
    _close(y.double().cpu(), y_r, **_tol(dtype, y_r))
    for a, r in zip(grads, grads_r):
        _close(a.double().cpu(), r, **_tol(dtype, r))
    # statistics accumulate in fp32 (fp64 for fp64): the running stats are as precise as the params
    _close(rm.double().cpu(), rm_r, **_tol(pdt, rm_r))
    _close(rv.double().cpu(), rv_r, **_tol(pdt, rv_r))


def test_stats_large_mean_small_spread():
    """Welford statistics stay accurate where sum/sum-of-squares would cancel (float32)."""
    x64 = torch.randn(16, 3, 32, 32, dtype=torch.float64) * 1e-2 + 1e3
    for x in (x64.float(), x64.float().contiguous(memory_format=torch.channels_last)):
        _, mean, var = ops.batch_norm_act(x, None, None, None, None, True, 1e-5, "linear", 0.0, False)
        xd = x.double()
        _close(mean.double(), xd.mean((0, 2, 3)), rtol=1e-6, atol=0)
        _close(var.double(), xd.var((0, 2, 3), unbiased=False), rtol=1e-3, atol=0)


# ---- gradients ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act,alpha", ACTS)
def test_gradcheck_gradgradcheck(act, alpha, training, memory_efficient, device):
    """First and second derivatives on every code path (cuda, simt: the CUDA kernels, float64)."""
    x = _x((3, 4, 3, 2), device=device).requires_grad_()
    w, b, rm, rv = _params(4, device)
    w.requires_grad_()
    b.requires_grad_()

    def f(x, w, b):
        return batch_norm_act(x, w, b, rm.clone(), rv.clone(), training=training, act=act, alpha=alpha,
                              memory_efficient=memory_efficient)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
def test_gradgradcheck_no_affine_channels_last(device):
    x = _x((3, 4, 3, 2), device=device, layout="channels_last").requires_grad_()
    f = lambda x: batch_norm_act(x, None, None, None, None, training=True, act="lrelu", alpha=0.1)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act,alpha,from_y", [("lrelu", 0.2, True), ("linear", 0.0, True), ("relu", 0.0, False),
                                              ("lrelu", 0.2, False)])
def test_backward_op_gradcheck(act, alpha, from_y, training, device):
    """The backward op's own autograd formula (used by double backward), every input incl. grad_mean/var."""
    C = 3
    ref = _x((2, C, 3, 2), device=device).requires_grad_()
    grad = torch.randn_like(ref).requires_grad_()
    mean, var, w, b, gm, gv = (t.to(device).requires_grad_() for t in (
        torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5,
        torch.rand(C, dtype=torch.float64) + 0.5, torch.randn(C, dtype=torch.float64),
        torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)))

    def f(grad, ref, mean, var, w, b, gm, gv):
        return ops.batch_norm_act_backward(grad, ref, mean, var, w, b, gm, gv, training, 1e-5, act, alpha, from_y)

    assert torch.autograd.gradcheck(f, (grad, ref, mean, var, w, b, gm, gv))


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_r1_penalty_matches_eager(memory_efficient):
    """An R1 penalty through a BatchNorm discriminator: second derivatives match nn.BatchNorm2d to
    float64 round-off (a slope rounded to float32 in the double backward was 1e-9 off)."""
    torch.manual_seed(1)

    def disc(fused):
        bn = FusedBatchNormAct2d(8, activation="lrelu", negative_slope=0.2,
                                 memory_efficient=memory_efficient) if fused else \
            nn.Sequential(nn.BatchNorm2d(8), nn.LeakyReLU(0.2))
        return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), bn, nn.Conv2d(8, 1, 4, 1, 0))

    d_f = disc(True).double()
    d_e = disc(False).double()
    d_e.load_state_dict({k.replace("1.", "1.0.", 1) if k.startswith("1.") else k: v
                         for k, v in d_f.state_dict().items()})
    with torch.no_grad():
        d_f[1].weight.uniform_(0.5, 1.5)
        d_f[1].bias.uniform_(-0.5, 0.5)
        d_e[1][0].weight.copy_(d_f[1].weight)
        d_e[1][0].bias.copy_(d_f[1].bias)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    out = []
    for d in (d_f, d_e):
        xr = x.clone().requires_grad_()
        pen = reference.r1_penalty(d(xr), xr, gamma=10.0)
        ps = list(d.parameters())
        grads = torch.autograd.grad(pen, ps, allow_unused=True, materialize_grads=True)
        out.append((pen, grads))
    _close(out[0][0], out[1][0], **TOL[torch.float64])
    for a, r in zip(out[0][1], out[1][1]):
        _close(a, r, **TOL[torch.float64])


# ---- torch.library checks -------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, layout):
    x = _x((3, 4, 3, 5), dtype=torch.float32, device=device, layout=layout)
    w, b, rm, rv = _params(4, device, torch.float32)
    for training in (True, False):
        for act, alpha in ACTS:
            for rg in (False, True):
                xx, ww, bb = (t.clone().requires_grad_(rg) for t in (x, w, b))
                torch.library.opcheck(ops.batch_norm_act.default,
                                      (xx, ww, bb, rm, rv, training, 1e-5, act, alpha, False))
            ref_is_y = act != "relu"
            y, mean, var = ops.batch_norm_act(x, w, b, rm, rv, training, 1e-5, act, alpha, False)
            g = torch.randn_like(x)
            for gm in (None, torch.randn(4, device=device)):
                args = (g, y if ref_is_y else x, mean, var, w, b, gm, gm, training, 1e-5, act, alpha, ref_is_y)
                torch.library.opcheck(ops.batch_norm_act_backward.default, args)
            args = (g.clone().requires_grad_(), (y if ref_is_y else x).clone().requires_grad_(), mean, var,
                    w.clone().requires_grad_(), b.clone().requires_grad_(), None, None, training, 1e-5, act,
                    alpha, ref_is_y)
            torch.library.opcheck(ops.batch_norm_act_backward.default, args)
    y, mean, var = ops.batch_norm_act(x, None, None, None, None, True, 1e-5, "relu", 0.0, False)
    torch.library.opcheck(ops.batch_norm_act.default, (x, None, None, None, None, True, 1e-5, "relu", 0.0, True))
    nbt = torch.tensor(3, device=device)
    for momentum, n in ((0.1, None), (None, nbt)):
        torch.library.opcheck(ops.batch_norm_act_update_stats_.default,
                              (rm.clone(), rv.clone(), mean, var, n, momentum, x.numel() // 4))


def _bn_act(C, act, alpha, **kw):
    eager_act = {"relu": nn.ReLU(), "lrelu": nn.LeakyReLU(alpha), "linear": nn.Identity()}[act]
    return nn.Sequential(nn.BatchNorm2d(C, **kw), eager_act)


def test_compile_fullgraph():
    """torch.compile(fullgraph=True): forward, backward and the running-stat update of the module."""
    torch._dynamo.reset()
    m = FusedBatchNormAct2d(6, activation="lrelu", negative_slope=0.2)
    e = _bn_act(6, "lrelu", 0.2)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
    e[0].load_state_dict(m.state_dict())
    cm = torch.compile(m, fullgraph=True)
    for _ in range(2):
        x = _x((4, 6, 5, 5), dtype=torch.float32)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = cm(xa), e(xb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        _close(ya, yb, **TOL[torch.float32])
        _close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    _close(m.weight.grad, e[0].weight.grad, rtol=1e-4, atol=1e-4)
    for k, v in e[0].state_dict().items():
        _close(m.state_dict()[k], v, **TOL[torch.float32])


def test_compile_fullgraph_functional_eval_cumulative():
    torch._dynamo.reset()
    x = _x((4, 3, 4, 4), dtype=torch.float32)
    w, b, rm, rv = _params(3, dtype=torch.float32)
    nbt = torch.tensor(2)

    def f(x, rm, rv):
        y1 = batch_norm_act(x, w, b, rm, rv, training=True, momentum=None, act="relu", num_batches_tracked=nbt)
        return y1 + batch_norm_act(x, w, b, rm, rv, training=False, act="linear")

    rm_a, rv_a, rm_b, rv_b = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    out = torch.compile(f, fullgraph=True)(x, rm_a, rv_a)
    out_r = (reference.batch_norm_act(x, w, b, rm_b, rv_b, training=True, momentum=None, act="relu",
                                      num_batches_tracked=nbt)
             + reference.batch_norm_act(x, w, b, rm_b, rv_b, training=False, act="linear"))
    _close(out, out_r, rtol=1e-5, atol=1e-5)
    _close(rm_a, rm_b, **TOL[torch.float32])
    _close(rv_a, rv_b, **TOL[torch.float32])


# ---- the module against nn.BatchNorm2d + activation ---------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act,alpha", ACTS)
def test_module_three_training_steps_then_eval(device, act, alpha, layout, momentum):
    torch.manual_seed(2)
    m = FusedBatchNormAct2d(5, momentum=momentum, activation=act, negative_slope=alpha).double().to(device)
    e = _bn_act(5, act, alpha, momentum=momentum).double().to(device)
    e[0].load_state_dict(m.state_dict())
    opt_m = torch.optim.SGD(m.parameters(), lr=0.1)
    opt_e = torch.optim.SGD(e.parameters(), lr=0.1)
    for _ in range(3):
        x = _x((6, 5, 4, 3), device=device, layout=layout)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = m(xa), e(xb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        _close(ya, yb, **TOL[torch.float64])
        _close(xa.grad, xb.grad, **TOL[torch.float64])
        _close(m.weight.grad, e[0].weight.grad, **TOL[torch.float64])
        _close(m.bias.grad, e[0].bias.grad, **TOL[torch.float64])
        opt_m.step()
        opt_e.step()
        opt_m.zero_grad()
        opt_e.zero_grad()
    sd_m, sd_e = m.state_dict(), e[0].state_dict()
    assert list(sd_m) == list(sd_e)
    for k in sd_e:
        _close(sd_m[k], sd_e[k], **TOL[torch.float64])
    assert sd_m["num_batches_tracked"].item() == 3
    m.eval()
    e.eval()
    x = _x((2, 5, 4, 3), device=device, layout=layout)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = m(xa), e(xb)
    ya.sum().backward()
    yb.sum().backward()
    _close(ya, yb, **TOL[torch.float64])
    _close(xa.grad, xb.grad, **TOL[torch.float64])
    _close(m.weight.grad, e[0].weight.grad, **TOL[torch.float64])
    for k in sd_e:  # eval leaves the running stats alone
        _close(m.state_dict()[k], e[0].state_dict()[k], **TOL[torch.float64])


@pytest.mark.parametrize("affine,track", [(False, True), (True, False), (False, False)])
def test_module_affine_and_tracking_options(affine, track):
    m = FusedBatchNormAct2d(4, affine=affine, track_running_stats=track, activation="lrelu",
                            negative_slope=0.1).double()
    e = _bn_act(4, "lrelu", 0.1, affine=affine, track_running_stats=track).double()
    assert list(m.state_dict()) == list(e[0].state_dict())
    for mode in ("train", "eval", "train"):
        m.train(mode == "train")
        e.train(mode == "train")
        x = _x((3, 4, 5, 5))
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = m(xa), e(xb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        _close(ya, yb, **TOL[torch.float64])
        _close(xa.grad, xb.grad, **TOL[torch.float64])
    for k, v in e[0].state_dict().items():
        _close(m.state_dict()[k], v, **TOL[torch.float64])


def test_state_dict_both_ways_and_repr():
    bn = nn.BatchNorm2d(7)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(11)
    m = FusedBatchNormAct2d(7, activation="lrelu", negative_slope=0.2)
    m.load_state_dict(bn.state_dict())
    bn2 = nn.BatchNorm2d(7)
    bn2.load_state_dict(m.state_dict())
    for k, v in bn.state_dict().items():
        assert torch.equal(m.state_dict()[k], v) and torch.equal(bn2.state_dict()[k], v)
    # an old checkpoint without num_batches_tracked loads, as into nn.BatchNorm2d (whose count after
    # it depends on the torch version: torch 2.13 keeps the module's own)
    old = collections.OrderedDict((k, v) for k, v in bn.state_dict().items() if k != "num_batches_tracked")
    old._metadata = {"": {"version": 1}}
    m.load_state_dict(old)
    bn2.load_state_dict(old)
    assert m.num_batches_tracked.item() == bn2.num_batches_tracked.item()
    assert "activation='lrelu'" in repr(m) and "negative_slope=0.2" in repr(m)
    assert copy.deepcopy(m).state_dict().keys() == m.state_dict().keys()


def test_autocast_cpu_bf16():
    """Under autocast a conv hands a bf16 tensor to float32 parameters: the output stays bf16."""
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    m = FusedBatchNormAct2d(4, activation="lrelu", negative_slope=0.2)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = m(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert m.running_mean.dtype == torch.float32
    y.float().sum().backward()
    assert m.weight.grad.dtype == torch.float32 and torch.isfinite(m.weight.grad).all()
    y_r = reference.batch_norm_act(h.float(), m.weight, m.bias, None, None, training=True, act="lrelu", alpha=0.2)
    _close(y.float(), y_r, **_tol(torch.bfloat16, y_r))


# ---- memory ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act,alpha,limit", [("lrelu", 0.2, 0.6), ("relu", 0.0, 0.6), ("linear", 0.0, 0.6)])
def test_saved_bytes_vs_eager(act, alpha, limit, dtype):
    x = torch.randn(8, 16, 16, 16, dtype=dtype, requires_grad=True)
    m = FusedBatchNormAct2d(16, activation=act, negative_slope=alpha).to(dtype)
    e = _bn_act(16, act, alpha).to(dtype)
    ours, _ = saved_bytes(m, x)
    eager, _ = saved_bytes(e, x)
    act_bytes = x.numel() * x.element_size()
    assert eager >= 2 * act_bytes if act != "linear" else eager >= act_bytes
    assert ours <= act_bytes * 1.05  # one activation plus per-channel statistics
    if act != "linear":  # eager linear (BatchNorm alone) keeps only x too
        assert ours / eager <= limit, (ours, eager)


# ---- odd shapes -----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 4, 4)])
def test_empty(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    C = shape[1]
    w, b, rm, rv = _params(C)
    w.requires_grad_()
    rm0 = rm.clone()
    y = batch_norm_act(x, w, b, rm, rv, training=True, act="lrelu", alpha=0.2)
    assert y.shape == x.shape
    assert torch.equal(rm, rm0)  # an empty batch leaves the running stats alone, as in PyTorch
    gx, gw = torch.autograd.grad(y.sum(), (x, w))
    assert gx.shape == x.shape and gw.shape == (C,) and (gw == 0).all()
    y = batch_norm_act(x, w, b, rm, rv, training=False, act="relu")
    assert y.shape == x.shape


def test_one_value_per_channel_eval_and_two_in_training():
    w, b, rm, rv = _params(3)
    x = _x((1, 3, 1, 1))
    y = batch_norm_act(x, w, b, rm, rv, training=False, act="relu")
    _close(y, reference.batch_norm_act(x, w, b, rm, rv, training=False, act="relu"), **TOL[torch.float64])
    x2 = _x((2, 3, 1, 1))
    _close(batch_norm_act(x2, w, b, rm.clone(), rv.clone(), training=True, act="lrelu", alpha=0.2),
           reference.batch_norm_act(x2, w, b, rm.clone(), rv.clone(), training=True, act="lrelu", alpha=0.2),
           **TOL[torch.float64])


def test_single_channel_and_4x4_maps_large_batch():
    for shape in ((5, 1, 3, 3), (128, 16, 4, 4)):
        for layout in ("contiguous", "channels_last"):
            x = _x(shape, dtype=torch.float32, layout=layout)
            w, b, rm, rv = _params(shape[1], dtype=torch.float32)
            g = torch.randn_like(x)
            y, grads, *_ = _run(batch_norm_act, x, w, b, rm, rv, g, training=True, act="lrelu", alpha=0.2)
            y_r, grads_r, *_ = _run(reference.batch_norm_act, x, w, b, rm, rv, g, training=True, act="lrelu",
                                    alpha=0.2)
            _close(y, y_r, rtol=1e-5, atol=1e-5)
            for a, r in zip(grads, grads_r):
                _close(a, r, **_tol(torch.float32, r))


def test_zero_weight_channel():
    """weight == 0: y-only backward gives a zero weight gradient there (documented); keeping x is exact."""
    x = _x((4, 3, 4, 4))
    w, b, rm, rv = _params(3)
    w[1] = 0
    g = torch.randn_like(x)
    kw = dict(training=True, act="lrelu", alpha=0.2)
    _, (gx, gw, gb), *_ = _run(batch_norm_act, x, w, b, rm, rv, g, **kw)
    _, (gx_r, gw_r, gb_r), *_ = _run(reference.batch_norm_act, x, w, b, rm, rv, g, **kw)
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
    _close(gx, gx_r, **TOL[torch.float64])
    _close(gb, gb_r, **TOL[torch.float64])
    assert gw[1] == 0 and gw_r[1] != 0
    _close(gw[[0, 2]], gw_r[[0, 2]], **TOL[torch.float64])
    _, (_, gw2, _), *_ = _run(lambda *a, **k: batch_norm_act(*a, memory_efficient=False, **k), x, w, b, rm, rv, g, **kw)
    _close(gw2, gw_r, **TOL[torch.float64])


# ---- bad input ------------------------------------------------------------------------------
def test_bad_inputs_functional():
    x = _x((2, 3, 4, 4))
    w, b, rm, rv = _params(3)
    with pytest.raises(ValueError, match="'x'.*4-D"):
        batch_norm_act(x[0], w, b, rm, rv, training=True)
    with pytest.raises(ValueError, match="'weight'.*\\(3,\\)"):
        batch_norm_act(x, torch.ones(4, dtype=x.dtype), b, rm, rv, training=True)
    with pytest.raises(ValueError, match="'running_mean'.*\\(3,\\)"):
        batch_norm_act(x, w, b, torch.zeros(2, dtype=x.dtype), rv, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_act(x[:1, :, :1, :1], w, b, rm, rv, training=True)
    with pytest.raises(ValueError, match="'act'.*swish"):
        batch_norm_act(x, w, b, rm, rv, training=True, act="swish")
    with pytest.raises(TypeError, match="'x'"):
        batch_norm_act(x.long(), w, b, rm, rv, training=True)
    with pytest.raises(TypeError, match="'weight'"):
        batch_norm_act(x, [1.0, 2.0, 3.0], b, rm, rv, training=True)
    with pytest.raises(ValueError, match="'running_mean' is required"):
        batch_norm_act(x, w, b, None, None, training=False)
    with pytest.raises(ValueError, match="num_batches_tracked"):
        batch_norm_act(x, w, b, rm, rv, training=True, momentum=None)
    with pytest.raises(ValueError, match="'eps'"):
        batch_norm_act(x, w, b, rm, rv, training=True, eps=-1.0)


def test_bad_inputs_ops():
    """The C++ checks name the argument too (callers of torch.ops.fastgan directly)."""
    x = _x((2, 3, 4, 4))
    w, b, rm, rv = _params(3)
    with pytest.raises(RuntimeError, match="argument 'weight'.*length 3"):
        ops.batch_norm_act(x, w[:2], b, rm, rv, True, 1e-5, "relu", 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'weight'.*dtype"):
        ops.batch_norm_act(x, w.half(), b, rm, rv, True, 1e-5, "relu", 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'x'.*4-D"):
        ops.batch_norm_act(x[0], w, b, rm, rv, True, 1e-5, "relu", 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'x'.*more than 1 value"):
        ops.batch_norm_act(x[:1, :, :1, :1], w, b, rm, rv, True, 1e-5, "relu", 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'act'.*gelu"):
        ops.batch_norm_act(x, w, b, rm, rv, True, 1e-5, "gelu", 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'running_mean'.*required"):
        ops.batch_norm_act(x, w, b, None, None, False, 1e-5, "relu", 0.0, False)
    y, mean, var = ops.batch_norm_act(x, w, b, rm, rv, True, 1e-5, "relu", 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'ref_is_output'.*cannot be inverted"):
        ops.batch_norm_act_backward(y, y, mean, var, w, b, None, None, True, 1e-5, "relu", 0.0, True)
    with pytest.raises(RuntimeError, match="argument 'grad'.*shape"):
        ops.batch_norm_act_backward(y[:1], x, mean, var, w, b, None, None, True, 1e-5, "relu", 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'mean'.*length 3"):
        ops.batch_norm_act_backward(y, x, mean[:1], var, w, b, None, None, True, 1e-5, "relu", 0.0, False)
    with pytest.raises(RuntimeError, match="argument 'num_batches_tracked'"):
        ops.batch_norm_act_update_stats_(rm, rv, mean, var, None, None, 32)
    with pytest.raises(RuntimeError, match="argument 'var'.*length 3"):
        ops.batch_norm_act_update_stats_(rm, rv, mean, var[:2], None, 0.1, 32)


def test_bad_inputs_module():
    m = FusedBatchNormAct2d(3)
    e = nn.BatchNorm2d(3)
    for bad in (torch.randn(2, 3, 4), torch.randn(2, 3, 4, 4, 4)):
        with pytest.raises(ValueError, match="expected 4D input"):
            m(bad)
        with pytest.raises(ValueError, match="expected 4D input"):
            e(bad)
    # a channel mismatch is a RuntimeError in nn.BatchNorm2d, so here too (naming num_features)
    with pytest.raises(RuntimeError, match="num_features"):
        m(torch.randn(2, 4, 5, 5))
    with pytest.raises(RuntimeError):
        e(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="'activation'"):
        FusedBatchNormAct2d(3, activation="prelu")


@pytest.mark.parametrize("device", CUDA_PATHS)
def test_cuda_errors_and_large_4x4_batch(device):
    """CUDA: device mismatches are named; 4x4 maps at batch 128 and 64x64 maps reduce correctly."""
    if device == "cuda":
        x = _x((2, 3, 4, 4), dtype=torch.float32, device="cuda")
        w, b, rm, rv = _params(3, "cpu", torch.float32)
        with pytest.raises(RuntimeError, match="argument 'weight'.*device"):
            ops.batch_norm_act(x, w, b.cuda(), rm.cuda(), rv.cuda(), True, 1e-5, "relu", 0.0, False)
    for shape in ((128, 64, 4, 4), (8, 16, 64, 64), (3, 5, 7, 9)):
        for layout in ("contiguous", "channels_last"):
            for dtype in (torch.float32, torch.bfloat16):
                w, b, rm, rv = (t.float() for t in _params(shape[1]))
                xx = _x(shape).to(device, dtype)
                g = torch.randn(shape, dtype=torch.float64).to(device, dtype)
                if layout == "channels_last":
                    xx = xx.contiguous(memory_format=torch.channels_last)
                y, grads, rm1, rv1 = _run(batch_norm_act, xx, *(t.to(device) for t in (w, b, rm, rv)), g,
                                          training=True, act="lrelu", alpha=0.2)
                # the reference from the same (rounded) inputs: from unrounded ones, an element that
                # rounding moves across 0 takes the other slope, which a correct kernel cannot match
                y_r, grads_r, rm2, rv2 = _run(reference.batch_norm_act, *(t.double().cpu() for t in (
                    xx, w, b, rm, rv, g)), training=True, act="lrelu", alpha=0.2)
                _close(y.double().cpu(), y_r, **_tol(dtype, y_r))
                for a, r in zip(grads, grads_r):
                    _close(a.double().cpu(), r, **_tol(dtype, r))
                _close(rm1.double().cpu(), rm2, rtol=1e-5, atol=1e-5)
                _close(rv1.double().cpu(), rv2, rtol=1e-5, atol=1e-5)


# ---- the fp16/bf16 tolerances bite ------------------------------------------------------------
# A kernel off by a little (lrelu slope 0.21 for 0.2, output gain x1.01, bias + 0.01) must fail
# test_dtypes' comparisons (_tol: TOL[dtype] with atol scaled by the largest value) on its inputs,
# while the correctly rounded result passes them. Where _tol is too loose for that, the case is a
# strict xfail that says so (an XPASS, a failure, once the tolerance is tightened); none is now.


@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("dtype,bug", [
    (torch.float16, "slope"), (torch.float16, "gain"), (torch.float16, "bias"),
    (torch.bfloat16, "slope"), (torch.bfloat16, "gain"), (torch.bfloat16, "bias")], ids=str)
def test_dtypes_tolerance_catches_a_wrong_slope_gain_or_bias(dtype, bug, mixed):
    """test_dtypes(act="lrelu", alpha=0.2) on its inputs: y and the gradients of x, weight, bias."""
    x64 = _x((8, 6, 5, 5))
    w64, b64, rm64, rv64 = _params(6)
    g64 = torch.randn_like(x64)
    pdt = torch.float32 if mixed else dtype
    x64, g64 = x64.to(dtype).double(), g64.to(dtype).double()
    w64, b64, rm64, rv64 = (t.to(pdt).double() for t in (w64, b64, rm64, rv64))

    def run(alpha, k, shift):
        fn = lambda *a, **kw: k * reference.batch_norm_act(*a, **kw)  # noqa: E731
        y, grads, *_ = _run(fn, x64, w64, b64 + shift, rm64, rv64, g64, training=True, act="lrelu", alpha=alpha)
        return [y.detach()] + list(grads)

    want = run(0.2, 1.0, 0.0)
    bad = run(*BUGS[bug])
    dtypes = (dtype, dtype, pdt, pdt)  # y, grad x: x's dtype; grad weight, grad bias: the parameters'
    for r, d in zip(want, dtypes):
        assert not fails(r.to(d).double(), r, **_tol(dtype, r))
    assert any(fails(a.to(d).double(), r, **_tol(dtype, r)) for a, r, d in zip(bad, want, dtypes))
