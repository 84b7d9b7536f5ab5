"""FusedConvTranspose2d: nn.ConvTranspose2d with the bias + activation fused into the op."""
import torch
from torch import nn

from ..ops.bias_act import ACTS
from ..ops.conv_transpose import conv_transpose2d_act


class FusedConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d on fastgan's kernels, followed by `activation` in the same op.

    Same positional arguments, attributes, state_dict, isinstance and `forward(input, output_size)`
    as nn.ConvTranspose2d (unbatched (C, H, W) input included). `activation` takes fastgan.ops.bias_act's
    names (None is linear); `negative_slope` is lrelu's slope; the result is multiplied by `gain`.
    For relu/lrelu the backward keeps a 1-byte mask instead of the float pre-activation.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None, *,
                 activation=None, negative_slope=0.2, gain=1.0):
        if activation is not None and activation not in ACTS:
            raise ValueError(f"FusedConvTranspose2d: argument 'activation' must be None or one of "
                             f"{', '.join(ACTS)}; got {activation!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device, dtype)
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.gain = float(gain)

    def forward(self, input: torch.Tensor, output_size=None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for FusedConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size,
                                              2, self.dilation)
        act = self.activation or "linear"
        return conv_transpose2d_act(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                    self.groups, self.dilation, act=act,
                                    alpha=self.negative_slope if act == "lrelu" else None, gain=self.gain)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation is not None:
            s += f", activation={self.activation!r}"
            if self.activation == "lrelu":
                s += f", negative_slope={self.negative_slope}"
        if self.gain != 1.0:
            s += f", gain={self.gain}"
        return s
