"""Small MLPs for 2-D toy data (the ring / grid mode-collapse benchmarks)."""
import torch
from torch import nn

from ..nn import FusedBiasAct


def _mlp(sizes, act: str, alpha: float):
    layers = []
    for i in range(len(sizes) - 2):
        layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False), FusedBiasAct(sizes[i + 1], act=act, alpha=alpha)]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """z (N, z_dim) -> points (N, out_dim): `depth` hidden ReLU layers of `width` units."""

    def __init__(self, z_dim: int = 2, out_dim: int = 2, width: int = 128, depth: int = 3):
        super().__init__()
        self.config = dict(z_dim=z_dim, out_dim=out_dim, width=width, depth=depth)
        self.z_dim = z_dim
        self.net = _mlp([z_dim] + [width] * depth + [out_dim], "relu", 0.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"MLPGenerator: argument 'z' must have shape (N, {self.z_dim}), got {tuple(z.shape)}")
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """points (N, in_dim) -> logits (N,): `depth` hidden LeakyReLU(0.2) layers of `width` units."""

    def __init__(self, in_dim: int = 2, width: int = 128, depth: int = 3):
        super().__init__()
        self.config = dict(in_dim=in_dim, width=width, depth=depth)
        self.net = _mlp([in_dim] + [width] * depth + [1], "lrelu", 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()
