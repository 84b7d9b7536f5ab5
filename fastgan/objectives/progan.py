"""Progressive growing (Karras et al. 2018): the plain GAN game on networks that grow from 4x4 to the
full size, one level per two phases, each of `phase` steps: a fade-in, over which the new level's
blend weight alpha rises linearly from 0 to 1, then a stabilisation at alpha 1 (level 0 only
stabilises). Reals are shown at the current resolution (average-pooled) and, while a level fades in,
blended the same way as G's output: (1 - alpha) * upsampled(pooled twice) + alpha * pooled. The loss
is the paper's WGAN-GP (the trainer's loss="wgan", gp_weight=10) plus the drift term

    eps_drift * E[D(x)^2]      (eps_drift = 0.001)

that keeps the critic's outputs near 0. When a fade-in starts or ends, the optimisers' moments are
reset, as the paper's code does. The stage is a function of the step and `phase` alone, and `phase`
is saved with the checkpoint and restored from it, so a resumed run continues the schedule exactly
(also when the resumed run is asked for more steps: those extend the last, full-size phase); it
also lives in the networks' buffers (and so in checkpoints and the EMA generator), for sampling.
Samples are upsampled (nearest) to the full size, so the trainer's
sample grid and image metrics see one size throughout."""
import torch
import torch.nn.functional as F

from .gan import GAN


class ProGAN(GAN):
    """The GAN objective on fastgan.models.ProGenerator / ProDiscriminator (or any pair with
    `levels`, `set_stage(level, alpha)` and `sync_stage()`); see the module docstring."""

    pack = False  # the growing D takes the images' channels

    def __init__(self, phase: int, *, drift: float = 1e-3):
        if not (isinstance(phase, int) and not isinstance(phase, bool) and phase >= 1):
            raise ValueError(f"ProGAN: argument 'phase' must be a positive int (steps per fade-in or "
                             f"stabilisation), got {phase!r}")
        if not (isinstance(drift, (int, float)) and not isinstance(drift, bool) and drift >= 0):
            raise ValueError(f"ProGAN: argument 'drift' must be a number >= 0, got {drift!r}")
        self.phase, self.drift = phase, float(drift)
        self.levels, self.size, self.current = None, None, (0, 1.0)

    def bind(self, t):
        g, d = t.generator, t.discriminator
        for name, m in (("generator", g), ("discriminator", d)):
            if not all(hasattr(m, a) for a in ("set_stage", "sync_stage", "levels")):
                raise ValueError(f"GANTrainer: ProGAN's {name} must grow (set_stage(level, alpha), sync_stage() "
                                 "and levels), "
                                 "as fastgan.models.ProGenerator / ProDiscriminator do")
        if g.levels != d.levels:
            raise ValueError(f"GANTrainer: ProGAN's generator has {g.levels + 1} levels, its discriminator "
                             f"{d.levels + 1}")
        self.levels = g.levels
        self.size = 4 * 2 ** self.levels

    def total_steps(self) -> int:
        """Steps until the last level is faded in and stabilised for one phase."""
        return self.phase * (2 * self.levels + 1)

    def stage(self, step: int):
        """(level, alpha) for the step after `step` completed ones."""
        k, r = divmod(step, self.phase)
        if k == 0:
            return 0, 1.0
        level = min((k + 1) // 2, self.levels)
        if k % 2 == 1 and (k + 1) // 2 <= self.levels:  # a fade-in phase
            return level, r / self.phase
        return level, 1.0

    def step(self, t, batches):
        self.current = level, alpha = self.stage(t.step)
        if t.step > 0:
            before, after = self.stage(t.step - 1), self.current
            if (before[0], before[1] < 1) != (after[0], after[1] < 1):  # a fade-in starts or ends: fresh Adam
                for opt in t.optimizers.values():  # moments, as the paper's code (reset_opt_for_new_lod)
                    opt.state.clear()
        for m in (t.generator, t.discriminator, t.ema):  # the EMA copy's mirror too: its buffers are copied in
            if m is not None:
                m.set_stage(level, alpha)
        return super().step(t, batches)

    def split(self, t, batch):
        """Real images at the current resolution, blended while the level fades in."""
        level, alpha = self.current
        x = batch
        if x.shape[-1] != self.size:
            raise ValueError(f"ProGAN: the data must be {self.size}x{self.size} images (the networks' full size), "
                             f"got {tuple(x.shape[1:])}")
        if level < self.levels:
            x = F.avg_pool2d(x, 2 ** (self.levels - level))
        if level > 0 and alpha < 1:
            low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
            x = torch.lerp(low, x, alpha)
        return x, None

    def d_extra(self, t, real_logits):
        return self.drift * real_logits.pow(2).mean() if self.drift > 0 else None

    def generate(self, generator, z, y=None):
        generator.sync_stage()  # an EMA copy's buffers are copied in, not its Python mirror
        x = generator(z)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="nearest")
        return x

    def state_dict(self):
        return {"phase": self.phase}

    def load_state_dict(self, state):
        """The checkpoint's phase length wins over the constructor's: the schedule a run started with
        is the one it resumes (the CLI derives `phase` from --steps, which a resume may change)."""
        if "phase" in state:
            self.phase = int(state["phase"])

    def config(self):
        return {"objective": "progan", "phase": self.phase, "drift": self.drift}
