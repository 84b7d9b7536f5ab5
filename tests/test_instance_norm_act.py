"""fastgan.ops.instance_norm_act and fastgan.nn.FusedInstanceNormAct2d against F.instance_norm +
activation (the module's drop-in contract against nn.InstanceNorm2d is in test_dropin.py)."""
import pytest
import torch
from torch import nn

from fastgan.bench.batch_norm_act import saved_bytes
from fastgan.nn import FusedInstanceNormAct2d
from fastgan.ops import instance_norm_act, reference

from conftest import DEVICES, DTYPES, TOL

ACTS = [("relu", 0.0), ("lrelu", 0.2), ("linear", 0.0)]


def _x(shape=(3, 5, 6, 7), dtype=torch.float64, device="cpu", layout="contiguous"):
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.7).to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # non-contiguous: every other column of a wider tensor
        wide = torch.randn(*shape[:3], 2 * shape[3], dtype=torch.float64).to(device=device, dtype=dtype)
        wide[..., ::2] = x
        x = wide[..., ::2]
    elif layout == "misaligned":  # a storage offset of one element
        x = torch.cat([torch.zeros(1, dtype=dtype, device=device), x.flatten()])[1:].view(shape)
    return x


def _params(C, device="cpu", dtype=torch.float64):
    w = (torch.randn(C, dtype=torch.float64) + 0.5)
    w = torch.where(w.abs() < 0.1, torch.full_like(w, 0.3), w).to(device=device, dtype=dtype)
    b = torch.randn(C, dtype=torch.float64).to(device=device, dtype=dtype)
    rm = torch.randn(C, dtype=torch.float64).to(device=device, dtype=dtype)
    rv = (torch.rand(C, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype)
    return w, b, rm, rv


def _run(fn, x, w, b, rm, rv, g, **kw):
    x = x.detach().clone().requires_grad_()
    w = None if w is None else w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = fn(x, w, b, rm, rv, **kw)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], g)
    return y, grads, rm, rv


def _tol(dtype, ref):
    t = TOL[dtype]
    return dict(rtol=t["rtol"], atol=t["atol"] * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "misaligned"])
@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("act,alpha", ACTS)
def test_matches_reference(device, layout, use_input_stats, act, alpha):
    x = _x(device=device, layout=layout)
    w, b, rm, rv = _params(x.shape[1], device)
    g = torch.randn_like(x)
    kw = dict(use_input_stats=use_input_stats, momentum=0.3, eps=1e-5, act=act, alpha=alpha)
    y, grads, rm1, rv1 = _run(instance_norm_act, x, w, b, rm, rv, g, **kw)
    y_r, grads_r, rm2, rv2 = _run(reference.instance_norm_act, x, w, b, rm, rv, g, **kw)
    tol = TOL[torch.float64]
    torch.testing.assert_close(y, y_r, **tol)
    for a, r in zip(grads, grads_r):
        torch.testing.assert_close(a, r, **tol)
    torch.testing.assert_close(rm1, rm2, **tol)
    torch.testing.assert_close(rv1, rv2, **tol)
    assert torch.equal(rm1, rm) != use_input_stats  # updated exactly when the input's statistics are used
    assert y.is_contiguous()  # NCHW, as torch.instance_norm's output


@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("act,alpha", [("lrelu", 0.2), ("linear", 0.0), ("lrelu", -0.5), ("relu", 0.0)])
def test_affine_tracking_and_memory_modes(memory_efficient, affine, track, act, alpha):
    x = _x((2, 4, 5, 5))
    w, b, rm, rv = _params(4)
    if not affine:
        w = b = None
    if not track:
        rm = rv = None
    g = torch.randn_like(x)
    kw = dict(act=act, alpha=alpha)
    y, grads, rm1, rv1 = _run(lambda *a, **k: instance_norm_act(*a, memory_efficient=memory_efficient, **k),
                              x, w, b, rm, rv, g, **kw)
    y_r, grads_r, rm2, rv2 = _run(reference.instance_norm_act, x, w, b, rm, rv, g, **kw)
    torch.testing.assert_close(y, y_r, **TOL[torch.float64])
    for a, r in zip(grads, grads_r):
        torch.testing.assert_close(a, r, **TOL[torch.float64])
    if track:
        torch.testing.assert_close(rm1, rm2, **TOL[torch.float64])
        torch.testing.assert_close(rv1, rv2, **TOL[torch.float64])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes(device, dtype, mixed):
    """Every dtype against the float64 reference; mixed: float32 parameters and running stats (autocast)."""
    if mixed and dtype in (torch.float32, torch.float64):
        pytest.skip("mixed parameters only for fp16/bf16 inputs")
    x64 = _x((4, 6, 5, 5))
    w64, b64, rm64, rv64 = _params(6)
    g64 = torch.randn_like(x64)
    pdt = torch.float32 if mixed else dtype
    x64, g64 = x64.to(dtype).double(), g64.to(dtype).double()
    w64, b64, rm64, rv64 = (t.to(pdt).double() for t in (w64, b64, rm64, rv64))
    cast = lambda t, d: t.to(device=device, dtype=d)  # noqa: E731
    y, grads, rm, rv = _run(instance_norm_act, cast(x64, dtype), cast(w64, pdt), cast(b64, pdt), cast(rm64, pdt),
                            cast(rv64, pdt), cast(g64, dtype), act="lrelu", alpha=0.2)
    y_r, grads_r, rm_r, rv_r = _run(reference.instance_norm_act, x64, w64, b64, rm64, rv64, g64, act="lrelu",
                                    alpha=0.2)
    assert y.dtype == dtype and grads[0].dtype == dtype and grads[1].dtype == pdt and rm.dtype == pdt
    torch.testing.assert_close(y.double().cpu(), y_r, **_tol(dtype, y_r))
    for a, r in zip(grads, grads_r):
        torch.testing.assert_close(a.double().cpu(), r, **_tol(dtype, r))
    torch.testing.assert_close(rm.double().cpu(), rm_r, **_tol(pdt, rm_r))
    torch.testing.assert_close(rv.double().cpu(), rv_r, **_tol(pdt, rv_r))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act,alpha", ACTS)
@pytest.mark.parametrize("memory_efficient", [True, False])
def test_gradcheck_gradgradcheck(device, act, alpha, memory_efficient):
    x = _x((2, 3, 3, 4), device=device, layout="channels_last").requires_grad_()
    w, b, _, _ = _params(3, device)
    w.requires_grad_()
    b.requires_grad_()

    def f(x, w, b):
        return instance_norm_act(x, w, b, act=act, alpha=alpha, memory_efficient=memory_efficient)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(lambda x: instance_norm_act(x, act=act, alpha=alpha), (x,))


def test_opcheck_of_the_planes_view():
    """The op is fastgan::batch_norm_act on the (1, N*C, H, W) view with the weights repeated N times."""
    x = _x((2, 3, 4, 5), dtype=torch.float32)
    w, b, _, _ = _params(3, dtype=torch.float32)
    planes, wr, br = x.view(1, 6, 4, 5), w.repeat(2).requires_grad_(), b.repeat(2).requires_grad_()
    for act, alpha in ACTS:
        torch.library.opcheck(torch.ops.fastgan.batch_norm_act.default,
                              (planes.clone().requires_grad_(), wr, br, None, None, True, 1e-5, act, alpha, False))
    y = instance_norm_act(x, w, b, act="lrelu", alpha=0.2)
    y2 = torch.ops.fastgan.batch_norm_act(planes, w.repeat(2), b.repeat(2), None, None, True, 1e-5, "lrelu", 0.2,
                                          False)[0]
    assert torch.equal(y, y2.view_as(x))


def test_r1_through_an_instance_norm_discriminator_matches_eager():
    """Double backward: R1's gradient through conv + FusedInstanceNormAct2d + conv equals eager's."""
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(3, 4, 3, padding=1).double(), nn.Conv2d(4, 1, 8).double()
    fused = FusedInstanceNormAct2d(4, affine=True, activation="lrelu", negative_slope=0.2).double()
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        fused.bias.uniform_(-0.5, 0.5)
    eager = nn.Sequential(nn.InstanceNorm2d(4, affine=True), nn.LeakyReLU(0.2)).double()
    eager[0].load_state_dict(fused.state_dict())
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    grads = []
    for norm in (fused, eager):
        xr = x.clone().requires_grad_()
        out = conv2(norm(conv1(xr))).sum()
        (gx,) = torch.autograd.grad(out, xr, create_graph=True)
        r1 = gx.pow(2).sum()
        params = list(conv1.parameters()) + list(norm.parameters())
        grads.append(torch.autograd.grad(r1, params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_compile_fullgraph_module_with_running_stats():
    torch._dynamo.reset()
    m = FusedInstanceNormAct2d(5, affine=True, track_running_stats=True, activation="relu")
    e = nn.Sequential(nn.InstanceNorm2d(5, affine=True, track_running_stats=True), nn.ReLU())
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
    e[0].load_state_dict(m.state_dict())
    cm = torch.compile(m, fullgraph=True)
    for train in (True, True, False):
        m.train(train)
        e.train(train)
        x = _x((3, 5, 6, 6), dtype=torch.float32)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = cm(xa), e(xb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(ya, yb, **TOL[torch.float32])
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.weight.grad, e[0].weight.grad, rtol=1e-4, atol=1e-4)
    for k, v in e[0].state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, **TOL[torch.float32])


def test_autocast_cpu_bf16():
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    m = FusedInstanceNormAct2d(4, affine=True, track_running_stats=True, activation="lrelu", negative_slope=0.2)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = m(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16 and m.running_mean.dtype == torch.float32
    y.float().sum().backward()
    assert m.weight.grad.dtype == torch.float32 and torch.isfinite(m.weight.grad).all()
    y_r = reference.instance_norm_act(h.float(), m.weight, m.bias, act="lrelu", alpha=0.2)
    torch.testing.assert_close(y.float(), y_r, **_tol(torch.bfloat16, y_r))


@pytest.mark.parametrize("act,alpha", [("lrelu", 0.2), ("relu", 0.0)])
def test_saved_bytes_vs_eager(act, alpha):
    """The backward keeps one activation (x for relu, y for lrelu); eager keeps x and y."""
    x = torch.randn(4, 16, 16, 16, requires_grad=True)
    m = FusedInstanceNormAct2d(16, affine=True, activation=act, negative_slope=alpha)
    e = nn.Sequential(nn.InstanceNorm2d(16, affine=True), nn.ReLU() if act == "relu" else nn.LeakyReLU(alpha))
    ours, _ = saved_bytes(m, x)
    eager, _ = saved_bytes(e, x)
    act_bytes = x.numel() * x.element_size()
    assert eager >= 2 * act_bytes and ours <= act_bytes * 1.05, (ours, eager)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 4, 4)])
def test_empty(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w, b, rm, rv = _params(shape[1])
    w.requires_grad_()
    rm0 = rm.clone()
    y = instance_norm_act(x, w, b, rm, rv, act="lrelu", alpha=0.2)
    assert y.shape == x.shape
    if shape[0] == 0:
        assert torch.equal(rm, rm0)
    gx, gw = torch.autograd.grad(y.sum(), (x, w))
    assert gx.shape == x.shape and gw.shape == (shape[1],) and (gw == 0).all()


def test_one_sample_one_channel_two_values():
    x = _x((1, 1, 1, 2))
    w, b, rm, rv = _params(1)
    y = instance_norm_act(x, w, b, rm.clone(), rv.clone(), act="linear")
    torch.testing.assert_close(y, reference.instance_norm_act(x, w, b, rm, rv, act="linear"), **TOL[torch.float64])


def test_bad_inputs():
    x = _x((2, 3, 4, 4))
    w, b, rm, rv = _params(3)
    fn = "fastgan.ops.instance_norm_act"
    cases = [
        (dict(x=x[0]), "argument 'x' must be a 4-D tensor"),
        (dict(x=x.long()), "argument 'x'"),
        (dict(weight=w[:2]), "argument 'weight' must have shape \\(3,\\)"),
        (dict(bias=torch.randn(3, 1, dtype=torch.float64)), "argument 'bias' must have shape \\(3,\\)"),
        (dict(running_mean=rm), "'running_mean' and 'running_var' must be given together"),
        (dict(use_input_stats=False), "argument 'running_mean' is required when use_input_stats=False"),
        (dict(act="tanh"), "argument 'act'"),
        (dict(eps=-1.0), "argument 'eps' must be >= 0"),
        (dict(x=_x((2, 3, 1, 1))), "expected more than 1 spatial element"),
        (dict(running_mean=rm, running_var=rv, momentum=None), "argument 'momentum' must be a number"),
    ]
    for kw, msg in cases:
        args = dict(x=x, weight=w, bias=b) | kw
        with pytest.raises((ValueError, TypeError), match=msg) as e:
            instance_norm_act(args.pop("x"), **args)
        assert str(e.value).startswith(fn), e.value
    # eval with running statistics takes one spatial element, as torch
    y = instance_norm_act(_x((2, 3, 1, 1)), w, b, rm, rv, use_input_stats=False)
    assert y.shape == (2, 3, 1, 1)


def test_module_three_steps_then_eval_matches_eager_with_every_activation():
    """The non-native activations (linear kernel + bias_act) too."""
    for act, eager_act in (("tanh", nn.Tanh()), ("silu", nn.SiLU()), ("elu", nn.ELU())):
        m = FusedInstanceNormAct2d(4, affine=True, track_running_stats=True, activation=act).double()
        e = nn.Sequential(nn.InstanceNorm2d(4, affine=True, track_running_stats=True), eager_act).double()
        e[0].load_state_dict(m.state_dict())
        for train in (True, True, False):
            m.train(train)
            e.train(train)
            x = _x((2, 4, 5, 5))
            torch.testing.assert_close(m(x), e(x), **TOL[torch.float64])
        assert "activation=" in repr(m)
