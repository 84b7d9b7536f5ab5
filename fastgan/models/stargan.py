"""StarGAN's networks (Choi et al. 2018): one generator for every pair of domains, told the target
domain by `domains` one-hot channels appended to the image, and a discriminator with two heads on
one body, a PatchGAN-style realness map and a domain classifier. As the paper's code: zero padding,
InstanceNorm with a learned scale and shift (fused with its activation here), no normalisation in
the discriminator, LeakyReLU(0.01). `fused=False` builds them from torch.nn, same state_dict keys."""
import math

import torch
from torch import nn

from .cyclegan import ResnetBlock, _check, _norm_act


class StarGenerator(nn.Module):
    """(images (N, channels, H, W), target domains (N,) int64) -> images (N, channels, H, W) in
    [-1, 1], H and W multiples of 4: c7s1-w, d2w, d4w (4x4 stride-2 convolutions), `blocks` residual
    blocks at 4w, u2w, uw (4x4 stride-2 transposed convolutions), c7s1-channels + tanh."""

    def __init__(self, channels: int = 3, domains: int = 5, width: int = 64, blocks: int = 6, *,
                 fused: bool = True):
        super().__init__()
        _check("StarGenerator", channels=channels, domains=domains, width=width, blocks=blocks)
        if domains < 2:
            raise ValueError(f"StarGenerator: argument 'domains' must be at least 2, got {domains}")
        self.config = dict(channels=channels, domains=domains, width=width, blocks=blocks)
        self.num_domains = domains
        w = width
        layers = [nn.Conv2d(channels + domains, w, 7, 1, 3, bias=False), *_norm_act(w, "relu", fused, affine=True)]
        for i in range(2):  # downsampling
            layers += [nn.Conv2d(w * 2 ** i, w * 2 ** (i + 1), 4, 2, 1, bias=False),
                       *_norm_act(w * 2 ** (i + 1), "relu", fused, affine=True)]
        layers += [ResnetBlock(4 * w, fused, reflect=False, affine=True) for _ in range(blocks)]
        for i in range(2):  # upsampling
            c = w * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False),
                       *_norm_act(c // 2, "relu", fused, affine=True)]
        layers += [nn.Conv2d(w, channels, 7, 1, 3, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x, domain):
        c, k = self.config["channels"], self.num_domains
        if x.dim() != 4 or x.shape[1] != c or x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"StarGenerator: expected images (N, {c}, H, W) with H and W multiples of 4, got shape "
                             f"{tuple(x.shape)}")
        if not isinstance(domain, torch.Tensor) or domain.dtype != torch.int64 or domain.shape != (x.shape[0],):
            got = f"{getattr(domain, 'dtype', type(domain).__name__)} {tuple(getattr(domain, 'shape', ()))}"
            raise ValueError(f"StarGenerator: argument 'domain' must be an int64 tensor of shape ({x.shape[0]},), "
                             f"got {got}")
        # the range check reads the labels (a device sync): on the CPU only, outside torch.compile
        # (elsewhere one_hot rejects them)
        if domain.device.type == "cpu" and not torch.compiler.is_compiling() and domain.numel() \
                and not (0 <= int(domain.min()) and int(domain.max()) < k):
            raise ValueError(f"StarGenerator: argument 'domain' must be in [0, {k}), got values "
                             f"{int(domain.min())}..{int(domain.max())}")
        onehot = torch.nn.functional.one_hot(domain, k).to(x.dtype)
        maps = onehot[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.net(torch.cat([x, maps], 1))


def star_layers(image_size: int) -> int:
    """The discriminator's depth for an image size: 6 at 128 px (the paper's), log2(size) - 1 for powers
    of two (the last feature map 2x2); otherwise the most stride-2 layers that halve the size exactly,
    at most that many (24 px: 3, a 3x3 map; 20 px: 2, 5x5)."""
    layers = max(1, int(math.log2(image_size)) - 1)
    while layers > 1 and image_size % 2 ** layers:
        layers -= 1
    return layers


class StarDiscriminator(nn.Module):
    """images (N, channels, size, size) -> (realness logits (N, 1, h, w), domain logits (N, domains)):
    `layers` 4x4 stride-2 convolutions with LeakyReLU(0.01) doubling the width, then a 3x3
    convolution to one channel (realness per patch) and one covering the last map to `domains`."""

    def __init__(self, channels: int = 3, domains: int = 5, image_size: int = 128, width: int = 64,
                 layers: int = None):
        super().__init__()
        layers = star_layers(image_size) if layers is None else layers
        _check("StarDiscriminator", channels=channels, domains=domains, image_size=image_size, width=width,
               layers=layers)
        if image_size % 2 ** layers:
            raise ValueError(f"StarDiscriminator: argument 'image_size' ({image_size}) must be a multiple of "
                             f"2**layers ({2 ** layers})")
        self.config = dict(channels=channels, domains=domains, image_size=image_size, width=width, layers=layers)
        self.num_domains = domains
        seq, c = [], channels
        for i in range(layers):
            out = width * 2 ** i
            seq += [nn.Conv2d(c, out, 4, 2, 1), nn.LeakyReLU(0.01, True)]
            c = out
        self.body = nn.Sequential(*seq)
        self.src = nn.Conv2d(c, 1, 3, 1, 1, bias=False)
        self.cls = nn.Conv2d(c, domains, image_size // 2 ** layers, bias=False)

    def forward(self, x):
        s = self.config["image_size"]
        if x.dim() != 4 or x.shape[1:] != (self.config["channels"], s, s):
            raise ValueError(f"StarDiscriminator: expected images (N, {self.config['channels']}, {s}, {s}), got shape "
                             f"{tuple(x.shape)}")
        h = self.body(x)
        return self.src(h), self.cls(h).flatten(1)
