"""fastgan.nn's drop-in modules against their torch.nn counterparts in the installed torch.

Each pair must be interchangeable: the fastgan class accepts every argument of the torch class
(same names, kinds, defaults and positional order, read from the installed torch, never
hard-coded), raises where torch raises with the same exception type (in the constructor and in
forward), and gives the same outputs, input and parameter gradients and buffers (running
statistics, num_batches_tracked), with the same strides, over train -> train -> eval with an SGD
step in between, in float64 (1e-10) and float32 (2e-5), NCHW and channels_last, batched and
unbatched, on each of conftest's devices (cpu, cuda, the SIMT emulator of the CUDA kernels).

    FusedConv2d                          nn.Conv2d
    FusedConvTranspose2d                 nn.ConvTranspose2d
    FusedBatchNormAct2d(activation=...)  nn.BatchNorm2d (linear), or followed by the activation
    FusedLeakyReLU                       nn.LeakyReLU
    FusedConv2d / FusedConvTranspose2d(activation=a, negative_slope=s, gain=g)
                                         torch's conv followed by the activation (times g)
"""
import collections
import inspect
import math
import warnings
from typing import NamedTuple

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm

from fastgan.nn import FusedBatchNormAct2d, FusedConv2d, FusedConvTranspose2d, FusedInstanceNormAct2d, FusedLeakyReLU

from conftest import DEVICES, TOL

CL = torch.channels_last
# float64: conftest's 1e-10; float32: 2e-5 (the sums of the convolutions and BatchNorm's statistics
# are accumulated in another order than torch's)
TOLS = {torch.float64: TOL[torch.float64], torch.float32: dict(atol=2e-5, rtol=2e-5)}
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


class Pair(NamedTuple):
    torch_cls: type
    fastgan_cls: type
    extras: dict  # the fastgan keyword arguments that make it the torch module


PAIRS = {
    "Conv2d": Pair(nn.Conv2d, FusedConv2d, {}),
    "ConvTranspose2d": Pair(nn.ConvTranspose2d, FusedConvTranspose2d, {}),
    "BatchNorm2d": Pair(nn.BatchNorm2d, FusedBatchNormAct2d, {"activation": "linear"}),
    "InstanceNorm2d": Pair(nn.InstanceNorm2d, FusedInstanceNormAct2d, {"activation": "linear"}),
    "LeakyReLU": Pair(nn.LeakyReLU, FusedLeakyReLU, {}),
}


class Then(nn.Module):
    """`first` followed by `act`, times `gain`: the eager twin of a fused module (forward passes its
    extra arguments, ConvTranspose2d's output_size, to `first`)."""

    def __init__(self, first: nn.Module, act: nn.Module, gain: float = 1.0):
        super().__init__()
        self.first, self.act, self.gain = first, act, gain

    def forward(self, x, *args, **kwargs):
        y = self.act(self.first(x, *args, **kwargs))
        return y if self.gain == 1.0 else y * self.gain


def torch_act(name: str, slope=None) -> nn.Module:
    """torch.nn's module for a fastgan activation name (slope: lrelu's slope or elu's alpha)."""
    if name == "lrelu":
        return nn.LeakyReLU(slope)
    if name == "elu":
        return nn.ELU(slope)
    return {"linear": nn.Identity, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "selu": nn.SELU,
            "softplus": nn.Softplus, "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU}[name]()


def _outcome(fn):
    """The exception fn raises, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except Exception as e:  # noqa: BLE001 - any exception is an outcome to compare
        return e
    return None


def _assert_same_outcome(want, got):
    assert type(got) is type(want), (
        f"torch: {type(want).__name__ if want is not None else 'no exception'}"
        f"{f' ({want})' if want is not None else ''}; "
        f"fastgan: {type(got).__name__ if got is not None else 'no exception'}"
        f"{f' ({got})' if got is not None else ''}")


# ---- 1. signatures -------------------------------------------------------------------------------
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _parameters(fn):
    return list(inspect.signature(fn).parameters.values())[1:]  # without self


@pytest.mark.parametrize("method", ["__init__", "forward"])
@pytest.mark.parametrize("pair", PAIRS)
def test_signature_accepts_every_torch_argument(pair, method):
    want = _parameters(getattr(PAIRS[pair].torch_cls, method))
    got = _parameters(getattr(PAIRS[pair].fastgan_cls, method))
    got_by_name = {p.name: p for p in got}
    for p in want:
        assert p.name in got_by_name, f"{pair}.{method}: torch's argument {p.name!r} is missing"
        q = got_by_name[p.name]
        assert q.kind == p.kind, f"{pair}.{method}({p.name}): kind {q.kind.description}, torch {p.kind.description}"
        assert q.default == p.default and type(q.default) is type(p.default), (
            f"{pair}.{method}({p.name}): default {q.default!r}, torch {p.default!r}")
    assert [p.name for p in got if p.kind in _POSITIONAL] == [p.name for p in want if p.kind in _POSITIONAL]
    names = {p.name for p in want}
    for q in got:
        if q.name not in names:
            assert q.kind == inspect.Parameter.KEYWORD_ONLY, f"{pair}.{method}: extra {q.name!r} is {q.kind.description}"
            assert q.default is not inspect.Parameter.empty, f"{pair}.{method}: extra {q.name!r} has no default"


def test_class_hierarchy():
    for pair in ("Conv2d", "ConvTranspose2d", "LeakyReLU"):
        assert issubclass(PAIRS[pair].fastgan_cls, PAIRS[pair].torch_cls), pair
    # BatchNorm2d's base, but not a _BatchNorm (see FusedBatchNormAct2d's docstring)
    assert issubclass(FusedBatchNormAct2d, _NormBase) and not issubclass(FusedBatchNormAct2d, _BatchNorm)
    # nn.InstanceNorm2d's base, but not an nn.InstanceNorm2d, for the same reason
    assert issubclass(FusedInstanceNormAct2d, _InstanceNorm) and not issubclass(FusedInstanceNormAct2d, nn.InstanceNorm2d)


# ---- 2. constructor errors (and what torch accepts) ------------------------------------------------
def _case(pair, args, kwargs=None, id=None):
    return pytest.param(pair, args, kwargs or {}, id=f"{pair}-{id}")


CTOR_CASES = [
    # Conv2d
    _case("Conv2d", (4, 6, 3), id="ok"),
    _case("Conv2d", (3, 4, 3), dict(groups=2), id="groups-not-dividing-in"),
    _case("Conv2d", (4, 6, 3), dict(groups=4), id="groups-not-dividing-out"),
    _case("Conv2d", (4, 4, 3), dict(groups=0), id="groups-0"),
    _case("Conv2d", (4, 4, 3), dict(groups=-2), id="groups-negative"),
    _case("Conv2d", (4, 6, 3), dict(groups=1.5), id="groups-float"),
    _case("Conv2d", (4, 6, 3), dict(padding="same", stride=2), id="same-stride2"),
    _case("Conv2d", (4, 6, 3), dict(padding="valid", stride=2), id="valid-stride2"),
    _case("Conv2d", (4, 6, 3), dict(padding="same", dilation=2, padding_mode="reflect"), id="same-dilated-reflect"),
    _case("Conv2d", (4, 6, 3), dict(padding="bogus"), id="padding-bogus"),
    _case("Conv2d", (4, 6, 3), dict(padding_mode="foo"), id="padding_mode-foo"),
    _case("Conv2d", (4, 6, -1), id="kernel-negative"),
    _case("Conv2d", (4, 6, 0), id="kernel-0"),
    _case("Conv2d", (4, 6, 2.5), id="kernel-float"),
    _case("Conv2d", (4, 6, "3"), id="kernel-str"),
    _case("Conv2d", (-1, 6, 3), id="in-negative"),
    _case("Conv2d", (3.5, 6, 3), id="in-float"),
    _case("Conv2d", (4, 6, 3), dict(stride=0, padding=-1, dilation=0), id="stride0-padding-1-dilation0"),
    _case("Conv2d", (4, 6, 3), dict(dtype=torch.long), id="dtype-long"),
    _case("Conv2d", (4, 6, 3), dict(dtype=torch.float16, device="meta"), id="f16-meta"),
    _case("Conv2d", (4, 6, 3), dict(output_padding=1), id="unknown-kwarg"),
    _case("Conv2d", (4, 6, 3, 1, 0, 1, 1, True, "zeros", None, None, "relu"), id="13-positional"),
    _case("Conv2d", (4, 6), id="missing-kernel"),
    # ConvTranspose2d
    _case("ConvTranspose2d", (4, 6, 3), id="ok"),
    _case("ConvTranspose2d", (3, 4, 3), dict(groups=2), id="groups-not-dividing-in"),
    _case("ConvTranspose2d", (4, 6, 3), dict(groups=4), id="groups-not-dividing-out"),
    _case("ConvTranspose2d", (4, 4, 3), dict(groups=0), id="groups-0"),
    _case("ConvTranspose2d", (4, 6, 3), dict(padding_mode="reflect"), id="padding_mode-reflect"),
    _case("ConvTranspose2d", (4, 6, 3), dict(padding_mode="foo"), id="padding_mode-foo"),
    _case("ConvTranspose2d", (4, 6, 3), dict(padding="same"), id="padding-same"),
    _case("ConvTranspose2d", (4, 6, -1), id="kernel-negative"),
    _case("ConvTranspose2d", (-1, 6, 3), id="in-negative"),
    _case("ConvTranspose2d", (4, 6, 3), dict(output_padding=2), id="output_padding-too-big"),
    _case("ConvTranspose2d", (4, 6, 3), dict(dtype=torch.long), id="dtype-long"),
    _case("ConvTranspose2d", (4, 6, 3), dict(padding_same=1), id="unknown-kwarg"),
    _case("ConvTranspose2d", (4, 6, 3, 1, 0, 0, 1, True, 1, "zeros", None, None, "relu"), id="13-positional"),
    # BatchNorm2d
    _case("BatchNorm2d", (4,), id="ok"),
    _case("BatchNorm2d", (2.5,), id="num_features-2.5"),
    _case("BatchNorm2d", (4.0,), id="num_features-4.0"),
    _case("BatchNorm2d", (-1,), id="num_features-negative"),
    _case("BatchNorm2d", ("4",), id="num_features-str"),
    _case("BatchNorm2d", (None,), id="num_features-None"),
    _case("BatchNorm2d", (0,), id="num_features-0"),
    _case("BatchNorm2d", (4,), dict(momentum="a"), id="momentum-str"),
    _case("BatchNorm2d", (4,), dict(momentum=None), id="momentum-None"),
    _case("BatchNorm2d", (4,), dict(eps=-1.0), id="eps-negative"),
    _case("BatchNorm2d", (4,), dict(bias=False), id="bias-False"),
    _case("BatchNorm2d", (4,), dict(affine=False, track_running_stats=False), id="no-affine-no-stats"),
    _case("BatchNorm2d", (4,), dict(dtype=torch.long), id="dtype-long"),
    _case("BatchNorm2d", (4,), dict(dtype=torch.float16, device="meta"), id="f16-meta"),
    _case("BatchNorm2d", (4,), dict(foo=1), id="unknown-kwarg"),
    _case("BatchNorm2d", (4, 1e-5, 0.1, True, True, None, None, False), id="bias-positional"),
    _case("BatchNorm2d", (), id="missing-num_features"),
    # InstanceNorm2d
    _case("InstanceNorm2d", (4,), id="ok"),
    _case("InstanceNorm2d", (2.5,), dict(affine=True), id="num_features-2.5-affine"),
    _case("InstanceNorm2d", (-1,), dict(affine=True), id="num_features-negative-affine"),
    _case("InstanceNorm2d", ("4",), dict(track_running_stats=True), id="num_features-str-track"),
    _case("InstanceNorm2d", (4,), dict(momentum=None, track_running_stats=True), id="momentum-None"),
    _case("InstanceNorm2d", (4,), dict(affine=True, bias=False), id="bias-False"),
    _case("InstanceNorm2d", (4,), dict(dtype=torch.long, affine=True), id="dtype-long"),
    _case("InstanceNorm2d", (4,), dict(foo=1), id="unknown-kwarg"),
    _case("InstanceNorm2d", (4, 1e-5, 0.1, True, True, None, None, False), id="8-positional"),
    _case("InstanceNorm2d", (), id="missing-num_features"),
    # LeakyReLU (its constructor is nn.LeakyReLU's own; kept for completeness)
    _case("LeakyReLU", (), id="ok"),
    _case("LeakyReLU", (0.2, True), id="positional"),
    _case("LeakyReLU", ("a",), id="slope-str"),
    _case("LeakyReLU", (0.1, True, 3), id="3-positional"),
    _case("LeakyReLU", (), dict(activation="relu"), id="unknown-kwarg"),
]

NORMS = ("BatchNorm2d", "InstanceNorm2d")  # their fused activation has no gain
# The fastgan-only arguments: none beyond those of PAIRS (torch's module), or an activation.
VARIANTS = {"plain": {}, "act": {"activation": "lrelu", "negative_slope": 0.1, "gain": 2.0}}


def _with_variants(cases, pair_of):
    """Each case as is ('plain'), and with a fused activation ('act') where the module has one."""
    return [pytest.param(*c.values, v, id=f"{c.id}-{v}") for c in cases for v in VARIANTS
            if v == "plain" or pair_of(c) != "LeakyReLU"]


@pytest.mark.parametrize("pair,args,kwargs,variant", _with_variants(CTOR_CASES, lambda c: c.values[0]))
def test_constructor_raises_as_torch(pair, args, kwargs, variant):
    p = PAIRS[pair]
    extras = dict(p.extras)
    if variant == "act":
        extras.update(VARIANTS[variant] if pair not in NORMS else {"activation": "lrelu", "negative_slope": 0.1})
    want = _outcome(lambda: p.torch_cls(*args, **kwargs))
    got = _outcome(lambda: p.fastgan_cls(*args, **kwargs, **extras))
    _assert_same_outcome(want, got)


# ---- 3. forward errors (and what torch accepts) ----------------------------------------------------
def _randn(*shape, **kw):
    return lambda: torch.randn(*shape, **kw)


def _ints(*shape):
    return lambda: torch.randint(0, 5, shape)


def _set(**attrs):
    def mutate(m):
        for k, v in attrs.items():
            setattr(m, k, v)
    return mutate


class FwdCase(NamedTuple):
    pair: str
    args: tuple
    kwargs: dict
    x: object  # () -> input
    fwd: dict = {}
    train: bool = True
    mutate: object = None  # applied to the module after construction


def _fcase(id, *a, **kw):
    c = FwdCase(*a, **kw)
    return pytest.param(c, id=f"{c.pair}-{id}-{'train' if c.train else 'eval'}")


F64 = torch.float64
FWD_CASES = [
    # Conv2d
    _fcase("wrong-channels", "Conv2d", (4, 6, 3), {}, _randn(2, 5, 5, 6)),
    _fcase("2d-input", "Conv2d", (4, 6, 3), {}, _randn(5, 6)),
    _fcase("5d-input", "Conv2d", (4, 6, 3), {}, _randn(1, 2, 4, 5, 6)),
    _fcase("int-input", "Conv2d", (4, 6, 3), {}, _ints(2, 4, 5, 6)),
    _fcase("complex-input", "Conv2d", (4, 6, 3), {}, _randn(2, 4, 5, 6, dtype=torch.complex64)),
    _fcase("f64-input-f32-weight", "Conv2d", (4, 6, 3), {}, _randn(2, 4, 5, 6, dtype=F64)),
    _fcase("f32-input-f64-weight", "Conv2d", (4, 6, 3), dict(dtype=F64), _randn(2, 4, 5, 6)),
    _fcase("f64-input-f32-weight-nobias", "Conv2d", (4, 6, 3), dict(bias=False), _randn(2, 4, 5, 6, dtype=F64)),
    _fcase("input-smaller-than-kernel", "Conv2d", (4, 6, 3), {}, _randn(2, 4, 2, 2)),
    _fcase("reflect-pad-too-big", "Conv2d", (4, 6, 3), dict(padding=3, padding_mode="reflect"), _randn(2, 4, 3, 3)),
    _fcase("stride-0", "Conv2d", (4, 6, 3), dict(stride=0), _randn(2, 4, 5, 6)),
    _fcase("padding-negative", "Conv2d", (4, 6, 3), dict(padding=-1), _randn(2, 4, 5, 6)),
    _fcase("dilation-0", "Conv2d", (4, 6, 3), dict(dilation=0), _randn(2, 4, 5, 6)),
    _fcase("kernel-0", "Conv2d", (4, 6, 0), {}, _randn(2, 4, 5, 6)),
    _fcase("padding-3-values", "Conv2d", (4, 6, 3), dict(padding=(1, 2, 3)), _randn(2, 4, 5, 6)),
    _fcase("kernel-3-values", "Conv2d", (4, 6, (2, 3, 4)), {}, _randn(2, 4, 5, 6)),
    _fcase("padding-float", "Conv2d", (4, 6, 3), dict(padding=1.5), _randn(2, 4, 5, 6)),
    _fcase("stride-str", "Conv2d", (4, 6, 3), dict(stride="1"), _randn(2, 4, 5, 6)),
    _fcase("list-input", "Conv2d", (4, 6, 3), {}, lambda: [1.0]),
    _fcase("empty-batch", "Conv2d", (4, 6, 3), {}, _randn(0, 4, 5, 6)),
    _fcase("f16", "Conv2d", (4, 6, 3), dict(dtype=torch.float16), _randn(2, 4, 5, 6, dtype=torch.float16)),
    _fcase("bf16", "Conv2d", (4, 6, 3), dict(dtype=torch.bfloat16), _randn(2, 4, 5, 6, dtype=torch.bfloat16)),
    _fcase("meta", "Conv2d", (4, 6, 3), dict(device="meta"), _randn(2, 4, 5, 6, device="meta")),
    _fcase("cpu-module-meta-input", "Conv2d", (4, 6, 3), {}, _randn(2, 4, 5, 6, device="meta")),
    # ConvTranspose2d
    _fcase("wrong-channels", "ConvTranspose2d", (4, 6, 3), {}, _randn(2, 5, 3, 4)),
    _fcase("2d-input", "ConvTranspose2d", (4, 6, 3), {}, _randn(3, 4)),
    _fcase("5d-input", "ConvTranspose2d", (4, 6, 3), {}, _randn(1, 2, 4, 3, 4)),
    _fcase("int-input", "ConvTranspose2d", (4, 6, 3), {}, _ints(2, 4, 3, 4)),
    _fcase("complex-input", "ConvTranspose2d", (4, 6, 3), {}, _randn(2, 4, 3, 4, dtype=torch.complex64)),
    _fcase("f64-input-f32-weight", "ConvTranspose2d", (4, 6, 3), {}, _randn(2, 4, 3, 4, dtype=F64)),
    _fcase("f32-input-f64-weight", "ConvTranspose2d", (4, 6, 3), dict(dtype=F64), _randn(2, 4, 3, 4)),
    _fcase("output_size-too-big", "ConvTranspose2d", (4, 6, 3), dict(stride=2), _randn(2, 4, 3, 4),
           dict(output_size=[20, 20])),
    _fcase("output_size-too-small", "ConvTranspose2d", (4, 6, 3), dict(stride=2), _randn(2, 4, 3, 4),
           dict(output_size=[6, 8])),
    _fcase("output_size-1-value", "ConvTranspose2d", (4, 6, 3), dict(stride=2), _randn(2, 4, 3, 4),
           dict(output_size=[8])),
    _fcase("output_size-3-values-batched", "ConvTranspose2d", (4, 6, 3), dict(stride=2), _randn(2, 4, 3, 4),
           dict(output_size=[6, 8, 10])),
    _fcase("output_size-4-values", "ConvTranspose2d", (4, 6, 3), dict(stride=2), _randn(2, 4, 3, 4),
           dict(output_size=[2, 6, 8, 10])),
    _fcase("output_size-3-values-unbatched", "ConvTranspose2d", (4, 6, 3), dict(stride=2), _randn(4, 3, 4),
           dict(output_size=[6, 8, 10])),
    _fcase("output_size-Size", "ConvTranspose2d", (4, 6, 3), dict(stride=2), _randn(2, 4, 3, 4),
           dict(output_size=torch.Size([8, 10]))),
    _fcase("padding_mode-set-to-reflect", "ConvTranspose2d", (4, 6, 3), {}, _randn(2, 4, 3, 4),
           mutate=_set(padding_mode="reflect")),
    _fcase("padding_mode-set-to-circular", "ConvTranspose2d", (4, 6, 3), {}, _randn(2, 4, 3, 4),
           mutate=_set(padding_mode="circular")),
    _fcase("padding-same", "ConvTranspose2d", (4, 6, 3), dict(padding="same"), _randn(2, 4, 3, 4)),
    _fcase("output_padding-not-below-stride", "ConvTranspose2d", (4, 6, 3), dict(output_padding=1),
           _randn(2, 4, 3, 4)),
    _fcase("output_padding-negative", "ConvTranspose2d", (4, 6, 3), dict(output_padding=-1), _randn(2, 4, 3, 4)),
    _fcase("stride-0", "ConvTranspose2d", (4, 6, 3), dict(stride=0), _randn(2, 4, 3, 4)),
    _fcase("padding-negative", "ConvTranspose2d", (4, 6, 3), dict(padding=-1), _randn(2, 4, 3, 4)),
    _fcase("dilation-0", "ConvTranspose2d", (4, 6, 3), dict(dilation=0), _randn(2, 4, 3, 4)),
    _fcase("padding-too-big", "ConvTranspose2d", (4, 6, 3), dict(padding=5), _randn(2, 4, 2, 2)),
    _fcase("padding-3-values", "ConvTranspose2d", (4, 6, 3), dict(padding=(1, 2, 3)), _randn(2, 4, 3, 4)),
    _fcase("kernel-3-values", "ConvTranspose2d", (4, 6, (2, 3, 4)), {}, _randn(2, 4, 3, 4)),
    _fcase("padding-float", "ConvTranspose2d", (4, 6, 3), dict(padding=1.5), _randn(2, 4, 3, 4)),
    _fcase("stride-str", "ConvTranspose2d", (4, 6, 3), dict(stride="1"), _randn(2, 4, 3, 4)),
    _fcase("list-input", "ConvTranspose2d", (4, 6, 3), {}, lambda: [1.0]),
    _fcase("empty-batch", "ConvTranspose2d", (4, 6, 3), {}, _randn(0, 4, 3, 4)),
    _fcase("f16", "ConvTranspose2d", (4, 6, 3), dict(dtype=torch.float16), _randn(2, 4, 3, 4, dtype=torch.float16)),
    _fcase("meta", "ConvTranspose2d", (4, 6, 3), dict(device="meta"), _randn(2, 4, 3, 4, device="meta")),
    _fcase("cpu-module-meta-input", "ConvTranspose2d", (4, 6, 3), {}, _randn(2, 4, 3, 4, device="meta")),
    # BatchNorm2d
    _fcase("wrong-channels", "BatchNorm2d", (4,), {}, _randn(2, 5, 5, 6)),
    _fcase("wrong-channels", "BatchNorm2d", (4,), {}, _randn(2, 5, 5, 6), train=False),
    _fcase("wrong-channels-no-affine", "BatchNorm2d", (4,), dict(affine=False), _randn(2, 5, 5, 6)),
    _fcase("wrong-channels-no-stats", "BatchNorm2d", (4,), dict(track_running_stats=False), _randn(2, 5, 5, 6)),
    _fcase("wrong-channels-no-affine-no-stats", "BatchNorm2d", (4,), dict(affine=False, track_running_stats=False),
           _randn(2, 5, 5, 6)),
    _fcase("2d-input", "BatchNorm2d", (4,), {}, _randn(2, 4)),
    _fcase("3d-input", "BatchNorm2d", (4,), {}, _randn(4, 5, 6)),
    _fcase("5d-input", "BatchNorm2d", (4,), {}, _randn(1, 2, 4, 5, 6)),
    _fcase("int-input", "BatchNorm2d", (4,), {}, _ints(2, 4, 5, 6)),
    _fcase("int-input", "BatchNorm2d", (4,), {}, _ints(2, 4, 5, 6), train=False),
    _fcase("complex-input", "BatchNorm2d", (4,), {}, _randn(2, 4, 5, 6, dtype=torch.complex64)),
    _fcase("f64-input-f32-module", "BatchNorm2d", (4,), {}, _randn(2, 4, 5, 6, dtype=F64)),
    _fcase("f64-input-f32-module", "BatchNorm2d", (4,), {}, _randn(2, 4, 5, 6, dtype=F64), train=False),
    _fcase("f32-input-f64-module", "BatchNorm2d", (4,), dict(dtype=F64), _randn(2, 4, 5, 6)),
    _fcase("one-value-per-channel", "BatchNorm2d", (4,), {}, _randn(1, 4, 1, 1)),
    _fcase("one-value-per-channel", "BatchNorm2d", (4,), {}, _randn(1, 4, 1, 1), train=False),
    _fcase("one-value-per-channel-no-stats", "BatchNorm2d", (4,), dict(track_running_stats=False),
           _randn(1, 4, 1, 1), train=False),
    _fcase("empty-batch", "BatchNorm2d", (4,), {}, _randn(0, 4, 5, 6)),
    _fcase("empty-batch", "BatchNorm2d", (4,), {}, _randn(0, 4, 5, 6), train=False),
    _fcase("zero-features", "BatchNorm2d", (0,), {}, _randn(2, 0, 5, 6)),
    _fcase("momentum-str", "BatchNorm2d", (4,), dict(momentum="a"), _randn(2, 4, 5, 6)),
    _fcase("momentum-str", "BatchNorm2d", (4,), dict(momentum="a"), _randn(2, 4, 5, 6), train=False),
    _fcase("momentum-negative", "BatchNorm2d", (4,), dict(momentum=-0.5), _randn(2, 4, 5, 6)),
    _fcase("momentum-minus-1", "BatchNorm2d", (4,), dict(momentum=-1.0), _randn(2, 4, 5, 6)),
    _fcase("momentum-2", "BatchNorm2d", (4,), dict(momentum=2.0), _randn(2, 4, 5, 6)),
    _fcase("eps-negative", "BatchNorm2d", (4,), dict(eps=-1.0), _randn(2, 4, 5, 6)),
    _fcase("eps-negative", "BatchNorm2d", (4,), dict(eps=-1.0), _randn(2, 4, 5, 6), train=False),
    _fcase("eps-0", "BatchNorm2d", (4,), dict(eps=0.0), _randn(2, 4, 5, 6)),
    _fcase("eps-0", "BatchNorm2d", (4,), dict(eps=0.0), _randn(2, 4, 5, 6), train=False),
    _fcase("eps-0-no-stats", "BatchNorm2d", (4,), dict(eps=0.0, track_running_stats=False), _randn(2, 4, 5, 6),
           train=False),
    _fcase("eps-str", "BatchNorm2d", (4,), dict(eps="a"), _randn(2, 4, 5, 6)),
    _fcase("f16", "BatchNorm2d", (4,), dict(dtype=torch.float16), _randn(2, 4, 5, 6, dtype=torch.float16)),
    _fcase("f16-input-f32-module", "BatchNorm2d", (4,), {}, _randn(2, 4, 5, 6, dtype=torch.float16)),
    _fcase("bf16-input-f32-module", "BatchNorm2d", (4,), {}, _randn(2, 4, 5, 6, dtype=torch.bfloat16),
           train=False),
    _fcase("list-input", "BatchNorm2d", (4,), {}, lambda: [1.0]),
    _fcase("meta", "BatchNorm2d", (4,), dict(device="meta"), _randn(2, 4, 5, 6, device="meta")),
    _fcase("cpu-module-meta-input", "BatchNorm2d", (4,), {}, _randn(2, 4, 5, 6, device="meta")),
    # InstanceNorm2d
    _fcase("wrong-channels-affine", "InstanceNorm2d", (4,), dict(affine=True), _randn(2, 5, 5, 6)),
    _fcase("wrong-channels-no-affine", "InstanceNorm2d", (4,), {}, _randn(2, 5, 5, 6)),
    _fcase("wrong-channels-track", "InstanceNorm2d", (4,), dict(track_running_stats=True), _randn(2, 5, 5, 6)),
    _fcase("2d-input", "InstanceNorm2d", (4,), {}, _randn(2, 4)),
    _fcase("5d-input", "InstanceNorm2d", (4,), {}, _randn(1, 2, 4, 5, 6)),
    _fcase("int-input", "InstanceNorm2d", (4,), {}, _ints(2, 4, 5, 6)),
    _fcase("complex-input", "InstanceNorm2d", (4,), {}, _randn(2, 4, 5, 6, dtype=torch.complex64)),
    _fcase("f64-input-f32-module", "InstanceNorm2d", (4,), dict(affine=True), _randn(2, 4, 5, 6, dtype=F64)),
    _fcase("one-spatial-element", "InstanceNorm2d", (4,), {}, _randn(3, 4, 1, 1)),
    _fcase("one-spatial-element-track", "InstanceNorm2d", (4,), dict(track_running_stats=True), _randn(3, 4, 1, 1)),
    _fcase("one-spatial-element-track", "InstanceNorm2d", (4,), dict(track_running_stats=True), _randn(3, 4, 1, 1),
           train=False),
    _fcase("empty-batch", "InstanceNorm2d", (4,), dict(affine=True, track_running_stats=True), _randn(0, 4, 5, 6)),
    _fcase("unbatched-one-spatial", "InstanceNorm2d", (4,), {}, _randn(4, 1, 1)),
    _fcase("eps-str", "InstanceNorm2d", (4,), dict(eps="a"), _randn(2, 4, 5, 6)),
    _fcase("momentum-str", "InstanceNorm2d", (4,), dict(momentum="a", track_running_stats=True), _randn(2, 4, 5, 6)),
    _fcase("f16-input-f32-module", "InstanceNorm2d", (4,), dict(affine=True), _randn(2, 4, 5, 6, dtype=torch.float16)),
    _fcase("list-input", "InstanceNorm2d", (4,), {}, lambda: [1.0]),
    # LeakyReLU
    _fcase("int-input", "LeakyReLU", (), {}, _ints(2, 3)),
    _fcase("bool-input", "LeakyReLU", (), {}, lambda: torch.tensor([True, False])),
    _fcase("complex-input", "LeakyReLU", (), {}, _randn(2, 3, dtype=torch.complex64)),
    _fcase("0d-input", "LeakyReLU", (), {}, lambda: torch.tensor(-1.5)),
    _fcase("empty-input", "LeakyReLU", (), {}, _randn(0, 3)),
    _fcase("f16", "LeakyReLU", (), {}, _randn(2, 3, dtype=torch.float16)),
    _fcase("slope-str", "LeakyReLU", ("a",), {}, _randn(2, 3)),
    _fcase("slope-None", "LeakyReLU", (None,), {}, _randn(2, 3)),
    _fcase("inplace-leaf-requiring-grad", "LeakyReLU", (), dict(inplace=True), lambda: torch.randn(2, 3).requires_grad_()),
    _fcase("inplace-overlapping", "LeakyReLU", (), dict(inplace=True), lambda: torch.randn(2, 3).expand(4, 2, 3)),
    _fcase("inplace-int-input", "LeakyReLU", (), dict(inplace=True), _ints(2, 3)),
    _fcase("list-input", "LeakyReLU", (), {}, lambda: [1.0]),
    _fcase("meta", "LeakyReLU", (), {}, _randn(2, 3, device="meta")),
]


def _fused_pair(pair, variant, args, kwargs):
    """(torch module factory, fastgan module factory) for a variant: 'plain' is the drop-in, 'act' the
    fused activation against torch's module followed by the activation."""
    p = PAIRS[pair]
    if variant == "plain" or pair == "LeakyReLU":
        return (lambda: p.torch_cls(*args, **kwargs)), (lambda: p.fastgan_cls(*args, **kwargs, **p.extras))
    if pair in NORMS:
        return ((lambda: Then(p.torch_cls(*args, **kwargs), nn.LeakyReLU(0.1))),
                (lambda: p.fastgan_cls(*args, **kwargs, activation="lrelu", negative_slope=0.1)))
    return ((lambda: Then(p.torch_cls(*args, **kwargs), nn.LeakyReLU(0.1), 2.0)),
            (lambda: p.fastgan_cls(*args, **kwargs, **VARIANTS["act"])))


@pytest.mark.parametrize("case,variant", _with_variants(FWD_CASES, lambda c: c.values[0].pair))
def test_forward_raises_as_torch(case, variant):
    make_torch, make_fastgan = _fused_pair(case.pair, variant, case.args, case.kwargs)

    def run(make):
        torch.manual_seed(0)
        m = make()
        if case.mutate is not None:
            case.mutate(_inner(m))
        m.train(case.train)
        m(case.x(), **case.fwd)

    # torch must construct these (the constructor errors are the table above)
    make_torch()
    _assert_same_outcome(_outcome(lambda: run(make_torch)), _outcome(lambda: run(make_fastgan)))


# ---- 4. numerics: train -> train -> eval -------------------------------------------------------
class Case(NamedTuple):
    id: str
    pair: str
    args: tuple
    kwargs: dict = {}
    fwd: dict = {}
    shape: tuple = (2, 4, 5, 6)  # batched input; unbatched drops the first dim
    fastgan_kwargs: dict = None  # None: PAIRS[pair].extras
    then: tuple = None  # (activation name, slope, gain) of torch's twin


CONV_CASES = [
    Case("k3", "Conv2d", (4, 6, 3)),
    Case("k3-s2-p1", "Conv2d", (4, 6, 3), dict(stride=2, padding=1)),
    Case("k2x3-s(2,1)-d2-p(1,2)", "Conv2d", (4, 6, (2, 3)), dict(stride=(2, 1), dilation=2, padding=(1, 2))),
    Case("groups2", "Conv2d", (4, 6, 3), dict(groups=2, padding=1)),
    Case("depthwise", "Conv2d", (4, 8, 3), dict(groups=4, padding=1)),
    Case("nobias", "Conv2d", (4, 6, 3), dict(bias=False, padding=1)),
    Case("same-k3-d2", "Conv2d", (4, 6, 3), dict(padding="same", dilation=2)),
    Case("same-k2x4", "Conv2d", (4, 6, (2, 4)), dict(padding="same")),
    Case("valid", "Conv2d", (4, 6, 3), dict(padding="valid")),
    Case("reflect", "Conv2d", (4, 6, 3), dict(padding=(1, 2), padding_mode="reflect")),
    Case("replicate", "Conv2d", (4, 6, 3), dict(padding=2, padding_mode="replicate", stride=2)),
    Case("circular", "Conv2d", (4, 6, 3), dict(padding=(2, 1), padding_mode="circular", groups=2)),
    Case("circular-same-nobias", "Conv2d", (4, 6, (2, 3)), dict(padding="same", padding_mode="circular",
                                                               bias=False)),
]
CONVT_CASES = [
    Case("k3", "ConvTranspose2d", (4, 6, 3), shape=(2, 4, 3, 4)),
    Case("k4-s2-p1", "ConvTranspose2d", (4, 6, 4), dict(stride=2, padding=1), shape=(2, 4, 3, 4)),
    Case("k3-s2-p1-op1", "ConvTranspose2d", (4, 6, 3), dict(stride=2, padding=1, output_padding=1),
         shape=(2, 4, 3, 4)),
    Case("k3-s(2,3)-output_size", "ConvTranspose2d", (4, 6, 3), dict(stride=(2, 3)), dict(output_size=[8, 12]),
         shape=(2, 4, 3, 4)),
    Case("groups2-d2", "ConvTranspose2d", (4, 6, (2, 3)), dict(groups=2, dilation=(2, 1), padding=(1, 0)),
         shape=(2, 4, 3, 4)),
    Case("nobias-s2", "ConvTranspose2d", (4, 6, 4), dict(stride=2, padding=1, bias=False), shape=(2, 4, 3, 4)),
    Case("depthwise", "ConvTranspose2d", (4, 8, 3), dict(groups=4, stride=2), shape=(2, 4, 3, 4)),
]
BN_CASES = [
    Case("default", "BatchNorm2d", (4,)),
    Case("momentum-None", "BatchNorm2d", (4,), dict(momentum=None)),
    Case("momentum-0.3-eps-1e-3", "BatchNorm2d", (4,), dict(momentum=0.3, eps=1e-3)),
    Case("affine-False", "BatchNorm2d", (4,), dict(affine=False)),
    Case("bias-False", "BatchNorm2d", (4,), dict(bias=False)),
    Case("track-False", "BatchNorm2d", (4,), dict(track_running_stats=False)),
    Case("affine-False-track-False", "BatchNorm2d", (4,), dict(affine=False, track_running_stats=False)),
    Case("keep-input", "BatchNorm2d", (4,), fastgan_kwargs=dict(activation="linear", memory_efficient=False)),
]
IN_CASES = [
    Case("default", "InstanceNorm2d", (4,)),
    Case("affine-track", "InstanceNorm2d", (4,), dict(affine=True, track_running_stats=True, momentum=0.3)),
    Case("affine", "InstanceNorm2d", (4,), dict(affine=True, eps=1e-3)),
    Case("track", "InstanceNorm2d", (4,), dict(track_running_stats=True)),
    Case("track-momentum-None", "InstanceNorm2d", (4,), dict(track_running_stats=True, momentum=None)),
    Case("bias-False", "InstanceNorm2d", (4,), dict(affine=True, bias=False)),
    Case("keep-input", "InstanceNorm2d", (4,), dict(affine=True),
         fastgan_kwargs=dict(activation="linear", memory_efficient=False)),
]
LRELU_CASES = [
    Case("default", "LeakyReLU", ()),
    Case("slope-0.2", "LeakyReLU", (0.2,)),
    Case("slope-negative", "LeakyReLU", (-0.5,)),
    Case("inplace", "LeakyReLU", (), dict(inplace=True)),
    Case("inplace-slope-0.3", "LeakyReLU", (0.3, True)),
]
# layouts: input (NCHW / channels_last) x module (.to(memory_format=channels_last)), batched or not
LAYOUTS = {
    "nchw": (4, False, False), "cl-input": (4, True, False), "cl-module": (4, False, True),
    "cl-both": (4, True, True), "unbatched": (3, False, False), "unbatched-cl-module": (3, False, True),
}
LRELU_SHAPES = {"nchw": (2, 4, 5, 6), "cl-input": (2, 4, 5, 6), "unbatched": (4, 5, 6), "1d": (7,),
                "5d": (2, 3, 2, 4, 5), "0d": ()}


def _numerics_params():
    out = []
    for c in CONV_CASES + CONVT_CASES + BN_CASES + IN_CASES:
        for layout in LAYOUTS:
            if c.pair == "BatchNorm2d" and layout.startswith("unbatched"):
                continue  # nn.BatchNorm2d takes 4-D input only
            out.append(pytest.param(c, layout, id=f"{c.pair}-{c.id}-{layout}"))
    for c in LRELU_CASES:
        for layout in LRELU_SHAPES:
            out.append(pytest.param(c, layout, id=f"{c.pair}-{c.id}-{layout}"))
    return out


def _act_params():
    out = []
    conv_acts = [("relu", None, 1.0), ("lrelu", None, 1.0), ("lrelu", 0.05, math.sqrt(2)), ("tanh", None, 1.0),
                 ("sigmoid", None, 1.0), ("elu", None, 1.0), ("elu", 0.5, 1.0), ("selu", None, 1.0),
                 ("softplus", None, 1.0), ("swish", None, 1.0), ("silu", None, 1.0), ("gelu", None, 1.0),
                 ("linear", None, 2.0)]
    default_slope = {"lrelu": 0.2, "elu": 1.0}  # FusedConv2d / FusedConvTranspose2d's defaults
    for base in (CONV_CASES[3], CONVT_CASES[2]):
        for act, slope, gain in conv_acts:
            kw = dict(activation=act, gain=gain) | ({} if slope is None else dict(negative_slope=slope))
            name = f"{act}{'' if slope is None else f'-{slope}'}{'' if gain == 1.0 else f'-gain{gain:.3g}'}"
            c = base._replace(id=f"{base.id}-{name}", fastgan_kwargs=kw,
                              then=(act, default_slope.get(act) if slope is None else slope, gain))
            out += [pytest.param(c, layout, id=f"{c.pair}-{c.id}-{layout}") for layout in ("nchw", "cl-both")]
    bn_acts = [("relu", None), ("lrelu", None), ("lrelu", 0.2), ("lrelu", -0.1), ("lrelu", 0.0), ("tanh", None),
               ("sigmoid", None), ("elu", None), ("elu", 0.5), ("selu", None), ("softplus", None),
               ("silu", None), ("gelu", None)]
    default_slope = {"lrelu": 0.01, "elu": 1.0}  # nn.LeakyReLU's and nn.ELU's defaults
    for base in (BN_CASES[0], BN_CASES[1], IN_CASES[1]):
        for act, slope in bn_acts:
            for keep in (False, True) if act in ("relu", "lrelu") else (False,):
                kw = dict(activation=act, memory_efficient=not keep) | ({} if slope is None else
                                                                        dict(negative_slope=slope))
                name = f"{act}{'' if slope is None else f'-{slope}'}{'-keep-input' if keep else ''}"
                c = base._replace(id=f"{base.id}-{name}", fastgan_kwargs=kw,
                                  then=(act, default_slope.get(act) if slope is None else slope, 1.0))
                out += [pytest.param(c, layout, id=f"{c.pair}-{c.id}-{layout}") for layout in ("nchw", "cl-input")]
    return out


def _randomize_(m, gen):
    """Random parameters (weights away from 0) and buffers, so that nothing matches by accident."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if name == "weight" and p.dim() == 1:  # BatchNorm's
                r = r.sign() * (r.abs() + 0.3)
            else:
                r = r * 0.4
            p.copy_(r)
        for name, b in m.named_buffers():
            if name == "running_mean":
                b.copy_(torch.randn(b.shape, generator=gen, dtype=torch.float64))
            elif name == "running_var":
                b.copy_(torch.rand(b.shape, generator=gen, dtype=torch.float64) + 0.5)
            elif name == "num_batches_tracked":
                b.fill_(3)


def _build(case, dtype, device, module_cl):
    p = PAIRS[case.pair]
    fkw = p.extras if case.fastgan_kwargs is None else case.fastgan_kwargs
    if case.pair == "LeakyReLU":
        ref, fg = p.torch_cls(*case.args, **case.kwargs), p.fastgan_cls(*case.args, **case.kwargs, **fkw)
    else:
        ref = p.torch_cls(*case.args, **case.kwargs, device=device, dtype=dtype)
        fg = p.fastgan_cls(*case.args, **case.kwargs, **fkw, device=device, dtype=dtype)
        if module_cl:
            ref, fg = ref.to(memory_format=CL), fg.to(memory_format=CL)
    gen = torch.Generator().manual_seed(1234)
    _randomize_(ref, gen)
    fg.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(fg.state_dict(), strict=True)
    if case.then is not None:
        act, slope, gain = case.then
        ref = Then(ref, torch_act(act, slope), gain)
    return ref, fg


def _forward(m, x, fwd, inplace):
    """(output, the input leaf): an in-place module gets a copy of the leaf, which it may overwrite."""
    xl = x.detach().clone().requires_grad_()
    inp = xl.clone() if inplace else xl
    y = m(inp, **fwd)
    if inplace:
        assert y.data_ptr() == inp.data_ptr(), f"{type(m).__name__}(inplace=True) must return its input"
    return y, xl


def _compare(what, got, want, tol):
    if want is None or got is None:
        assert got is None and want is None, f"{what}: fastgan {got is not None}, torch {want is not None}"
        return
    assert got.dtype == want.dtype and got.shape == want.shape, (
        f"{what}: fastgan {got.dtype} {tuple(got.shape)}, torch {want.dtype} {tuple(want.shape)}")
    if not want.is_floating_point():
        assert torch.equal(got, want), f"{what}: fastgan {got}, torch {want}"
        return
    torch.testing.assert_close(got, want, **tol, check_stride=True, msg=lambda m: f"{what}: {m}")


def _inner(m):
    return m.first if isinstance(m, Then) else m


def _named(m):
    return dict(_inner(m).named_parameters()), dict(_inner(m).named_buffers())


def _run_sequence(case, layout, dtype, device):
    torch.manual_seed(7)
    if case.pair == "LeakyReLU":
        shape = LRELU_SHAPES[layout]
        input_cl, module_cl = layout == "cl-input", False
    else:
        ndim, input_cl, module_cl = LAYOUTS[layout]
        shape = case.shape if ndim == 4 else case.shape[1:]
    ref, fg = _build(case, dtype, device, module_cl)
    tol = TOLS[dtype]
    inplace = case.pair == "LeakyReLU" and fg.inplace
    for i, mode in enumerate(("train", "train", "eval")):
        ref.train(mode == "train")
        fg.train(mode == "train")
        x = torch.randn(shape, dtype=dtype, device=device)
        if input_cl:
            x = x.contiguous(memory_format=CL)
        y_ref, xl_ref = _forward(ref, x, case.fwd, inplace)
        y, xl = _forward(fg, x, case.fwd, inplace)
        g = torch.randn(y_ref.shape, dtype=dtype, device=device)
        if input_cl and g.dim() == 4:
            g = g.contiguous(memory_format=CL)
        y_ref.backward(g)
        y.backward(g)
        y_ref, gx_ref, y, gx = y_ref.detach(), xl_ref.grad, y.detach(), xl.grad
        where = f"step {i} ({mode})"
        _compare(f"{where}: output", y, y_ref, tol)
        _compare(f"{where}: input grad", gx, gx_ref, tol)
        (p_ref, b_ref), (p_fg, b_fg) = _named(ref), _named(fg)
        assert list(p_fg) == list(p_ref) and list(b_fg) == list(b_ref)
        for name in p_ref:
            _compare(f"{where}: {name}.grad", p_fg[name].grad, p_ref[name].grad, tol)
        for name in b_ref:
            _compare(f"{where}: buffer {name}", b_fg[name], b_ref[name], tol)
        with torch.no_grad():  # the same SGD step on both
            for params in (p_ref, p_fg):
                for p in params.values():
                    p.sub_(0.1 * p.grad)
                    p.grad = None
    sd_ref, sd_fg = _inner(ref).state_dict(), fg.state_dict()
    assert list(sd_fg) == list(sd_ref)
    for k in sd_ref:
        _compare(f"state_dict after the sequence: {k}", sd_fg[k], sd_ref[k], tol)


@pytest.fixture
def no_tf32():
    """float32 in full precision on both sides. With TF32 allowed (torch's default for cuDNN) torch's
    CUDA convolutions and fastgan's CUDA kernels, which follow the same flag, round their inputs to
    10-bit mantissas, each in its own way (the SIMT emulator's too, against torch's exact CPU one)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,layout", _numerics_params())
def test_train_train_eval_matches_torch(case, layout, dtype, device):
    _run_sequence(case, layout, dtype, device)


@pytest.mark.usefixtures("no_tf32")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,layout", _act_params())
def test_fused_activation_matches_torch_module_then_activation(case, layout, dtype, device):
    _run_sequence(case, layout, dtype, device)


# ---- 5. state_dict and repr ------------------------------------------------------------------
SD_CASES = [c for c in CONV_CASES + CONVT_CASES + BN_CASES + IN_CASES if c.fastgan_kwargs is None]


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.pair}-{c.id}") for c in SD_CASES])
def test_state_dict_identical_and_loads_both_ways(case):
    p = PAIRS[case.pair]
    torch.manual_seed(3)
    ref = p.torch_cls(*case.args, **case.kwargs)
    torch.manual_seed(3)
    fg = p.fastgan_cls(*case.args, **case.kwargs, **p.extras)
    # the same constructor draws the same initial values
    sd_ref, sd_fg = ref.state_dict(), fg.state_dict()
    assert list(sd_fg) == list(sd_ref)
    assert sd_fg._metadata[""] == sd_ref._metadata[""]  # the version BatchNorm's loader reads
    for k in sd_ref:
        assert sd_fg[k].dtype == sd_ref[k].dtype and torch.equal(sd_fg[k], sd_ref[k]), k
    gen = torch.Generator().manual_seed(5)
    for src, dst in ((ref, fg), (fg, ref)):
        _randomize_(src, gen)
        dst.load_state_dict(src.state_dict(), strict=True)
        for k, v in src.state_dict().items():
            assert dst.state_dict()[k].dtype == v.dtype and torch.equal(dst.state_dict()[k], v), k
    if case.pair == "BatchNorm2d" and ref.track_running_stats:
        # a checkpoint from before num_batches_tracked (version 1) loads as into nn.BatchNorm2d
        old = collections.OrderedDict((k, v) for k, v in ref.state_dict().items() if k != "num_batches_tracked")
        old._metadata = {"": {"version": 1}}
        fg.num_batches_tracked.fill_(9)
        ref.num_batches_tracked.fill_(9)
        fg.load_state_dict(old, strict=True)
        ref.load_state_dict(old, strict=True)
        assert torch.equal(fg.num_batches_tracked, ref.num_batches_tracked)


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.pair}-{c.id}")
                                  for c in CONV_CASES + CONVT_CASES + LRELU_CASES])
def test_repr_is_torch_repr_renamed(case):
    p = PAIRS[case.pair]
    ref = p.torch_cls(*case.args, **case.kwargs)
    fg = p.fastgan_cls(*case.args, **case.kwargs)
    assert repr(fg) == repr(ref).replace(p.torch_cls.__name__, p.fastgan_cls.__name__, 1)


def test_batchnorm_repr_extends_torch_repr():
    ref, fg = nn.BatchNorm2d(4, momentum=None, bias=False), FusedBatchNormAct2d(4, momentum=None, bias=False,
                                                                               activation="linear")
    assert fg.extra_repr().startswith(ref.extra_repr())


def test_instancenorm_repr_extends_torch_repr():
    ref = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
    fg = FusedInstanceNormAct2d(4, affine=True, track_running_stats=True, activation="lrelu", negative_slope=0.2)
    assert fg.extra_repr() == ref.extra_repr() + ", activation='lrelu', negative_slope=0.2"
