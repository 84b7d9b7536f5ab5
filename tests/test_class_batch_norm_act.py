"""fastgan.ops.class_batch_norm_act and fastgan.nn.ClassBatchNormAct2d (class-conditional BatchNorm +
activation) against the reference: F.batch_norm without affine, then weight[y], bias[y], then act."""
import pytest
import torch
from torch import nn

from fastgan.nn import ClassBatchNormAct2d, FusedBatchNormAct2d
from fastgan.ops import class_batch_norm_act, reference

from conftest import DEVICES, DTYPES, TOL

ACTS = [("relu", 0.0), ("lrelu", 0.2), ("linear", 0.0)]
ops = torch.ops.fastgan
K = 3


def _x(shape=(5, 4, 3, 6), dtype=torch.float64, device="cpu", layout="contiguous"):
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.7).to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # not dense: every other column of a wider tensor
        wide = torch.randn(*shape[:3], 2 * shape[3], dtype=torch.float64).to(device=device, dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    elif layout == "batch_inner":  # dense, but the samples are not the outermost dim
        x = x.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)
        assert x.stride(0) == 1 and not x.is_contiguous()
    return x


def _params(C, device="cpu", dtype=torch.float64, k=K):
    w = (torch.randn(k, C, dtype=torch.float64) + 1.0).to(device=device, dtype=dtype)
    b = torch.randn(k, C, dtype=torch.float64).to(device=device, dtype=dtype)
    rm = torch.randn(C, dtype=torch.float64).to(device=device, dtype=dtype)
    rv = (torch.rand(C, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype)
    return w, b, rm, rv


def _y(n, device="cpu", k=K):
    y = torch.randint(k, (n,))
    y[: min(n, k)] = torch.arange(min(n, k))  # every class present (when n allows)
    return y[torch.randperm(n)].to(device)


def _run(fn, x, y, w, b, rm, rv, g, **kw):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    out = fn(x, y, w, b, rm, rv, **kw)
    return out, torch.autograd.grad(out, (x, w, b), g), rm, rv


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "batch_inner"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act,alpha", ACTS)
def test_matches_reference(device, layout, training, act, alpha):
    x = _x(device=device, layout=layout)
    y = _y(x.shape[0], device)
    w, b, rm, rv = _params(x.shape[1], device)
    g = torch.randn_like(x)
    kw = dict(training=training, momentum=0.1, eps=1e-5, act=act, alpha=alpha)
    out, grads, rm1, rv1 = _run(class_batch_norm_act, x, y, w, b, rm, rv, g, **kw)
    out_r, grads_r, rm2, rv2 = _run(reference.class_batch_norm_act, x, y, w, b, rm, rv, g, **kw)
    tol = TOL[torch.float64]
    torch.testing.assert_close(out, out_r, **tol)
    for a, r in zip(grads, grads_r):
        torch.testing.assert_close(a, r, **tol)
    torch.testing.assert_close(rm1, rm2, **tol)
    torch.testing.assert_close(rv1, rv2, **tol)
    if training:
        assert not torch.equal(rm1, rm)
    if layout == "channels_last":  # no copy: the output keeps the input's layout
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grads[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(64, 8, 4, 4), (2, 3, 1, 9), (1, 2, 5, 5), (7, 1, 2, 3), (3, 9, 1, 1)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_odd_shapes(device, shape, layout):
    """Many samples on 4x4 maps, one channel, one sample, 1x1 maps (eval), and class counts above N."""
    training = shape[2] * shape[3] * shape[0] > 1
    x = _x(shape, device=device, layout=layout)
    k = 11
    y = torch.randint(k, (shape[0],)).to(device)
    w, b, rm, rv = _params(shape[1], device, k=k)
    g = torch.randn_like(x)
    kw = dict(training=training, act="lrelu", alpha=0.2)
    out, grads, _, _ = _run(class_batch_norm_act, x, y, w, b, rm, rv, g, **kw)
    out_r, grads_r, _, _ = _run(reference.class_batch_norm_act, x, y, w, b, rm, rv, g, **kw)
    torch.testing.assert_close(out, out_r, **TOL[torch.float64])
    for a, r in zip(grads, grads_r):
        torch.testing.assert_close(a, r, **TOL[torch.float64])
    absent = torch.ones(k, dtype=torch.bool)
    absent[y.cpu()] = False
    assert not grads[1][absent.to(device)].any()  # classes not in the batch get no gradient


def _tol(dtype, ref):
    t = TOL[dtype]
    return dict(rtol=t["rtol"], atol=t["atol"] * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes(device, dtype, mixed):
    if mixed and dtype in (torch.float32, torch.float64):
        pytest.skip("mixed parameters only for fp16/bf16 inputs")
    x64 = _x((8, 6, 5, 5))
    y = _y(8)
    w64, b64, rm64, rv64 = _params(6)
    g64 = torch.randn_like(x64)
    pdt = torch.float32 if mixed else dtype
    x64, g64 = x64.to(dtype).double(), g64.to(dtype).double()
    w64, b64, rm64, rv64 = (t.to(pdt).double() for t in (w64, b64, rm64, rv64))
    cast = lambda t, d: t.to(device=device, dtype=d)  # noqa: E731
    out, grads, rm, rv = _run(class_batch_norm_act, cast(x64, dtype), y.to(device), cast(w64, pdt), cast(b64, pdt),
                              cast(rm64, pdt), cast(rv64, pdt), cast(g64, dtype), training=True, act="relu")
    out_r, grads_r, rm_r, rv_r = _run(reference.class_batch_norm_act, x64, y, w64, b64, rm64, rv64, g64,
                                      training=True, act="relu")
    assert out.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == pdt and rm.dtype == pdt
    torch.testing.assert_close(out.double().cpu(), out_r, **_tol(dtype, out_r))
    for a, r in zip(grads, grads_r):
        torch.testing.assert_close(a.double().cpu(), r, **_tol(dtype, r))
    torch.testing.assert_close(rm.double().cpu(), rm_r, **_tol(pdt, rm_r))
    torch.testing.assert_close(rv.double().cpu(), rv_r, **_tol(pdt, rv_r))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act,alpha", ACTS)
def test_gradcheck_gradgradcheck(act, alpha, training, device):
    x = _x((4, 3, 3, 2), device=device).requires_grad_()
    y = _y(4, device)
    w, b, rm, rv = _params(3, device)
    w.requires_grad_()
    b.requires_grad_()

    def f(x, w, b):
        return class_batch_norm_act(x, y, w, b, rm.clone(), rv.clone(), training=training, act=act, alpha=alpha)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
def test_backward_op_gradcheck(training, device):
    """The backward op's autograd (the second derivative), every input incl. grad_mean/grad_var."""
    C = 3
    x = _x((4, C, 3, 2), device=device).requires_grad_()
    y = _y(4, device)
    grad = torch.randn_like(x).requires_grad_()
    w, b, _, _ = _params(C, device)
    mean, var, gm, gv = (t.to(device).requires_grad_() for t in (
        torch.randn(C, dtype=torch.float64), torch.rand(C, dtype=torch.float64) + 0.5,
        torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)))
    w.requires_grad_()
    b.requires_grad_()

    def f(grad, x, mean, var, w, b, gm, gv):
        return ops.class_batch_norm_act_backward(grad, x, y, mean, var, w, b, gm, gv, training, 1e-5, "lrelu", 0.2)

    assert torch.autograd.gradcheck(f, (grad, x, mean, var, w, b, gm, gv))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, layout):
    x = _x((4, 3, 3, 5), dtype=torch.float32, device=device, layout=layout)
    y = _y(4, device)
    w, b, rm, rv = _params(3, device, torch.float32)
    for training in (True, False):
        for act, alpha in ACTS:
            for rg in (False, True):
                xx, ww, bb = (t.clone().requires_grad_(rg) for t in (x, w, b))
                torch.library.opcheck(ops.class_batch_norm_act.default, (xx, y, ww, bb, rm, rv, training, 1e-5, act, alpha))
            out, mean, var = ops.class_batch_norm_act(x, y, w, b, rm, rv, training, 1e-5, act, alpha)
            g = torch.randn_like(x)
            for gm in (None, torch.randn(3, device=device)):
                torch.library.opcheck(ops.class_batch_norm_act_backward.default,
                                      (g, x, y, mean, var, w, b, gm, gm, training, 1e-5, act, alpha))


def test_compile_fullgraph():
    torch.manual_seed(0)
    m = ClassBatchNormAct2d(4, 5, activation="lrelu", negative_slope=0.2).double()
    with torch.no_grad():
        m.weight.normal_(1, 0.3)
        m.bias.normal_()
    m2 = ClassBatchNormAct2d(4, 5, activation="lrelu", negative_slope=0.2).double()
    m2.load_state_dict(m.state_dict())
    x, y = _x((6, 4, 3, 3)), _y(6, k=5)
    eager = m(x, y)
    comp = torch.compile(m2, fullgraph=True, backend="aot_eager")(x, y)
    torch.testing.assert_close(comp, eager)
    torch.testing.assert_close(m2.running_mean, m.running_mean)
    assert int(m2.num_batches_tracked) == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_matches_batchnorm_then_class_affine(device, momentum):
    """Three training steps and eval: nn.BatchNorm2d(affine=False) statistics and buffers, the
    per-class affine, the activation; and with one row per class equal, FusedBatchNormAct2d."""
    torch.manual_seed(1)
    m = ClassBatchNormAct2d(4, 3, momentum=momentum, activation="relu").double().to(device)
    bn = nn.BatchNorm2d(4, affine=False, momentum=momentum).double().to(device)
    with torch.no_grad():
        m.weight.normal_(1, 0.5)
        m.bias.normal_()
    for step in range(4):
        if step == 3:
            m.eval()
            bn.eval()
        x, y = _x((6, 4, 3, 3), device=device), _y(6, device)
        want = torch.relu(bn(x) * m.weight[y][:, :, None, None] + m.bias[y][:, :, None, None])
        torch.testing.assert_close(m(x, y), want)
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(m, k), getattr(bn, k))
    same = ClassBatchNormAct2d(4, 3).double()
    fused = FusedBatchNormAct2d(4).double()
    with torch.no_grad():
        fused.weight.normal_()
        fused.bias.normal_()
        same.weight.copy_(fused.weight.expand(3, 4))
        same.bias.copy_(fused.bias.expand(3, 4))
    x = _x((5, 4, 2, 2))
    torch.testing.assert_close(same(x, _y(5)), fused(x))


def test_module_state_dict_and_options():
    m = ClassBatchNormAct2d(4, 10)
    assert set(m.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    assert m.weight.shape == (10, 4) and torch.equal(m.weight, torch.ones(10, 4)) and not m.bias.any()
    assert "num_classes=10" in repr(m) and "activation='relu'" in repr(m)
    n = ClassBatchNormAct2d(4, 10, track_running_stats=False, activation="lrelu")
    assert set(n.state_dict()) == {"weight", "bias"} and "negative_slope=0.01" in repr(n)
    x, y = _x((3, 4, 2, 2), dtype=torch.float32), _y(3, k=10)
    n.eval()  # no running stats: batch statistics in eval too, as nn.BatchNorm2d
    want = reference.class_batch_norm_act(x, y, n.weight, n.bias, training=True, act="lrelu", alpha=0.01)
    torch.testing.assert_close(n(x, y), want)
    with pytest.raises(ValueError, match="'activation' must be one of linear, relu, lrelu"):
        ClassBatchNormAct2d(4, 10, activation="tanh")
    with pytest.raises(ValueError, match="'num_classes' must be a positive int"):
        ClassBatchNormAct2d(4, 0)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 4, 4)])
def test_empty(shape):
    x = torch.randn(shape, requires_grad=True)
    y = torch.zeros(shape[0], dtype=torch.long)
    w, b = torch.ones(2, shape[1], requires_grad=True), torch.zeros(2, shape[1], requires_grad=True)
    out = class_batch_norm_act(x, y, w, b, training=True)
    assert out.shape == shape
    out.sum().backward()
    assert x.grad.shape == shape and not w.grad.any()


def test_bad_inputs():
    x = torch.randn(4, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 0])
    w, b = torch.ones(3, 3), torch.zeros(3, 3)
    f = class_batch_norm_act
    with pytest.raises(ValueError, match=r"argument 'y' must be an int64 tensor of shape \(4,\)"):
        f(x, y.int(), w, b, training=True)
    with pytest.raises(ValueError, match=r"argument 'y' must be an int64 tensor of shape \(4,\)"):
        f(x, y[:3], w, b, training=True)
    with pytest.raises(ValueError, match=r"argument 'weight' must have shape \(num_classes, 3\)"):
        f(x, y, torch.ones(3), b, training=True)
    with pytest.raises(ValueError, match="argument 'bias' must have 3 rows"):
        f(x, y, w, torch.zeros(2, 3), training=True)
    with pytest.raises(ValueError, match="argument 'x' must be a 4-D tensor"):
        f(x[0], y, w, b, training=True)
    with pytest.raises(ValueError, match="'running_mean' is required when training=False"):
        f(x, y, w, b)
    with pytest.raises(ValueError, match="argument 'act' must be one of"):
        f(x, y, w, b, training=True, act="tanh")
    with pytest.raises(RuntimeError, match=r"y.*class labels in \[0, 3\).*got \[0, 3\]"):
        f(x, torch.tensor([0, 1, 3, 0]), w, b, training=True)
    with pytest.raises(RuntimeError, match=r"y.*class labels in \[0, 3\).*got \[-1, 2\]"):
        f(x, torch.tensor([0, -1, 2, 0]), w, b, training=True)
    with pytest.raises(RuntimeError, match="weight"):
        ops.class_batch_norm_act(x, y, w.double(), b, None, None, True, 1e-5, "relu", 0.0)
    with pytest.raises(RuntimeError, match="grad"):
        ops.class_batch_norm_act_backward(torch.randn(4, 3, 2, 1), x, y, torch.zeros(3), torch.ones(3), w, b,
                                          None, None, True, 1e-5, "relu", 0.0)
