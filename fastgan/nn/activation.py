"""Activation modules: FusedLeakyReLU (a drop-in nn.LeakyReLU) and FusedBiasAct."""
import torch
from torch import nn

from ..ops.bias_act import ACTS, bias_act, bias_act_
from . import _torch_errors


class FusedLeakyReLU(nn.LeakyReLU):
    """nn.LeakyReLU on fastgan's kernels: same arguments, attributes, repr and isinstance.

    The backward keeps a 1-byte mask instead of the input; `inplace=True` overwrites the input and
    keeps only that mask.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        _torch_errors.floating_input("FusedLeakyReLU", input, NotImplementedError)
        _torch_errors.number("FusedLeakyReLU", "negative_slope", self.negative_slope)
        if self.inplace:
            return bias_act_(input, None, act="lrelu", alpha=self.negative_slope)
        return bias_act(input, None, act="lrelu", alpha=self.negative_slope)


class FusedBiasAct(nn.Module):
    """Adds a per-channel bias (dim 1), applies `act`, multiplies by `gain`, clamps to `clamp`.

    The usual use is after a bias-free Linear/Conv: `nn.Conv2d(..., bias=False), FusedBiasAct(C)`.
    """

    def __init__(self, num_channels: int, act: str = "lrelu", alpha: float = 0.2, gain: float = 1.0,
                 bias: bool = True, clamp=None, device=None, dtype=None):
        super().__init__()
        if act not in ACTS:
            raise ValueError(f"FusedBiasAct: argument 'act' must be one of {', '.join(ACTS)}; got {act!r}")
        if clamp is not None and not clamp >= 0:
            raise ValueError(f"FusedBiasAct: argument 'clamp' must be >= 0 or None, got {clamp}")
        self.num_channels = int(num_channels)
        self.act, self.alpha, self.gain, self.clamp = act, float(alpha), float(gain), clamp
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act(x, self.bias, act=self.act, alpha=self.alpha, gain=self.gain, clamp=self.clamp,
                        dim=1)

    def extra_repr(self) -> str:
        s = f"{self.num_channels}, act={self.act!r}, alpha={self.alpha}, gain={self.gain}"
        if self.bias is None:
            s += ", bias=False"
        if self.clamp is not None:
            s += f", clamp={self.clamp}"
        return s
