"""InfoGAN (Chen et al. 2016): the GAN game plus a lower bound on the mutual information between a
structured part c of G's input and its samples, estimated by a head Q on D's features:

    D, Q:  min  d_loss(D(x), D(G(z, c))) + lambda L_I        G:  min  g_loss(D(G(z, c))) + lambda L_I
    L_I = CE(Q_cat(G(z, c)), c_cat) + Gaussian NLL(c_cont | Q_mu, 1)   (= -MI bound + const)

c: one categorical code (`categories` values, uniform) and `continuous` codes, uniform on [-1, 1].
G's input is [z, one-hot(c_cat), c_cont]; D is called as D(x, features=True) -> (logits, features)
and Q (the objective's network "q", optimised with D as in the paper's code) reads the features."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .base import class_rows
from .gan import GAN, RELATIVISTIC, acc, lazy_penalties


def code_input(z, categories: int, continuous: int, cat=None):
    """G's input from normal noise z (N, z_dim): its last categories + continuous dims replaced by the
    codes -> (input, cat, cont). The categorical code is `cat` (N,) when given, else uniform; the
    continuous ones are erf(z_i / sqrt 2), the uniform on [-1, 1] that a normal z_i maps to (so
    fixed noise gives fixed codes)."""
    n, k, m = z.shape[0], categories, continuous
    if cat is None:
        cat = torch.randint(k, (n,), device=z.device)
    cont = torch.erf(z[:, z.shape[1] - m:] / math.sqrt(2))
    x = torch.cat([z[:, :z.shape[1] - k - m], F.one_hot(cat, k).to(z.dtype), cont], 1)
    return x, cat, cont


def code_sweep(z_dim: int, categories: int, continuous: int, which: int, steps: int = 8, seed: int = 0):
    """G inputs for a grid that varies the codes: row k has categorical code k, its columns sweep
    continuous code `which` from -1 to 1 (the other codes 0, the noise fixed per row).
    Returns (categories * steps, z_dim), row-major."""
    if not 0 <= which < continuous:
        raise ValueError(f"code_sweep: argument 'which' must be in [0, {continuous}), got {which}")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(categories, 1, z_dim - categories - continuous, generator=g).expand(-1, steps, -1)
    cat = F.one_hot(torch.arange(categories), categories).float()[:, None, :].expand(-1, steps, -1)
    cont = torch.zeros(categories, steps, continuous)
    cont[:, :, which] = torch.linspace(-1, 1, steps)
    return torch.cat([noise, cat, cont], 2).reshape(categories * steps, z_dim)


class QHead(nn.Module):
    """D's features -> (categorical logits (N, categories), means of the continuous codes (N, continuous)).
    The continuous codes' Gaussian has unit standard deviation (fixed, as the paper's MNIST setting):
    a learned one lets its log-likelihood outweigh the categorical code's, which G then ignores
    (measured: Q's categorical accuracy stayed at 20%)."""

    def __init__(self, features: int, categories: int = 10, continuous: int = 2, hidden: int = 128):
        super().__init__()
        self.config = dict(features=features, categories=categories, continuous=continuous, hidden=hidden)
        self.categories, self.continuous = categories, continuous
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.LeakyReLU(0.2),
                                 nn.Linear(hidden, categories + continuous))

    def forward(self, h):
        out = self.net(h.flatten(1))
        return out[:, :self.categories], out[:, self.categories:]


class InfoGAN(GAN):
    """The plain GAN game plus lambda * L_I on both sides (see the module docstring).

    q: the QHead (its `features` the size of D's flattened features). The trainer's z_dim is the
    whole input of G: noise + categories + continuous."""

    stats = GAN.stats + ("info", "q_acc")
    pack = False  # Q reads D's features of each sample
    augment = False  # its own step; Q would read augmented codes' images

    def __init__(self, q: QHead, lam: float = 1.0):
        if not isinstance(q, QHead):
            raise TypeError(f"InfoGAN: argument 'q' must be a fastgan.objectives.infogan.QHead, got {type(q).__name__}")
        if not (isinstance(lam, (int, float)) and lam >= 0):
            raise ValueError(f"InfoGAN: argument 'lam' must be a number >= 0, got {lam!r}")
        self.q, self.lam = q, float(lam)
        self.categories, self.continuous = q.categories, q.continuous

    def networks(self):
        return {"q": self.q}

    def players(self):
        return {"g": ("generator",), "d": ("discriminator", "q")}

    def bind(self, t):
        self.noise_dim = t.z_dim - self.categories - self.continuous
        if self.noise_dim < 1:
            raise ValueError(f"GANTrainer: z_dim ({t.z_dim}) must exceed InfoGAN's {self.categories} + "
                             f"{self.continuous} code dimensions")

    def codes(self, z, cat=None):
        return code_input(z, self.categories, self.continuous, cat)

    def info_loss(self, t, h, cat, cont):
        """L_I from D's features h of the fakes, and Q's categorical accuracy."""
        logits, mu = (acc(v) for v in t.net("q")(h))
        ce = F.cross_entropy(logits, cat)
        nll = (0.5 * (cont - mu) ** 2 + 0.5 * math.log(2 * math.pi)).sum(1).mean()
        return ce + nll, (logits.argmax(1) == cat).float().mean()

    def generate(self, generator, z, y=None):
        return generator(self.codes(z, y)[0])

    def sample_labels(self, n):
        return torch.arange(n) % self.categories

    def grid(self, t):  # a row per categorical code
        return class_rows(t, self.categories)

    def config(self):
        return {"objective": "infogan", "categories": self.categories, "continuous": self.continuous,
                "lam": self.lam}

    def step(self, t, batches):
        kind, D = t.loss, t.net("discriminator")
        zero = torch.zeros((), device=t.device)
        r1 = r2 = gp = zero
        for i in range(t.d_steps):
            real = next(batches)
            n = real.shape[0]
            last = i == t.d_steps - 1
            do_r1, do_r2 = lazy_penalties(t)
            gin, cat, cont = self.codes(t.noise(n))
            with t.autocast():
                with torch.enable_grad() if last else torch.no_grad():
                    fake = t.net("generator")(gin)
                if do_r1:
                    real = real.detach().requires_grad_(True)
                fake_in = fake.detach().requires_grad_(do_r2)
                real_logits = D(real)
                fake_logits, h = D(fake_in, features=True)
            ld, st = ops.d_loss(acc(real_logits), acc(fake_logits), kind, return_stats=True)
            info, q_acc = self.info_loss(t, h, cat, cont)
            total = ld + self.lam * info
            if do_r1:
                r1 = ops.r1_penalty(acc(real_logits), real, gamma=t.r1_gamma)
                total = total + r1 * t.r1_every
            if do_r2:
                r2 = ops.r2_penalty(acc(fake_logits), fake_in, gamma=t.r2_gamma)
                total = total + r2 * t.r1_every
            if t.gp_weight > 0:
                with t.autocast():
                    gp = ops.gradient_penalty(D, real.detach(), fake.detach(), weight=t.gp_weight)
                gp = acc(gp)
                total = total + gp
            t.update("d", total)

        with t.frozen("discriminator", "q"):
            with t.autocast():
                fl, h = D(fake, features=True)
                rl = None
                if kind in RELATIVISTIC:
                    with torch.no_grad():
                        rl = D(real.detach())
            lg = ops.g_loss(acc(fl), kind, real_logits=None if rl is None else acc(rl))
            info_g, _ = self.info_loss(t, h, cat, cont)
            t.update("g", lg + self.lam * info_g)
        return {"d_loss": ld, "g_loss": lg, "d_real": st["d_real"], "d_fake": st["d_fake"], "r1": r1, "r2": r2,
                "gp": gp, "info": info, "q_acc": q_acc}
