"""DCGAN (Radford et al., 2016) generator and discriminator for 16-128 px images, built from
fastgan.nn; `fused=False` builds the identical network from torch.nn with the same state_dict keys,
for A/B comparisons (speed, and outputs from one state_dict)."""
import math
from collections import OrderedDict

import torch
from torch import nn

from ..nn import ClassBatchNormAct2d, FusedBatchNormAct2d, FusedConvTranspose2d, FusedLeakyReLU

IMAGE_SIZES = (16, 32, 64, 128)


def _check(cls: str, image_size, channels, width, z_dim=None):
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"{cls}: argument 'image_size' must be one of {IMAGE_SIZES}, got {image_size!r}")
    for name, v in (("channels", channels), ("width", width), ("z_dim", z_dim)):
        if v is not None and not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{cls}: argument '{name}' must be a positive int, got {v!r}")


def _widths(image_size: int, width: int):
    """Channels of the BatchNorm blocks from the 4x4 end to the full-resolution end."""
    k = int(math.log2(image_size)) - 2
    return [width * 2 ** (k - 1 - i) for i in range(k)]


class DCGANGenerator(nn.Module):
    """z (N, z_dim) -> images (N, channels, image_size, image_size) in [-1, 1].

    ConvTranspose(z_dim -> 4x4) + BN + ReLU, then (ConvTranspose 4x4 stride 2 + BN + ReLU) blocks
    halving the channels while doubling the size, and a final ConvTranspose + tanh.
    """

    def __init__(self, z_dim: int = 100, channels: int = 3, image_size: int = 64, width: int = 64, *,
                 fused: bool = True):
        super().__init__()
        _check("DCGANGenerator", image_size, channels, width, z_dim)
        self.config = dict(z_dim=z_dim, channels=channels, image_size=image_size, width=width)
        self.z_dim, self.fused = z_dim, fused
        ws = _widths(image_size, width)
        blocks = []
        for i, c in enumerate(ws):
            cin = z_dim if i == 0 else ws[i - 1]
            stride, pad = (1, 0) if i == 0 else (2, 1)
            if fused:
                layers = [("conv", FusedConvTranspose2d(cin, c, 4, stride, pad, bias=False)),
                          ("bn", FusedBatchNormAct2d(c, activation="relu"))]
            else:
                layers = [("conv", nn.ConvTranspose2d(cin, c, 4, stride, pad, bias=False)),
                          ("bn", nn.BatchNorm2d(c)), ("act", nn.ReLU())]
            blocks.append(nn.Sequential(OrderedDict(layers)))
        self.blocks = nn.Sequential(*blocks)
        if fused:
            self.out = nn.Sequential(OrderedDict(
                conv=FusedConvTranspose2d(ws[-1], channels, 4, 2, 1, bias=False, activation="tanh")))
        else:
            self.out = nn.Sequential(OrderedDict(conv=nn.ConvTranspose2d(ws[-1], channels, 4, 2, 1, bias=False),
                                                 act=nn.Tanh()))
        init_dcgan_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"DCGANGenerator: argument 'z' must have shape (N, {self.z_dim}), "
                             f"got {tuple(z.shape)}")
        return self.out(self.blocks(z[:, :, None, None]))


class DCGANDiscriminator(nn.Module):
    """images (N, channels, image_size, image_size) -> logits (N,) (no sigmoid: the losses take logits).

    Conv 4x4 stride 2 + LeakyReLU(0.2) (no BN), then (Conv 4x4 stride 2 without bias + BN +
    LeakyReLU(0.2)) blocks down to 4x4, and a final 4x4 Conv to one logit.
    """

    def __init__(self, channels: int = 3, image_size: int = 64, width: int = 64, *, fused: bool = True):
        super().__init__()
        _check("DCGANDiscriminator", image_size, channels, width)
        self.config = dict(channels=channels, image_size=image_size, width=width)
        self.fused, self.channels, self.image_size = fused, channels, image_size
        ws = _widths(image_size, width)[::-1]
        self.blocks = down_blocks(channels, ws, fused)
        self.out = nn.Conv2d(ws[-1], 1, 4, 1, 0, bias=False)
        init_dcgan_(self)

    def forward(self, x: torch.Tensor, features: bool = False):
        """Logits (N,); with features=True also the 4x4 features the logit is read from (for heads
        that share D's body, as InfoGAN's Q)."""
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"DCGANDiscriminator: argument 'x' must have shape (N, {self.channels}, "
                             f"{self.image_size}, {self.image_size}), got {tuple(x.shape)}")
        h = self.blocks(x)
        logits = self.out(h).flatten()
        return (logits, h) if features else logits


def down_blocks(channels: int, ws, fused: bool) -> nn.Sequential:
    """DCGAN's discriminator body: Conv 4x4 stride 2 + LeakyReLU(0.2) (no BN), then (Conv 4x4 stride 2
    without bias + BN + LeakyReLU(0.2)) blocks with widths `ws`, down to 4x4 (shared by D and encoders)."""
    blocks = []
    for i, c in enumerate(ws):
        cin = channels if i == 0 else ws[i - 1]
        if i == 0:
            layers = [("conv", nn.Conv2d(cin, c, 4, 2, 1, bias=True)),
                      ("act", FusedLeakyReLU(0.2) if fused else nn.LeakyReLU(0.2))]
        elif fused:
            layers = [("conv", nn.Conv2d(cin, c, 4, 2, 1, bias=False)),
                      ("bn", FusedBatchNormAct2d(c, activation="lrelu", negative_slope=0.2))]
        else:
            layers = [("conv", nn.Conv2d(cin, c, 4, 2, 1, bias=False)),
                      ("bn", nn.BatchNorm2d(c)), ("act", nn.LeakyReLU(0.2))]
        blocks.append(nn.Sequential(OrderedDict(layers)))
    return nn.Sequential(*blocks)


@torch.no_grad()
def init_dcgan_(module: nn.Module, generator=None) -> nn.Module:
    """DCGAN initialisation: conv weights N(0, 0.02), BN weights N(1, 0.02) (per class too), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            m.weight.normal_(0.0, 0.02, generator=generator)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm2d, ClassBatchNormAct2d)):
            m.weight.normal_(1.0, 0.02, generator=generator)
            m.bias.zero_()
    return module
