"""TEMPORARY stand-ins for fused ops/modules being built in other branches (issues 3, 4, 5).

Delete this file at merge, together with the fallback in fastgan/_deps.py. The stand-ins have the
final names, signatures and state_dicts, so nothing else changes when the real ones land.
"""
import torch
from torch import nn

from .ops import bias_act, reference


# ---- issue 3: GAN losses and penalties (delegate to the pure-PyTorch references) --------------
def d_loss(real_logits, fake_logits, kind="ns", *, reduction="mean", real_label=1.0, fake_label=0.0,
           return_stats=False):
    return reference.d_loss(real_logits, fake_logits, kind, reduction=reduction, real_label=real_label,
                            fake_label=fake_label, return_stats=return_stats)


def g_loss(fake_logits, kind="ns", *, real_logits=None, reduction="mean"):
    return reference.g_loss(fake_logits, kind, real_logits=real_logits, reduction=reduction)


def r1_penalty(real_logits, real_inputs, gamma=1.0):
    return reference.r1_penalty(real_logits, real_inputs, gamma)


def gradient_penalty(discriminator, real, fake, weight=10.0, *, eps=None, center=1.0):
    return reference.gradient_penalty(discriminator, real, fake, weight, eps=eps, center=center)


# ---- issues 4 and 5: fused modules (torch.nn layer + fastgan's bias_act) ----------------------
class FusedConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d (same arguments and state_dict) followed by an optional activation."""

    def __init__(self, *args, activation=None, negative_slope=0.2, gain=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation, self.negative_slope, self.gain = activation, negative_slope, gain

    def forward(self, input, output_size=None):
        y = super().forward(input, output_size)
        if self.activation is None:
            return y if self.gain == 1.0 else y * self.gain
        return bias_act(y, None, act=self.activation, alpha=self.negative_slope, gain=self.gain)


class FusedBatchNormAct2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same state_dict) followed by an activation."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 activation="relu", negative_slope=0.01, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device,
                         dtype=dtype)
        self.activation, self.negative_slope = activation, negative_slope

    def forward(self, input):
        y = super().forward(input)
        if self.activation in (None, "linear"):
            return y
        return bias_act(y, None, act=self.activation, alpha=self.negative_slope)
