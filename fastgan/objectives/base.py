"""The contract between GANTrainer (the loop machinery) and an objective (what differs between
GAN variants).

The trainer owns everything that is the same for every variant: devices, processes (DDP),
optimisers, AMP scalers, EMA of the generator, checkpoints and exact resume, signals, the
non-finite guard, logging, samples and evaluation. An objective owns one training step: what a
batch holds, how the networks are called, which losses are minimised by which player, and which
scalars are logged. It reaches the trainer only through this small API:

    t.net(name)          the network to call (DDP-wrapped / compiled as the trainer set it up)
    t.autocast()         the AMP context for network calls (losses are taken outside it, in fp32)
    t.noise(n)           latent noise (n, z_dim) on the trainer's device
    t.frozen(*names)     a context: those networks get no weight gradients (single process: their
                         parameters are frozen; under DDP: no all-reduce), as D in G's update
    t.update(player, loss)   zero_grad, backward (scaled under fp16), optimiser step of `player`
    t.scale_lr(player, f) that player's learning rate: f times its initial one
    t.augmented(x)       x as D sees it (GANTrainer(augment=...): DiffAugment/ADA; else x itself)
    t.observe_reals(l)   D's logits on the augmented reals, for ADA's tuning
    t.step, t.device, t.world and the game settings (t.loss, t.d_steps, t.r1_gamma, t.r1_every,
    t.r2_gamma, t.gp_weight, t.pack)
"""
import torch
from torch import nn


class Objective:
    """Base class of the objectives; subclasses set `stats` and implement `step`."""

    #: the per-step scalars `step` returns, in the order they are summed and logged
    stats: tuple = ()
    #: whether batches are (x, y) pairs (labels) rather than x alone
    labels: bool = False
    #: whether the data are unpaired domains (fastgan.data.DomainDataset; a batch is one tensor per
    #: domain), as translation models train on
    domains: bool = False
    #: whether `step` applies R2 (the trainer's r2_gamma) to the fakes; the trainer refuses
    #: r2_gamma > 0 otherwise
    r2: bool = False
    #: whether `step` packs samples for D (the trainer's pack, PacGAN); the trainer refuses pack > 1
    #: otherwise
    pack: bool = False
    #: whether `step` passes D's image inputs through t.augmented (the trainer's augment); the
    #: trainer refuses augment otherwise
    augment: bool = False

    def networks(self) -> dict:
        """Networks besides the generator and the discriminator (e.g. InfoGAN's Q head), by name.
        The trainer moves them to its device, DDP-wraps, compiles, saves and restores them."""
        return {}

    def players(self) -> dict:
        """player -> the names of the networks its optimiser updates. "g" and "d" use the
        trainer's g_optimizer / d_optimizer (lr_g / lr_d); any other player gets Adam(lr_g)."""
        return {"g": ("generator",), "d": ("discriminator",)}

    def bind(self, trainer) -> None:
        """Check the trainer's networks and settings once they are built (raise ValueError)."""

    def check_data(self, data) -> None:
        """Check the training data once, when fit starts (raise ValueError naming 'data')."""

    def step(self, t, batches) -> dict:
        """One training step: the updates of every player. Returns {name: 0-dim tensor} for each
        of `stats` (not synchronised: the trainer averages them at each log)."""
        raise NotImplementedError

    def logged(self, t) -> tuple:
        """The stats that appear in the log (default: all)."""
        return self.stats

    def progress(self, t) -> list:
        """What the progress line shows: (stat, label, format) for up to four logged stats."""
        return [(k, k, ".3f") for k in self.logged(t)[:4]]

    def evaluate(self, t, data, out_dir) -> dict:
        """Metrics beyond the samples' (which the trainer's evaluator scores), e.g. the AAE's latent
        statistics; may write pictures into out_dir. Called on rank 0 at each evaluation."""
        return {}

    def reals_per_step(self, t) -> int:
        """Batches of real data one step consumes (for the images/s figure)."""
        return 1

    def generate(self, generator: nn.Module, z, y=None):
        """Samples from `generator` for latent z (and labels y, for conditional objectives)."""
        return generator(z)

    def sample_labels(self, n: int):
        """Labels for n evaluation samples (conditional objectives: the classes in turn), or None."""
        return None

    def grid(self, t):
        """(z, labels, columns) of the samples.png grid: the trainer's fixed noise, square."""
        return t.fixed_z, self.sample_labels(len(t.fixed_z)), None

    def config(self) -> dict:
        """Settings recorded in the trainer's config (and checkpoints) beside the trainer's own."""
        return {}

    def state_dict(self) -> dict:
        """State that must survive a resume (e.g. an image pool, an adaptive probability)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def class_rows(t, classes: int, cols: int = 8, max_rows: int = 16):
    """A samples.png grid with one row per class (the first max_rows classes) and the same noise down
    each column, so a row shows one class and a column one style: (z, labels, cols)."""
    rows = min(classes, max_rows)
    return (t.fixed_z[:cols].repeat(rows, 1), torch.arange(rows).repeat_interleave(cols), cols)


def check_decay(cls: str, decay):
    """Validate a (first step, last step) learning-rate decay window (None: no decay)."""
    if decay is not None and not (len(decay) == 2 and 0 <= decay[0] < decay[1]):
        raise ValueError(f"{cls}: argument 'decay' must be (first step, last step) with first < last, got {decay!r}")


def linear_decay(decay, step: int) -> float:
    """The learning rates' factor at `step` (completed steps): 1, then linear to 0 over `decay` =
    (first, last), as CycleGAN's and StarGAN's code (None: always 1)."""
    if decay is None or step < decay[0]:
        return 1.0
    first, last = decay
    return max(0.0, (last - step) / (last - first))
