"""conv_transpose2d_act / FusedConvTranspose2d against F.conv_transpose2d + the reference activation.

Every forward path is tested explicitly (FASTGAN_CONV_TRANSPOSE_PATH=aten|aten_cl|fused) besides
the measured choice (auto), on CPU and, where a GPU is present, CUDA.
"""
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
from fastgan.nn import FusedConvTranspose2d
from fastgan.ops import conv_transpose2d_act, reference
from conftest import CUDA_PATHS, DTYPES, TOL, fails, too_loose, BUGS

PATHS = ["aten", "fused", "auto"]
ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish", "gelu"]


@pytest.fixture
def path(request, monkeypatch):
    monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", request.param)
    return request.param


def with_path(*paths):
    return pytest.mark.parametrize("path", paths, indirect=True)


def random_config(rng: random.Random):
    """A random valid transposed convolution: kernel 1-5, stride 1-3, dilation 1-2, groups 1-3."""
    while True:
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        d = (rng.choice([1, 1, 2]), rng.choice([1, 1, 2]))
        p = (rng.randint(0, k[0]), rng.randint(0, k[1]))
        op = tuple(rng.randint(0, max(s[i], d[i]) - 1) for i in range(2))
        g = rng.choice([1, 1, 2, 3])
        cin, cout_g = g * rng.randint(1, 3), rng.randint(1, 3)
        h, w = rng.randint(1, 7), rng.randint(1, 7)
        oh = (h - 1) * s[0] - 2 * p[0] + d[0] * (k[0] - 1) + op[0] + 1
        ow = (w - 1) * s[1] - 2 * p[1] + d[1] * (k[1] - 1) + op[1] + 1
        if oh > 0 and ow > 0:
            return dict(n=rng.randint(1, 3), cin=cin, cout_g=cout_g, h=h, w=w, k=k, s=s, p=p, op=op, g=g, d=d,
                        bias=rng.random() < 0.7, cl=rng.random() < 0.4)


CONFIGS = [random_config(random.Random(i)) for i in range(36)]


def make(cfg, dtype=torch.float64, device="cpu", requires_grad=False):
    x = torch.randn(cfg["n"], cfg["cin"], cfg["h"], cfg["w"], dtype=dtype, device=device)
    w = torch.randn(cfg["cin"], cfg["cout_g"], *cfg["k"], dtype=dtype, device=device) * 0.5
    b = torch.randn(cfg["cout_g"] * cfg["g"], dtype=dtype, device=device) if cfg["bias"] else None
    if cfg["cl"]:
        x = x.contiguous(memory_format=torch.channels_last)
    ts = [x, w] + ([b] if b is not None else [])
    for t in ts:
        t.requires_grad_(requires_grad)
    return x, w, b


def conv_args(cfg):
    return (cfg["s"], cfg["p"], cfg["op"], cfg["g"], cfg["d"])


# ---- forward correctness ----------------------------------------------------------------------
@with_path("aten", "fused", "aten_cl")
@pytest.mark.parametrize("i", range(len(CONFIGS)))
def test_random_configs_float64(path, i):
    cfg = CONFIGS[i]
    if path == "fused" and cfg["d"] != (1, 1):
        with pytest.raises(RuntimeError, match="dilation 1"):
            conv_transpose2d_act(*make(cfg), *conv_args(cfg))
        return
    x, w, b = make(cfg)
    y = conv_transpose2d_act(x, w, b, *conv_args(cfg), act="lrelu", gain=1.3)
    ref = reference.conv_transpose2d_act(x, w, b, *conv_args(cfg), act="lrelu", gain=1.3)
    torch.testing.assert_close(y, ref, **TOL[torch.float64])
    expect_cl = cfg["cl"] and not x.is_contiguous()
    assert y.is_contiguous(memory_format=torch.channels_last if expect_cl else torch.contiguous_format)


@with_path("aten", "fused", "aten_cl", "auto")
@pytest.mark.parametrize("act", ACTS)
def test_activations_and_grads_float32(path, act):
    cfg = dict(n=2, cin=6, cout_g=4, h=5, w=4, k=(4, 4), s=(2, 2), p=(1, 1), op=(0, 0), g=1, d=(1, 1), bias=True,
               cl=act in ("lrelu", "tanh"))
    x, w, b = make(cfg, torch.float32, requires_grad=True)
    kw = dict(act=act, gain=1.4, clamp=2.5 if act in ("linear", "lrelu", "gelu") else None)
    if act == "lrelu":
        kw["alpha"] = 0.1
    y = conv_transpose2d_act(x, w, b, *conv_args(cfg), **kw)
    ref = reference.conv_transpose2d_act(x, w, b, *conv_args(cfg), **kw)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), gy)
    want = torch.autograd.grad(ref, (x, w, b), gy)
    for g1, g2, name in zip(got, want, "xwb"):
        torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4, msg=lambda m: f"grad {name}: {m}")


@with_path("aten", "fused", "aten_cl")
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes(path, dtype):
    cfg = dict(n=2, cin=8, cout_g=5, h=6, w=5, k=(4, 4), s=(2, 2), p=(1, 1), op=(1, 0), g=1, d=(1, 1), bias=True,
               cl=False)
    x, w, b = make(cfg, dtype)
    x = x * 0.5
    y = conv_transpose2d_act(x, w, b, *conv_args(cfg), act="lrelu")
    assert y.dtype == dtype
    ref = reference.conv_transpose2d_act(x.double(), w.double(), b.double(), *conv_args(cfg), act="lrelu")
    tol = TOL[dtype]["rtol"]
    torch.testing.assert_close(y.double(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


@with_path("aten", "fused", "aten_cl")
def test_bfloat16_channels_last_grads(path):
    cfg = dict(n=2, cin=8, cout_g=8, h=4, w=4, k=(4, 4), s=(2, 2), p=(1, 1), op=(0, 0), g=1, d=(1, 1), bias=True,
               cl=True)
    x, w, b = make(cfg, torch.bfloat16, requires_grad=True)
    y = conv_transpose2d_act(x, w, b, *conv_args(cfg), act="lrelu")
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), gy)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = reference.conv_transpose2d_act(xd, wd, bd, *conv_args(cfg), act="lrelu")
    want = torch.autograd.grad(ref, (xd, wd, bd), gy.double())
    for g1, g2 in zip((y,) + got, (ref,) + want):
        torch.testing.assert_close(g1.double(), g2, atol=3e-2 * g2.abs().max().item(), rtol=3e-2)


# ---- gradients -------------------------------------------------------------------------------
GRAD_CFGS = [  # small: gradgradcheck differentiates numerically through every input and grad_output
    dict(n=1, cin=2, cout_g=2, h=2, w=3, k=(4, 4), s=(2, 2), p=(1, 1), op=(0, 0), g=1, d=(1, 1), bias=True, cl=False),
    dict(n=1, cin=2, cout_g=1, h=2, w=2, k=(3, 2), s=(3, 1), p=(1, 0), op=(2, 0), g=2, d=(1, 1), bias=True, cl=True),
    dict(n=2, cin=1, cout_g=2, h=2, w=2, k=(3, 3), s=(2, 1), p=(0, 1), op=(1, 0), g=1, d=(2, 1), bias=False, cl=False),
]
GRAD_CASES = [("lrelu", 0), ("tanh", 1), ("gelu", 0), ("linear", 1), ("swish", 2), ("relu", 2)]


@with_path("aten", "fused", "aten_cl")
@pytest.mark.parametrize("act,ci", GRAD_CASES)
def test_gradcheck_gradgradcheck(path, act, ci):
    cfg = GRAD_CFGS[ci]
    if path == "fused" and cfg["d"] != (1, 1):
        pytest.skip("the CPU fused path needs dilation 1 (checked in test_random_configs_float64)")
    x, w, b = make(cfg, requires_grad=True)
    inputs = (x, w) + ((b,) if b is not None else ())
    clamp = 1.5 if act == "linear" else None

    def f(*t):
        bb = t[2] if len(t) > 2 else None
        return conv_transpose2d_act(t[0], t[1], bb, *conv_args(cfg), act=act, gain=1.2, clamp=clamp)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


# ---- torch.library / torch.compile ----------------------------------------------------------
@with_path("aten", "fused", "aten_cl")
@pytest.mark.parametrize("act,cl,grad", [("lrelu", True, True), ("gelu", False, True), ("tanh", False, False),
                                         ("linear", True, False)])
def test_opcheck(path, act, cl, grad):
    cfg = dict(n=2, cin=4, cout_g=3, h=3, w=3, k=(4, 4), s=(2, 2), p=(1, 1), op=(0, 0), g=1, d=(1, 1), bias=True,
               cl=cl)
    x, w, b = make(cfg, torch.float32, requires_grad=grad)
    torch.library.opcheck(torch.ops.fastgan.conv_transpose2d_act.default,
                          (x, w, b, [2, 2], [1, 1], [0, 0], 1, [1, 1], act, 0.2, 1.0, -1.0))


@pytest.mark.parametrize("cl", [False, True])
def test_compile_fullgraph(cl):
    torch._dynamo.reset()
    m = FusedConvTranspose2d(8, 4, 4, 2, 1, activation="lrelu")
    x = torch.randn(2, 8, 5, 5)
    if cl:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()

    def step(fwd):
        y = fwd(x)
        return y, torch.autograd.grad(y.square().sum(), (x, m.weight, m.bias))

    y0, g0 = step(m)
    y1, g1 = step(torch.compile(m, fullgraph=True))  # forward and its AOTAutograd backward compiled
    torch.testing.assert_close(y1, y0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert y1.is_contiguous(memory_format=torch.channels_last) == cl


def test_autocast_cpu():
    m = FusedConvTranspose2d(8, 4, 4, 2, 1, activation="lrelu")
    x = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        ref = F.leaky_relu(F.conv_transpose2d(x, m.weight, m.bias, 2, 1), 0.2)
    assert y.dtype == torch.bfloat16 == ref.dtype
    torch.testing.assert_close(y.float(), ref.float(), atol=3e-2, rtol=3e-2)


# ---- odd shapes and layouts ------------------------------------------------------------------
@with_path("aten", "fused", "aten_cl", "auto")
def test_odd_shapes(path):
    w = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    cases = {
        "empty batch": torch.randn(0, 3, 5, 5, dtype=torch.float64),
        "1x1": torch.randn(1, 3, 1, 1, dtype=torch.float64),
        "non-contiguous": torch.randn(2, 6, 5, 7, dtype=torch.float64)[:, ::2, :, 1::2],
        "channels_last": torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
        "cl sliced": torch.randn(2, 3, 8, 5, dtype=torch.float64).contiguous(
            memory_format=torch.channels_last)[:, :, ::2],
    }
    for name, x in cases.items():
        y = conv_transpose2d_act(x, w, b, 2, 1, act="lrelu")
        ref = reference.conv_transpose2d_act(x, w, b, 2, 1, act="lrelu")
        torch.testing.assert_close(y, ref, **TOL[torch.float64], msg=lambda m: f"{name}: {m}")
    # one output element: 1x1 input, 1x1 kernel
    x1, w1 = torch.randn(1, 1, 1, 1), torch.randn(1, 1, 1, 1)
    torch.testing.assert_close(conv_transpose2d_act(x1, w1, act="relu"), F.relu(x1 * w1))


@with_path("aten", "fused")
def test_channels_last_weight_gives_channels_last(path):
    x = torch.randn(2, 4, 3, 3)
    w = torch.randn(4, 6, 4, 4).contiguous(memory_format=torch.channels_last)
    y = conv_transpose2d_act(x, w, None, 2, 1, act="tanh")
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, torch.tanh(F.conv_transpose2d(x, w, None, 2, 1)), atol=1e-5, rtol=1e-5)


@with_path("aten", "fused", "aten_cl")
def test_unbatched(path):
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    y = conv_transpose2d_act(x, w, b, 2, 1, 1, act="swish")
    torch.testing.assert_close(y, reference.conv_transpose2d_act(x, w, b, 2, 1, 1, act="swish"))
    assert y.shape == (2, 10, 6)


# ---- DCGAN layers ----------------------------------------------------------------------------
DCGAN = [  # (cin, cout, h, k, s, p, act): the DCGAN-64 generator at batch 2
    (100, 512, 1, 4, 1, 0, "relu"), (512, 256, 4, 4, 2, 1, "relu"), (256, 128, 8, 4, 2, 1, "relu"),
    (128, 64, 16, 4, 2, 1, "relu"), (64, 3, 32, 4, 2, 1, "tanh"),
]


@with_path("auto")
@pytest.mark.parametrize("layer", range(len(DCGAN)))
def test_dcgan_layers(path, layer):
    cin, cout, h, k, s, p, act = DCGAN[layer]
    m = FusedConvTranspose2d(cin, cout, k, s, p, bias=False, activation=act).to(memory_format=torch.channels_last)
    x = torch.randn(2, cin, h, h, requires_grad=True)
    y = m(x)
    ref = reference.conv_transpose2d_act(x, m.weight, None, s, p, act=act)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    gy = torch.randn_like(y)
    for g1, g2 in zip(torch.autograd.grad(y, (x, m.weight), gy), torch.autograd.grad(ref, (x, m.weight), gy)):
        torch.testing.assert_close(g1, g2, atol=1e-3, rtol=1e-4)


# ---- the module ------------------------------------------------------------------------------
def test_module_drop_in():
    kw = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    ref = nn.ConvTranspose2d(4, 6, 3, **kw)
    m = FusedConvTranspose2d(4, 6, 3, **kw, activation="lrelu", negative_slope=0.1)
    assert isinstance(m, nn.ConvTranspose2d)
    m.load_state_dict(ref.state_dict())
    assert m.state_dict().keys() == ref.state_dict().keys()
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "groups",
                 "dilation", "padding_mode", "transposed"):
        assert getattr(m, attr) == getattr(ref, attr), attr
    assert "activation='lrelu'" in repr(m) and "negative_slope=0.1" in repr(m)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(m(x), F.leaky_relu(ref(x), 0.1), atol=1e-5, rtol=1e-5)
    # output_size picks the output padding, as nn.ConvTranspose2d does
    torch.testing.assert_close(m(x, output_size=[10, 9]), F.leaky_relu(ref(x, output_size=[10, 9]), 0.1),
                               atol=1e-5, rtol=1e-5)
    # unbatched
    torch.testing.assert_close(m(x[0]), F.leaky_relu(ref(x[0]), 0.1), atol=1e-5, rtol=1e-5)
    # no bias, no activation, gain
    m2 = FusedConvTranspose2d(4, 6, 3, bias=False, gain=2.0)
    torch.testing.assert_close(m2(x), 2 * F.conv_transpose2d(x, m2.weight), atol=1e-5, rtol=1e-5)


def test_saved_memory_vs_eager():
    """The backward keeps x, weight and a 1-byte mask: <= 0.6x what eager ConvTranspose2d + LeakyReLU keeps."""
    def saved_bytes(model, x):
        seen = {}

        def pack(t):
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x).sum()
        return sum(seen.values())

    x = torch.randn(16, 128, 16, 16, requires_grad=True)  # the CPU benchmark shape
    eager = nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.LeakyReLU(0.2))
    fused = FusedConvTranspose2d(128, 64, 4, 2, 1, activation="lrelu")
    ratio = saved_bytes(fused, x) / saved_bytes(eager, x)
    assert ratio <= 0.6, ratio


# ---- errors ----------------------------------------------------------------------------------
def test_bad_inputs():
    x, w = torch.randn(2, 4, 5, 5), torch.randn(4, 3, 3, 3)
    fn = conv_transpose2d_act
    with pytest.raises(RuntimeError, match=r"'x'.*expected input\[2, 5, 5, 5\] to have 4 channels, but got 5"):
        fn(torch.randn(2, 5, 5, 5), w)
    with pytest.raises(RuntimeError, match="expected 3D .unbatched. or 4D .batched. input"):
        fn(torch.randn(4, 5), w)
    with pytest.raises(RuntimeError, match="expected 3D"):
        fn(torch.randn(1, 2, 4, 5, 5), w)
    with pytest.raises(RuntimeError, match="'output_padding'.*smaller than either stride or dilation"):
        fn(x, w, None, 2, 1, 2)
    with pytest.raises(TypeError, match="'x' must be a floating-point tensor"):
        fn(torch.ones(2, 4, 5, 5, dtype=torch.int64), w)
    with pytest.raises(ValueError, match="'act' must be one of"):
        fn(x, w, act="leaky")
    with pytest.raises(RuntimeError, match="'bias'.*length 3"):
        fn(x, w, torch.randn(4))
    with pytest.raises(RuntimeError, match="'weight'.*dtype"):
        fn(x, w.double())
    with pytest.raises(RuntimeError, match="'weight'.*groups=3"):
        fn(x, w, None, 1, 0, 0, 3)
    with pytest.raises(ValueError, match="'padding'.*negative"):
        fn(x, w, None, 1, -1)
    with pytest.raises(ValueError, match="'stride'.*non-positive"):
        fn(x, w, None, 0)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        fn(torch.randn(1, 4, 1, 1), w, None, 1, 2)
    with pytest.raises(ValueError, match="'activation'"):
        FusedConvTranspose2d(4, 3, 3, activation="leaky")
    with pytest.raises(ValueError, match="zeros"):
        FusedConvTranspose2d(4, 3, 3, padding_mode="reflect")
    with pytest.raises(RuntimeError, match="'weight'.*4-D"):
        torch.ops.fastgan.conv_transpose2d_act(x, w[0], None, [1, 1], [0, 0], [0, 0], 1, [1, 1], "linear", 0.0,
                                               1.0, -1.0)


def test_path_env_var(monkeypatch):
    monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", "fastest")
    with pytest.raises(RuntimeError, match="FASTGAN_CONV_TRANSPOSE_PATH must be auto, aten, aten_cl or fused"):
        conv_transpose2d_act(torch.randn(1, 2, 3, 3), torch.randn(2, 2, 2, 2))


# ---- CUDA ------------------------------------------------------------------------------------
def _bias_act_on_cuda():
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastgan::bias_act_backward", "CUDA") and \
        fastgan.info()["ops"]["bias_act"]["cuda"]


CUDA_CASES = [  # (n, cin, cout, h, w, k, s, p, op): phase mode, odd tiles, gemm mode
    (4, 64, 32, 8, 8, 4, 2, 1, 0), (3, 16, 24, 5, 7, 4, 2, 1, 1), (2, 8, 8, 9, 3, 3, 3, 0, 2),
    (2, 32, 72, 6, 6, 5, 1, 2, 0), (5, 24, 8, 1, 1, 4, 1, 0, 0), (3, 200, 16, 1, 1, 3, 2, 0, 0),
    (64, 512, 256, 4, 4, 4, 2, 1, 0),  # (a GPU only: too slow emulated; the emulator runs it at batch 1)
]


@with_path("aten")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_aten_path_runs_reduced_precision_in_float32_without_native_support(path, dtype):
    """Where the CPU has no native bf16/fp16 (AVX2), oneDNN's reduced-precision deconvolution is inexact
    (1.3% on 800-term sums) and slower than float32: the aten path computes in float32 and rounds once,
    so it equals that exactly (with native support it is oneDNN's own)."""
    native = {torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
              torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported}[dtype]()
    x = torch.randn(2, 32, 6, 6, dtype=dtype)
    w = torch.randn(32, 72, 5, 5, dtype=dtype) / 32 ** 0.5
    b = torch.randn(72, dtype=dtype)
    y = conv_transpose2d_act(x, w, b, 1, 2, 0, act="lrelu", gain=1.3, clamp=3.0)
    once = fastgan.ops.bias_act(F.conv_transpose2d(x.float(), w.float(), b.float(), 1, 2).to(dtype), act="lrelu",
                                gain=1.3, clamp=3.0)
    if native:
        torch.testing.assert_close(y, once, rtol=2e-2, atol=2e-2 * 3)
    else:
        assert torch.equal(y, once)


@pytest.mark.parametrize("device", CUDA_PATHS)
@with_path("fused", "auto")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("case", range(len(CUDA_CASES)))
@pytest.mark.parametrize("act", ["lrelu", "gelu", "linear"])
def test_cuda_fused_kernel(path, dtype, case, act, device):
    """The tensor-core kernel against F.conv_transpose2d computed in float64."""
    if device == "cuda" and path == "auto" and act != "linear" and not _bias_act_on_cuda():
        pytest.skip("the aten path's epilogue needs bias_act's CUDA kernels")
    if device != "cuda" and CUDA_CASES[case][0] == 64:
        pytest.skip("batch 64 of 512 channels: minutes on the emulator (test_simt_kernels runs it at batch 1)")
    n, cin, cout, h, w, k, s, p, op = CUDA_CASES[case]
    x = torch.randn(n, cin, h, w, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    wt = (torch.randn(cin, cout, k, k, device=device, dtype=dtype) / (cin ** 0.5)).contiguous(
        memory_format=torch.channels_last)
    b = torch.randn(cout, device=device, dtype=dtype)
    y = conv_transpose2d_act(x, wt, b, s, p, op, act=act, gain=1.3, clamp=3.0 if act == "lrelu" else None)
    ref = reference.conv_transpose2d_act(x.double(), wt.double(), b.double(), s, p, op, act=act, gain=1.3,
                                         clamp=3.0 if act == "lrelu" else None)
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 4e-3}[dtype]
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.double(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


@pytest.mark.parametrize("device", CUDA_PATHS)
@pytest.mark.parametrize("path", ["aten", "fused"], indirect=True)
def test_cuda_forward_backward(path, device):
    if device == "cuda" and not _bias_act_on_cuda():
        pytest.skip("the CUDA backward needs bias_act's CUDA kernels (fastgan::bias_act_backward)")
    m = FusedConvTranspose2d(64, 32, 4, 2, 1, activation="lrelu").to(device).to(memory_format=torch.channels_last)
    x = torch.randn(8, 64, 8, 8, device=device).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = m(x)
    ref = reference.conv_transpose2d_act(x.double(), m.weight.double(), m.bias.double(), 2, 1, act="lrelu")
    torch.testing.assert_close(y.double(), ref, atol=1e-2, rtol=1e-2)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, m.weight, m.bias), gy)
    # The reference backward takes the slopes the forward chose (its mask): where TF32 rounding puts a
    # pre-activation on the other side of zero than float64 does, the slope differs, and comparing
    # against float64's choice would test the rounding, not the backward.
    mask = torch.ops.fastgan.conv_transpose2d_act(x.detach(), m.weight.detach(), m.bias.detach(), [2, 2], [1, 1],
                                                  [0, 0], 1, [1, 1], "lrelu", 0.2, 1.0, -1.0)[1]
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, m.weight, m.bias))
    z = F.conv_transpose2d(xd, wd, bd, 2, 1)
    want = torch.autograd.grad(z, (xd, wd, bd), gy.double() * torch.where(mask == 1, 1.0, 0.2).double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=2e-2, rtol=2e-2)


CUDA_GRAD_CFGS = [  # tiny: on the emulator gradgradcheck runs the kernels hundreds of times
    dict(n=1, cin=4, cout_g=1, h=2, w=2, k=(3, 3), s=(2, 2), p=(1, 1), op=(1, 0), g=2, d=(1, 1), bias=True, cl=False),
    dict(n=1, cin=3, cout_g=1, h=2, w=3, k=(2, 2), s=(1, 2), p=(0, 1), op=(0, 1), g=3, d=(1, 1), bias=True, cl=True),
    dict(n=2, cin=2, cout_g=2, h=2, w=2, k=(3, 2), s=(2, 1), p=(1, 0), op=(1, 0), g=1, d=(2, 2), bias=True, cl=False),
    dict(n=1, cin=2, cout_g=2, h=2, w=3, k=(4, 4), s=(2, 2), p=(1, 1), op=(0, 0), g=1, d=(1, 1), bias=False, cl=True),
]


@pytest.mark.parametrize("device", CUDA_PATHS)
@with_path("auto")
@pytest.mark.parametrize("act,ci", [("lrelu", 0), ("tanh", 1), ("gelu", 2), ("relu", 3), ("swish", 0), ("linear", 2)])
def test_cuda_backward_groups_dilation_float64(path, act, ci, device):
    """The CUDA backward (bias_act_backward's kernel + the convolution backward) in float64 with groups 2
    and 3, dilation 2, channels_last: gradients of the right shapes, equal to F.conv_transpose2d's, and
    gradcheck/gradgradcheck. (float64, groups and dilation run the aten forward: the fused CUDA kernel
    takes float16/bfloat16/float32, groups 1, dilation 1.)"""
    if device == "cuda" and not _bias_act_on_cuda():
        pytest.skip("the CUDA backward needs bias_act's CUDA kernels (fastgan::bias_act_backward)")
    cfg = CUDA_GRAD_CFGS[ci]
    x, w, b = make(cfg, device=device, requires_grad=True)
    inputs = (x, w) + ((b,) if b is not None else ())
    clamp = 1.5 if act == "linear" else None

    def f(*t):
        return conv_transpose2d_act(t[0], t[1], t[2] if len(t) > 2 else None, *conv_args(cfg), act=act, gain=1.2,
                                    clamp=clamp)

    y = f(*inputs)
    assert y.dtype == torch.float64 and y.device == x.device
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, inputs, gy)
    twins = [t.detach().clone().requires_grad_() for t in inputs]
    ref = reference.conv_transpose2d_act(twins[0], twins[1], twins[2] if len(twins) > 2 else None, *conv_args(cfg),
                                         act=act, gain=1.2, clamp=clamp)
    torch.testing.assert_close(y, ref, **TOL[torch.float64])
    for a, r, t in zip(got, torch.autograd.grad(ref, twins, gy), inputs):
        assert a.shape == t.shape and a.dtype == torch.float64
        torch.testing.assert_close(a, r, **TOL[torch.float64])
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


SANITIZER_SCRIPT = """
import os, torch
os.environ["FASTGAN_CONV_TRANSPOSE_PATH"] = "fused"
from fastgan.ops import conv_transpose2d_act
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    x = torch.randn(3, 24, 5, 7, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(24, 40, 4, 4, device="cuda", dtype=dtype)
    conv_transpose2d_act(x, w, torch.randn(40, device="cuda", dtype=dtype), 2, 1, 1, act="lrelu")
    z = torch.randn(5, 16, 1, 1, device="cuda", dtype=dtype)
    conv_transpose2d_act(z, w[:16], None, 1, 0, act="relu")
torch.cuda.synchronize()
"""


@pytest.mark.cuda
@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_cuda_compute_sanitizer(tool):
    exe = shutil.which("compute-sanitizer")
    if exe is None and os.environ.get("CUDA_HOME"):
        exe = os.path.join(os.environ["CUDA_HOME"], "bin", "compute-sanitizer")
    if exe is None or not os.path.exists(exe):
        pytest.skip("compute-sanitizer not found")
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastgan.__file__)))
    out = subprocess.run([exe, "--tool", tool, "--error-exitcode", "1", sys.executable, "-c", SANITIZER_SCRIPT],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0 and "ERROR SUMMARY: 0 errors" in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.cuda
def test_cuda_wrong_device_and_graph_capture():
    x = torch.randn(2, 8, 4, 4, device="cuda").contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="'weight'.*device"):
        conv_transpose2d_act(x, torch.randn(8, 8, 4, 4), None, 2, 1)
    # An untuned shape inside CUDA-graph capture must neither tune nor sync.
    w = torch.randn(8, 16, 4, 4, device="cuda")
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = conv_transpose2d_act(x, w, None, 2, 1)
    g.replay()
    torch.testing.assert_close(y, F.conv_transpose2d(x, w, None, 2, 1), atol=1e-2, rtol=1e-2)


def test_info_lists_op():
    info = fastgan.info()
    assert info["ops"]["conv_transpose2d_act"]["cpu"]
    assert info["ops"]["conv_transpose2d_act"]["cuda"] == (info["cuda_compiled"])
    assert info["ops"]["conv_transpose2d_act"]["simt"] == (info["simt"] is not None)


# ---- the fp16/bf16 tolerances bite ------------------------------------------------------------
# A kernel off by a little (lrelu slope 0.21 for 0.2, gain x1.01, bias + 0.01) must fail the
# comparisons above at the tolerances they use, on the inputs they use, while the correctly rounded
# result passes them. Where a tolerance is too loose for that, the case is a strict xfail that says
# so (an XPASS, a failure, once the tolerance is tightened).


_DTYPES_LOOSE = ("test_dtypes' atol (rtol x max|y|, max|y| about 5) is 0.01 for float16 and 0.025 for bfloat16: "
                 "a 0.01 bias passes")


@pytest.mark.parametrize("dtype,bug", [
    (torch.float16, "slope"), (torch.float16, "gain"),
    pytest.param(torch.float16, "bias", marks=too_loose(_DTYPES_LOOSE)),
    (torch.bfloat16, "slope"), (torch.bfloat16, "gain"),
    pytest.param(torch.bfloat16, "bias", marks=too_loose(_DTYPES_LOOSE))], ids=str)
def test_dtypes_tolerance_catches_a_wrong_slope_gain_or_bias(dtype, bug):
    """test_dtypes' comparison (atol = TOL[dtype].rtol x max|ref|, rtol = TOL[dtype].rtol), on its inputs."""
    cfg = dict(n=2, cin=8, cout_g=5, h=6, w=5, k=(4, 4), s=(2, 2), p=(1, 1), op=(1, 0), g=1, d=(1, 1), bias=True,
               cl=False)
    x, w, b = make(cfg, dtype)
    x = x * 0.5
    alpha, k, shift = BUGS[bug]
    ref = reference.conv_transpose2d_act(x.double(), w.double(), b.double(), *conv_args(cfg), act="lrelu")
    bad = reference.conv_transpose2d_act(x.double(), w.double(), b.double() + shift, *conv_args(cfg), act="lrelu",
                                         alpha=alpha, gain=k).to(dtype).double()
    tol = TOL[dtype]["rtol"]
    tol = dict(atol=tol * ref.abs().max().item(), rtol=tol)
    assert not fails(ref.to(dtype).double(), ref, **tol)
    assert fails(bad, ref, **tol)


_BF16_LOOSE = ("test_cuda_fused_kernel compares bfloat16 at atol 2e-2 x max|y| (0.06 here), rtol 2e-2: a 1% gain "
               "and a 0.01 bias pass")


@pytest.mark.parametrize("dtype,bug", [
    (torch.float16, "slope"), (torch.float16, "gain"), (torch.float16, "bias"), (torch.bfloat16, "slope"),
    pytest.param(torch.bfloat16, "gain", marks=too_loose(_BF16_LOOSE)),
    pytest.param(torch.bfloat16, "bias", marks=too_loose(_BF16_LOOSE))], ids=str)
def test_cuda_fused_kernel_tolerance_catches_a_wrong_slope_gain_or_bias(dtype, bug):
    """test_cuda_fused_kernel's comparison (its tolerance table), on the inputs of its first case."""
    n, cin, cout, h, w, k, s, p, op = CUDA_CASES[0]
    x = torch.randn(n, cin, h, w, dtype=dtype)
    wt = torch.randn(cin, cout, k, k, dtype=dtype) / (cin ** 0.5)
    b = torch.randn(cout, dtype=dtype)
    alpha, gk, shift = BUGS[bug]
    kw = dict(act="lrelu", clamp=3.0)
    ref = reference.conv_transpose2d_act(x.double(), wt.double(), b.double(), s, p, op, gain=1.3, **kw)
    bad = reference.conv_transpose2d_act(x.double(), wt.double(), b.double() + shift, s, p, op, alpha=alpha,
                                         gain=1.3 * gk, **kw).to(dtype).double()
    tol = {torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    tol = dict(atol=tol * ref.abs().max().item(), rtol=tol)
    assert not fails(ref.to(dtype).double(), ref, **tol)
    assert fails(bad, ref, **tol)


@pytest.mark.parametrize("bug", [
    pytest.param("slope", marks=too_loose("test_bfloat16_channels_last_grads: 3e-2 x max|y|")),
    pytest.param("gain", marks=too_loose("test_bfloat16_channels_last_grads: 3e-2 x max|y|, rtol 3e-2")),
    pytest.param("bias", marks=too_loose("test_bfloat16_channels_last_grads: 3e-2 x max|y|"))])
def test_bfloat16_grads_tolerance_catches_a_wrong_slope_gain_or_bias(bug):
    """test_bfloat16_channels_last_grads' comparison (3e-2 x max|ref|, rtol 3e-2) of y and the gradients."""
    cfg = dict(n=2, cin=8, cout_g=8, h=4, w=4, k=(4, 4), s=(2, 2), p=(1, 1), op=(0, 0), g=1, d=(1, 1), bias=True,
               cl=True)
    x, w, b = make(cfg, torch.bfloat16)
    gy = torch.randn(2, 8, 8, 8, dtype=torch.bfloat16)  # randn_like(y): the same draws
    alpha, k, shift = BUGS[bug]

    def run(alpha, k, shift):
        xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
        y = reference.conv_transpose2d_act(xd, wd, bd + shift, *conv_args(cfg), act="lrelu", alpha=alpha, gain=k)
        return (y.detach(),) + torch.autograd.grad(y, (xd, wd, bd), gy.double())

    want, bad = run(0.2, 1.0, 0.0), run(alpha, k, shift)
    tols = [dict(atol=3e-2 * r.abs().max().item(), rtol=3e-2) for r in want]
    assert not any(fails(r.bfloat16().double(), r, **t) for r, t in zip(want, tols))
    assert any(fails(a.bfloat16().double(), r, **t) for a, r, t in zip(bad, want, tols))


@pytest.mark.parametrize("var", ["FASTGAN_VERBOSE", "FASTGAN_CONV_TRANSPOSE_VERBOSE"])
def test_verbose_reports_the_measured_choice(var, monkeypatch, capfd):
    """With FASTGAN_VERBOSE=1 (or the op's own switch) the first call of a new shape says which path
    it chose and the timings behind it; without it, nothing is printed."""
    monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", "auto")
    monkeypatch.delenv("FASTGAN_VERBOSE", raising=False)
    monkeypatch.delenv("FASTGAN_CONV_TRANSPOSE_VERBOSE", raising=False)
    n = 3 if var == "FASTGAN_VERBOSE" else 5  # a shape no other test uses, so it is measured here
    w = torch.randn(7, 3, 4, 4)
    conv_transpose2d_act(torch.randn(n, 7, 3, 5), w, stride=2, padding=1, act="relu")
    assert "conv_transpose2d_act" not in capfd.readouterr().err
    monkeypatch.setenv(var, "1")
    conv_transpose2d_act(torch.randn(n, 7, 5, 3), w, stride=2, padding=1, act="relu")
    err = capfd.readouterr().err
    assert "fastgan conv_transpose2d_act:" in err and "-> " in err and "aten" in err, err
    assert "[%d, 7, 5, 3]" % n in err, err


def test_auto_times_aten_cl_for_nchw_results_only(monkeypatch, capfd):
    """The measured choice has three CPU candidates: aten, fused, and aten_cl (oneDNN's channels_last
    deconvolution behind an NCHW result). aten_cl is timed only where the result is NCHW (for a
    channels_last result it is the aten path), the result keeps the layout the fake kernel promises
    whichever path wins, and the cache reports the winner by its name."""
    monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", "auto")
    monkeypatch.setenv("FASTGAN_VERBOSE", "1")
    fastgan._C.clear_conv_transpose_paths()  # each shape below is measured here
    w = torch.randn(6, 5, 4, 4)
    for cl in (False, True):
        x = torch.randn(2, 6, 7, 3)  # a shape no other test uses
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = conv_transpose2d_act(x, w, stride=2, padding=1, act="lrelu")
        line = [e for e in capfd.readouterr().err.splitlines() if "[2, 6, 7, 3]" in e]
        assert len(line) == 1, line
        assert ("(aten_cl " in line[0]) != cl, line
        assert y.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        torch.testing.assert_close(y, reference.conv_transpose2d_act(x, w, None, 2, 1, act="lrelu"),
                                   atol=1e-5, rtol=1e-5)
    paths = {e[0]: e[1] for e in fastgan._C.conv_transpose_paths()}
    assert set(paths.values()) <= {"aten", "aten_cl", "fused"}


def _path_taken(fn):
    """Which CPU path a float32 NCHW call ran, read off the ATen ops it called (torch.profiler sees the
    launcher's own calls): aten_cl copies x (aten::to), fused runs a forward convolution (aten::conv2d)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.name for e in prof.events()}
    return "fused" if "aten::conv2d" in names else "aten_cl" if "aten::to" in names else "aten"


def test_restored_choices_are_taken(monkeypatch):
    """set_conv_transpose_path (the trainer's resume) accepts every path name the cache reports, and
    the restored choice is the path the next call takes; a restored fused choice for a geometry the
    fused path cannot run (dilation 2) runs aten instead; a bad name is an error naming the choices."""
    monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", "auto")
    x, w = torch.randn(3, 4, 5, 2), torch.randn(4, 3, 3, 3)
    for pin in ("aten", "aten_cl", "fused"):  # the detector itself, on pinned paths
        monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", pin)
        assert _path_taken(lambda: conv_transpose2d_act(x, w, stride=2, act="relu")) == pin
    monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", "auto")
    for dilation in (1, 2):
        def call():
            return conv_transpose2d_act(x, w, stride=2, dilation=dilation, act="relu")
        call()
        key = [e[0] for e in fastgan._C.conv_transpose_paths() if "[3, 4, 5, 2]" in e[0] and f" d{dilation}," in e[0]]
        assert len(key) == 1, key
        want = reference.conv_transpose2d_act(x, w, None, 2, dilation=dilation, act="relu")
        for path in ("aten_cl", "aten", "fused"):
            fastgan._C.set_conv_transpose_path(key[0], path, 1.0, 2.0)
            assert [e[1:4] for e in fastgan._C.conv_transpose_paths() if e[0] == key[0]] == [(path, 1.0, 2.0)]
            taken = path if dilation == 1 or path != "fused" else "aten"
            assert _path_taken(call) == taken
            y = call()
            assert y.is_contiguous()
            torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="'aten', 'aten_cl' or 'fused'"):
        fastgan._C.set_conv_transpose_path(key[0], "fastest", 1.0, 2.0)
