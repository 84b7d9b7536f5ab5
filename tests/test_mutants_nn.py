"""Tests written to kill mutants that survived mutation testing of fastgan/nn (see docs/testing.md).

Each test names the behaviour it pins: error messages (class and argument named), the verbose
table of fastgan.nn.convert, reprs, documented defaults, and the rarely taken branches of the
modules' forward (gain without bias, unbatched input, running stats with track_running_stats off).
"""
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.nn import (FusedBatchNormAct2d, FusedBiasAct, FusedConv2d, FusedConvTranspose2d,
                        FusedLeakyReLU, GANLoss, convert)
from fastgan.ops.bias_act import ACTS
from fastgan.ops.batch_norm_act import ACTS as BN_NATIVE_ACTS  # noqa: F401
from fastgan.ops.gan_loss import KINDS, REDUCTIONS


def _raises(exc, text):
    return pytest.raises(exc, match=re.escape(text))


# ---- error messages name the class and the argument ---------------------------------------------

def test_fused_leaky_relu_errors_name_class_and_argument():
    with _raises(NotImplementedError, "FusedLeakyReLU: expected a floating-point input, got torch.int64"):
        FusedLeakyReLU()(torch.ones(3, dtype=torch.int64))
    with _raises(TypeError, "FusedLeakyReLU: input must be a Tensor, not list"):
        FusedLeakyReLU()([1.0])
    m = FusedLeakyReLU()
    m.negative_slope = "a"
    with _raises(TypeError, "FusedLeakyReLU: negative_slope must be a number, got 'a'"):
        m(torch.ones(3))


def test_fused_leaky_relu_values_and_inplace():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(FusedLeakyReLU(0.3)(x), F.leaky_relu(x, 0.3))
    y = x.clone()
    out = FusedLeakyReLU(0.3, inplace=True)(y)
    assert out.data_ptr() == y.data_ptr()
    torch.testing.assert_close(y, F.leaky_relu(x, 0.3))


def test_batch_norm_act_errors():
    C = "FusedBatchNormAct2d"
    with _raises(ValueError, f"{C}: argument 'activation' must be one of {', '.join(ACTS)}; got 'nope'"):
        FusedBatchNormAct2d(4, activation="nope")
    m = FusedBatchNormAct2d(4)
    with _raises(ValueError, "expected 4D input (got 3D input)"):
        m(torch.randn(4, 3, 3))
    with _raises(NotImplementedError, f"{C}: expected a floating-point input, got torch.int64"):
        m(torch.ones(2, 4, 3, 3, dtype=torch.int64))
    with _raises(RuntimeError, f"{C}: input has 3 channels, the module 4 (num_features)"):
        m(torch.randn(2, 3, 5, 5))
    with _raises(IndexError, f"{C}: input has no channels"):
        FusedBatchNormAct2d(0)(torch.randn(2, 0, 3, 3))
    with _raises(ValueError, "Expected more than 1 value per channel when training, got input size (1, 4, 1, 1)"):
        m(torch.randn(1, 4, 1, 1))
    m.momentum = "x"
    with _raises(TypeError, f"{C}: momentum must be a number, got 'x'"):
        m(torch.randn(2, 4, 3, 3))
    m.momentum, m.eps = 0.1, "y"
    with _raises(TypeError, f"{C}: eps must be a number, got 'y'"):
        m(torch.randn(2, 4, 3, 3))
    m.eps = 0.0
    with _raises(ValueError, f"{C}: eps must be positive during training, got 0.0"):
        m(torch.randn(2, 4, 3, 3))
    m.eval()
    m.eps = -1.0
    with _raises(ValueError, f"{C}: eps must be non-negative, got -1.0"):
        m(torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize("name", ["weight", "bias", "running_mean"])
def test_batch_norm_act_device_mismatch_names_the_tensor(name):
    m = FusedBatchNormAct2d(4)
    t = getattr(m, name)
    meta = torch.empty(t.shape, device="meta")
    if isinstance(t, nn.Parameter):
        setattr(m, name, nn.Parameter(meta))
    else:
        setattr(m, name, meta)
    with _raises(RuntimeError, f"FusedBatchNormAct2d: input is on cpu but {name} is on meta"):
        m(torch.randn(2, 4, 3, 3))


def test_batch_norm_act_single_value_check_uses_n_h_w():
    # N*H*W > 1 must not raise, even where N*H/W or N/H*W would be 1
    for shape in [(1, 4, 2, 2), (1, 4, 2, 1), (2, 4, 1, 1)]:
        FusedBatchNormAct2d(4)(torch.randn(shape))
    # one value per channel raises whatever C is (C must not enter the product)
    with pytest.raises(ValueError):
        FusedBatchNormAct2d(1)(torch.randn(1, 1, 1, 1))


def test_batch_norm_act_untracked_running_stats_are_not_updated():
    """torch: with track_running_stats False but buffers present, train mode uses batch stats and
    leaves the buffers alone; eval mode uses batch stats too."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 2 + 1
    m = FusedBatchNormAct2d(3, activation="linear").double()
    ref = nn.BatchNorm2d(3).double()
    for mod in (m, ref):
        mod.track_running_stats = False
    for mode in (True, False):
        m.train(mode)
        ref.train(mode)
        torch.testing.assert_close(m(x), ref(x))
        torch.testing.assert_close(m.running_mean, torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(m.running_var, torch.ones(3, dtype=torch.float64))


def test_batch_norm_act_defaults_and_repr():
    assert FusedBatchNormAct2d(4, activation="tanh").negative_slope == 0.01
    assert FusedBatchNormAct2d(4, activation="lrelu").negative_slope == 0.01
    assert FusedBatchNormAct2d(4, activation="elu").negative_slope == 1.0
    assert FusedBatchNormAct2d(4).memory_efficient is True
    base = repr(nn.BatchNorm2d(4)).replace("BatchNorm2d", "FusedBatchNormAct2d")[:-1]
    assert repr(FusedBatchNormAct2d(4, activation="lrelu", negative_slope=0.1)) == \
        base + ", activation='lrelu', negative_slope=0.1)"
    assert repr(FusedBatchNormAct2d(4, activation="tanh")) == base + ", activation='tanh')"


# ---- conv modules -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [FusedConv2d, FusedConvTranspose2d])
def test_conv_activation_errors_and_defaults(cls):
    n = cls.__name__
    with _raises(ValueError, f"{n}: argument 'activation' must be None or one of {', '.join(ACTS)}; got 'nope'"):
        cls(2, 2, 1, activation="nope")
    assert cls(2, 2, 1, activation="tanh").negative_slope == 0.2
    assert cls(2, 2, 1).negative_slope == 0.2
    assert cls(2, 2, 1, activation="elu").negative_slope == 1.0
    assert cls(2, 2, 1, device="meta").weight.device.type == "meta"


@pytest.mark.parametrize("cls", [FusedConv2d, FusedConvTranspose2d])
def test_conv_repr(cls):
    torch_name = cls.__name__[len("Fused"):]
    base = repr(getattr(nn, torch_name)(2, 3, 1))[:-1].replace(torch_name, cls.__name__)
    assert repr(cls(2, 3, 1)) == base + ")"
    assert repr(cls(2, 3, 1, activation="lrelu", negative_slope=0.1, gain=2.0)) == \
        base + ", activation='lrelu', negative_slope=0.1, gain=2.0)"
    assert repr(cls(2, 3, 1, activation="tanh")) == base + ", activation='tanh')"


_REF_ACTS = {"linear": lambda t, a: t, "tanh": lambda t, a: torch.tanh(t),
             "lrelu": lambda t, a: F.leaky_relu(t, a)}


@pytest.mark.parametrize("act", ["linear", "tanh", "lrelu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("unbatched", [True, False])
def test_fused_conv2d_gain_bias_unbatched(act, bias, unbatched):
    torch.manual_seed(0)
    m = FusedConv2d(3, 4, 3, bias=bias, activation=None if act == "linear" else act, gain=2.0).double()
    if bias:
        nn.init.normal_(m.bias)
    x = torch.randn(3, 6, 6, dtype=torch.float64) if unbatched else torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ref = _REF_ACTS[act](F.conv2d(x, m.weight, m.bias), m.negative_slope) * 2.0
    torch.testing.assert_close(m(x), ref)


def test_fused_conv_transpose2d_padding_mode_and_errors():
    m = FusedConvTranspose2d(2, 2, 3)
    m.padding_mode = "reflect"
    with _raises(ValueError, "Only `zeros` padding mode is supported for FusedConvTranspose2d"):
        m(torch.randn(1, 2, 4, 4))
    with _raises(RuntimeError, "FusedConvTranspose2d: expected a floating-point input, got torch.int64"):
        FusedConvTranspose2d(2, 2, 3)(torch.ones(1, 2, 4, 4, dtype=torch.int64))


@pytest.mark.parametrize("field,value,exc,text", [
    ("stride", (0, 1), RuntimeError, "stride must be >= 1, got (0, 1)"),
    ("padding", (-1, 0), RuntimeError, "padding must be >= 0, got (-1, 0)"),
    ("dilation", (1, 0), RuntimeError, "dilation must be >= 1, got (1, 0)"),
    ("stride", (1, 1, 1), RuntimeError, "expected stride to be a pair of ints, got (1, 1, 1)"),
    ("padding", (0.5, 0), TypeError, "padding must be a tuple of ints, got (0.5, 0)"),
])
def test_fused_conv_transpose2d_argument_errors(field, value, exc, text):
    m = FusedConvTranspose2d(2, 2, 3)
    setattr(m, field, value)
    with _raises(exc, f"FusedConvTranspose2d: {text}"):
        m(torch.randn(1, 2, 6, 6))


def test_fused_conv_transpose2d_output_padding_error_names_it():
    m = FusedConvTranspose2d(2, 2, 3, stride=2)
    m.output_padding = (-1, 0)
    with _raises(RuntimeError, "FusedConvTranspose2d: output_padding must be >= 0, got (-1, 0)"):
        m(torch.randn(1, 2, 4, 4))


def test_fused_conv_transpose2d_output_size_with_dilation():
    torch.manual_seed(0)
    m = FusedConvTranspose2d(2, 3, 3, stride=2, dilation=2, activation="tanh", gain=2.0).double()
    ref = nn.ConvTranspose2d(2, 3, 3, stride=2, dilation=2).double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    out = m(x, output_size=[14, 14])
    assert out.shape[-2:] == (14, 14)
    torch.testing.assert_close(out, torch.tanh(ref(x, output_size=[14, 14])) * 2.0)


# ---- FusedBiasAct -------------------------------------------------------------------------------

def test_fused_bias_act_errors_defaults_repr():
    with _raises(ValueError, f"FusedBiasAct: argument 'act' must be one of {', '.join(ACTS)}; got 'nope'"):
        FusedBiasAct(3, act="nope")
    with _raises(ValueError, "FusedBiasAct: argument 'clamp' must be >= 0 or None, got -1"):
        FusedBiasAct(3, clamp=-1)
    FusedBiasAct(3, clamp=0)  # 0 is allowed
    FusedBiasAct(3, clamp=0.5)
    m = FusedBiasAct(3, device="meta", dtype=torch.float64)
    assert m.bias.device.type == "meta" and m.bias.dtype == torch.float64
    assert repr(FusedBiasAct(3)) == "FusedBiasAct(3, act='lrelu', alpha=0.2, gain=1.0)"
    assert repr(FusedBiasAct(3, bias=False, clamp=4)) == \
        "FusedBiasAct(3, act='lrelu', alpha=0.2, gain=1.0, bias=False, clamp=4)"


def test_fused_bias_act_alpha_gain_clamp_dim():
    torch.manual_seed(0)
    m = FusedBiasAct(3, act="lrelu", alpha=0.3, gain=2.0, clamp=0.5).double()
    nn.init.normal_(m.bias)
    x = torch.randn(2, 3, 4, dtype=torch.float64)  # 3-D: the channel dim is 1, not the last
    ref = (F.leaky_relu(x + m.bias.detach().view(1, 3, 1), 0.3) * 2.0).clamp(-0.5, 0.5)
    torch.testing.assert_close(m(x), ref)


# ---- GANLoss ------------------------------------------------------------------------------------

def test_ganloss_errors_and_repr():
    with _raises(ValueError, f"GANLoss: argument 'kind' must be one of {', '.join(KINDS)}; got 'x'"):
        GANLoss("x")
    with _raises(TypeError, "GANLoss: unexpected option(s) a, b; expected reduction, real_label, fake_label, "
                            "return_stats"):
        GANLoss(b=1, a=2)
    with _raises(ValueError, f"GANLoss: argument 'reduction' must be one of {', '.join(REDUCTIONS)}; got 'x'"):
        GANLoss(reduction="x")
    with _raises(TypeError, "GANLoss has two losses: call .d(real_logits, fake_logits) for the "
                            "discriminator or .g(fake_logits, real_logits=None) for the generator"):
        GANLoss()(torch.zeros(2))
    assert GANLoss(fake_label=0.1).fake_label == 0.1
    assert repr(GANLoss()) == "GANLoss(kind='ns', reduction='mean')"
    assert repr(GANLoss("hinge", real_label=0.9, return_stats=True)) == \
        "GANLoss(kind='hinge', reduction='mean', real_label=0.9, fake_label=0.0, return_stats=True)"
    assert repr(GANLoss(fake_label=0.1)) == \
        "GANLoss(kind='ns', reduction='mean', real_label=1.0, fake_label=0.1)"


def test_ganloss_fake_label_reaches_d():
    real, fake = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits
    out = GANLoss(fake_label=0.1).d(real, fake)
    torch.testing.assert_close(out, bce(real, torch.ones_like(real)) + bce(fake, torch.full_like(fake, 0.1)))


# ---- convert(verbose=True) ----------------------------------------------------------------------

class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.act = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ELU(0.5)

    def forward(self, x):
        return x + self.act(self.bn(self.conv(x)))


class _MyConv(nn.Conv2d):
    pass


_TABLE = """\
module   was                     now                                      note
0 + 1    Conv2d + LeakyReLU      FusedConv2d(activation='lrelu')          fused; 1 -> Identity
2 + 3    BatchNorm2d + ReLU      FusedBatchNormAct2d(activation='relu')   fused; 3 -> Identity
4 + 5    ConvTranspose2d + GELU  FusedConvTranspose2d(activation='gelu')  fused; 5 -> Identity
6        Conv2d                  FusedConv2d                              replaced; no activation follows (next: Linear)
7        Linear                  (left)                                   no fastgan counterpart
8 + 9    BatchNorm2d + Tanh      FusedBatchNormAct2d(activation='tanh')   fused; 9 -> Identity
10       FusedLeakyReLU          (left)                                   already fastgan
11       _MyConv                 (left)                                   subclass of nn.Conv2d (its forward may differ)
12.conv  Conv2d                  FusedConv2d                              replaced; not in an nn.Sequential, so no activation fused
12.bn    BatchNorm2d             (left)                                   not in an nn.Sequential: an activation applied in forward() is not seen
12.act   ELU                     (left)                                   activation not directly after a Conv2d/ConvTranspose2d/BatchNorm2d/InstanceNorm2d in an nn.Sequential
13       Conv2d                  FusedConv2d                              replaced; not fused with 14: a hook on one of the pair would see another tensor
14       SiLU                    (left)                                   activation not directly after a Conv2d/ConvTranspose2d/BatchNorm2d/InstanceNorm2d in an nn.Sequential
15       BatchNorm2d             (left)                                   no activation follows it (next: end of Sequential)
3 replaced, 4 fused pairs, 6 left, 1 already fastgan
"""


def test_convert_verbose_table(capsys):
    m = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.1),
        nn.BatchNorm2d(4), nn.ReLU(),
        nn.ConvTranspose2d(4, 4, 3, padding=1), nn.GELU(),
        nn.Conv2d(4, 4, 1), nn.Linear(4, 4),
        nn.BatchNorm2d(4), nn.Tanh(), FusedLeakyReLU(0.2), _MyConv(4, 4, 1),
        _Res(), nn.Conv2d(4, 4, 1), nn.SiLU(), nn.BatchNorm2d(4),
    )
    m[13].register_forward_hook(lambda *a: None)
    out = convert(m, verbose=True)
    assert capsys.readouterr().out == _TABLE
    assert out[0].negative_slope == 0.1 and out[0].gain == 1.0 and type(out[1]) is nn.Identity
    assert out[2].negative_slope == 0.01 and out[2].memory_efficient is True
    assert out[4].negative_slope == 0.2 and out[4].gain == 1.0
    assert out[6].activation is None and out[6].negative_slope == 0.2 and out[6].gain == 1.0
    convert(nn.Conv2d(2, 2, 1), verbose=True)
    assert capsys.readouterr().out == (
        "module  was     now          note\n"
        "(root)  Conv2d  FusedConv2d  replaced; not in an nn.Sequential, so no activation fused\n"
        "1 replaced, 0 fused pairs, 0 left\n")
    convert(nn.Sequential(nn.Linear(2, 2)), verbose=True)
    assert capsys.readouterr().out.endswith("0 replaced, 0 fused pairs, 1 left\n")
    convert(nn.Sequential(nn.Conv2d(2, 2, 1)))  # verbose defaults to False
    assert capsys.readouterr().out == ""


def _table_of(model, capsys):
    convert(model, verbose=True)
    return capsys.readouterr().out


def test_convert_verbose_table_more_cases(capsys):
    m = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU(),
                      nn.BatchNorm2d(2), nn.Linear(2, 2), nn.BatchNorm2d(2), nn.ReLU(),
                      nn.LeakyReLU(), nn.GELU(), nn.Flatten(), nn.Conv2d(2, 2, 1))
    m._modules["1"] = None  # a None entry is skipped and the walk goes on
    m[7].register_forward_pre_hook(lambda *a: None)
    assert _table_of(m, capsys) == """\
module  was            now                             note
0       Conv2d         FusedConv2d                     replaced; no activation follows (next: end of Sequential)
2 + 3   Conv2d + ReLU  FusedConv2d(activation='relu')  fused; 3 -> Identity
4       BatchNorm2d    (left)                          no activation follows it (next: Linear)
5       Linear         (left)                          no fastgan counterpart
6       BatchNorm2d    (left)                          a hook on one of the pair would see another tensor
7       ReLU           (left)                          activation not directly after a Conv2d/ConvTranspose2d/BatchNorm2d/InstanceNorm2d in an nn.Sequential
8       LeakyReLU      FusedLeakyReLU                  replaced
9       GELU           (left)                          activation not directly after a Conv2d/ConvTranspose2d/BatchNorm2d/InstanceNorm2d in an nn.Sequential
11      Conv2d         FusedConv2d                     replaced; no activation follows (next: end of Sequential)
3 replaced, 1 fused pairs, 5 left
"""
    assert _table_of(nn.Sequential(), capsys) == "fastgan.nn.convert: nothing to convert\n"


def test_convert_does_not_fuse_across_backward_or_pre_hooks(capsys):
    m = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU())
    m[0].register_full_backward_hook(lambda *a: None)
    m[3].register_full_backward_pre_hook(lambda *a: None)
    m[5].register_forward_pre_hook(lambda *a: None)
    out = convert(m)
    assert [type(x).__name__ for x in out] == ["FusedConv2d", "ReLU"] * 3
    assert all(c.activation is None for c in out[::2])


def test_converted_root_does_not_share_hook_dicts():
    old = nn.Conv2d(2, 2, 1)
    new = convert(old)
    new.register_forward_hook(lambda *a: None)
    assert len(old._forward_hooks) == 0 and len(new._forward_hooks) == 1


def test_fused_conv_transpose2d_padding_mode_message_is_exact():
    m = FusedConvTranspose2d(2, 2, 3)
    m.padding_mode = "circular"
    with pytest.raises(ValueError, match="^Only `zeros` padding mode is supported for FusedConvTranspose2d$"):
        m(torch.randn(1, 2, 4, 4))


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_batch_norm_act_memory_efficient_reaches_the_op(memory_efficient):
    """Documented: memory_efficient=True recovers the input from the output, so a channel whose
    weight is exactly 0 gets a zero weight gradient; False keeps the input and gets torch's."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    m = FusedBatchNormAct2d(2, activation="linear", memory_efficient=memory_efficient).double()
    ref = nn.BatchNorm2d(2).double()
    with torch.no_grad():
        m.weight[0] = 0.0
        ref.weight[0] = 0.0
    g = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    (m(x) * g).sum().backward()
    (ref(x) * g).sum().backward()
    if memory_efficient:
        assert m.weight.grad[0] == 0.0 and ref.weight.grad[0] != 0.0
    else:
        torch.testing.assert_close(m.weight.grad, ref.weight.grad)
