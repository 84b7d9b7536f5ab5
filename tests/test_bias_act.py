"""bias_act: values and gradients against the float64 reference, derivatives of first and second
order, the torch.library contract, layouts, modules, memory, and bad input."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.ops import bias_act, bias_act_, reference
from fastgan.ops.bias_act import ref_kind
from fastgan.nn import FusedBiasAct, FusedLeakyReLU

from conftest import CUDA_PATHS, DEVICES, DTYPES, TOL, cpu_kernels, fails, too_loose, BUGS

ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish", "gelu"]


def layouts(shape, device, dtype):
    """The same values in four memory layouts: contiguous, channels_last, transposed, sliced."""
    base = torch.randn(shape, device=device, dtype=torch.float64)
    out = {"contiguous": base.to(dtype)}
    if len(shape) == 4:
        out["channels_last"] = base.to(dtype).contiguous(memory_format=torch.channels_last)
    out["transposed"] = base.transpose(0, -1).to(dtype).contiguous().transpose(0, -1)
    big = torch.randn([s * 2 for s in shape], device=device, dtype=torch.float64)
    big[tuple(slice(None, None, 2) for _ in shape)] = base
    out["strided"] = big.to(dtype)[tuple(slice(None, None, 2) for _ in shape)]
    return base, out


def ref64(x, b, **kw):
    return reference.bias_act(x.double(), None if b is None else b.double(), **kw)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_matches_reference_every_layout(device, dtype, act):
    base, xs = layouts((3, 6, 5, 7), device, dtype)
    b = torch.randn(6, device=device, dtype=dtype)
    for clamp, gain in ((None, 1.0), (0.7, 1.6)):
        want = ref64(base.to(dtype), b, act=act, gain=gain, clamp=clamp)
        for name, x in xs.items():
            y = bias_act(x, b, act=act, gain=gain, clamp=clamp)
            assert y.dtype == dtype and y.shape == x.shape, name
            if x.is_contiguous(memory_format=torch.channels_last) and name == "channels_last":
                assert y.is_contiguous(memory_format=torch.channels_last), "channels_last was copied"
            torch.testing.assert_close(y.double(), want, **TOL[dtype], msg=f"{act} {name} clamp={clamp}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_gradients_match_reference(device, dtype, act, layout):
    # (4, 16, 3, 3): S = 9 is odd (per-element channel); (4, 16, 4, 4) NCHW rows; channels_last: columns.
    for shape in ((4, 16, 3, 3), (4, 16, 4, 4), (2, 5, 3, 2)):
        base, xs = layouts(shape, device, dtype)
        x = xs.get(layout, xs["contiguous"]).detach().requires_grad_()
        b = torch.randn(shape[1], device=device, dtype=dtype, requires_grad=True)
        g = torch.randn(shape, device=device, dtype=dtype)
        y = bias_act(x, b, act=act, gain=1.4, clamp=0.8)
        gx, gb = torch.autograd.grad(y, (x, b), g)
        x64 = base.to(dtype).double().requires_grad_()
        b64 = b.detach().double().requires_grad_()
        y64 = reference.bias_act(x64, b64, act=act, gain=1.4, clamp=0.8)
        gx64, gb64 = torch.autograd.grad(y64, (x64, b64), g.double())
        tol = TOL[dtype] if dtype != torch.bfloat16 else dict(atol=5e-2, rtol=5e-2)
        if dtype == torch.bfloat16:
            # Rounding y to bf16 can move a value onto the clamp boundary (and tanh/sigmoid/elu/selu
            # read y): leave out elements within bf16 precision of the boundary.
            far = ((y64.abs() - 0.8).abs() > 0.02).detach()
            gx, gx64 = gx * far, gx64 * far
        torch.testing.assert_close(gx.double(), gx64, **tol)
        # the bias gradient sums many terms: scale the tolerance with their number
        n = x.numel() // shape[1]
        if dtype != torch.bfloat16:
            torch.testing.assert_close(gb.double(), gb64, atol=tol["atol"] * n, rtol=tol["rtol"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.6])
def test_gradcheck_and_gradgradcheck(device, act, clamp):
    x = torch.randn(2, 3, 4, 5, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)
    f = lambda x, b: bias_act(x, b, act=act, gain=1.3, clamp=clamp)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradgradcheck(f, (xc, b))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ["lrelu", "tanh", "gelu", "linear"])
def test_gradgradcheck_without_bias_and_other_dim(device, act):
    x = torch.randn(4, 3, 5, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: bias_act(x, act=act, alpha=0.3), (x,))
    assert torch.autograd.gradgradcheck(lambda x, b: bias_act(x, b, act=act, dim=-1), (x, b))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    x = torch.randn(2, 4, 3, 3, device=device)
    b = torch.randn(4, device=device)
    for act in ACTS:
        for clamp in (-1.0, 0.5):
            args = (x, b, 1, act, 0.2, 1.5, clamp)
            torch.library.opcheck(torch.ops.fastgan.bias_act.default, args)
            xg = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            torch.library.opcheck(torch.ops.fastgan.bias_act.default, (xg, b.requires_grad_(), 1, act, 0.2, 1.5, clamp))
            y, mask = torch.ops.fastgan.bias_act(*args)
            kind = ref_kind(act, clamp)
            ref = {"mask": mask, "y": y, "x": x, "none": x}[kind]
            g = torch.randn_like(x).requires_grad_()
            torch.library.opcheck(torch.ops.fastgan.bias_act_backward.default,
                                  (g, ref, b if kind == "x" else None, 1, act, 0.2, 1.5, clamp, True))
    for act in ("linear", "relu", "lrelu"):
        torch.library.opcheck(torch.ops.fastgan.bias_act_.default, (x.clone(), b, 1, act, 0.2, 1.0, -1.0))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    x = torch.randn(4, 8, 5, 5, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)

    def f(x, b):
        return (bias_act(x, b, act="lrelu", gain=math.sqrt(2)) * bias_act(x, None, act="gelu", clamp=2.0)).sum()

    cf = torch.compile(f, fullgraph=True)
    out, out_c = f(x, b), cf(x, b)
    g = torch.autograd.grad(out, (x, b))
    gc = torch.autograd.grad(out_c, (x, b))
    torch.testing.assert_close(out_c, out)
    for a, c in zip(g, gc):
        torch.testing.assert_close(c, a)


@pytest.mark.parametrize("device", DEVICES)
def test_modules_compile_fullgraph(device):
    m = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), FusedBiasAct(8), nn.Conv2d(8, 4, 1), FusedLeakyReLU(0.2)).to(device)
    x = torch.randn(2, 3, 9, 9, device=device)
    cm = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(cm(x), m(x))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_runs_in_input_dtype(device):
    dev = torch.device(device)
    lin = nn.Linear(8, 16).to(dev)
    act = FusedBiasAct(16, act="lrelu").to(dev)
    nn.init.normal_(act.bias)
    x = torch.randn(4, 8, device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        h = lin(x)
        y = act(h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    want = reference.bias_act(h.double(), act.bias.double(), act="lrelu", alpha=0.2)
    torch.testing.assert_close(y.double(), want, **TOL[torch.bfloat16])
    y.float().sum().backward()
    assert act.bias.grad is not None and act.bias.grad.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
def test_odd_shapes(device):
    for shape in ((0, 3, 4), (1,), (1, 1, 1, 1), (3, 0), (5, 1, 7)):
        x = torch.randn(shape, device=device, requires_grad=True)
        for act in ("lrelu", "tanh", "gelu"):
            y = bias_act(x, None, act=act)
            assert y.shape == x.shape
            torch.testing.assert_close(y, reference.bias_act(x, None, act=act))
            (gx,) = torch.autograd.grad(y.sum(), x) if x.numel() else (torch.zeros_like(x),)
            assert gx.shape == x.shape
    x0 = torch.tensor(0.7, device=device)  # 0-d, no bias
    torch.testing.assert_close(bias_act(x0, act="elu"), reference.bias_act(x0, act="elu"))
    xe = torch.randn(0, 5, 3, device=device, requires_grad=True)
    be = torch.randn(5, device=device, requires_grad=True)
    y = bias_act(xe, be, act="lrelu")
    gx, gb = torch.autograd.grad(y.sum(), (xe, be))
    assert gx.shape == xe.shape and torch.equal(gb, torch.zeros_like(be))


def test_large_odd_sized_tensor():
    x = torch.randn(3, 37, 1001, 31)  # 3.4 M elements, nothing divides the vector width
    b = torch.randn(37)
    for layout in (torch.contiguous_format, torch.channels_last):
        xx = x.contiguous(memory_format=layout).requires_grad_()
        bb = b.clone().requires_grad_()
        y = bias_act(xx, bb, act="lrelu", gain=1.5)
        torch.testing.assert_close(y, reference.bias_act(x, b, act="lrelu", gain=1.5))
        g = torch.randn_like(x)
        gx, gb = torch.autograd.grad(y, (xx, bb), g)
        x64, b64 = x.double().requires_grad_(), b.double().requires_grad_()
        gx64, gb64 = torch.autograd.grad(reference.bias_act(x64, b64, act="lrelu", gain=1.5), (x64, b64), g.double())
        torch.testing.assert_close(gx.double(), gx64, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gb.double(), gb64, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ACTS)
def test_nan_and_inf_propagate_like_pytorch(device, act):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5, -0.5], device=device)
    y = bias_act(x, None, act=act)
    # PyTorch's float64 path is the oracle (its vectorised float32 gelu turns +inf into nan)
    want = reference.bias_act(x.double(), None, act=act).float()
    torch.testing.assert_close(y, want, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_leaky_relu_is_a_drop_in(device):
    ours, theirs = FusedLeakyReLU(0.2), nn.LeakyReLU(0.2)
    assert isinstance(ours, nn.LeakyReLU)
    assert repr(ours) == "FusedLeakyReLU(negative_slope=0.2)"
    assert repr(FusedLeakyReLU(inplace=True)) == "FusedLeakyReLU(negative_slope=0.01, inplace=True)"
    assert ours.negative_slope == 0.2 and ours.inplace is False
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(3, 4, 5, device=device, requires_grad=True)
    y1, y2 = ours(x), theirs(x)
    torch.testing.assert_close(y1, y2)
    g = torch.randn_like(y1)
    torch.testing.assert_close(torch.autograd.grad(y1, x, g)[0], torch.autograd.grad(y2, x, g)[0])


def saved_bytes(fn, *args):
    """Bytes of the distinct storages autograd keeps for backward while fn(*args) runs."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return sum(seen.values()), out


def test_bytes_saved_for_backward():
    x = torch.randn(16, 32, 16, 16, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    eager, _ = saved_bytes(lambda x, b: F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2), x, b)
    fused, _ = saved_bytes(lambda x, b: bias_act(x, b, act="lrelu"), x, b)
    assert eager == x.numel() * 4
    assert fused == x.numel()  # a 1-byte mask: neither x nor y is kept
    assert fused / eager <= 0.25
    relu, _ = saved_bytes(lambda x: bias_act(x, None, act="relu"), x)
    assert relu == x.numel()
    lin, _ = saved_bytes(lambda x: bias_act(x, None, act="linear", gain=2.0), x)
    assert lin == 0


def test_inplace_really_saves_memory():
    h = torch.randn(8, 16, 12, 12, requires_grad=True)
    x = h * 1.0  # a non-leaf, as after a conv
    act = FusedLeakyReLU(0.2, inplace=True)
    ptr = x.data_ptr()
    nbytes, y = saved_bytes(act, x)
    assert y.data_ptr() == ptr, "inplace=True must write into its input"
    assert nbytes == x.numel(), "only the 1-byte mask may be kept"
    ref = F.leaky_relu(h.detach(), 0.2)
    torch.testing.assert_close(y.detach(), ref)
    g = torch.randn_like(y)
    (gh,) = torch.autograd.grad(y, h, g)
    torch.testing.assert_close(gh, torch.where(h > 0, g, 0.2 * g))
    # second order through the in-place path
    x2 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: FusedLeakyReLU(0.3, inplace=True)(t * 1.0), (x2,))
    with torch.no_grad():
        z = torch.randn(5, 5)
        zc = z.clone()
        assert act(z) is z
        torch.testing.assert_close(z, F.leaky_relu(zc, 0.2))
    with pytest.raises(RuntimeError, match="leaf"):
        act(torch.randn(3, requires_grad=True))


def test_fused_bias_act_module():
    m = FusedBiasAct(6, act="lrelu", alpha=0.2, gain=math.sqrt(2), clamp=256)
    assert m.bias.shape == (6,) and list(m.state_dict()) == ["bias"]
    nn.init.normal_(m.bias)
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(m(x), reference.bias_act(x, m.bias, act="lrelu", alpha=0.2, gain=math.sqrt(2), clamp=256))
    assert "act='lrelu'" in repr(m) and "clamp=256" in repr(m)
    nb = FusedBiasAct(6, act="tanh", bias=False)
    assert nb.bias is None and list(nb.state_dict()) == []
    torch.testing.assert_close(nb(x), torch.tanh(x))
    with pytest.raises(ValueError, match="act"):
        FusedBiasAct(3, act="nope")


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(device):
    x = torch.randn(2, 3, 4, device=device)
    with pytest.raises(RuntimeError, match="'b'.*length 3"):
        bias_act(x, torch.randn(4, device=device))
    with pytest.raises(RuntimeError, match="'b'.*1-D"):
        bias_act(x, torch.randn(3, 1, device=device))
    with pytest.raises(ValueError, match="'act'"):
        bias_act(x, act="leaky")
    with pytest.raises(TypeError, match="'x'.*floating"):
        bias_act(torch.ones(2, 3, dtype=torch.int64, device=device))
    with pytest.raises(TypeError, match="'x'"):
        bias_act([1.0, 2.0])
    with pytest.raises(RuntimeError, match="'dim'.*out of range"):
        bias_act(x, torch.randn(3, device=device), dim=3)
    with pytest.raises(ValueError, match="'clamp'"):
        bias_act(x, clamp=-1.0)
    with pytest.raises(ValueError, match="'gain'"):
        bias_act(x, gain=float("inf"))
    with pytest.raises(RuntimeError, match="'b'.*dtype"):
        bias_act(x, torch.randn(3, device=device, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="'b'.*device"):
        bias_act(x, torch.randn(3, device="meta"))
    with pytest.raises(ValueError, match="'act'"):
        bias_act_(x, act="tanh")


@pytest.mark.skipif(fastgan.info()["cuda_compiled"], reason="this build has CUDA kernels")
def test_cuda_tensor_on_cpu_only_build_says_how_to_rebuild():
    x = torch.randn(3)
    cuda_keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    with pytest.raises(RuntimeError, match="built without CUDA kernels.*FASTGAN_CUDA=1"):
        torch.ops.fastgan.bias_act.default.redispatch(cuda_keys, x, None, 1, "lrelu", 0.2, 1.0, -1.0)


@pytest.mark.cuda
def test_cuda_more_than_2_31_elements():
    n = 2 ** 31 + 77
    x = torch.randn(n, device="cuda", dtype=torch.float16)
    y = bias_act(x, None, act="lrelu")
    torch.testing.assert_close(y[-1000:], F.leaky_relu(x[-1000:], 0.2))
    torch.testing.assert_close(y[:1000], F.leaky_relu(x[:1000], 0.2))
    x4 = x[: (n // 1024) * 1024].view(-1, 8, 128)  # bias along dim 1 with 64-bit offsets
    b = torch.randn(8, device="cuda", dtype=torch.float16)
    y4 = bias_act(x4, b, act="linear")
    torch.testing.assert_close(y4[-1], x4[-1] + b.view(-1, 1))
    del x, y, x4, y4
    torch.cuda.empty_cache()


@pytest.mark.parametrize("device", CUDA_PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu(dtype, device):
    for shape, cl in (((8, 64, 32, 32), False), ((8, 64, 32, 32), True), ((5, 3, 7, 9), True), ((1000003,), False)):
        x = torch.randn(shape, dtype=dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        b = torch.randn(shape[1] if len(shape) > 1 else shape[0], dtype=dtype)
        dim = 1 if len(shape) > 1 else 0
        g = torch.randn_like(x)
        res = []
        for side, dev in (("cpu", "cpu"), ("accelerator", device)):  # (simt: the second runs emulated)
            xx = x.to(dev).requires_grad_()
            bb = b.to(dev).requires_grad_()
            with cpu_kernels() if side == "cpu" else contextlib.nullcontext():
                y = bias_act(xx, bb, act="lrelu", gain=1.4, clamp=1.5, dim=dim)
                res.append([t.cpu().double() for t in (y, *torch.autograd.grad(y, (xx, bb), g.to(dev)))])
        n = x.numel() // b.numel()  # terms of each bias-gradient sum
        for what, a, c in zip(("y", "grad x", "grad b"), *res):
            torch.testing.assert_close(c, a, **_cuda_vs_cpu_tol(dtype, what, n), msg=lambda m: f"{what}: {m}")


def _cuda_vs_cpu_tol(dtype, what, n):
    """Both sides compute in fp32 (fp64) and round once: y and grad x agree to the dtype's rounding
    (TOL; the emulator gives the same bits); the bias gradient sums n terms in another order."""
    tol = dict(TOL[dtype])
    if what == "grad b":
        tol["atol"] *= n
    return tol


@pytest.mark.cuda
def test_cuda_graph_capture():
    x = torch.randn(16, 32, 8, 8, device="cuda", requires_grad=True)
    b = torch.randn(32, device="cuda", requires_grad=True)
    g = torch.randn_like(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            torch.autograd.grad(bias_act(x, b, act="lrelu"), (x, b), g)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = bias_act(x, b, act="lrelu")
        gx, gb = torch.autograd.grad(y, (x, b), g)
    with torch.no_grad():
        x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2))


# ---- the fp16/bf16 tolerances bite ------------------------------------------------------------
# A kernel off by a little (lrelu slope 0.21 for 0.2, gain x1.01, bias + 0.01) must fail the
# comparisons above at the tolerances they use, on the inputs they use, while the correctly rounded
# result passes them. Where a tolerance is too loose for that, the case is a strict xfail that says
# so: it turns into a failure (XPASS) once the tolerance is tightened, so that the marker goes.


HALF_CASES = [(torch.float16, "slope"), (torch.float16, "gain"), (torch.float16, "bias"),
              (torch.bfloat16, "slope"), (torch.bfloat16, "gain"), (torch.bfloat16, "bias")]


@pytest.mark.parametrize("dtype,bug", HALF_CASES, ids=str)
def test_values_tolerance_catches_a_wrong_slope_gain_or_bias(dtype, bug):
    """test_matches_reference_every_layout's comparison (TOL[dtype]), on its inputs and parameters."""
    base, _ = layouts((3, 6, 5, 7), "cpu", dtype)
    b = torch.randn(6, dtype=dtype)
    alpha, k, shift = BUGS[bug]
    x = base.to(dtype)
    for clamp, gain in ((None, 1.0), (0.7, 1.6)):
        want = ref64(x, b, act="lrelu", gain=gain, clamp=clamp)
        assert not fails(want.to(dtype).double(), want, **TOL[dtype])
        bad = reference.bias_act(x.double(), b.double() + shift, act="lrelu", alpha=alpha, gain=gain * k,
                                 clamp=clamp).to(dtype)
        assert fails(bad.double(), want, **TOL[dtype]), f"{bug} passes at clamp={clamp}, gain={gain}"


@pytest.mark.parametrize("dtype,bug", HALF_CASES, ids=str)
def test_cuda_vs_cpu_tolerance_catches_a_wrong_slope_gain_or_bias(dtype, bug):
    """test_cuda_matches_cpu's comparison of y, on its first input (the CPU side taken as exact)."""
    x = torch.randn((8, 64, 32, 32), dtype=dtype)
    b = torch.randn(64, dtype=dtype)
    alpha, k, shift = BUGS[bug]
    cpu = ref64(x, b, act="lrelu", gain=1.4, clamp=1.5).to(dtype).double()
    bad = reference.bias_act(x.double(), b.double() + shift, act="lrelu", alpha=alpha, gain=1.4 * k,
                             clamp=1.5).to(dtype).double()
    assert fails(bad, cpu, **_cuda_vs_cpu_tol(dtype, "y", 8 * 32 * 32))


@pytest.mark.parametrize("bug", ["slope", pytest.param("gain", marks=too_loose(
    "test_gradients_match_reference compares bfloat16 gradients at 5e-2: a 1% gain error passes, and a "
    "wrong slope is caught only where it moves an element across the clamp"))])
def test_bf16_gradient_tolerance_catches_a_wrong_slope_or_gain(bug):
    """test_gradients_match_reference's bfloat16 comparison of grad x (5e-2, away from the clamp)."""
    alpha, k, _ = BUGS[bug]
    caught = []
    for shape in ((4, 16, 3, 3), (4, 16, 4, 4), (2, 5, 3, 2)):
        base, _ = layouts(shape, "cpu", torch.bfloat16)
        b = torch.randn(shape[1], dtype=torch.bfloat16)
        g = torch.randn(shape, dtype=torch.bfloat16)

        def grad_x(alpha, k):
            x64 = base.to(torch.bfloat16).double().requires_grad_()
            y64 = reference.bias_act(x64, b.double(), act="lrelu", alpha=alpha, gain=1.4 * k, clamp=0.8)
            return torch.autograd.grad(y64, x64, g.double())[0], y64.detach()

        want, y64 = grad_x(0.2, 1.0)
        far = (y64.abs() - 0.8).abs() > 0.02
        bad = grad_x(alpha, k)[0].to(torch.bfloat16).double()
        assert not fails(want.to(torch.bfloat16).double() * far, want * far, atol=5e-2, rtol=5e-2)
        caught.append(fails(bad * far, want * far, atol=5e-2, rtol=5e-2))
    assert any(caught)
