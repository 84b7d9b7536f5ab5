"""Class-conditional networks: the projection head of a conditional discriminator (Miyato & Koyama
2018), the conditional DCGAN (class-conditional BatchNorm in G, projection D) and the conditional
MLPs for labelled 2-D data (the mode of a Gaussian mixture as the label)."""
import torch
from torch import nn

from .. import ops
from ..nn import ClassBatchNormAct2d, FusedConvTranspose2d
from .dcgan import DCGANDiscriminator, _check, _widths, init_dcgan_
from .mlp import _mlp


def _check_classes(cls: str, num_classes):
    if not (isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 2):
        raise ValueError(f"{cls}: argument 'num_classes' must be an int >= 2, got {num_classes!r}")


def _check_labels(cls: str, y, n: int, num_classes: int):
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != n or y.is_floating_point() \
            or y.dtype == torch.bool:
        got = f"a {y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{cls}: argument 'y' must be an integer tensor of shape ({n},) (one class per sample), "
                         f"got {got}")
    if y.device.type == "cpu" and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{cls}: argument 'y' must hold classes in [0, {num_classes}), got [{int(y.min())}, "
                         f"{int(y.max())}]")


class ProjectionHead(nn.Module):
    """logit = <v, h> + b + <embed(y), h> for features h (N, features) and classes y (N,): the
    discriminator's output layer of a projection cGAN. The embedding starts at zero, so a fresh
    conditional D is the unconditional one."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        _check_classes("ProjectionHead", num_classes)
        self.num_classes = num_classes
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features)
        nn.init.zeros_(self.embed.weight)

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_labels("ProjectionHead", y, h.shape[0], self.num_classes)
        return self.linear(h).flatten() + (self.embed(y) * h).sum(1)


class ConditionalMLPGenerator(nn.Module):
    """(z (N, z_dim), y (N,)) -> points (N, out_dim): the class enters the first hidden layer as a
    learned per-class bias (the same as a one-hot label concatenated to z), then ReLU MLP layers."""

    def __init__(self, z_dim: int = 2, out_dim: int = 2, num_classes: int = 8, width: int = 128, depth: int = 3):
        super().__init__()
        _check_classes("ConditionalMLPGenerator", num_classes)
        self.config = dict(z_dim=z_dim, out_dim=out_dim, num_classes=num_classes, width=width, depth=depth)
        self.z_dim, self.num_classes = z_dim, num_classes
        self.inp = nn.Linear(z_dim, width)
        self.embed = nn.Embedding(num_classes, width)
        nn.init.normal_(self.embed.weight, std=0.1)
        self.net = _mlp([width] * depth + [out_dim], "relu", 0.0)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"ConditionalMLPGenerator: argument 'z' must have shape (N, {self.z_dim}), "
                             f"got {tuple(z.shape)}")
        _check_labels("ConditionalMLPGenerator", y, z.shape[0], self.num_classes)
        h = ops.bias_act(self.inp(z) + self.embed(y), act="relu")
        return self.net(h)


class ProjectionMLPDiscriminator(nn.Module):
    """(points (N, in_dim), y (N,)) -> logits (N,): LeakyReLU(0.2) MLP features and a projection head."""

    def __init__(self, in_dim: int = 2, num_classes: int = 8, width: int = 128, depth: int = 3):
        super().__init__()
        _check_classes("ProjectionMLPDiscriminator", num_classes)
        self.config = dict(in_dim=in_dim, num_classes=num_classes, width=width, depth=depth)
        self.num_classes = num_classes
        self.body = _mlp([in_dim] + [width] * depth + [width], "lrelu", 0.2)[:-1]  # features, no output layer
        self.head = ProjectionHead(width, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x), y)


class ConditionalDCGANGenerator(nn.Module):
    """(z (N, z_dim), y (N,)) -> images (N, channels, image_size, image_size) in [-1, 1]: the DCGAN
    generator whose input is z with the one-hot class appended (Mirza & Osindero 2014) and whose
    BatchNorm + ReLU layers are class-conditional (per-class scale and shift gathered inside
    fastgan's fused kernel: ClassBatchNormAct2d)."""

    def __init__(self, z_dim: int = 100, channels: int = 3, image_size: int = 64, width: int = 64,
                 num_classes: int = 10):
        super().__init__()
        _check("ConditionalDCGANGenerator", image_size, channels, width, z_dim)
        _check_classes("ConditionalDCGANGenerator", num_classes)
        self.config = dict(z_dim=z_dim, channels=channels, image_size=image_size, width=width,
                           num_classes=num_classes)
        self.z_dim, self.num_classes = z_dim, num_classes
        ws = _widths(image_size, width)
        self.convs = nn.ModuleList(
            FusedConvTranspose2d(z_dim + num_classes if i == 0 else ws[i - 1], c, 4, 1 if i == 0 else 2,
                                 0 if i == 0 else 1, bias=False) for i, c in enumerate(ws))
        self.norms = nn.ModuleList(ClassBatchNormAct2d(c, num_classes, activation="relu") for c in ws)
        self.out = FusedConvTranspose2d(ws[-1], channels, 4, 2, 1, bias=False, activation="tanh")
        init_dcgan_(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"ConditionalDCGANGenerator: argument 'z' must have shape (N, {self.z_dim}), "
                             f"got {tuple(z.shape)}")
        _check_labels("ConditionalDCGANGenerator", y, z.shape[0], self.num_classes)
        h = torch.cat([z, nn.functional.one_hot(y, self.num_classes).to(z.dtype)], 1)[:, :, None, None]
        for conv, norm in zip(self.convs, self.norms):
            h = norm(conv(h), y)
        return self.out(h)


class ProjectionDCGANDiscriminator(nn.Module):
    """(images, y (N,)) -> logits (N,): the DCGAN discriminator's body, and a projection head on its
    flattened 4x4 features (whose linear part is the DCGAN's final 4x4 convolution)."""

    def __init__(self, channels: int = 3, image_size: int = 64, width: int = 64, num_classes: int = 10):
        super().__init__()
        _check_classes("ProjectionDCGANDiscriminator", num_classes)
        base = DCGANDiscriminator(channels, image_size, width)
        self.config = dict(channels=channels, image_size=image_size, width=width, num_classes=num_classes)
        self.channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.blocks = base.blocks
        self.head = ProjectionHead(_widths(image_size, width)[0] * 16, num_classes)
        init_dcgan_(self.head)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels or x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"ProjectionDCGANDiscriminator: argument 'x' must have shape (N, {self.channels}, "
                             f"{self.image_size}, {self.image_size}), got {tuple(x.shape)}")
        return self.head(self.blocks(x).flatten(1), y)
