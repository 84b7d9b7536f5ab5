"""Variational autoencoder (Kingma & Welling 2014), the baseline GANs are compared with: maximise
the evidence lower bound, i.e. minimise per sample

    -ELBO = E_q(z|x)[ ||x - Dec(z)||^2 / (2 sigma^2) ] + KL(N(mu, diag s^2) || N(0, I)) (+ const)

with (mu, log s^2) = E(x), z = mu + s * eps (the reparameterisation), a Gaussian decoder of fixed
std `sigma` (in the data's [-1, 1] units) and one sample of eps per step. No discriminator: the
trainer's generator is the decoder (samples: Dec(z), z ~ N(0, I)), the objective adds the encoder,
and one player ("g") updates both.

The decoder's BatchNorm running statistics come from prior draws, the inputs sampling gives it,
not from the posterior draws it is trained on: a no-grad pass on z ~ N(0, I) each step (the
training pass leaves them alone). With posterior statistics, samples from the prior are decoded
with the wrong normalisation (measured on digits, sigma 0.1: Fréchet distance 3300 against 366
with the statistics re-estimated on prior draws)."""
import contextlib

import torch
from torch import nn

from .base import Objective
from .gan import acc


class VAE(Objective):
    """encoder: images -> (N, 2 z_dim) = (mu, log variance) (fastgan.models.ConvEncoder(2 * z_dim));
    pass discriminator=None to GANTrainer. sigma 0.5 by default: on digits (8-d code, 500 steps)
    sigma 0.1 / 0.3 / 0.5 measured Fréchet distances 336 / 245 / 161; a larger sigma gives wider
    posteriors and fewer holes between the data's codes, where prior draws decode to non-digits."""

    stats = ("loss", "recon", "kl")

    def __init__(self, encoder: nn.Module, sigma: float = 0.5):
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"VAE: argument 'encoder' must be an nn.Module, got {type(encoder).__name__}")
        if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0):
            raise ValueError(f"VAE: argument 'sigma' must be a number > 0, got {sigma!r}")
        self.encoder, self.sigma = encoder, float(sigma)

    def networks(self):
        return {"encoder": self.encoder}

    def players(self):
        return {"g": ("encoder", "generator")}

    def bind(self, t):
        if t.discriminator is not None:
            raise ValueError("GANTrainer: the VAE has no discriminator: pass discriminator=None")
        out = getattr(self.encoder, "out_dim", None)
        if out is not None and out != 2 * t.z_dim:
            raise ValueError(f"GANTrainer: the VAE's encoder must output 2 * z_dim = {2 * t.z_dim} dims "
                             f"(mean and log variance), it outputs {out}")

    def config(self):
        return {"objective": "vae", "sigma": self.sigma}

    def progress(self, t):
        return [("loss", "-elbo", ".2f"), ("recon", "recon", ".2f"), ("kl", "kl", ".2f")]

    def losses(self, x, rec, mu, logvar):
        """(-ELBO, reconstruction term, KL), each averaged over the batch (nats, up to a constant)."""
        recon = ((acc(x) - acc(rec)) ** 2).flatten(1).sum(1).mean() / (2 * self.sigma ** 2)
        mu, logvar = acc(mu), acc(logvar)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1).mean()
        return recon + kl, recon, kl

    def step(self, t, batches):
        x = next(batches)
        eps = t.noise(x.shape[0])
        dec = t.net("generator")
        with t.autocast():
            mu, logvar = t.net("encoder")(x).chunk(2, 1)
            z = mu + (0.5 * logvar).exp() * eps
            with running_stats_kept(t.nets["generator"]):
                rec = dec(z)
        loss, recon, kl = self.losses(x, rec, mu, logvar)
        t.update("g", loss)
        with torch.no_grad(), t.autocast():  # the decoder's running statistics: from prior draws
            dec(t.noise(x.shape[0]))
        return {"loss": loss, "recon": recon, "kl": kl}

    def evaluate(self, t, data, out_dir):
        """The posterior means of the data against the prior N(0, I) (aae.latent_report)."""
        from .aae import latent_report
        return latent_report(t, data, out_dir, lambda h: h[:, :h.shape[1] // 2], lambda z: z,
                             "posterior means of the data (colour: class) on N(0, I)")


@contextlib.contextmanager
def running_stats_kept(module: nn.Module):
    """BatchNorm layers in `module` normalise with batch statistics but leave their running
    statistics unchanged (momentum 0) inside the block."""
    bns = [m for m in module.modules() if getattr(m, "running_mean", None) is not None and hasattr(m, "momentum")]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, v in zip(bns, saved):
            m.momentum = v
