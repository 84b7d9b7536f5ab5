"""The encoder of the autoencoders (the AAE's and the VAE's): DCGAN's discriminator body down to
4x4, then a 4x4 convolution to `out_dim` numbers (the AAE's code; the VAE's mean and log-variance).
The decoder of both is fastgan.models.DCGANGenerator, so the three models share one architecture."""
import torch
from torch import nn

from .dcgan import _check, _widths, down_blocks, init_dcgan_


class ConvEncoder(nn.Module):
    """images (N, channels, image_size, image_size) -> (N, out_dim)."""

    def __init__(self, out_dim: int = 8, channels: int = 1, image_size: int = 32, width: int = 32, *,
                 fused: bool = True):
        super().__init__()
        _check("ConvEncoder", image_size, channels, width)
        if not (isinstance(out_dim, int) and not isinstance(out_dim, bool) and out_dim >= 1):
            raise ValueError(f"ConvEncoder: argument 'out_dim' must be a positive int, got {out_dim!r}")
        self.config = dict(out_dim=out_dim, channels=channels, image_size=image_size, width=width)
        self.out_dim, self.channels, self.image_size = out_dim, channels, image_size
        ws = _widths(image_size, width)[::-1]
        self.blocks = down_blocks(channels, ws, fused)
        self.out = nn.Conv2d(ws[-1], out_dim, 4, 1, 0)
        init_dcgan_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"ConvEncoder: argument 'x' must have shape (N, {self.channels}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(x.shape)}")
        return self.out(self.blocks(x)).flatten(1)
