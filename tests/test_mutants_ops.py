"""Tests written to kill mutants that survived mutation testing of the Python side of fastgan/ops
(see docs/testing.md): exact error messages (op and argument named), documented defaults, the fake
(meta) kernels against the CPU kernels (shapes, dtypes, strides), rare branches of the autograd
formulas (first and second order), and the verification mode's messages and kink masks.

Oracles are independent: torch functional forms, or the math written out by hand. CPU only, fast.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

import fastgan
import fastgan.ops
from fastgan.ops import reference as R

F64 = torch.float64
TOL64 = dict(atol=1e-10, rtol=1e-10)
ops = torch.ops.fastgan

pytestmark = pytest.mark.usefixtures("one_thread")


def _raises(exc, text):
    return pytest.raises(exc, match="^" + re.escape(text) + "$")


# ---- penalties: r1_penalty, gradient_penalty (fastgan/ops/penalty.py) --------------------------

class _QuadD(nn.Module):
    """D(x) = sum over non-batch dims of w * x^2: dD/dx = 2 w x, known by hand."""

    def __init__(self, shape, dtype=F64):
        super().__init__()
        self.w = nn.Parameter(torch.rand(shape, dtype=dtype) + 0.5)

    def forward(self, x):
        return (self.w * x * x).reshape(x.shape[0], -1).sum(1)


def _gp_by_hand(w, real, fake, eps, weight, center):
    """weight * mean_i (||2 w x_hat_i|| - center)^2 with x_hat = fake + eps (real - fake), float64."""
    n = real.shape[0]
    e = eps.reshape([n] + [1] * (real.dim() - 1))
    x_hat = fake.double() + e * (real.double() - fake.double())
    g = (2 * w.double() * x_hat).reshape(n, -1)
    return weight * ((g.pow(2).sum(1).sqrt() - center) ** 2).mean()


def test_r1_penalty_default_gamma_is_one():
    d = _QuadD((3, 4))
    x = torch.randn(5, 3, 4, dtype=F64, requires_grad=True)
    want = 0.5 * (2 * d.w.detach() * x.detach()).pow(2).reshape(5, -1).sum(1).mean()
    torch.testing.assert_close(fastgan.ops.r1_penalty(d(x), x), want, **TOL64)
    torch.testing.assert_close(R.r1_penalty(d(x), x), want, **TOL64)
    torch.testing.assert_close(fastgan.ops.r1_penalty(d(x), x, 3.0), 3 * want, **TOL64)


def test_r1_penalty_error_messages():
    fn = "fastgan.ops.r1_penalty"
    d = _QuadD((3,))
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    with _raises(TypeError, f"{fn}: argument 'real_logits' must be a torch.Tensor, got NoneType"):
        fastgan.ops.r1_penalty(None, x)
    with _raises(TypeError, f"{fn}: argument 'real_inputs' must be a torch.Tensor, got list"):
        fastgan.ops.r1_penalty(d(x), [1.0])
    with _raises(TypeError, f"{fn}: argument 'real_inputs' must be a floating-point tensor "
                            "(float32, float16, bfloat16 or float64), got torch.int64"):
        fastgan.ops.r1_penalty(d(x), torch.ones(2, 3, dtype=torch.long))
    with _raises(TypeError, f"{fn}: argument 'gamma' must be a finite number, got nan"):
        fastgan.ops.r1_penalty(d(x), x, float("nan"))
    y = torch.randn(2, 3, dtype=F64)
    with _raises(ValueError, f"{fn}: argument 'real_inputs' must require grad (call "
                             "real_inputs.requires_grad_(True) before computing real_logits from it)"):
        fastgan.ops.r1_penalty(d(y), y)
    msg = (f"{fn}: the logits do not depend on 'real_inputs' through autograd; compute them from "
           "'real_inputs' after real_inputs.requires_grad_(True)")
    with _raises(ValueError, msg):  # logits that need no grad at all
        fastgan.ops.r1_penalty(torch.randn(2, dtype=F64), x)
    with _raises(ValueError, msg):  # logits of D's parameters only
        fastgan.ops.r1_penalty(d(y), x)
    with torch.no_grad():
        logits = d(x)
        with _raises(RuntimeError, f"{fn}: gradient penalties need autograd; do not call it under "
                                   "torch.no_grad()"):
            fastgan.ops.r1_penalty(logits, x)


def test_gradient_penalty_error_messages():
    fn = "fastgan.ops.gradient_penalty"
    d = _QuadD((3,))
    x = torch.randn(2, 3, dtype=F64)
    with _raises(TypeError, f"{fn}: argument 'discriminator' must be callable (a module), got str"):
        fastgan.ops.gradient_penalty("D", x, x)
    with _raises(TypeError, f"{fn}: argument 'real' must be a torch.Tensor, got list"):
        fastgan.ops.gradient_penalty(d, [1.0], x)
    with _raises(TypeError, f"{fn}: argument 'fake' must be a torch.Tensor, got int"):
        fastgan.ops.gradient_penalty(d, x, 3)
    with _raises(TypeError, f"{fn}: argument 'weight' must be a finite number, got nan"):
        fastgan.ops.gradient_penalty(d, x, x, float("nan"))
    with _raises(TypeError, f"{fn}: argument 'center' must be a finite number, got inf"):
        fastgan.ops.gradient_penalty(d, x, x, center=float("inf"))
    with _raises(ValueError, f"{fn}: arguments 'real' and 'fake' must have the same shape, got (2, 3) "
                             "and (1, 3)"):
        fastgan.ops.gradient_penalty(d, x, x[:1])
    with _raises(ValueError, f"{fn}: argument 'fake' is on meta but 'real' is on cpu"):
        fastgan.ops.gradient_penalty(d, x, x.to("meta"))
    with _raises(ValueError, f"{fn}: argument 'real' needs a non-empty batch dimension first, got shape ()"):
        fastgan.ops.gradient_penalty(d, torch.tensor(1.0), torch.tensor(2.0))
    with _raises(ValueError, f"{fn}: argument 'real' needs a non-empty batch dimension first, got shape (0, 3)"):
        fastgan.ops.gradient_penalty(d, x[:0], x[:0])
    with _raises(TypeError, f"{fn}: argument 'eps' must be a torch.Tensor, got list"):
        fastgan.ops.gradient_penalty(d, x, x, eps=[0.5, 0.5])
    with _raises(ValueError, f"{fn}: argument 'eps' must have one value per sample (2), got shape (3,)"):
        fastgan.ops.gradient_penalty(d, x, x, eps=torch.rand(3, dtype=F64))
    with _raises(ValueError, f"{fn}: argument 'eps' is on meta but 'real' is on cpu"):
        fastgan.ops.gradient_penalty(d, x, x, eps=torch.rand(2, dtype=F64).to("meta"))
    with _raises(TypeError, f"{fn}: the discriminator must return a tensor, got float"):
        fastgan.ops.gradient_penalty(lambda t: 1.5, x, x)
    with _raises(ValueError, f"{fn}: the logits do not depend on 'x_hat' through autograd; compute them "
                             "from 'x_hat' after x_hat.requires_grad_(True)"):
        fastgan.ops.gradient_penalty(lambda t: torch.ones(2, dtype=F64), x, x)
    with torch.no_grad():
        with _raises(RuntimeError, f"{fn}: gradient penalties need autograd; do not call it under "
                                   "torch.no_grad()"):
            fastgan.ops.gradient_penalty(d, x, x)


@pytest.mark.parametrize("shape", [(4, 3, 2), (1, 5), (3,)], ids=["batch4", "batch1", "1d"])
def test_gradient_penalty_defaults_weight_10_center_1(shape):
    d = _QuadD(shape[1:])
    real, fake = torch.randn(shape, dtype=F64), torch.randn(shape, dtype=F64)
    eps = torch.rand(shape[0], dtype=F64)
    want = _gp_by_hand(d.w.detach(), real, fake, eps, 10.0, 1.0)
    torch.testing.assert_close(fastgan.ops.gradient_penalty(d, real, fake, eps=eps), want, **TOL64)
    if len(shape) > 1:  # the reference flattens from dim 1
        torch.testing.assert_close(R.gradient_penalty(d, real, fake, eps=eps), want, **TOL64)
    want2 = _gp_by_hand(d.w.detach(), real, fake, eps, 2.5, 0.3)
    torch.testing.assert_close(fastgan.ops.gradient_penalty(d, real, fake, 2.5, eps=eps, center=0.3), want2,
                               **TOL64)


@pytest.mark.parametrize("impl", ["fastgan", "reference"])
def test_gradient_penalty_random_eps_is_torch_rand_in_real_dtype(impl):
    f = fastgan.ops.gradient_penalty if impl == "fastgan" else R.gradient_penalty
    d = _QuadD((3, 2))
    real, fake = torch.randn(4, 3, 2, dtype=F64), torch.randn(4, 3, 2, dtype=F64)
    torch.manual_seed(123)
    got = f(d, real, fake)
    torch.manual_seed(123)
    eps = torch.rand(4, dtype=F64)
    torch.testing.assert_close(got, _gp_by_hand(d.w.detach(), real, fake, eps, 10.0, 1.0), **TOL64)


def test_gradient_penalty_mixed_dtypes():
    """real float32, fake float64: eps in real's dtype, x_hat in fake's dtype."""
    d = _QuadD((3,))
    real, fake = torch.randn(4, 3, dtype=torch.float32), torch.randn(4, 3, dtype=F64)
    eps = torch.rand(4, dtype=F64)
    got = fastgan.ops.gradient_penalty(d, real, fake, 2.0, eps=eps)
    assert got.dtype == F64
    torch.testing.assert_close(got, _gp_by_hand(d.w.detach(), real, fake, eps.float().double(), 2.0, 1.0),
                               rtol=1e-13, atol=1e-13)
    torch.manual_seed(7)
    got = fastgan.ops.gradient_penalty(d, real, fake, 2.0)
    torch.manual_seed(7)
    eps = torch.rand(4, dtype=torch.float32)
    torch.testing.assert_close(got, _gp_by_hand(d.w.detach(), real, fake, eps.double(), 2.0, 1.0),
                               rtol=1e-13, atol=1e-13)


# ---- the double backward of grad_norm_penalty (penalty._bwd_backward) -----------------------------

def _penalty_by_hand(g, weight, center):
    n = g.shape[0]
    gf = g.reshape(n, -1)
    if center is None:
        return weight * gf.pow(2).sum(1).mean()
    return weight * ((gf.pow(2).sum(1).sqrt() - center) ** 2).mean()


def _first_grad_by_hand(g, v, weight, center):
    """d penalty / d g times v, by hand (differentiable in g and v)."""
    n = g.shape[0]
    gf = g.reshape(n, -1)
    if center is None:
        return (v * 2 * weight / n * gf).reshape(g.shape)
    nrm = gf.pow(2).sum(1, keepdim=True).sqrt()
    return (v * 2 * weight / n * (1 - center / nrm) * gf).reshape(g.shape)


@pytest.mark.parametrize("center", [None, 0.7, 2.0])
def test_grad_norm_penalty_double_backward_by_hand(center):
    # norms below and above 1 (and the center), weight 1.7 not exact in float32
    g = (torch.randn(3, 2, 4, dtype=F64) * torch.tensor([0.2, 0.6, 2.0], dtype=F64).reshape(3, 1, 1))
    g.requires_grad_(True)
    v = torch.tensor(1.3, dtype=F64, requires_grad=True)
    u = torch.randn(3, 2, 4, dtype=F64)
    pen = fastgan.ops.grad_norm_penalty(g, 1.7, center=center)
    (dg,) = torch.autograd.grad(pen, g, v, create_graph=True)
    gh, vh = g.detach().clone().requires_grad_(True), v.detach().clone().requires_grad_(True)
    dgh = _first_grad_by_hand(gh, vh, 1.7, center)
    torch.testing.assert_close(dg, dgh, **TOL64)
    got = torch.autograd.grad((dg * u).sum(), [g, v])
    want = torch.autograd.grad((dgh * u).sum(), [gh, vh])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL64)
    # only g's second derivative asked for (the incoming gradient is a constant)
    (dg,) = torch.autograd.grad(pen, g, create_graph=True)
    (got,) = torch.autograd.grad((dg * u).sum(), g)
    (want,) = torch.autograd.grad((_first_grad_by_hand(gh, 1.0, 1.7, center) * u).sum(), gh)
    torch.testing.assert_close(got, want, **TOL64)


@pytest.mark.parametrize("center", [None, 0.5])
def test_grad_penalty_backward_op_gradient_wrt_incoming_grad_only(center):
    """fastgan::grad_penalty_backward called with only its incoming gradient requiring grad."""
    g = torch.randn(3, 5, dtype=F64)
    sq = center is None
    _, norms = torch.ops.fastgan.grad_penalty(g, 0.0 if sq else center, 1.7, sq)
    gp = torch.tensor(0.9, dtype=F64, requires_grad=True)
    out = torch.ops.fastgan.grad_penalty_backward(gp, g, norms, 0.0 if sq else center, 1.7, sq)
    u = torch.randn(3, 5, dtype=F64)
    (got,) = torch.autograd.grad((out * u).sum(), gp)
    torch.testing.assert_close(got, (_first_grad_by_hand(g, 1.0, 1.7, center) * u).sum(), **TOL64)


def test_grad_norm_penalty_double_backward_zero_row():
    """A sample with a zero gradient contributes nothing (no 1/0) to the WGAN-GP form's second order."""
    g = torch.randn(3, 4, dtype=F64)
    g[1] = 0
    g.requires_grad_(True)
    u = torch.randn(3, 4, dtype=F64)
    pen = fastgan.ops.grad_norm_penalty(g, 1.7, center=0.5)
    (dg,) = torch.autograd.grad(pen, g, create_graph=True)
    (got,) = torch.autograd.grad((dg * u).sum(), g)
    assert torch.isfinite(got).all()
    assert (got[1] == 0).all()
    keep = torch.tensor([0, 2])
    gh = g.detach()[keep].clone().requires_grad_(True)
    # rows 0 and 2 as if alone, but still divided by the batch of 3
    dgh = _first_grad_by_hand(gh, 1.0, 1.7 * 2 / 3, 0.5)
    (want,) = torch.autograd.grad((dgh * u[keep]).sum(), gh)
    torch.testing.assert_close(got[keep], want, **TOL64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bfloat"])
def test_grad_norm_penalty_double_backward_low_precision_accumulates_in_fp32(dtype):
    """fp16/bf16 gradients: the second-order terms are computed in float32 from the rounded values
    (norms of ~2e3 whose cubes overflow fp16), then rounded once to the gradient's dtype."""
    torch.manual_seed(1)
    g = (torch.randn(2, 64, dtype=F64) * 300).to(dtype).requires_grad_(True)
    u = torch.randn(2, 64, dtype=F64).to(dtype)
    nrm = g.detach().double().norm(dim=1)
    center = float(nrm.mean())  # center near the norms: the 1/||g||^3 term matters
    pen = fastgan.ops.grad_norm_penalty(g, 1.7, center=center)
    (dg,) = torch.autograd.grad(pen, g, create_graph=True)
    (got,) = torch.autograd.grad((dg * u).sum(), g)
    assert got.dtype == dtype
    gh = g.detach().double().requires_grad_(True)
    (want,) = torch.autograd.grad((_first_grad_by_hand(gh, 1.0, 1.7, center) * u.double()).sum(), gh)
    want = want.to(dtype).double()
    torch.testing.assert_close(got.double(), want, atol=1e-3 * want.abs().max().item(), rtol=1e-2)
# ---- fake (meta) kernels against the CPU kernels: shape, dtype and strides of every output -------

def _both(op, *args):
    """The op on real CPU tensors and under FakeTensorMode (its register_fake kernel)."""
    real = op(*args)
    with FakeTensorMode() as mode:
        fargs = tree_map(lambda a: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a, args)
        fake = op(*fargs)
    return real, fake


def _same_meta(op, *args):
    real, fake = _both(op, *args)
    if real is None:
        assert fake is None
        return None
    real = real if isinstance(real, (tuple, list)) else (real,)
    fake = fake if isinstance(fake, (tuple, list)) else (fake,)
    assert len(real) == len(fake)
    for i, (r, f) in enumerate(zip(real, fake)):
        got = (tuple(f.shape), f.dtype, f.stride() if f.numel() > 1 else None)
        want = (tuple(r.shape), r.dtype, r.stride() if r.numel() > 1 else None)
        assert got == want, f"output {i}: fake {got}, real {want}"
    return real


def _layouts(shape, dtype=torch.float32):
    x = torch.randn(shape, dtype=dtype)
    out = {"contiguous": x, "strided": torch.randn(shape[:-1] + (2 * shape[-1],), dtype=dtype)[..., ::2]}
    if len(shape) == 4:
        out["channels_last"] = x.contiguous(memory_format=torch.channels_last)
        out["permuted"] = torch.randn(shape[0], shape[1], shape[3], shape[2], dtype=dtype).transpose(2, 3)
    return out


BIAS_ACT_CASES = [(act, clamp) for act in ("linear", "relu", "lrelu", "tanh", "elu", "softplus", "gelu")
                  for clamp in (-1.0, 0.7)]


@pytest.mark.parametrize("act,clamp", BIAS_ACT_CASES)
def test_fake_bias_act_ops_match_cpu(act, clamp):
    from fastgan.ops.bias_act import ref_kind
    for name, x in _layouts((2, 3, 4, 5)).items():
        for b, dim in ((None, 1), (torch.randn(3), 1), (torch.randn(5), 3)):
            y, mask = _same_meta(ops.bias_act, x, b, dim, act, 0.2, 1.3, clamp)
            kind = ref_kind(act, clamp)
            ref = {"mask": mask, "y": y, "x": x, "none": x}[kind]
            for bias_grad in (True, False):
                grad = torch.randn_like(y)
                _same_meta(ops.bias_act_backward, grad, ref, b if kind == "x" else None, dim, act, 0.2, 1.3,
                           clamp, bias_grad)
            # a gradient laid out differently from ref
            _same_meta(ops.bias_act_backward, torch.randn(2, 3, 4, 5), ref, b if kind == "x" else None, dim,
                       act, 0.2, 1.3, clamp, True)
            if act in ("linear", "relu", "lrelu"):
                _same_meta(ops.bias_act_, x.clone(), b, dim, act, 0.2, 1.3, clamp)


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16], ids=["fp32", "fp64", "bfloat"])
def test_fake_batch_norm_act_ops_match_cpu(dtype):
    C = 3
    for name, x in _layouts((4, C, 3, 5), dtype).items():
        for affine in (True, False):
            w = torch.rand(C, dtype=dtype) + 0.5 if affine else None
            b = torch.randn(C, dtype=dtype) if affine else None
            rm, rv = torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype)
            for training, act, keep in ((True, "relu", False), (False, "lrelu", True), (True, "linear", True)):
                y, mean, var = _same_meta(ops.batch_norm_act, x, w, b, rm, rv, training, 1e-5, act, 0.1, keep)
                from_y = act == "linear"
                ref = y if from_y else x
                gm = torch.randn(C, dtype=mean.dtype) if training else None
                _same_meta(ops.batch_norm_act_backward, torch.randn_like(y), ref, mean, var, w, b, gm, gm,
                           training, 1e-5, act, 0.1, from_y)
                # float32 parameters with a low-precision input (autocast)
                if dtype == torch.bfloat16 and affine:
                    _same_meta(ops.batch_norm_act_backward, torch.randn_like(y), ref, mean, var, w.float(),
                               b.float(), None, None, training, 1e-5, act, 0.1, from_y)
            _same_meta(ops.batch_norm_act_update_stats_, rm.float(), rv.float(), torch.rand(C), torch.rand(C),
                       None, 0.1, 20)


CT_GEOMETRY = [  # stride, padding, output_padding, groups, dilation, (H, W), k
    ([1, 1], [0, 0], [0, 0], 1, [1, 1], (3, 4), (3, 3)),
    ([2, 2], [1, 1], [0, 0], 1, [1, 1], (4, 4), (4, 4)),
    ([2, 3], [1, 0], [1, 2], 2, [1, 1], (3, 5), (3, 2)),
    ([1, 2], [2, 1], [0, 1], 1, [2, 3], (5, 3), (3, 2)),
    ([3], [1], [2], 1, [2], (2, 3), (2, 3)),  # one-element lists stand for pairs
]


@pytest.mark.parametrize("geom", range(len(CT_GEOMETRY)))
def test_fake_conv_transpose2d_act_matches_cpu(geom):
    stride, padding, output_padding, groups, dilation, (H, W), (kh, kw) = CT_GEOMETRY[geom]
    cin, cout = 4, 3
    x = torch.randn(2, cin, H, W)
    w = torch.randn(cin, cout, kh, kw)
    xs = {"x": x, "x_cl": x.contiguous(memory_format=torch.channels_last)}
    ws = {"w": w, "w_cl": w.contiguous(memory_format=torch.channels_last)}
    for xn, xv in xs.items():
        for wn, wv in ws.items():
            for act, clamp in (("linear", -1.0), ("linear", 2.0), ("relu", -1.0), ("tanh", -1.0),
                               ("softplus", -1.0), ("gelu", 0.5)):
                _same_meta(ops.conv_transpose2d_act, xv, wv, torch.randn(cout * groups), stride, padding,
                           output_padding, groups, dilation, act, 0.2, 1.0, clamp)


def test_conv_transpose_output_shape_by_formula():
    from fastgan.ops.conv_transpose import output_shape
    # H_out = (H - 1) s - 2 p + d (k - 1) + op + 1, per axis; C_out = weight.shape[1] * groups
    assert output_shape((2, 6, 5, 7), (6, 3, 4, 2), (3, 2), (1, 2), (2, 1), 2, (2, 3)) == \
        (2, 6, (5 - 1) * 3 - 2 + 2 * 3 + 2 + 1, (7 - 1) * 2 - 4 + 3 * 1 + 1 + 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64],
                         ids=["fp16", "bfloat", "fp32", "fp64"])
def test_fake_gan_loss_ops_match_cpu(dtype):
    real = torch.randn(5, 1, dtype=dtype)
    fake = torch.randn(3, 2, dtype=dtype)[:, ::2]
    for kind in ("ns", "rals"):
        for stats in (True, False):
            _same_meta(ops.gan_d_loss, real, fake, kind, "mean", 1.0, 0.0, stats)
        _same_meta(ops.gan_g_loss, fake, real if kind == "rals" else None, kind, "sum")
    _same_meta(ops.gan_g_loss, fake, real, "ns", "sum")  # real ignored by ns
    acc = torch.promote_types(dtype, torch.float32)
    g0, g1 = torch.randn(5, 1, dtype=acc), torch.randn(3, 1, dtype=acc)
    for out in (dtype, acc):
        _same_meta(ops.gan_loss_backward, torch.tensor(0.5, dtype=acc), g0, g1, out)


def test_fake_grad_penalty_ops_match_cpu():
    tensors = [torch.randn(3, 4, 5, 6), torch.randn(3, 4, 5, 6, dtype=F64).contiguous(memory_format=torch.channels_last),
               torch.randn(3, 4, 6, 5).transpose(2, 3), torch.randn(3, 4, 10, 5)[:, :, ::2],
               torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d),
               torch.randn(2, 3, 4, 6, 5).transpose(3, 4), torch.randn(5, 4).t(),
               torch.randn(3, 5, 4).transpose(1, 2), torch.randn(3, 4, 5, 6, dtype=torch.float16),
               torch.randn(3, 4, 5, 6, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)]
    for g in tensors:
        for sq in (True, False):
            pen, norms = _same_meta(ops.grad_penalty, g, 1.0, 2.0, sq)
            _same_meta(ops.grad_penalty_backward, torch.ones((), dtype=pen.dtype), g, norms, 1.0, 2.0, sq)


def test_fake_conv_transpose2d_act_ambiguous_layouts():
    """Tensors that are both contiguous and channels_last (one channel, or 1x1 maps) count as contiguous."""
    for cin, hw in ((1, (3, 3)), (4, (1, 1))):
        x = torch.randn(2, cin, *hw)
        assert x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        w = torch.randn(cin, 3, 2, 2)
        for wv in (w, w.contiguous(memory_format=torch.channels_last)):
            for xv in (x, x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)):
                _same_meta(ops.conv_transpose2d_act, xv, wv, None, [2, 2], [0, 0], [0, 0], 1, [1, 1], "relu", 0.0,
                           1.0, -1.0)
# ---- verification mode (fastgan/ops/_verify.py) ---------------------------------------------------
from fastgan.ops._verify import VerificationError, verified  # noqa: E402


class _WrongGradAt(torch.autograd.Function):
    """y = x, with the gradient zeroed where `wrong` is set (a slope flipped at chosen elements)."""

    @staticmethod
    def forward(ctx, x, wrong):
        ctx.save_for_backward(wrong)
        return x.clone()

    @staticmethod
    def backward(ctx, gy):
        (wrong,) = ctx.saved_tensors
        return gy.masked_fill(wrong, 0.0), None


def _probe(values, wrong_at, act=None, clamp=None):
    """Does fastgan.verify accept an op whose gradient is wrong at `wrong_at` (i.e. are those
    elements inside the kink mask)? The op and its reference are both y = x (float64)."""
    x = torch.tensor(values, dtype=F64, requires_grad=True)
    wrong = torch.zeros(x.shape, dtype=torch.bool)
    wrong[wrong_at] = True

    def ref(x, *, act=None, clamp=None):
        return x * 1.0

    op = verified("probe", ref)(lambda x, *, act=None, clamp=None: _WrongGradAt.apply(x, wrong))
    with fastgan.verify():
        try:
            op(x, act=act, clamp=clamp)
        except VerificationError as e:
            assert "the gradient of 'x'" in str(e)
            return False
    return True


def _fixed_point(f, y=0.0):
    for _ in range(50):
        y = f(y)
    assert f(y) == y
    return y


def test_verify_kink_mask_relu_lrelu():
    # float64 tolerance (1e-9, 1e-9); all |y| <= 1, so the width is 8 (1e-9 + 1e-9 |y|)
    for act in ("relu", "lrelu"):
        assert _probe([0.3, 5e-9, -0.7], 1, act)           # within 8e-9 of the kink: masked
        assert _probe([0.3, -5e-9, -0.7], 1, act)
        assert not _probe([0.3, 8.5e-9, -0.7], 1, act)     # just outside (8e-9 < 8.5e-9 < 9e-9)
        assert not _probe([0.3, 1.2e-8, -0.7], 1, act)     # outside even for a width of 2 (1e-9 ...)
        assert not _probe([0.3, 5e-9, -0.7], 0, act)       # far from the kink
        edge = _fixed_point(lambda y: 8 * (1e-9 * 1.0 + 1e-9 * y))
        assert _probe([0.3, edge, -0.7], 1, act)           # exactly on the edge: masked (<=)
    # the width scales with max(1, max |y|): 8e-8 here
    assert _probe([10.0, 5e-8, -0.7], 1, "relu")
    assert not _probe([10.0, 1e-7, -0.7], 1, "relu")
    # other activations have no kink at 0
    for act in ("tanh", "linear", None):
        assert not _probe([0.3, 5e-9, -0.7], 1, act)


def test_verify_kink_mask_clamp():
    assert _probe([0.3, 0.5 + 5e-9, -0.7], 1, "linear", 0.5)
    assert _probe([0.3, -0.5 + 5e-9, -0.7], 1, "linear", 0.5)
    assert not _probe([0.3, 0.5 + 2e-8, -0.7], 1, "linear", 0.5)
    assert not _probe([0.3, 5e-9, -0.7], 1, "linear", 0.5)  # no kink at 0 for linear
    # relu and clamp: both kinks masked
    assert _probe([0.3, 5e-9, 0.5 - 5e-9], [1, 2], "relu", 0.5)
    # exactly on the edge (y = 0, clamp = width at y = 0)
    c = 8 * (1e-9 * 1.0 + 1e-9 * 0.0)
    assert _probe([0.3, 0.0, -0.7], 1, "linear", c)
    # large outputs: width 8 (1e-9 * 100 + 1e-9 |y|) = 1.6e-6 at |y| = 100
    assert _probe([30.0, 100 + 1.5e-6, -0.7], 1, "linear", 100.0)
    assert not _probe([30.0, 100 + 1.7e-6, -0.7], 1, "linear", 100.0)


def test_verify_empty_output_with_kinks():
    x = torch.zeros(0, 3, requires_grad=True)
    with fastgan.verify():
        y = fastgan.ops.bias_act(x, act="relu", clamp=1.0)
    assert y.shape == (0, 3)
    assert _probe(torch.zeros(0).tolist(), [], "relu", 1.0)


def _op(fn, ref, **kw):
    return verified("probe", ref, **kw)(fn)


def test_verify_compare_tolerances():
    def check(got, want, ok, **kw):
        op = _op(lambda x: torch.tensor(got, dtype=F64), lambda x: torch.tensor(want, dtype=F64), **kw)
        with fastgan.verify():
            if ok:
                op(torch.zeros(1, dtype=F64))
            else:
                with pytest.raises(VerificationError):
                    op(torch.zeros(1, dtype=F64))

    check([100.0, 5e-8], [100.0, 0.0], True, accumulates=True)   # atol 1e-9 scaled by max |want| = 100
    check([100.0, 5e-8], [100.0, 0.0], False)                    # not accumulating: atol 1e-9
    check([1000.0 + 5e-7], [1000.0], True)                       # rtol 1e-9 of 1000
    check([1000.0 + 5e-6], [1000.0], False)
    check([1e-9, 0.0], [0.0, 0.0], True)                         # exactly on the bound
    check(1.0, 2.0, False)                                       # single-element outputs are compared
    check([float("nan"), 1.0], [1.0, 1.0], False)                # NaN where the reference is finite
    check([float("nan"), 1.0], [float("nan"), 1.0], True)        # NaN where the reference has NaN
    check([1.0, 1.0], [float("nan"), 1.0], False)


def test_verify_error_messages():
    x = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    op = _op(lambda x: x.reshape(3, 1), lambda x: x.reshape(1, 3))
    with fastgan.verify(), _raises(VerificationError, "fastgan.verify: probe (x (3,) float64 contiguous on cpu): "
                                   "the output has shape (3, 1), the reference (1, 3)"):
        op(x)
    op = _op(lambda x: torch.where(x == 2, float("nan"), x), lambda x: x * 1)
    with fastgan.verify(), _raises(VerificationError, "fastgan.verify: probe (x (3,) float64 contiguous on cpu): "
                                   "the output differs from the float64 reference in 1 of 3 elements; first at "
                                   "(1,): nan vs 2 (allowed 3e-09); max difference inf. Please report this."):
        op(x)
    # layouts as described in the message
    op = _op(lambda x, w: x + 1, lambda x, w: x)
    base = torch.randn(2, 3, 4, 5, dtype=F64)
    for t, name in ((base, "contiguous"), (base.contiguous(memory_format=torch.channels_last), "channels_last"),
                    (base[..., ::2], "strided"), (base[:, :, :1, :1].contiguous(), "contiguous"),
                    (base.permute(0, 1, 3, 2), "strided")):
        w = torch.ones(2, 3, dtype=F64)[:, ::2]
        with fastgan.verify(), pytest.raises(VerificationError) as e:
            op(t, w)
        assert f"(x {tuple(t.shape)} float64 {name}, w (2, 2) float64 strided on cpu)" in str(e.value)


def test_verified_decorator_defaults():
    fn = lambda x: x + 1e-8  # noqa: E731
    op = verified("probe", lambda x: x)(fn)
    assert op.__wrapped_unverified__ is fn
    assert op.__name__ == "<lambda>"
    x = torch.tensor([100.0, 0.0], dtype=F64)
    torch.testing.assert_close(op(x), x + 1e-8)  # off: no check
    with fastgan.verify(), pytest.raises(VerificationError):  # accumulates=False: atol 1e-9, unscaled
        op(x)


def test_verify_skips_traced_meta_and_subclass_calls(monkeypatch):
    op = _op(lambda x: x + 1, lambda x: x)
    x = torch.randn(3, dtype=F64)
    with fastgan.verify():
        with pytest.raises(VerificationError):
            op(x)
        with pytest.raises(VerificationError):  # parameters are verified
            op(nn.Parameter(x.clone()))
        assert op(x.to("meta")).device.type == "meta"

        class Sub(torch.Tensor):
            pass

        assert isinstance(op(x.as_subclass(Sub)), Sub)
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, "is_compiling", lambda: True)
            op(x)
        with monkeypatch.context() as m:
            m.setattr(torch.jit, "is_tracing", lambda: True)
            op(x)
# ---- GAN losses: messages, labels, dtype promotion (fastgan/ops/gan_loss.py) ------------------------

def test_gan_loss_error_messages():
    r, f = torch.randn(4, dtype=F64), torch.randn(3, dtype=F64)
    fn = "fastgan.ops.d_loss"
    with _raises(TypeError, f"{fn}: argument 'real_logits' must be a torch.Tensor, got list"):
        fastgan.ops.d_loss([0.5], f)
    with _raises(ValueError, f"{fn}: argument 'fake_logits' is an empty batch (shape (0, 1)); a loss needs at "
                             "least one logit"):
        fastgan.ops.d_loss(r, torch.empty(0, 1, dtype=F64))
    with _raises(ValueError, f"{fn}: argument 'fake_logits' is on meta but 'real_logits' is on cpu; move them to "
                             "the same device"):
        fastgan.ops.d_loss(r, f.to("meta"))
    for label in (True, "0.9", float("inf")):
        with _raises(TypeError, f"{fn}: argument 'real_label' must be a finite number, got {label!r}"):
            fastgan.ops.d_loss(r, f, real_label=label)
        with _raises(TypeError, f"{fn}: argument 'fake_label' must be a finite number, got {label!r}"):
            fastgan.ops.d_loss(r, f, fake_label=label)
    fn = "fastgan.ops.g_loss"
    with _raises(ValueError, f"{fn}: argument 'fake_logits' is an empty batch (shape (0,)); a loss needs at "
                             "least one logit"):
        fastgan.ops.g_loss(torch.empty(0))
    with _raises(ValueError, f"{fn}: argument 'real_logits' is on meta but 'fake_logits' is on cpu; move them to "
                             "the same device"):
        fastgan.ops.g_loss(f, "rals", real_logits=r.to("meta"))


def _softplus64(t):
    return torch.log1p(torch.exp(-t.abs())) + t.clamp(min=0)


def test_gan_loss_mixed_dtypes_promote_to_the_wider():
    r = torch.randn(4, dtype=F64) * 2
    f = (torch.randn(3, dtype=F64) * 2).float()
    # ns D loss: softplus(-r) and softplus(f), by hand in float64 from the float32 values
    want = _softplus64(-r).mean() + _softplus64(f.double()).mean()
    got = fastgan.ops.d_loss(r, f)
    assert got.dtype == F64
    torch.testing.assert_close(got, want, **TOL64)
    # rals G loss with float64 fake logits and float32 real logits
    fk, rl = r, f
    want = _softplus64(-(fk - rl.double().mean())).mean() + _softplus64(rl.double() - fk.mean()).mean()
    got = fastgan.ops.g_loss(fk, "rals", real_logits=rl)
    assert got.dtype == F64
    torch.testing.assert_close(got, want, **TOL64)


# ---- the references' defaults and messages (fastgan/ops/reference.py) -------------------------------

def test_reference_loss_defaults_messages_and_stats():
    r, f = torch.randn(5, dtype=F64) * 2, torch.randn(3, dtype=F64) * 2
    torch.testing.assert_close(R.g_loss(f), _softplus64(-f).mean(), **TOL64)  # default kind: ns
    loss, stats = R.d_loss(r, f, return_stats=True)
    torch.testing.assert_close(loss, _softplus64(-r).mean() + _softplus64(f).mean(), **TOL64)
    assert list(stats) == ["d_real", "d_fake"]
    torch.testing.assert_close(stats["d_real"], (1 / (1 + torch.exp(-r))).mean(), **TOL64)
    torch.testing.assert_close(stats["d_fake"], (1 / (1 + torch.exp(-f))).mean(), **TOL64)
    with _raises(ValueError, "unknown kind 'bce'"):
        R.d_loss(r, f, "bce")
    with _raises(ValueError, "unknown kind 'bce'"):
        R.g_loss(f, "bce")
    with _raises(ValueError, "unknown act 'swiglu'"):
        R.act_fn("swiglu", f, 0.0)


def _bn_by_hand(x, mean, var, w, b, eps):
    sh = (1, -1, 1, 1)
    return (x - mean.reshape(sh)) / torch.sqrt(var.reshape(sh) + eps) * w.reshape(sh) + b.reshape(sh)


def test_reference_batch_norm_act_defaults_and_momentum_none():
    x = torch.randn(4, 3, 2, 5, dtype=F64)
    w, b = torch.rand(3, dtype=F64) + 0.5, torch.randn(3, dtype=F64)
    rm, rv = torch.randn(3, dtype=F64), torch.rand(3, dtype=F64) + 0.5
    # defaults: eval (running statistics), relu, eps 1e-5
    z = _bn_by_hand(x, rm, rv, w, b, 1e-5)
    torch.testing.assert_close(R.batch_norm_act(x, w, b, rm, rv), z.clamp(min=0), **TOL64)
    # lrelu's default slope 0.01; eps passed through
    z = _bn_by_hand(x, rm, rv, w, b, 0.25)
    torch.testing.assert_close(R.batch_norm_act(x, w, b, rm, rv, act="lrelu", eps=0.25),
                               torch.where(z > 0, z, 0.01 * z), **TOL64)
    # momentum=None: the cumulative average with factor 1 / num_batches_tracked
    m0, v0 = rm.clone(), rv.clone()
    y = R.batch_norm_act(x, w, b, rm, rv, training=True, momentum=None, num_batches_tracked=torch.tensor(4),
                         act="linear", eps=0.1)
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    n = x.numel() / 3
    torch.testing.assert_close(y, _bn_by_hand(x, mean, var, w, b, 0.1), **TOL64)
    torch.testing.assert_close(rm, 0.75 * m0 + 0.25 * mean, **TOL64)
    torch.testing.assert_close(rv, 0.75 * v0 + 0.25 * var * n / (n - 1), **TOL64)
    # momentum=None without running statistics, or in eval: nothing to average
    y = R.batch_norm_act(x, training=True, momentum=None, act="linear")
    torch.testing.assert_close(y, _bn_by_hand(x, mean, var, torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64),
                                              1e-5), **TOL64)
    torch.testing.assert_close(R.batch_norm_act(x, None, None, m0, v0, momentum=None, act="linear"),
                               _bn_by_hand(x, m0, v0, torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64), 1e-5),
                               **TOL64)


def test_reference_conv_transpose2d_act_defaults():
    x, w = torch.randn(2, 3, 4, 5, dtype=F64), torch.randn(3, 2, 3, 3, dtype=F64)
    # stride 1, padding 0, linear: y[n, o, i + p, j + q] += x[n, c, i, j] w[c, o, p, q]
    want = torch.zeros(2, 2, 6, 7, dtype=F64)
    for p in range(3):
        for q in range(3):
            want[:, :, p:p + 4, q:q + 5] += torch.einsum("ncij,co->noij", x, w[:, :, p, q])
    torch.testing.assert_close(R.conv_transpose2d_act(x, w), want, **TOL64)
    torch.testing.assert_close(fastgan.ops.conv_transpose2d_act(x, w), want, **TOL64)


# ---- bias_act_ (in place) backward: the bias gradient ------------------------------------------------

@pytest.mark.parametrize("act,clamp", [("lrelu", None), ("relu", 0.8), ("linear", None), ("linear", 0.5)])
def test_bias_act_inplace_gradients_by_hand(act, clamp):
    x0 = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    gy = torch.randn(2, 3, 4, 5, dtype=F64)
    y = fastgan.ops.bias_act_(x0 * 1.0, b, act=act, gain=1.5, clamp=clamp)
    y.backward(gy)
    z = x0.detach() + b.detach().reshape(1, 3, 1, 1)
    # (torch.where of two Python scalars would be float32)
    slope = {"lrelu": (z > 0).double() * 0.8 + 0.2, "relu": (z > 0).double(),
             "linear": torch.ones_like(z)}[act] * 1.5
    if clamp is not None:
        slope = slope * (y.detach().abs() < clamp)
    torch.testing.assert_close(x0.grad, gy * slope, **TOL64)
    torch.testing.assert_close(b.grad, (gy * slope).sum((0, 2, 3)), **TOL64)
    # only the bias requires grad
    b.grad = None
    y = fastgan.ops.bias_act_(x0.detach().clone(), b, act=act, gain=1.5, clamp=clamp)
    (gb,) = torch.autograd.grad(y, b, gy)
    torch.testing.assert_close(gb, (gy * slope).sum((0, 2, 3)), **TOL64)


def test_penalty_messages_bool_weight_and_squared_zero_row():
    fn = "fastgan.ops.grad_norm_penalty"
    g = torch.randn(3, 4, dtype=F64)
    with _raises(TypeError, f"{fn}: argument 'weight' must be a finite number, got True"):
        fastgan.ops.grad_norm_penalty(g, True)
    with _raises(TypeError, f"{fn}: argument 'center' must be a finite number, got '1'"):
        fastgan.ops.grad_norm_penalty(g, center="1")
    # squared (R1) form: the Hessian is 2 w / n everywhere, zero rows included
    g[1] = 0
    g.requires_grad_(True)
    u = torch.randn(3, 4, dtype=F64)
    (dg,) = torch.autograd.grad(fastgan.ops.grad_norm_penalty(g, 1.7), g, create_graph=True)
    torch.testing.assert_close(dg, 2 * 1.7 / 3 * g.detach(), **TOL64)
    (got,) = torch.autograd.grad((dg * u).sum(), g)
    torch.testing.assert_close(got, 2 * 1.7 / 3 * u, **TOL64)
# ---- batch_norm_act: first and second derivatives against F.batch_norm (fastgan/ops/batch_norm_act.py)

def _act64(act, alpha, z):
    return {"linear": z, "relu": F.relu(z), "lrelu": F.leaky_relu(z, alpha)}[act]


def _close_or_zero(a, e, **tol):
    """assert_close where None (no dependence) and zeros are the same answer."""
    if e is None or a is None:
        t = a if e is None else e
        assert t is None or t.abs().max() <= 1e-9
        return
    torch.testing.assert_close(a, e, **tol)


def _bn_grads(fused, x, w, b, rm, rv, training, act, alpha, me, wrt, u, eps=1e-5):
    """First derivatives (create_graph) of sum(y * gy) w.r.t. `wrt`, then the gradient of
    sum(first * u) w.r.t. `wrt` and gy: the double backward, fused op or F.batch_norm + act."""
    names = ["x", "w", "b"]
    ins = {k: (t.detach().clone().requires_grad_(k in wrt) if t is not None else None)
           for k, t in zip(names, (x, w, b))}
    gy = u["gy"].clone().requires_grad_(True)
    if fused:
        y = fastgan.ops.batch_norm_act(ins["x"], ins["w"], ins["b"], rm, rv, training=training, act=act,
                                       alpha=alpha, memory_efficient=me, eps=eps)
    else:
        z = F.batch_norm(ins["x"], rm, rv, ins["w"], ins["b"], training, 0.0, eps)
        y = _act64(act, alpha, z)
    leaves = [ins[k] for k in wrt]
    first = torch.autograd.grad(y, leaves, gy, create_graph=True)
    loss2 = sum((f * u[k]).sum() for f, k in zip(first, wrt))
    second = torch.autograd.grad(loss2, leaves + [gy], allow_unused=True)
    return [f.detach() for f in first], [None if s is None else s.detach() for s in second]


BN_CASES = [(training, act, alpha, me) for training in (True, False)
            for act, alpha in (("linear", 0.0), ("relu", 0.01), ("lrelu", 0.1), ("lrelu", -0.2))
            for me in (True, False)]


@pytest.mark.parametrize("training,act,alpha,me", BN_CASES)
def test_batch_norm_act_double_backward_by_autograd(training, act, alpha, me):
    torch.manual_seed(3)
    C = 3
    x = torch.randn(4, C, 2, 3, dtype=F64) * 1.5 + 0.3
    w, b = torch.rand(C, dtype=F64) + 0.5, torch.randn(C, dtype=F64) * 0.5
    rm, rv = torch.randn(C, dtype=F64) * 0.2, torch.rand(C, dtype=F64) + 0.5
    u = {"gy": torch.randn(4, C, 2, 3, dtype=F64), "x": torch.randn(4, C, 2, 3, dtype=F64),
         "w": torch.randn(C, dtype=F64), "b": torch.randn(C, dtype=F64)}
    for wrt, affine in ((("x", "w", "b"), True), (("x",), True), (("w",), True), (("b",), True),
                        (("w", "b"), True), (("x", "b"), True), (("x",), False)):
        args = (x, w if affine else None, b if affine else None, rm, rv, training, act, alpha, me, wrt, u)
        got = _bn_grads(True, *args)
        want = _bn_grads(False, *args)
        for a, e in zip(got[0] + got[1], want[0] + want[1]):
            _close_or_zero(a, e, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_act_double_backward_single_channel_and_one_value(training):
    # C = 1 (one-element weight, bias, mean, var), and in eval a single value per channel
    for shape in ((3, 1, 2, 2),) + (((1, 3, 1, 1),) if not training else ()):
        C = shape[1]
        x = torch.randn(shape, dtype=F64)
        w, b = torch.rand(C, dtype=F64) + 0.5, torch.randn(C, dtype=F64)
        rm, rv = torch.randn(C, dtype=F64) * 0.2, torch.rand(C, dtype=F64) + 0.5
        u = {"gy": torch.randn(shape, dtype=F64), "x": torch.randn(shape, dtype=F64),
             "w": torch.randn(C, dtype=F64), "b": torch.randn(C, dtype=F64)}
        for act, alpha, me in (("lrelu", 0.1, True), ("relu", 0.0, True), ("linear", 0.0, False)):
            args = (x, w, b, rm, rv, training, act, alpha, me, ("x", "w", "b"), u)
            got, want = _bn_grads(True, *args), _bn_grads(False, *args)
            for a, e in zip(got[0] + got[1], want[0] + want[1]):
                _close_or_zero(a, e, atol=1e-9, rtol=1e-9)


def test_batch_norm_act_double_backward_empty():
    for shape, training in (((0, 3, 2, 2), True), ((0, 3, 2, 2), False), ((2, 0, 2, 2), True)):
        C = shape[1]
        x = torch.randn(shape, dtype=F64, requires_grad=True)
        w = (torch.rand(C, dtype=F64) + 0.5).requires_grad_(True)
        rm, rv = torch.zeros(C, dtype=F64), torch.ones(C, dtype=F64)
        y = fastgan.ops.batch_norm_act(x, w, None, rm, rv, training=training, act="lrelu", alpha=0.1)
        gy = torch.randn(shape, dtype=F64, requires_grad=True)
        gx, gw = torch.autograd.grad(y, [x, w], gy, create_graph=True)
        assert gx.shape == shape and gw.shape == (C,) and (gw == 0).all()
        out = torch.autograd.grad(gx.sum() + gw.sum(), [x, w, gy], allow_unused=True)
        for o, t in zip(out, (x, w, gy)):
            assert o is None or (o.shape == t.shape and (o == 0).all())


@pytest.mark.parametrize("act,alpha,from_y", [("linear", 0.0, True), ("lrelu", 0.3, True), ("lrelu", 0.0, False),
                                              ("lrelu", -0.1, False), ("relu", 0.0, False)])
def test_batch_norm_act_keeps_y_exactly_when_invertible(act, alpha, from_y):
    """linear and lrelu(alpha > 0) keep y (a channel of weight 0 then gets a zero weight gradient, as
    documented); the others, and memory_efficient=False, keep x (exact gradient)."""
    x = torch.randn(4, 3, 2, 2, dtype=F64, requires_grad=True)
    w = torch.tensor([1.5, 0.0, 0.7], dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    gy = torch.randn(4, 3, 2, 2, dtype=F64)
    mean, var = x.detach().mean((0, 2, 3), keepdim=True), x.detach().var((0, 2, 3), unbiased=False, keepdim=True)
    xhat = (x.detach() - mean) / torch.sqrt(var + 1e-5)
    z = xhat * w.detach().reshape(1, 3, 1, 1) + b.detach().reshape(1, 3, 1, 1)
    s = {"linear": torch.ones_like(z), "relu": (z > 0).double(), "lrelu": (z > 0).double() * (1 - alpha) + alpha}[act]
    exact_gw = (gy * s * xhat).sum((0, 2, 3))
    for me in (True, False):
        y = fastgan.ops.batch_norm_act(x, w, b, training=True, act=act, alpha=alpha, memory_efficient=me)
        (gw,) = torch.autograd.grad(y, w, gy)
        want = exact_gw.clone()
        if me and from_y:
            want[1] = 0
        torch.testing.assert_close(gw, want, **TOL64)


@pytest.mark.parametrize("act,alpha,me", [("relu", 0.0, True), ("lrelu", 0.1, True), ("lrelu", 0.1, False),
                                          ("lrelu", -0.2, True)])
def test_batch_norm_act_double_backward_exactly_at_the_kink(act, alpha, me):
    """Pre-activations exactly 0 take the slope of the negative side (as F.relu / F.leaky_relu)."""
    vals = torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.5, 0.0], dtype=F64)  # mean 0: xhat exactly 0 at the zeros
    x = torch.stack([vals.roll(k) for k in range(3)], dim=1).reshape(6, 3, 1, 1)
    w, b = torch.tensor([1.2, 0.8, 1.5], dtype=F64), torch.zeros(3, dtype=F64)
    shape = tuple(x.shape)
    u = {"gy": torch.randn(shape, dtype=F64), "x": torch.randn(shape, dtype=F64),
         "w": torch.randn(3, dtype=F64), "b": torch.randn(3, dtype=F64)}
    for training in (True, False):
        rm, rv = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
        args = (x, w, b, rm, rv, training, act, alpha, me, ("x", "w", "b"), u)
        got, want = _bn_grads(True, *args), _bn_grads(False, *args)
        for a, e in zip(got[0] + got[1], want[0] + want[1]):
            _close_or_zero(a, e, atol=1e-9, rtol=1e-9)



@pytest.mark.parametrize("act,alpha", [("linear", 0.0), ("lrelu", 0.2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_act_zero_weight_channel_gradient_is_constant_zero(act, alpha, training):
    """Keeping y, a channel of weight exactly 0 gets the weight gradient 0 (documented): a constant,
    so nothing flows back from it in double backward."""
    x = torch.randn(4, 3, 2, 2, dtype=F64, requires_grad=True)
    w = torch.tensor([1.5, 0.0, 0.7], dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)
    gy = torch.randn(4, 3, 2, 2, dtype=F64, requires_grad=True)
    rm, rv = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    y = fastgan.ops.batch_norm_act(x, w, b, rm, rv, training=training, act=act, alpha=alpha)
    (gw,) = torch.autograd.grad(y, w, gy, create_graph=True)
    assert gw[1] == 0
    for t in torch.autograd.grad(gw[1] * 2.5, [x, w, b, gy], allow_unused=True):
        assert t is None or (t == 0).all()

# ---- bias_act: first and second derivatives against torch functional forms (fastgan/ops/bias_act.py)

SELU_L, SELU_A = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def _act_by_hand(act, z, alpha):
    if act == "linear":
        return z
    if act == "relu":
        return F.relu(z)
    if act == "lrelu":
        return torch.where(z > 0, z, alpha * z)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return 1 / (1 + torch.exp(-z))
    if act == "elu":
        return torch.where(z > 0, z, alpha * torch.expm1(z))
    if act == "selu":
        return SELU_L * torch.where(z > 0, z, SELU_A * torch.expm1(z))
    if act == "softplus":
        return torch.log1p(torch.exp(z))  # |z| < 10 here
    if act in ("swish", "silu"):
        return z / (1 + torch.exp(-z))
    return 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))  # gelu


def _bias_act_by_hand(x, b, act, alpha, gain, clamp, dim):
    if b is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        x = x + b.reshape(shape)
    y = _act_by_hand(act, x, alpha) * gain
    return y if clamp is None else y.clamp(-clamp, clamp)


def _ba_grads(fused, x, b, kw, wrt, u):
    ins = {"x": x.detach().clone().requires_grad_("x" in wrt),
           "b": None if b is None else b.detach().clone().requires_grad_("b" in wrt)}
    gy = u["gy"].clone().requires_grad_(True)
    if fused:
        y = fastgan.ops.bias_act(ins["x"], ins["b"], **kw)
    else:
        y = _bias_act_by_hand(ins["x"], ins["b"], kw["act"], kw["alpha"], kw["gain"], kw["clamp"], kw["dim"])
    leaves = [ins[k] for k in wrt]
    first = torch.autograd.grad(y, leaves, gy, create_graph=True)
    loss2 = sum((f * u[k]).sum() for f, k in zip(first, wrt))
    second = torch.autograd.grad(loss2, leaves + [gy], allow_unused=True)
    return [y.detach()] + [f.detach() for f in first], [None if s is None else s.detach() for s in second]


BA_ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish", "silu", "gelu"]


@pytest.mark.parametrize("act", BA_ACTS)
def test_bias_act_double_backward_by_hand(act):
    torch.manual_seed(5)
    alpha = {"lrelu": 0.3, "elu": 0.7}.get(act, 0.0)
    for shape, dim in (((2, 3, 4, 5), 1), ((3, 4, 5), -1), ((5,), 0)):
        x = torch.randn(shape, dtype=F64) * 1.5
        x.view(-1)[::3] = 0  # exact zeros: the kink of relu/lrelu/elu/selu (b=None below)
        C = shape[dim]
        b = torch.randn(C, dtype=F64) * 0.5
        u = {"gy": torch.randn(shape, dtype=F64), "x": torch.randn(shape, dtype=F64), "b": torch.randn(C, dtype=F64)}
        for gain, clamp in ((1.3, None), (0.8, 0.6), (0.0, None), (1.1, 0.0)):
            kw = dict(act=act, alpha=alpha, gain=gain, clamp=clamp, dim=dim)
            # clamp 0 for activations whose backward reads y: no output exactly on the clamp (there
            # torch.clamp passes the gradient and the op, which sees only y, does not)
            xc = torch.where(x == 0, 0.37, x) if clamp == 0 and act in ("tanh", "sigmoid", "elu", "selu") else x
            for bias, wrt in ((b, ("x", "b")), (b, ("x",)), (b, ("b",)), (None, ("x",))):
                got = _ba_grads(True, xc, bias, kw, wrt, u)
                want = _ba_grads(False, xc, bias, kw, wrt, u)
                for a, e in zip(got[0] + got[1], want[0] + want[1]):
                    _close_or_zero(a, e, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("act", ["lrelu", "elu", "tanh", "softplus", "linear"])
def test_bias_act_defaults_by_hand(act):
    """Default alpha (lrelu 0.2, elu 1.0), gain 1, no clamp, dim 1; act defaults to linear."""
    x, b = torch.randn(2, 3, 4, dtype=F64) * 2, torch.randn(3, dtype=F64)
    want = _act_by_hand(act, x + b.reshape(1, 3, 1), {"lrelu": 0.2, "elu": 1.0}.get(act, 0.0))
    torch.testing.assert_close(fastgan.ops.bias_act(x, b, act=act), want, **TOL64)
    torch.testing.assert_close(R.bias_act(x, b, act=act), want, **TOL64)
    if act == "linear":
        torch.testing.assert_close(fastgan.ops.bias_act(x, b), want, **TOL64)
        torch.testing.assert_close(R.bias_act(x, b), want, **TOL64)
    # gain 2 (the reference multiplies unless the gain is 1)
    torch.testing.assert_close(R.bias_act(x, b, act=act, gain=2.0), 2 * want, **TOL64)
    torch.testing.assert_close(fastgan.ops.bias_act(x, b, act=act, gain=2.0), 2 * want, **TOL64)


def test_reference_act_fn_alpha_and_exact_softplus():
    x = torch.tensor([-2.0, -0.5, 0.3, 21.0, 40.0], dtype=F64)
    torch.testing.assert_close(R.act_fn("elu", x, 0.5), torch.where(x > 0, x, 0.5 * torch.expm1(x)), **TOL64)
    # log(1 + e^x) = x + log1p(e^-x): no linear cut-off at 20 (e^-21 = 7.6e-10 is kept)
    want = x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))
    torch.testing.assert_close(R.act_fn("softplus", x, 0.0), want, rtol=1e-15, atol=0)
    # beyond the cut-off of 1e9 it is x itself (log1p(exp(x)) would be inf)
    big = torch.tensor([1e9 + 0.5], dtype=F64)
    assert R.act_fn("softplus", big, 0.0).item() == 1e9 + 0.5


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "elu"])
def test_bias_act_backward_op_ref_gradient_is_zero_where_clamped(act):
    """fastgan::bias_act_backward called directly with y as ref: factor(y) = gain act'(y / gain) where
    |y| < clamp, else 0, so its derivative w.r.t. y vanishes where |y| >= clamp (ties included)."""
    gain, clamp = 1.0, 0.6
    y = torch.tensor([[-0.9, -0.6, -0.3, 0.0, 0.2, 0.6, 0.8]], dtype=F64)
    if act == "sigmoid":
        y = y.abs() * 0.5 + 0.3 * (y.abs() < 0.6)  # sigmoid outputs are positive
    y = y.requires_grad_(True)
    grad = torch.randn(y.shape, dtype=F64)
    u = torch.randn(y.shape, dtype=F64)
    gx, _ = ops.bias_act_backward(grad, y, None, 1, act, 1.0, gain, clamp, False)
    (got,) = torch.autograd.grad((gx * u).sum(), y)
    z = y.detach() / gain
    d2 = {"tanh": -2 * z, "sigmoid": 1 - 2 * z, "elu": (z <= 0).double()}[act]  # d act'(z) / dz written in y
    want = grad * u * d2 * (y.detach().abs() < clamp)
    torch.testing.assert_close(got, want, **TOL64)
    for c in (0.0, 0.3):  # everything or part clamped, clamp below 1
        gx, _ = ops.bias_act_backward(grad, y, None, 1, act, 1.0, gain, c, False)
        (got,) = torch.autograd.grad((gx * u).sum(), y)
        torch.testing.assert_close(got, grad * u * d2 * (y.detach().abs() < c), **TOL64)
# ---- argument checks: exact messages (fastgan/ops/_checks.py, bias_act.resolve, conv_transpose._pair)

def test_bias_act_messages():
    x = torch.randn(2, 3, 4)
    for fn, f in (("fastgan.ops.bias_act", fastgan.ops.bias_act), ("fastgan.ops.bias_act_", fastgan.ops.bias_act_)):
        with _raises(TypeError, f"{fn}: argument 'x' must be a torch.Tensor, got list"):
            f([1.0])
        with _raises(TypeError, f"{fn}: argument 'x' must be a floating-point tensor (float32, float16, bfloat16 "
                                "or float64), got torch.int32"):
            f(torch.ones(2, 3, dtype=torch.int32))
        with _raises(TypeError, f"{fn}: argument 'b' must be a torch.Tensor, got float"):
            f(x, 1.0)
        with _raises(RuntimeError, f"{fn}: argument 'b' is on meta but 'x' is on cpu; move them to the same device"):
            f(x, torch.zeros(3, device="meta"))
        with _raises(ValueError, f"{fn}: argument 'gain' must be finite, got inf"):
            f(x, gain=float("inf"), act="relu")
        with _raises(ValueError, f"{fn}: argument 'gain' must be finite, got nan"):
            f(x, gain=float("nan"), act="relu")
        for c in (-0.5, float("nan")):
            with _raises(ValueError, f"{fn}: argument 'clamp' must be >= 0 (or None for no clamp), got {c}"):
                f(x, clamp=c, act="relu")
    with _raises(ValueError, "fastgan.ops.bias_act: argument 'act' must be one of linear, relu, lrelu, tanh, "
                             "sigmoid, elu, selu, softplus, swish, silu, gelu; got 'nope'"):
        fastgan.ops.bias_act(x, act="nope")
    with _raises(ValueError, "fastgan.ops.bias_act_: argument 'act' must be one of linear, relu, lrelu; got 'tanh'"):
        fastgan.ops.bias_act_(x, act="tanh")
    # a clamp of 0 is allowed (everything clamped to 0)
    assert (fastgan.ops.bias_act(x, act="relu", clamp=0) == 0).all()


def test_resolve_returns_floats_and_defaults():
    from fastgan.ops.bias_act import resolve
    assert resolve("f", "lrelu", None, None, None) == (0.2, 1.0, -1.0)
    assert resolve("f", "elu", None, 2, 3) == (1.0, 2.0, 3.0)
    out = resolve("f", "relu", 1, 2, 0)
    assert out == (1.0, 2.0, 0.0) and all(type(v) is float for v in out)


def test_batch_norm_act_messages():
    fn = "fastgan.ops.batch_norm_act"
    x = torch.randn(2, 3, 4, 4)
    rm, rv = torch.zeros(3), torch.ones(3)
    with _raises(TypeError, f"{fn}: argument 'x' must be a torch.Tensor, got NoneType"):
        fastgan.ops.batch_norm_act(None)
    with _raises(ValueError, f"{fn}: argument 'x' must be a 4-D tensor (N, C, H, W); got a 3-D tensor of shape "
                             "(2, 3, 4)"):
        fastgan.ops.batch_norm_act(torch.randn(2, 3, 4), training=True)
    with _raises(ValueError, f"{fn}: argument 'act' must be one of linear, relu, lrelu; got 'tanh'"):
        fastgan.ops.batch_norm_act(x, training=True, act="tanh")
    with _raises(ValueError, f"{fn}: argument 'weight' must have shape (3,) (x has 3 channels); got shape (4,)"):
        fastgan.ops.batch_norm_act(x, torch.ones(4), training=True)
    with _raises(ValueError, f"{fn}: argument 'running_var' must have shape (3,) (x has 3 channels); got shape "
                             "(3, 1)"):
        fastgan.ops.batch_norm_act(x, None, None, rm, rv[:, None], training=True)
    with _raises(TypeError, f"{fn}: argument 'bias' must be a floating-point tensor (float32, float16, bfloat16 "
                            "or float64), got torch.int64"):
        fastgan.ops.batch_norm_act(x, None, torch.zeros(3, dtype=torch.long), training=True)
    with _raises(ValueError, f"{fn}: arguments 'running_mean' and 'running_var' must be given together"):
        fastgan.ops.batch_norm_act(x, None, None, rm, None, training=True)
    with _raises(ValueError, f"{fn}: argument 'running_mean' is required when training=False (eval uses the "
                             "running statistics)"):
        fastgan.ops.batch_norm_act(x)
    with _raises(ValueError, f"{fn}: argument 'eps' must be >= 0, got -0.1"):
        fastgan.ops.batch_norm_act(x, training=True, eps=-0.1)
    with _raises(ValueError, f"{fn}: expected more than 1 value per channel when training, got input (argument "
                             "'x') of shape (1, 3, 1, 1)"):
        fastgan.ops.batch_norm_act(torch.randn(1, 3, 1, 1), training=True)
    with _raises(ValueError, f"{fn}: momentum=None (cumulative average) needs argument 'num_batches_tracked'"):
        fastgan.ops.batch_norm_act(x, None, None, rm, rv, training=True, momentum=None)


def test_conv_transpose2d_act_argument_messages():
    fn = "fastgan.ops.conv_transpose2d_act"
    x, w = torch.randn(1, 2, 3, 3), torch.randn(2, 2, 3, 3)
    with _raises(TypeError, f"{fn}: argument 'weight' must be a torch.Tensor, got list"):
        fastgan.ops.conv_transpose2d_act(x, [1.0])
    with _raises(TypeError, f"{fn}: argument 'bias' must be a floating-point tensor (float32, float16, bfloat16 or "
                            "float64), got torch.int64"):
        fastgan.ops.conv_transpose2d_act(x, w, torch.zeros(2, dtype=torch.long))
    with _raises(RuntimeError, f"{fn}: argument 'x': expected 3D (unbatched) or 4D (batched) input to "
                               "conv_transpose2d, but got input of size: [2, 3]"):
        fastgan.ops.conv_transpose2d_act(torch.randn(2, 3), w)
    with _raises(TypeError, f"{fn}: argument 'stride' must be an int or a pair of ints, got True"):
        fastgan.ops.conv_transpose2d_act(x, w, stride=True)
    with _raises(TypeError, f"{fn}: argument 'padding' must be an int or a pair of ints, got 1.5"):
        fastgan.ops.conv_transpose2d_act(x, w, padding=1.5)
    with _raises(ValueError, f"{fn}: argument 'dilation' must be an int or a pair of ints, got [1, 1, 1]"):
        fastgan.ops.conv_transpose2d_act(x, w, dilation=(1, 1, 1))
    with _raises(ValueError, f"{fn}: argument 'padding': negative padding is not supported, got (0, -1)"):
        fastgan.ops.conv_transpose2d_act(x, w, padding=(0, -1))
    with _raises(ValueError, f"{fn}: argument 'stride': non-positive stride is not supported, got (0, 0)"):
        fastgan.ops.conv_transpose2d_act(x, w, stride=0)
    with _raises(ValueError, f"{fn}: argument 'output_padding': negative output_padding is not supported, got "
                             "(-1, -1)"):
        fastgan.ops.conv_transpose2d_act(x, w, output_padding=[-1])
    with _raises(TypeError, f"{fn}: argument 'groups' must be an int, got 1.0"):
        fastgan.ops.conv_transpose2d_act(x, w, groups=1.0)
    with _raises(TypeError, f"{fn}: argument 'groups' must be an int, got False"):
        fastgan.ops.conv_transpose2d_act(x, w, groups=False)


@pytest.mark.parametrize("stride,padding,output_padding,dilation", [
    ([2], [1], [1], [2]), ((2, 1), 1, (1, 0), 1), (3, (0, 1), 0, [1, 2])])
def test_conv_transpose2d_act_pairs_match_functional(stride, padding, output_padding, dilation):
    x, w, b = torch.randn(2, 4, 3, 5, dtype=F64), torch.randn(4, 3, 3, 2, dtype=F64), torch.randn(3, dtype=F64)
    got = fastgan.ops.conv_transpose2d_act(x, w, b, stride, padding, output_padding, 1, dilation, act="lrelu")
    want = F.leaky_relu(F.conv_transpose2d(x, w, b, stride, padding, output_padding, 1, dilation), 0.2)
    torch.testing.assert_close(got, want, **TOL64)


@pytest.mark.parametrize("act", ["lrelu", "softplus", "tanh", "linear"])
def test_conv_transpose2d_act_gradient_subsets(act):
    """Each subset of (x, weight, bias) requiring grad gets exactly its gradients (F.conv_transpose2d
    + the activation by hand as the oracle); unbatched input too."""
    torch.manual_seed(2)
    x0, w0, b0 = torch.randn(2, 4, 3, 3, dtype=F64), torch.randn(4, 2, 4, 4, dtype=F64), torch.randn(2, dtype=F64)
    gy = torch.randn(2, 2, 6, 6, dtype=F64)
    for wrt in (("x",), ("w",), ("b",), ("x", "w"), ("w", "b"), ("x", "b"), ("x", "w", "b")):
        def run(fused):
            t = {"x": x0.clone().requires_grad_("x" in wrt), "w": w0.clone().requires_grad_("w" in wrt),
                 "b": b0.clone().requires_grad_("b" in wrt)}
            if fused:
                y = fastgan.ops.conv_transpose2d_act(t["x"], t["w"], t["b"], 2, 1, act=act, gain=1.5)
            else:
                z = F.conv_transpose2d(t["x"], t["w"], t["b"], 2, 1)
                y = _act_by_hand(act, z, 0.2) * 1.5
            return y, torch.autograd.grad(y, [t[k] for k in wrt], gy)
        (y, got), (y2, want) = run(True), run(False)
        torch.testing.assert_close(y, y2, **TOL64)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, **TOL64)
    xu = x0[0].clone().requires_grad_(True)
    y = fastgan.ops.conv_transpose2d_act(xu, w0, b0, 2, 1, act=act)
    assert y.shape == (2, 6, 6)
    (gx,) = torch.autograd.grad(y, xu, gy[0])
    xr = x0[0].clone().requires_grad_(True)
    (want,) = torch.autograd.grad(_act_by_hand(act, F.conv_transpose2d(xr, w0, b0, 2, 1), 0.2), xr, gy[0])
    torch.testing.assert_close(gx, want, **TOL64)


@pytest.mark.parametrize("act", ["softplus", "lrelu"])
def test_conv_transpose2d_act_double_backward(act):
    x = torch.randn(2, 3, 3, 3, dtype=F64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=F64, requires_grad=True)
    b = torch.randn(2, dtype=F64, requires_grad=True)
    u = torch.randn(2, 3, 3, 3, dtype=F64)

    def second(y):
        (gx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        return torch.autograd.grad((gx * u).sum(), [w, b], allow_unused=True)

    got = second(fastgan.ops.conv_transpose2d_act(x, w, b, 2, 1, act=act))
    want = second(_act_by_hand(act, F.conv_transpose2d(x, w, b, 2, 1), 0.2))
    for a, e in zip(got, want):
        _close_or_zero(a, e, atol=1e-9, rtol=1e-9)


# ---- batch_norm_act's double backward in half precision: float32 inside, one rounding at the end ----
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat", "fp16"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act,from_y", [("lrelu", False), ("lrelu", True), ("relu", False), ("linear", False),
                                        ("linear", True)])
def test_batch_norm_act_double_backward_rounds_once(dtype, training, act, from_y):
    """The second-order formulas run in float32 for half-precision tensors: given the same saved
    tensors, every output is the float64 result rounded once to the input precision. Terms formed in
    the input precision (the weight, statistics, input, y or grad-grad not upcast) break this for 5-70%
    of the elements."""
    import importlib
    bna = importlib.import_module("fastgan.ops.batch_norm_act")
    g = torch.Generator().manual_seed(3)

    def r(*shape, lo=None):
        t = torch.randn(*shape, generator=g)
        return (t.abs() + lo if lo is not None else t).to(dtype)

    N, C, H, W = 4, 3, 8, 8
    grad, ref, ggx = r(N, C, H, W), r(N, C, H, W), r(N, C, H, W)
    mean, var, weight, bias, gm, gv, ggw, ggb = r(C), r(C, lo=0.3), r(C, lo=0.5), r(C), r(C), r(C), r(C), r(C)
    outs = []
    for dt in (dtype, F64):
        saved = tuple(t.to(dt) for t in (grad, ref, mean, var, weight, bias, gm, gv))
        ctx = type("Ctx", (), {"saved_tensors": saved, "params": (training, 1e-5, act, 0.2, from_y),
                               "needs_input_grad": (True,) * 13})()
        outs.append(bna._bwd_backward(ctx, ggx.to(dt), ggw.to(dt), ggb.to(dt)))
    names = ("grad", "ref", "mean", "var", "weight", "bias", "gm", "gv")
    checked = 0
    for name, a, b in zip(names, outs[0], outs[1]):
        if a is None:
            continue
        assert a.dtype == dtype, name
        same = float((a == b.to(dtype)).double().mean())
        assert same >= 0.99, f"{name}: {same:.3f} of the elements are the once-rounded float64 result"
        checked += 1
    assert checked >= 5
