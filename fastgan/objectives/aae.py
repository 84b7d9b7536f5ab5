"""Adversarial autoencoder (Makhzani et al. 2015): an autoencoder whose code distribution q(z) is
matched to a prior p(z) by a GAN played in latent space, in place of the VAE's KL term. Per step:

    reconstruction:  E, Dec:  min  ||Dec(E(x)) - x||^2
    regularisation:  D:       min  d_loss(D(z ~ p), D(E(x)))        E:  min  g_loss(D(E(x)))

The regularisation phase is the plain GAN game (fastgan.objectives.GAN, with its loss kinds, R1 and
WGAN-GP) whose real samples are prior draws and whose generator is the encoder. The trainer's
"generator" is the decoder (samples: Dec(z), z ~ p), its "discriminator" the latent critic, and the
objective adds the "encoder". Any prior that can be sampled works: the named ones map a standard
normal draw to the prior deterministically (so fixed noise gives fixed samples)."""
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .gan import GAN, acc

PRIORS = ("gaussian", "mixture10", "ring")
RADIUS = 3.0  # of the mixture's means and of the ring
MIX_STD = 0.35  # each mixture component's std (means 2*pi*3/10 = 1.9 apart: 5.4 std)
RING_STD = 0.1  # the ring's radial std


def prior_from_normal(name: str, z: torch.Tensor) -> torch.Tensor:
    """A standard normal draw z (N, dim) -> a draw of the prior `name` (N, dim), deterministically.
    gaussian: z itself. mixture10: dims 0-1 a mixture of 10 Gaussians (std MIX_STD) with means on a
    circle of radius RADIUS, the component chosen by Phi(z_0) (its fraction, mapped back through
    Phi^-1, is again standard normal); ring: dims 0-1 uniform in angle (from Phi(z_0)) at radius
    RADIUS + RING_STD z_1. Dims from 2 on stay standard normal."""
    if name not in PRIORS:
        raise ValueError(f"AAE: argument 'prior' must be one of {', '.join(PRIORS)}, got {name!r}")
    if name == "gaussian":
        return z
    if z.shape[1] < 2:
        raise ValueError(f"AAE: the {name} prior needs a latent of at least 2 dims, got {z.shape[1]}")
    u = torch.special.ndtr(z[:, 0].double())
    if name == "mixture10":
        v = u * 10
        k = v.floor().clamp_(0, 9)
        e0 = torch.special.ndtri((v - k).clamp(1e-12, 1 - 1e-12)).to(z.dtype)
        ang = (2 * math.pi / 10) * k.to(z.dtype)
        xy = torch.stack([RADIUS * ang.cos() + MIX_STD * e0, RADIUS * ang.sin() + MIX_STD * z[:, 1]], 1)
    else:
        ang = (2 * math.pi * u).to(z.dtype)
        r = RADIUS + RING_STD * z[:, 1]
        xy = torch.stack([r * ang.cos(), r * ang.sin()], 1)
    return torch.cat([xy, z[:, 2:]], 1)


@torch.no_grad()
def encode_data(t, data, fn, limit: int = 2000, batch: int = 500):
    """fn(encoder output) for up to `limit` samples of `data` (evenly strided), the encoder in eval
    mode, on the trainer's device -> (codes on the CPU, their labels or None)."""
    x = data.x
    step = max(1, x.shape[0] // limit)
    x = x[::step][:limit]
    y = getattr(data, "y", None)
    y = None if y is None else y[::step][:limit]
    enc = t.nets["encoder"]
    was = enc.training
    enc.eval()
    try:
        out = []
        for i in range(0, x.shape[0], batch):
            xi = x[i:i + batch].to(t.device)
            if t.channels_last:
                xi = xi.contiguous(memory_format=torch.channels_last)
            with t.autocast():
                out.append(fn(enc(xi)).float().cpu())
    finally:
        enc.train(was)
    return torch.cat(out), y


class AAE(GAN):
    """The adversarial autoencoder (see the module docstring). encoder: images -> (N, z_dim) codes
    (fastgan.models.ConvEncoder); the trainer's generator decodes, its discriminator judges codes."""

    stats = GAN.stats + ("recon",)
    pack = False  # D judges codes one by one
    augment = False  # (codes, not images)

    def __init__(self, encoder: nn.Module, prior: str = "gaussian"):
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"AAE: argument 'encoder' must be an nn.Module, got {type(encoder).__name__}")
        prior_from_normal(prior, torch.zeros(1, 2))  # checks the name
        self.encoder, self.prior = encoder, prior

    def networks(self):
        return {"encoder": self.encoder}

    def players(self):
        return {"ae": ("encoder", "generator"), "d": ("discriminator",), "g": ("encoder",)}

    def bind(self, t):
        prior_from_normal(self.prior, torch.zeros(1, t.z_dim))  # checks the latent size against the prior
        out = getattr(self.encoder, "out_dim", None)
        if out is not None and out != t.z_dim:
            raise ValueError(f"GANTrainer: the AAE's encoder outputs {out} dims, z_dim is {t.z_dim}")

    def progress(self, t):
        return [("recon", "recon", ".4f"), ("d_loss", "d", ".3f"), ("g_loss", "g", ".3f"),
                ("d_fake", "D(E(x))", ".2f")]

    def config(self):
        return {"objective": "aae", "prior": self.prior}

    # the regularisation phase is GAN.step with: real = prior draws, fake = E(x), the images as `cond`
    def split(self, t, batch):
        return prior_from_normal(self.prior, t.noise(batch.shape[0])), batch

    def fake(self, t, n, x):
        return t.net("encoder")(x), None

    def discriminate(self, t, z, cond):
        return t.net("discriminator")(z)

    def step(self, t, batches):
        x = next(batches)
        with t.autocast():
            rec = t.net("generator")(t.net("encoder")(x))
        recon = F.mse_loss(acc(rec), acc(x))
        t.update("ae", recon)
        first = [x]  # the regularisation phase starts on the same batch (as the paper's per-batch phases)
        out = super().step(t, itertools.chain(first, batches))
        out["recon"] = recon
        return out

    def generate(self, generator, z, y=None):
        return generator(prior_from_normal(self.prior, z))

    def evaluate(self, t, data, out_dir):
        """The codes of the data against the prior (latent_report)."""
        return latent_report(t, data, out_dir, lambda h: h, lambda z: prior_from_normal(self.prior, z),
                             f"codes of the data (colour: class) on the {self.prior} prior")


def latent_report(t, data, out_dir, code_fn, prior_fn, what: str) -> dict:
    """An autoencoder's codes (code_fn of the encoder's output, for the data) against its prior
    (prior_fn of normal draws): MMD^2, and the MMD^2 of a second prior sample (what a perfect match
    shows at this sample size); with out_dir, latent.png."""
    from ..train.metrics import mmd2
    from ..train.report import save_latent
    codes, y = encode_data(t, data, code_fn)
    g = torch.Generator().manual_seed(t.seed + 11)
    p1 = prior_fn(torch.randn(codes.shape, generator=g))
    p2 = prior_fn(torch.randn(codes.shape, generator=g))
    if out_dir:
        save_latent(codes, y, p1, f"{out_dir}/latent.png", title=f"step {t.step}: {what}")
    return {"latent_mmd": mmd2(codes, p1), "latent_mmd_floor": mmd2(p2, p1)}
