"""FusedConv2d and FusedConvTranspose2d: nn.Conv2d / nn.ConvTranspose2d with the bias + activation
fused into one epilogue (fastgan.ops.bias_act / conv_transpose2d_act)."""
import torch
from torch import nn

from ..ops.bias_act import ACTS, bias_act, bias_act_
from ..ops.conv_transpose import conv_transpose2d_act
from ..ops.reference import act_fn
from . import _torch_errors

# The activation's own default for `negative_slope=None`: lrelu's slope (DCGAN's 0.2), elu's alpha.
_DEFAULT_ALPHA = {"lrelu": 0.2, "elu": 1.0}
_INPLACE_ACTS = ("linear", "relu", "lrelu")


def _check_activation(cls: str, activation, negative_slope, gain):
    if activation is not None and activation not in ACTS:
        raise ValueError(f"{cls}: argument 'activation' must be None or one of {', '.join(ACTS)}; "
                         f"got {activation!r}")
    if negative_slope is None:
        negative_slope = _DEFAULT_ALPHA.get(activation, 0.2)
    return float(negative_slope), float(gain)


def _act_repr(m) -> str:
    s = ""
    if m.activation is not None:
        s += f", activation={m.activation!r}"
        if m.activation in _DEFAULT_ALPHA:
            s += f", negative_slope={m.negative_slope}"
    if m.gain != 1.0:
        s += f", gain={m.gain}"
    return s


def _alpha(m):
    return m.negative_slope if m.activation in _DEFAULT_ALPHA else None


class FusedConv2d(nn.Conv2d):
    """nn.Conv2d whose bias and `activation` run as one fused epilogue after the convolution.

    Same arguments, attributes, state_dict, isinstance and errors as nn.Conv2d (every padding
    mode, groups, dilation, unbatched (C, H, W) input). The convolution itself is ATen's (oneDNN /
    cuDNN) without bias; bias + activation + `gain` then run in one pass of fastgan.ops.bias_act.
    `activation` takes bias_act's names (None is linear); `negative_slope` is lrelu's slope
    (default 0.2) or elu's alpha (default 1.0). For relu/lrelu the backward keeps a 1-byte mask
    instead of the float pre-activation, and the epilogue runs in place on the convolution's
    fresh output (ATen's convolution backward does not read its output). Second derivatives work
    (R1 / WGAN-GP through a discriminator built of these).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, activation=None,
                 negative_slope=None, gain=1.0):
        negative_slope, gain = _check_activation("FusedConv2d", activation, negative_slope, gain)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.activation = activation
        self.negative_slope = negative_slope
        self.gain = gain

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        y = self._conv_forward(input, self.weight, None)
        act = self.activation or "linear"
        if act == "linear" and self.bias is None and self.gain == 1.0:
            return y
        dim = 1 if y.dim() == 4 else 0
        if y.numel() == 0 or (self.bias is not None and self.bias.device != y.device):
            # what nn.Conv2d does with these (an empty output, a meta input), nothing to fuse
            if self.bias is not None:
                y = self._conv_forward(input, self.weight, self.bias)
            a = act_fn(act, y, _alpha(self) if act in _DEFAULT_ALPHA else 0.0)
            return a * self.gain if self.gain != 1.0 else a
        if act in _INPLACE_ACTS and not torch.compiler.is_compiling():
            return bias_act_(y, self.bias, act=act, alpha=_alpha(self), gain=self.gain, dim=dim)
        return bias_act(y, self.bias, act=act, alpha=_alpha(self), gain=self.gain, dim=dim)

    def extra_repr(self) -> str:
        return super().extra_repr() + _act_repr(self)


class FusedConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d on fastgan's kernels, followed by `activation` in the same op.

    Same positional arguments, attributes, state_dict, isinstance and `forward(input, output_size)`
    as nn.ConvTranspose2d (unbatched (C, H, W) input included). `activation` takes fastgan.ops.bias_act's
    names (None is linear); `negative_slope` is lrelu's slope (default 0.2) or elu's alpha (default
    1.0); the result is multiplied by `gain`. For relu/lrelu the backward keeps a 1-byte mask
    instead of the float pre-activation.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None, *,
                 activation=None, negative_slope=None, gain=1.0):
        negative_slope, gain = _check_activation("FusedConvTranspose2d", activation, negative_slope, gain)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device, dtype)
        self.activation = activation
        self.negative_slope = negative_slope
        self.gain = gain

    def forward(self, input: torch.Tensor, output_size=None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for FusedConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              2, self.dilation)
        _torch_errors.floating_input("FusedConvTranspose2d", input)
        _torch_errors.conv_args("FusedConvTranspose2d", self.stride, self.padding, output_padding, self.dilation)
        return conv_transpose2d_act(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                    self.groups, self.dilation, act=self.activation or "linear",
                                    alpha=_alpha(self), gain=self.gain)

    def extra_repr(self) -> str:
        return super().extra_repr() + _act_repr(self)
