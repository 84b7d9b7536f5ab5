"""Progressive growing of GANs (Karras et al. 2018): a generator and a discriminator that start at 4x4
and grow by one resolution at a time, each new block faded in over a phase of training, with the
paper's three stabilisers as small modules: the equalised learning rate (weights stored N(0, 1) and
scaled at run time by He's constant, fastgan's fused bias + leaky ReLU after each), pixelwise feature
normalisation in G, and the minibatch standard deviation as an extra feature map at the end of D.

Both networks hold their stage, (level, alpha), in a buffer: level 0 is 4x4, level L is 4 * 2^L px,
and alpha in [0, 1] blends the new level's output with the previous level's upsampled one (G), or its
input path with the downsampled one (D). The stage is part of the state_dict (and so of checkpoints
and the EMA generator); `set_stage` changes it."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops


class EqualizedConv2d(nn.Module):
    """A k x k convolution (stride 1, 'same' padding) with the equalised learning rate: the weight is
    drawn N(0, 1) and multiplied by gain / sqrt(fan_in) in every forward, the bias starts at 0, and
    the bias + activation (linear or lrelu 0.2) is one fused op (fastgan.ops.bias_act)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, act: str = "lrelu",
                 gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act, self.padding = act, kernel_size // 2

    def forward(self, x):
        y = F.conv2d(x, self.weight * self.scale, padding=self.padding)
        return ops.bias_act(y, self.bias.to(y.dtype), act=self.act, alpha=0.2 if self.act == "lrelu" else None)


class EqualizedLinear(nn.Module):
    """A fully connected layer with the equalised learning rate (see EqualizedConv2d)."""

    def __init__(self, in_features: int, out_features: int, act: str = "lrelu", gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)
        self.act = act

    def forward(self, x):
        y = F.linear(x, self.weight * self.scale)
        return ops.bias_act(y, self.bias.to(y.dtype), act=self.act, alpha=0.2 if self.act == "lrelu" else None)


class PixelNorm(nn.Module):
    """Pixelwise feature vector normalisation: each position's feature vector divided by its root
    mean square over the channels, x / sqrt(mean_c x^2 + eps) (eps 1e-8, the paper's)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps)


class MinibatchStddev(nn.Module):
    """Appends one feature map: the standard deviation of each feature over a group of `group` samples,
    averaged over features and positions, the same value for every sample of the group (the paper's
    code: sample n is in group n mod (N / G); G = the largest divisor of N up to `group`)."""

    def __init__(self, group: int = 4, eps: float = 1e-8):
        super().__init__()
        self.group, self.eps = group, eps

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group, n)
        while n % g:
            g -= 1
        y = x.reshape(g, n // g, c, h, w)
        if y.dtype in (torch.float16, torch.bfloat16):  # the variance in float32 under autocast
            y = y.float()
        std = (y - y.mean(0)).pow(2).mean(0).add(self.eps).sqrt().mean((1, 2, 3))  # (N / G,)
        s = std.to(x.dtype).repeat(g)[:, None, None, None].expand(n, 1, h, w)
        return torch.cat([x, s], 1)


def _levels(image_size: int) -> int:
    if not (isinstance(image_size, int) and image_size >= 4 and image_size & (image_size - 1) == 0):
        raise ValueError(f"argument 'image_size' must be a power of two >= 4, got {image_size!r}")
    return int(math.log2(image_size)) - 2


def _channels(level: int, width: int) -> int:
    """Feature maps at a level: 4 * width at 4x4 and 8x8, halving with each further doubling, >= width / 2."""
    return max(width // 2, width * 4 >> max(0, level - 1))


class _Staged(nn.Module):
    """(level, alpha) in a buffer, with level mirrored as a Python int for the forward's loop."""

    def _init_stage(self, levels: int):
        self.levels = levels
        self.register_buffer("stage", torch.tensor([float(levels), 1.0]))
        self.level, self.fading = levels, False
        self.register_load_state_dict_post_hook(lambda m, _: m.sync_stage())

    def set_stage(self, level: int, alpha: float):
        """Grow to (or restart at) `level`, with the new level's blend weight `alpha` in [0, 1]."""
        if not (isinstance(level, int) and 0 <= level <= self.levels):
            raise ValueError(f"{type(self).__name__}.set_stage: level must be an int in [0, {self.levels}], "
                             f"got {level!r}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"{type(self).__name__}.set_stage: alpha must be in [0, 1], got {alpha!r}")
        with torch.no_grad():
            self.stage.copy_(torch.tensor([float(level), float(alpha)]))
        self.level, self.fading = level, level > 0 and alpha < 1

    def _every_parameter(self, out):
        """out + 0 * (every parameter summed): the levels not grown yet get zero gradients instead of
        none, so DistributedDataParallel sees every parameter used (its unused-parameter search fails
        with the gradient penalty's double backward). ProGAN resets the optimisers at each new level,
        as the paper's code, so the zeros leave no trace in Adam's moments."""
        return out + (0.0 * sum(p.sum() for p in self.parameters())).to(out.dtype)  # 0 before the cast: no fp16 inf

    def sync_stage(self):
        """The Python mirror of the buffer (after load_state_dict, or in an EMA copy whose buffers were
        copied in): reads the buffer, a device sync on a GPU."""
        level, alpha = (float(v) for v in self.stage.tolist())
        self.level, self.fading = int(level), level > 0 and alpha < 1


class ProGenerator(_Staged):
    """z (N, z_dim) -> images (N, channels, s, s), s = 4 * 2^level: the latent pixel-normalised, a
    dense layer to 4x4, a 3x3 convolution; then per level a nearest 2x upsampling and two 3x3
    convolutions; every convolution followed by leaky ReLU and PixelNorm; a 1x1 toRGB per level
    (linear). While alpha < 1 the output is (1 - alpha) * upsampled toRGB of the previous level +
    alpha * toRGB of this one. Starts at the full size (level = log2(image_size) - 2, alpha 1)."""

    def __init__(self, z_dim: int = 128, channels: int = 3, image_size: int = 32, width: int = 16):
        super().__init__()
        levels = _levels(image_size)
        self.config = dict(z_dim=z_dim, channels=channels, image_size=image_size, width=width)
        c0 = _channels(0, width)
        self.pn = PixelNorm()
        self.dense = EqualizedLinear(z_dim, c0 * 16, gain=math.sqrt(2) / 4)  # the paper's gain for it
        self.blocks = nn.ModuleList([EqualizedConv2d(c0, c0, 3)])
        self.to_rgb = nn.ModuleList([EqualizedConv2d(c0, channels, 1, act="linear", gain=1.0)])
        for lv in range(1, levels + 1):
            cin, cout = _channels(lv - 1, width), _channels(lv, width)
            self.blocks.append(nn.ModuleList([EqualizedConv2d(cin, cout, 3), EqualizedConv2d(cout, cout, 3)]))
            self.to_rgb.append(EqualizedConv2d(cout, channels, 1, act="linear", gain=1.0))
        self._init_stage(levels)

    def forward(self, z):
        if z.dim() != 2 or z.shape[1] != self.config["z_dim"]:
            raise ValueError(f"ProGenerator: expected z of shape (N, {self.config['z_dim']}), got {tuple(z.shape)}")
        h = self.pn(self.dense(self.pn(z)).view(z.shape[0], -1, 4, 4))
        h = self.pn(self.blocks[0](h))
        prev = None  # the previous level's features, kept while fading
        for lv in range(1, self.level + 1):
            prev = h
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            for conv in self.blocks[lv]:
                h = self.pn(conv(h))
        out = self.to_rgb[self.level](h)
        if self.fading:
            low = F.interpolate(self.to_rgb[self.level - 1](prev), scale_factor=2, mode="nearest")
            out = torch.lerp(low, out, self.stage[1].to(out.dtype))
        return self._every_parameter(out)


class ProDiscriminator(_Staged):
    """images (N, channels, s, s), s = 4 * 2^level -> logits (N,): a 1x1 fromRGB per level, then per
    level two 3x3 convolutions and a 2x average pooling down to 4x4, where the minibatch standard
    deviation is appended, then a 3x3 convolution, a 4x4 one (a dense layer over the map) and a linear
    output; every convolution with leaky ReLU. While alpha < 1 the newest level's input path is
    blended with the 2x-downsampled image through the previous level's fromRGB."""

    def __init__(self, channels: int = 3, image_size: int = 32, width: int = 16, group: int = 4):
        super().__init__()
        levels = _levels(image_size)
        self.config = dict(channels=channels, image_size=image_size, width=width, group=group)
        self.from_rgb = nn.ModuleList([EqualizedConv2d(channels, _channels(lv, width), 1) for lv in range(levels + 1)])
        self.blocks = nn.ModuleList([nn.ModuleList()])  # level 0's block is the head below
        for lv in range(1, levels + 1):
            cin, cout = _channels(lv, width), _channels(lv - 1, width)
            self.blocks.append(nn.ModuleList([EqualizedConv2d(cin, cin, 3), EqualizedConv2d(cin, cout, 3)]))
        c0 = _channels(0, width)
        self.mbstd = MinibatchStddev(group)
        self.conv = EqualizedConv2d(c0 + 1, c0, 3)
        self.dense = EqualizedLinear(c0 * 16, c0)
        self.out = EqualizedLinear(c0, 1, act="linear", gain=1.0)
        self._init_stage(levels)

    def forward(self, x):
        s = 4 * 2 ** self.level
        if x.dim() != 4 or x.shape[1:] != (self.config["channels"], s, s):
            raise ValueError(f"ProDiscriminator: at level {self.level} expected images (N, {self.config['channels']}, "
                             f"{s}, {s}), got shape {tuple(x.shape)}")
        h = self.from_rgb[self.level](x)
        for lv in range(self.level, 0, -1):
            for conv in self.blocks[lv]:
                h = conv(h)
            h = F.avg_pool2d(h, 2)
            if lv == self.level and self.fading:  # the new level's path blended with the previous level's input
                low = self.from_rgb[lv - 1](F.avg_pool2d(x, 2))
                h = torch.lerp(low, h, self.stage[1].to(h.dtype))
        h = self.conv(self.mbstd(h))
        return self._every_parameter(self.out(self.dense(h.flatten(1))).squeeze(1))
