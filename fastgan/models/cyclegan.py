"""CycleGAN's networks (Zhu et al. 2017): the ResNet generator (after Johnson et al. 2016) and the
PatchGAN discriminator, with InstanceNorm + activation fused (fastgan.nn.FusedInstanceNormAct2d).
`fused=False` builds the same networks from torch.nn with the same state_dict keys."""
import math

from torch import nn

from ..nn import FusedInstanceNormAct2d


def _norm_act(c: int, act: str, fused: bool, slope: float = 0.2, affine: bool = False):
    """InstanceNorm2d (no running statistics; CycleGAN's without affine, StarGAN's with) followed by
    `act`: two modules either way (fused: the activation's slot is an nn.Identity), so the
    state_dict keys agree."""
    if fused:
        return [FusedInstanceNormAct2d(c, affine=affine, activation=act,
                                       negative_slope=slope if act == "lrelu" else None), nn.Identity()]
    acts = {"relu": nn.ReLU(True), "lrelu": nn.LeakyReLU(slope, True), "linear": nn.Identity()}
    return [nn.InstanceNorm2d(c, affine=affine), acts[act]]


def _check(cls: str, **ints):
    for name, v in ints.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ValueError(f"{cls}: argument '{name}' must be a positive int, got {v!r}")


class ResnetBlock(nn.Module):
    """x + [reflect-pad, conv3x3, IN + ReLU, reflect-pad, conv3x3, IN](x); `reflect=False`: zero
    padding (StarGAN's), `affine`: the InstanceNorms learn a scale and shift (StarGAN's)."""

    def __init__(self, c: int, fused: bool = True, *, reflect: bool = True, affine: bool = False):
        super().__init__()
        pad = (lambda: [nn.ReflectionPad2d(1)]) if reflect else (lambda: [])
        conv = (lambda: nn.Conv2d(c, c, 3, bias=False)) if reflect else (lambda: nn.Conv2d(c, c, 3, 1, 1, bias=False))
        self.block = nn.Sequential(*pad(), conv(), *_norm_act(c, "relu", fused, affine=affine),
                                   *pad(), conv(), *_norm_act(c, "linear", fused, affine=affine))

    def forward(self, x):
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """images (N, in_channels, H, W) -> images (N, out_channels, H, W) in [-1, 1], H and W multiples
    of 4: c7s1-w, d2w, d4w, `blocks` residual blocks at 4w, u2w, uw, c7s1-out + tanh (the paper's
    notation), reflection padding, InstanceNorm. The convolutions before an InstanceNorm have no
    bias (the normalisation removes it)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 64, blocks: int = 9, *,
                 fused: bool = True):
        super().__init__()
        _check("ResnetGenerator", in_channels=in_channels, out_channels=out_channels, width=width, blocks=blocks)
        self.config = dict(in_channels=in_channels, out_channels=out_channels, width=width, blocks=blocks)
        w = width
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, w, 7, bias=False), *_norm_act(w, "relu", fused)]
        for i in range(2):  # downsampling
            layers += [nn.Conv2d(w * 2 ** i, w * 2 ** (i + 1), 3, 2, 1, bias=False),
                       *_norm_act(w * 2 ** (i + 1), "relu", fused)]
        layers += [ResnetBlock(4 * w, fused) for _ in range(blocks)]
        for i in range(2):  # upsampling
            c = w * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, bias=False),
                       *_norm_act(c // 2, "relu", fused)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.config["in_channels"] or x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"ResnetGenerator: expected images (N, {self.config['in_channels']}, H, W) with H and W "
                             f"multiples of 4, got shape {tuple(x.shape)}")
        return self.net(x)


def patch_layers(image_size: int) -> int:
    """PatchGAN depth for an image size: 3 at 256 px (the paper's 70x70 patches), one less per halving,
    at least 1 (16x16 patches at 32 px)."""
    return max(1, min(3, int(math.log2(image_size)) - 5))


class PatchDiscriminator(nn.Module):
    """images (N, channels, H, W) -> a map of logits, one per overlapping patch (N, 1, h, w):
    C(w) without norm, then `layers` - 1 stride-2 and one stride-1 4x4 convolutions each with
    InstanceNorm + LeakyReLU(0.2), doubling the channels up to 8w, and a 4x4 convolution to one
    channel (`layers` = 3: the paper's 70x70 PatchGAN)."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3, *, fused: bool = True):
        super().__init__()
        _check("PatchDiscriminator", channels=channels, width=width, layers=layers)
        self.config = dict(channels=channels, width=width, layers=layers)
        seq = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = width
        for i in range(1, layers + 1):
            out = width * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(c, out, 4, stride, 1, bias=False), *_norm_act(out, "lrelu", fused)]
            c = out
        seq += [nn.Conv2d(c, 1, 4, 1, 1)]
        self.net = nn.Sequential(*seq)

    def forward(self, x):
        return self.net(x)
