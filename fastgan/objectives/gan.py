"""The plain GAN game (Goodfellow et al. 2014): `d_steps` discriminator updates, each on a real
batch and a fresh fake batch, then one generator update on the last fake batch with D frozen.

    D:  min  d_loss(D(x), D(G(z)))  [+ gamma/2 E|grad_x D(x)|^2 (R1) + gamma2/2 E|grad D(G(z))|^2 (R2)
                                     or  + WGAN-GP]
    G:  min  g_loss(D(G(z)))         (non-saturating -log D(G(z)) by default)

With the trainer's augment, D sees T(x) and T(G(z)) (DiffAugment, a fresh draw each call) in both
updates, and the penalties differentiate w.r.t. x and G(z) through T.

The loss kind and the penalties are the trainer's settings (GANTrainer(loss=, d_steps=, r1_gamma=,
r2_gamma=, r1_every= (both lazy penalties), gp_weight=)); every loss is fastgan's fused op (value
and gradient in one pass). GAN(decay=(first, last)) decays both learning rates linearly to 0
between those steps (the r3gan recipe's schedule)."""
import torch

from .. import ops
from ..ops.gan_loss import RELATIVISTIC
from .base import Objective, check_decay, linear_decay


def acc(t):
    """Logits/penalties for the losses: fp16/bf16 (autocast) up to fp32; fp64 stays fp64."""
    return t if t.dtype == torch.float64 else t.float()


def lazy_penalties(t):
    """(R1 now, R2 now): each when its gamma is > 0, every r1_every steps (then scaled by r1_every,
    the lazy regularisation of StyleGAN2)."""
    due = t.step % t.r1_every == 0
    return t.r1_gamma > 0 and due, t.r2_gamma > 0 and due


def zero_centred(side, logits, x, gamma, m, channels_last):
    """R1 (side "real") or R2 ("fake"): gamma / 2 * mean over D's inputs of |d logits / d x|^2, with
    x the samples before augmentation and packing (packs of m: one norm per pack, as D judged)."""
    if m == 1:
        return (ops.r1_penalty if side == "real" else ops.r2_penalty)(logits, x, gamma=gamma)
    (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return ops.grad_norm_penalty(pack_samples(g, m, channels_last), gamma / 2)


def pack_samples(x, m: int, channels_last: bool = False):
    """PacGAN's packing: (N, C, ...) -> (N / m, m * C, ...), each m consecutive samples concatenated
    along dim 1 (channels of images, features of vectors); images come out channels_last when
    `channels_last` (the trainer's layout), else contiguous."""
    if m == 1:
        return x
    n = x.shape[0]
    if n % m:
        raise ValueError(f"GANTrainer: pack={m} needs batches whose size is a multiple of {m}, got a batch of {n}")
    y = x.reshape(n // m, m * x.shape[1], *x.shape[2:])
    return y.contiguous(memory_format=torch.channels_last) if channels_last and y.dim() == 4 else y


class GAN(Objective):
    """G(z) against D(x): the objective GANTrainer uses when none is given."""

    stats = ("d_loss", "g_loss", "d_real", "d_fake", "r1", "r2", "gp")
    # R2 and packing happen in `step` below: a subclass whose own step lacks them, or whose D judges
    # each sample with a label or per-sample features, sets these False (the trainer then refuses
    # r2_gamma / pack)
    r2 = True
    pack = True
    augment = True
    #: (first, last) step of a linear decay of both rates to 0 (GAN(decay=...)); None: constant rates
    decay = None

    def __init__(self, *, decay=None):
        check_decay("GAN", decay)
        self.decay = None if decay is None else tuple(decay)

    def config(self):
        return {} if self.decay is None else {"decay": list(self.decay)}

    def logged(self, t):
        drop = {name for name, v in (("r1", t.r1_gamma), ("r2", t.r2_gamma)) if v == 0}
        if t.gp_weight == 0:
            drop.add("gp")
        return tuple(s for s in self.stats if s not in drop)

    def progress(self, t):
        return [("d_loss", "d", ".3f"), ("g_loss", "g", ".3f"), ("d_real", "D(x)", ".2f"),
                ("d_fake", "D(G(z))", ".2f")]

    def reals_per_step(self, t):
        return t.d_steps

    # ---- hooks the variants of the same game override -----------------------------------
    def split(self, t, batch):
        """A batch -> (real samples, extra inputs shared by G and D for this batch)."""
        return batch, None

    def fake(self, t, n, cond):
        """n fakes -> (fakes, what D needs about them, e.g. their labels); `cond` is the real batch's."""
        return t.net("generator")(t.noise(n)), None

    def discriminate(self, t, x, cond):
        """D's logits for samples x."""
        return t.net("discriminator")(x)

    def d_extra(self, t, real_logits):
        """A term added to D's loss on the real logits (e.g. ProGAN's drift penalty), or None."""
        return None

    def critic(self, t, cond):
        """D as a function of x alone, for WGAN-GP's interpolates (between a real and a fake of
        the same condition: conditional objectives pair fakes with the real batch's labels)."""
        return t.net("discriminator")

    # ---- the step ---------------------------------------------------------------------------
    def step(self, t, batches):
        if self.decay is not None:
            f = linear_decay(self.decay, t.step)
            for player in ("g", "d"):
                t.scale_lr(player, f)
        kind = t.loss
        zero = torch.zeros((), device=t.device)
        r1 = r2 = gp = zero
        fake = real = cond = fcond = None
        for i in range(t.d_steps):
            real, cond = self.split(t, next(batches))
            n = real.shape[0]
            last = i == t.d_steps - 1
            do_r1, do_r2 = lazy_penalties(t)
            with t.autocast():
                if last:  # kept with its graph for the generator update
                    fake, fcond = self.fake(t, n, cond)
                else:
                    with torch.no_grad():
                        fake, fcond = self.fake(t, n, cond)
                # D judges packs of t.pack samples, augmented (t.augmented); penalties differentiate
                # w.r.t. the samples themselves
                if do_r1:
                    real = real.detach().requires_grad_(True)
                fake_x = fake.detach().requires_grad_(do_r2)
                real_in = pack_samples(t.augmented(real), t.pack, t.channels_last)
                fake_in = pack_samples(t.augmented(fake_x), t.pack, t.channels_last)
                real_logits = self.discriminate(t, real_in, cond)
                fake_logits = self.discriminate(t, fake_in, fcond)
            t.observe_reals(real_logits)
            ld, st = ops.d_loss(acc(real_logits), acc(fake_logits), kind, return_stats=True)
            total = ld
            if do_r1:
                r1 = zero_centred("real", acc(real_logits), real, t.r1_gamma, t.pack, t.channels_last)
                total = total + r1 * t.r1_every
            if do_r2:
                r2 = zero_centred("fake", acc(fake_logits), fake_x, t.r2_gamma, t.pack, t.channels_last)
                total = total + r2 * t.r1_every
            extra = self.d_extra(t, acc(real_logits))
            if extra is not None:
                total = total + extra
            if t.gp_weight > 0:
                with t.autocast():
                    gp = ops.gradient_penalty(self.critic(t, cond), real_in.detach(), fake_in.detach(),
                                              weight=t.gp_weight)
                gp = acc(gp)
                total = total + gp
            t.update("d", total)

        with t.frozen("discriminator"):  # no weight gradients for D (under DDP: no all-reduce)
            with t.autocast():
                fl = self.discriminate(t, pack_samples(t.augmented(fake), t.pack, t.channels_last), fcond)
                rl = None
                if kind in RELATIVISTIC:  # the real logits of the updated D too, like the fake ones
                    with torch.no_grad():
                        rl = self.discriminate(t, real_in.detach(), cond)
            lg = ops.g_loss(acc(fl), kind, real_logits=None if rl is None else acc(rl))
            t.update("g", lg)
        return {"d_loss": ld, "g_loss": lg, "d_real": st["d_real"], "d_fake": st["d_fake"], "r1": r1, "r2": r2,
                "gp": gp}
