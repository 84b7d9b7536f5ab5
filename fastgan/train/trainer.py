"""GANTrainer: the alternating updates of the GAN paper (discriminator first, then generator) with
fastgan's fused losses, and the machinery a week-long run needs: atomic checkpoints with every RNG
(exact resume), a guard against non-finite losses, signals, AMP, EMA, torch.compile and DDP."""
import contextlib
import copy
import json
import os
import random
import re
import signal
import sys
import threading
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..ops import _choose
from ..ops.gan_loss import KINDS as LOSS_KINDS
from . import checkpoint as ckpt
from .data import make_batches


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss (without an fp16 scaler to skip the step)."""


def _check_pos(name, v, *, allow_zero=False, kind=(int,)):
    ok = isinstance(v, kind) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ValueError(f"GANTrainer: argument '{name}' must be a {'non-negative' if allow_zero else 'positive'} "
                         f"number, got {v!r}")


class GANTrainer:
    """Trains `generator` (z (N, z_dim) -> sample) against `discriminator` (sample -> logits).

    What one step does is the `objective`'s (fastgan.objectives; the plain GAN by default): with
    it, `d_steps` discriminator updates, each on a real batch and a fresh fake batch (+ R1 on the
    reals when `r1_gamma` > 0 and R2 on the fakes when `r2_gamma` > 0, both every `r1_every` steps,
    or + WGAN-GP when `gp_weight` > 0), then one generator update on the last fake batch (the
    discriminator frozen). `loss` is one of ns, minimax, hinge, wgan, lsgan, rals, rpgan
    (fastgan.ops.d_loss / g_loss). pack=m (PacGAN): D judges m samples at once, concatenated along
    channels (images) or features (vectors), reals and fakes alike, so D takes m times the samples'
    channels; its logits, losses and penalties are per pack. Networks an objective adds (InfoGAN's Q
    head, an encoder) are placed, wrapped, optimised, saved and restored like G and D.
    augment (images): "diffaug" (DiffAugment: each transform of `augment_policy` applied to every
    sample D sees, reals and fakes alike, with probability `augment_p`) or "ada" (the same, with the
    probability tuned from D's real logits toward `ada_target`, `ada_kimg` thousand images for a
    change of 1; fastgan/train/augment.py). Penalties take the gradient w.r.t. the images before
    augmentation.

    Optimisers: Adam(lr, betas) by default; `g_optimizer` / `d_optimizer` may be an optimizer over
    the model's parameters or a callable `params -> optimizer`.
    amp: None, "bf16" or "fp16" (autocast; fp16 adds a GradScaler per network, whose skipped
    steps are not errors). ema_decay: keep an exponential moving average of the generator.
    compile: torch.compile the two networks. channels_last: default on for CUDA.
    Under torchrun (WORLD_SIZE > 1) the process group is created (nccl on CUDA, gloo on CPU),
    both networks are wrapped in DistributedDataParallel and the data is sharded; `batch_size`
    is per process, and only rank 0 logs, samples and writes checkpoints.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, *, z_dim: int, loss: str = "ns",
                 d_steps: int = 1, lr_g: float = 2e-4, lr_d: float = 2e-4, betas=(0.5, 0.999),
                 g_optimizer=None, d_optimizer=None, r1_gamma: float = 0.0, r1_every: int = 1,
                 r2_gamma: float = 0.0, gp_weight: float = 0.0, ema_decay=None, amp=None, device=None,
                 seed: int = 0, compile: bool = False, channels_last=None, keep_checkpoints: int = 3, objective=None,
                 pack: int = 1, augment=None, augment_policy: str = "color,translation,cutout", augment_p: float = 1.0,
                 ada_target: float = 0.6, ada_kimg: float = 100.0):
        from ..objectives import GAN, Objective
        if objective is None:
            objective = GAN()
        if not isinstance(objective, Objective):
            raise TypeError("GANTrainer: argument 'objective' must be a fastgan.objectives.Objective, "
                            f"got {type(objective).__name__}")
        self.objective = objective
        if not isinstance(generator, nn.Module):
            raise TypeError(f"GANTrainer: argument 'generator' must be an nn.Module, got {type(generator).__name__}")
        if discriminator is not None and not isinstance(discriminator, nn.Module):
            raise TypeError("GANTrainer: argument 'discriminator' must be an nn.Module (or None for an objective "
                            f"without one, as the VAE), got {type(discriminator).__name__}")
        if loss not in LOSS_KINDS:
            raise ValueError(f"GANTrainer: argument 'loss' must be one of {', '.join(LOSS_KINDS)}; got {loss!r}")
        _check_pos("z_dim", z_dim)
        _check_pos("d_steps", d_steps)
        _check_pos("r1_every", r1_every)
        _check_pos("keep_checkpoints", keep_checkpoints)
        _check_pos("pack", pack)
        if pack > 1 and not objective.pack:
            raise ValueError(f"GANTrainer: the {type(objective).__name__} objective does not pack samples; drop 'pack'")
        _check_pos("lr_g", lr_g, kind=(int, float))
        _check_pos("lr_d", lr_d, kind=(int, float))
        _check_pos("r1_gamma", r1_gamma, allow_zero=True, kind=(int, float))
        _check_pos("r2_gamma", r2_gamma, allow_zero=True, kind=(int, float))
        _check_pos("gp_weight", gp_weight, allow_zero=True, kind=(int, float))
        if r2_gamma > 0 and not objective.r2:
            raise ValueError(f"GANTrainer: the {type(objective).__name__} objective does not apply R2; drop 'r2_gamma'")
        if (r1_gamma > 0 or r2_gamma > 0) and gp_weight > 0:
            raise ValueError("GANTrainer: use zero-centred penalties ('r1_gamma', 'r2_gamma') or WGAN-GP "
                             "('gp_weight'), not both")
        if ema_decay is not None and not (isinstance(ema_decay, (int, float)) and 0 <= ema_decay < 1):
            raise ValueError(f"GANTrainer: argument 'ema_decay' must be in [0, 1) or None, got {ema_decay!r}")
        if amp not in (None, "bf16", "fp16"):
            raise ValueError(f"GANTrainer: argument 'amp' must be None, 'bf16' or 'fp16'; got {amp!r}")
        self.augment = None
        if augment is not None:
            if not objective.augment:
                raise ValueError(f"GANTrainer: the {type(objective).__name__} objective does not augment D's inputs; "
                                 "drop 'augment'")
            from .augment import Augment
            self.augment = Augment(augment, policy=augment_policy, p=augment_p, target=ada_target, kimg=ada_kimg)
        self.z_dim, self.loss, self.d_steps = z_dim, loss, d_steps
        self.r1_gamma, self.r1_every, self.gp_weight = float(r1_gamma), r1_every, float(gp_weight)
        self.r2_gamma, self.pack = float(r2_gamma), pack
        self.ema_decay, self.amp, self.seed, self.keep = ema_decay, amp, seed, keep_checkpoints
        self.config = dict(z_dim=z_dim, loss=loss, d_steps=d_steps, lr_g=lr_g, lr_d=lr_d, betas=list(betas),
                           r1_gamma=r1_gamma, r1_every=r1_every, r2_gamma=r2_gamma, gp_weight=gp_weight,
                           ema_decay=ema_decay,
                           amp=amp, seed=seed, compile=compile, pack=pack,
                           **(self.augment.config() if self.augment else {}), **objective.config())

        # ---- processes and device
        self.world, self.rank, self.local_rank = 1, 0, 0
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        if env_world > 1 or (dist.is_available() and dist.is_initialized()):
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if device is None:
                device = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
            if not dist.is_initialized():
                backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
                if backend == "nccl":
                    torch.cuda.set_device(torch.device(device))
                dist.init_process_group(backend)
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"GANTrainer: argument 'device' is not a device: {device!r}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"GANTrainer: argument 'device' is {device!r} but no CUDA device is available")
        if self.device.type == "cuda" and (self.device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"GANTrainer: argument 'device' is {device!r} but there are only "
                             f"{torch.cuda.device_count()} CUDA devices")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.is_main = self.rank == 0

        # ---- RNGs: noise differs per process, data order is shared (then sharded)
        torch.manual_seed(seed + self.rank)
        np.random.seed(seed + self.rank)
        random.seed(seed + self.rank)

        # ---- models: G, D and the objective's own networks, each moved, wrapped and optimised
        extra = objective.networks()
        for name, m in extra.items():
            if name in ("generator", "discriminator") or not isinstance(m, nn.Module):
                raise ValueError(f"GANTrainer: the objective's network {name!r} must be an nn.Module with "
                                 "a name other than generator/discriminator")
        nets = {"generator": generator, "discriminator": discriminator, **extra}
        self.nets = {name: m.to(self.device) for name, m in nets.items() if m is not None}
        self.generator, self.discriminator = self.nets["generator"], self.nets.get("discriminator")
        conv = any(p.dim() == 4 for name, m in self.nets.items() if name != "generator" for p in m.parameters())
        self.channels_last = (self.device.type == "cuda" and conv) if channels_last is None else bool(channels_last)
        if self.channels_last:
            for m in self.nets.values():
                m.to(memory_format=torch.channels_last)
        self.ema = None
        if ema_decay is not None:
            self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        players = objective.players()
        for player, names in players.items():
            unknown = [n for n in names if n not in self.nets]
            if unknown:
                raise ValueError(f"GANTrainer: the objective's player {player!r} names unknown networks {unknown}")
        given = {"g": (g_optimizer, lr_g, "g_optimizer"), "d": (d_optimizer, lr_d, "d_optimizer")}
        self.optimizers = {}
        for player, names in players.items():
            opt, lr, arg = given.get(player, (None, lr_g, f"optimizer of {player!r}"))
            self.optimizers[player] = self._optimizer(opt, [self.nets[n] for n in names], lr, betas, arg)
        self.opt_g, self.opt_d = self.optimizers.get("g"), self.optimizers.get("d")
        wrapped = dict(self.nets)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = {name: DDP(m, device_ids=ids) for name, m in wrapped.items()}
        if compile:
            wrapped = {name: torch.compile(m) for name, m in wrapped.items()}
        self._nets = wrapped
        self._G, self._D = wrapped["generator"], wrapped.get("discriminator")

        # ---- AMP
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[amp]
        self.scalers = {}
        if amp == "fp16":  # one GradScaler per player: a skipped step of one is not the other's
            self.scalers = {player: torch.amp.GradScaler(self.device.type) for player in self.optimizers}
        self.scaler_g, self.scaler_d = self.scalers.get("g"), self.scalers.get("d")

        # ---- state
        self.step = 0
        self.history = []
        self.interrupted = None
        self._data_state = None
        self._bad = torch.full((), -1, dtype=torch.long, device=self.device)  # first non-finite step
        self._sums = torch.zeros(len(objective.stats), device=self.device)
        self._count = 0
        g = torch.Generator(device="cpu").manual_seed(seed + 1_000_003)
        self.fixed_z = torch.randn(64, z_dim, generator=g)
        objective.bind(self)

    # ------------------------------------------------------------------------------------------
    def _optimizer(self, opt, modules, lr, betas, name):
        params = [p for m in modules for p in m.parameters()]
        if opt is None:
            return torch.optim.Adam(params, lr=lr, betas=tuple(float(b) for b in betas))
        if isinstance(opt, torch.optim.Optimizer):
            ids = {id(p) for grp in opt.param_groups for p in grp["params"]}
            if not ids <= {id(p) for p in params}:
                raise ValueError(f"GANTrainer: argument '{name}' optimises tensors that are not this model's "
                                 "parameters (build it after the model, before the trainer moves it)")
            return opt
        if callable(opt):
            return opt(params)
        raise TypeError(f"GANTrainer: argument '{name}' must be an optimizer, a callable or None")

    # ---- the API objectives use (fastgan/objectives/base.py) -----------------------------------
    def net(self, name: str):
        """The network `name` as training calls it (DDP-wrapped and/or compiled)."""
        return self._nets[name]

    def autocast(self):
        """The AMP context for network calls (disabled without amp)."""
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def noise(self, n):
        """Latent noise (n, z_dim) on the trainer's device, from the global RNG."""
        return torch.randn(n, self.z_dim, device=self.device)

    @contextlib.contextmanager
    def frozen(self, *names):
        """No weight gradients for these networks inside the block: a single process freezes their
        parameters (restoring what the user froze), DDP skips their all-reduce (no_sync)."""
        single = self.world == 1
        params = [p for n in names for p in self.nets[n].parameters()]
        was = [p.requires_grad for p in params]
        if single:
            for p in params:
                p.requires_grad_(False)
        with contextlib.ExitStack() as stack:
            for n in names:
                w = self._nets[n]
                if hasattr(w, "no_sync"):
                    stack.enter_context(w.no_sync())
            try:
                yield
            finally:
                if single:
                    for p, r in zip(params, was):
                        p.requires_grad_(r)

    def augmented(self, x):
        """x as D sees it: augmented (GANTrainer(augment=...): a fresh draw per call) or x itself."""
        return x if self.augment is None else self.augment(x)

    def observe_reals(self, real_logits):
        """D's logits on the (augmented) real batch, for ADA's tuning of the probability."""
        if self.augment is not None:
            self.augment.observe(real_logits)

    def update(self, player: str, loss):
        """One optimiser step of `player` on `loss`: zero_grad, backward (scaled under fp16), step."""
        opt, scaler = self.optimizers[player], self.scalers.get(player)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    def scale_lr(self, player: str, factor: float):
        """Set `player`'s learning rate to `factor` times its initial one (schedules computed from
        t.step by an objective, e.g. CycleGAN's linear decay: nothing to save, exact on resume)."""
        for group in self.optimizers[player].param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor

    def _train_step(self, batches):
        out = self.objective.step(self, batches)
        if self.ema is not None:
            self._update_ema()
        self.step += 1
        if self.augment is not None:
            self.augment.adjust(self.step, self._reals_per_step, self.world)
        vals = torch.stack([out[k].detach().float() for k in self.objective.stats])
        self._sums += vals
        self._count += 1
        if not self.scalers:
            bad = ~torch.isfinite(vals).all()
            self._bad = torch.where(bad & (self._bad < 0), torch.full_like(self._bad, self.step), self._bad)

    @torch.no_grad()
    def _update_ema(self):
        g = self.generator
        ep = [p for p in self.ema.parameters()]
        gp = [p.detach() for p in g.parameters()]
        if ep:
            torch._foreach_lerp_(ep, gp, 1.0 - self.ema_decay)
        for b_e, b_g in zip(self.ema.buffers(), g.buffers()):
            b_e.copy_(b_g)

    def _check_finite(self):
        bad = int(self._bad.item())
        if bad >= 0:
            last = ckpt.list_checkpoints(self._ckpt_dir)[-1][1] if self._ckpt_dir and \
                ckpt.list_checkpoints(self._ckpt_dir) else None
            where = f"; the last good checkpoint, {last}, is untouched" if last else "; nothing was saved"
            raise NonFiniteLossError(
                f"non-finite loss (NaN or inf) at step {bad}: training stopped{where}. Lower the learning "
                "rates, add a gradient penalty (r1_gamma, r2_gamma / gp_weight), or use amp='fp16' whose scaler skips "
                "such steps.")

    def _check_packs(self, data, batch_size):
        """pack > 1: every batch must hold whole packs (a DataLoader's own batch size and last batch)."""
        m = self.pack
        if m == 1:
            return
        if not isinstance(data, torch.utils.data.DataLoader):
            if batch_size % m:
                raise ValueError(f"GANTrainer.fit: argument 'batch_size' ({batch_size}) must be a multiple of pack "
                                 f"({m})")
            return
        bs = data.batch_size
        if bs is None:  # a batch_sampler: each batch is checked when packed
            return
        if bs % m:
            raise ValueError(f"GANTrainer.fit: argument 'data' is a DataLoader with batch_size {bs}, not a multiple "
                             f"of pack ({m})")
        try:
            last = 0 if data.drop_last else len(data.dataset) % bs
        except TypeError:  # an iterable dataset without a length
            last = 0
        if last % m:
            raise ValueError(f"GANTrainer.fit: argument 'data' is a DataLoader whose last batch holds {last} samples, "
                             f"not a multiple of pack ({m}); pass drop_last=True")

    # ------------------------------------------------------------------------------------------
    def fit(self, data, steps: int, batch_size: int = 64, *, out_dir=None, log_every: int = 50,
            sample_every: int = 500, checkpoint_every: int = 1000, progress: bool = True, evaluator=None):
        """Train until `self.step == steps` (a resumed trainer continues where it stopped).

        data: a tensor of samples, a Dataset (items `x` or `(x, label)`) or a DataLoader.
        out_dir: where metrics.jsonl, samples.png (fixed noise), curves.png and checkpoints/ go.
        evaluator: a callable fake-samples -> dict of metrics run every `sample_every` steps on
        its `n_samples` attribute's count of samples (default 2,500 points or 1,000 images); by
        default chosen from a fastgan.data.GANDataset (mode coverage or Fréchet distance).
        Returns the history (a list of dicts: one per log, and one per evaluation).
        SIGINT / SIGTERM finish the current step, write a checkpoint and return (`self.interrupted`
        holds the signal number).
        """
        _check_pos("steps", steps, allow_zero=True)
        _check_pos("batch_size", batch_size)
        self._check_packs(data, batch_size)
        self._reals_per_step = batch_size * self.objective.reals_per_step(self)
        for name, v in (("log_every", log_every), ("sample_every", sample_every),
                        ("checkpoint_every", checkpoint_every)):
            _check_pos(name, v)
        self.interrupted = None
        self._ckpt_dir = os.path.join(out_dir, "checkpoints") if out_dir else None
        if out_dir and self.is_main:
            os.makedirs(self._ckpt_dir, exist_ok=True)
            ahead = [s for s, _ in ckpt.list_checkpoints(self._ckpt_dir) if s > self.step]
            if ahead:
                raise ValueError(f"GANTrainer.fit: argument 'out_dir' already holds a checkpoint at step {max(ahead)}, "
                                 f"ahead of this trainer (step {self.step}): resume from it with "
                                 "load_latest(out_dir), or use another out_dir")
            with open(os.path.join(out_dir, "metrics.jsonl"), "w") as f:  # what this trainer has logged
                for r in self.history:
                    f.write(json.dumps(r) + "\n")
        if evaluator is None and self.is_main and out_dir:
            from .metrics import evaluator_for
            with torch.random.fork_rng(devices=[]):  # building it must not move the training RNGs
                evaluator = evaluator_for(data)
        self._modes = getattr(data, "modes", None)
        self._data = data  # for the objective's own evaluation (Objective.evaluate)
        from ..data import DomainDataset
        if isinstance(data, DomainDataset) != self.objective.domains:
            raise ValueError(
                f"GANTrainer.fit: argument 'data' is {'a DomainDataset' if isinstance(data, DomainDataset) else 'one dataset'}"
                f", but this objective trains on {'unpaired domains (fastgan.data.load_domains)' if self.objective.domains else 'one dataset'}")
        self.objective.check_data(data)
        batches = make_batches(data, batch_size, device=self.device, channels_last=self.channels_last,
                               seed=self.seed, rank=self.rank, world=self.world, state=self._data_state,
                               labels=self.objective.labels)
        self._batches = batches
        bar = lines = None
        if progress and self.is_main and self.step < steps:
            if sys.stderr.isatty():
                from tqdm.auto import tqdm
                bar = tqdm(total=steps, initial=self.step, unit="step", dynamic_ncols=True, leave=True)
            else:  # a log file: one line per log record, not thousands of carriage-return redraws
                lines = steps
        stop = {"sig": None}
        old = self._install_signals(stop)
        t0, n0 = time.perf_counter(), self.step
        try:
            while self.step < steps:
                for m in self._nets.values():
                    m.train()
                self._train_step(batches)
                if bar is not None:
                    bar.update(1)
                sig = self._agree_stop(stop["sig"])
                final = self.step == steps or sig is not None
                if self.step % log_every == 0 or final:
                    rec = self._log(batch_size, t0, n0)
                    t0, n0 = time.perf_counter(), self.step
                    shown = [(label, f"{rec[k]:{fmt}}") for k, label, fmt in self.objective.progress(self)
                             if rec and k in rec]
                    if bar is not None and rec:
                        post = {re.sub(r"\W", "", a): b for a, b in shown}  # D(x) -> Dx
                        bar.set_postfix(dict(post, img_s=f"{rec['img_per_s']:.0f}"), refresh=False)
                    elif lines and rec:
                        print(f"step {rec['step']}/{lines}  " + "  ".join(f"{a} {b}" for a, b in shown) +
                              f"  {rec['img_per_s']:.0f} img/s", file=sys.stderr, flush=True)
                if out_dir and (self.step % sample_every == 0 or final):
                    self._check_finite()
                    self._samples_and_eval(out_dir, evaluator)
                if out_dir and (self.step % checkpoint_every == 0 or final):
                    self.save_checkpoint(ckpt.path_for(self._ckpt_dir, self.step))
                if sig is not None:
                    self.interrupted = sig
                    break
            self._check_finite()
        finally:
            self._restore_signals(old)
            if bar is not None:
                bar.close()
            self._data_state = batches.state_dict()
        if self.world > 1:
            dist.barrier()
        return self.history

    def _log(self, batch_size, t0, n0):
        if self._count == 0:
            return None
        s = (self._sums / self._count)
        if self.world > 1:
            dist.all_reduce(s)
            s = s / self.world
        vals = s.tolist()
        dt = max(time.perf_counter() - t0, 1e-9)
        shown = self.objective.logged(self)
        rec = {"step": self.step, **{k: v for k, v in zip(self.objective.stats, vals) if k in shown},
               "img_per_s": (self.step - n0) * batch_size * self.objective.reals_per_step(self) * self.world / dt,
               "s_per_step": dt / max(self.step - n0, 1)}
        for player, scaler in sorted(self.scalers.items()):
            rec[f"scale_{player}"] = scaler.get_scale()
        if self.augment is not None:
            rec["augment_p"] = self.augment.p
        self._sums.zero_()
        self._count = 0
        if self.is_main:
            self._record(rec)
        return rec

    def _record(self, rec):
        self.history.append(rec)
        if self._ckpt_dir:
            with open(os.path.join(os.path.dirname(self._ckpt_dir), "metrics.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")

    def _samples_and_eval(self, out_dir, evaluator):
        if not self.is_main:
            return
        from .report import plot_curves, save_samples
        z, y, cols = self.objective.grid(self)
        fake = self.sample(len(z), z=z, y=y)
        save_samples(fake, os.path.join(out_dir, "samples.png"), self._modes, title=f"step {self.step}", nrow=cols)
        if evaluator is not None:
            n = getattr(evaluator, "n_samples", None) or (2500 if fake.dim() == 2 else 1000)
            g = torch.Generator(device="cpu").manual_seed(self.seed + 7)
            y = self.objective.sample_labels(n)  # conditional: every class equally, and scored per class
            many = self.sample(n, z=torch.randn(n, self.z_dim, generator=g), y=y)
            if fake.dim() == 2:
                save_samples(many, os.path.join(out_dir, "samples.png"), self._modes,
                             title=f"step {self.step}")
            res = evaluator(many) if y is None else evaluator(many, labels=y)
        else:
            res = {}
        with torch.random.fork_rng(devices=[]):  # the objective's metrics must not move the training RNGs
            res.update(self.objective.evaluate(self, self._data, out_dir))
        if evaluator is not None or res:
            self._record({"step": self.step, "eval": res})
        plot_curves(self.history, os.path.join(out_dir, "curves.png"))

    # ---- signals (main thread only) ----------------------------------------------------------
    def _install_signals(self, stop):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if stop["sig"] is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            stop["sig"] = signum
            if self.is_main:
                name = signal.Signals(signum).name
                print(f"\nfastgan: {name} received: finishing step {self.step + 1}, then saving a checkpoint "
                      "and stopping (Ctrl-C again to abort now)", flush=True)

        old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
        return old

    def _restore_signals(self, old):
        for s, h in (old or {}).items():
            signal.signal(s, h)

    def _agree_stop(self, sig):
        if self.world == 1:
            return sig
        t = torch.tensor([sig or 0], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        v = int(t.item())
        return v or None

    # ---- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, ema: bool = True, z=None, y=None, batch_size: int = 500) -> torch.Tensor:
        """n samples on the CPU from the EMA generator (if any and `ema`), in eval mode.
        Uses `z` (n, z_dim) when given, else fresh noise from the global RNG; `y` (n,) are the
        labels of a conditional objective."""
        model = self.ema if (ema and self.ema is not None) else self.generator
        if z is None:
            z = torch.randn(n, self.z_dim, device=self.device)
        was = model.training
        model.eval()
        try:
            out = []
            for i in range(0, n, batch_size):
                zi = z[i:i + batch_size].to(self.device)
                yi = None if y is None else y[i:i + batch_size].to(self.device)
                with self.autocast():
                    out.append(self.objective.generate(model, zi, yi).float().cpu())
        finally:
            model.train(was)
        return torch.cat(out)

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue bit-identically: models, optimizers, EMA, scalers, step,
        data order, every RNG and the measured fused/eager path choices (fastgan.ops._choose), as
        tensors and plain data."""
        from .. import models
        kind = models.kind_of(self.generator)
        if self.discriminator is None or kind != models.kind_of(self.discriminator):
            kind = None
        # per process, in one collective: its random streams and the kernel paths it measured
        rng = dict(_rng_state(), paths=_choose.export())
        if self.world > 1:
            allr = [None] * self.world
            dist.all_gather_object(allr, rng)
            rng = allr
        else:
            rng = [rng]
        return {
            "format": ckpt.FORMAT, "version": ckpt.VERSION, "step": self.step,
            "generator": self.generator.state_dict(),
            "discriminator": None if self.discriminator is None else self.discriminator.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "opt_g": None if self.opt_g is None else self.opt_g.state_dict(),
            "opt_d": None if self.opt_d is None else self.opt_d.state_dict(),
            "scaler_g": None if self.scaler_g is None else self.scaler_g.state_dict(),
            "scaler_d": None if self.scaler_d is None else self.scaler_d.state_dict(),
            # what an objective adds: its networks, the optimisers/scalers of its other players, its state
            "nets": {k: m.state_dict() for k, m in self.nets.items() if k not in ("generator", "discriminator")},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items() if k not in ("g", "d")},
            "scalers": {k: s.state_dict() for k, s in self.scalers.items() if k not in ("g", "d")},
            "objective": self.objective.state_dict(),
            "augment": None if self.augment is None else self.augment.state_dict(),
            "rng": rng, "data": self._batches.state_dict() if getattr(self, "_batches", None) else self._data_state,
            "history": self.history, "config": self.config, "world": self.world,
            "models": _models_meta(kind, self.generator, self.discriminator),
            "torch": str(torch.__version__),
        }

    def save_checkpoint(self, path: str) -> str:
        """Write a checkpoint atomically (rank 0 only; collective under DDP). Refuses when the
        losses went non-finite since the last check, so good files are never replaced by bad."""
        self._check_finite()
        sd = self.state_dict()
        if self.is_main:
            ckpt.atomic_save(sd, path)
            d = os.path.dirname(os.path.abspath(path))
            if os.path.basename(path).startswith("ckpt-"):
                ckpt.prune(d, self.keep)
        return path

    def load_checkpoint(self, path: str):
        """Restore a checkpoint written by save_checkpoint (CheckpointError when unusable)."""
        self.load_state_dict(ckpt.read(path), source=path)
        return self

    def load_latest(self, out_dir: str):
        """Resume from the newest readable checkpoint under out_dir/checkpoints; unreadable newer
        ones are renamed to *.corrupt with a warning. Returns its path, or None when there is none."""
        path, ck = ckpt.latest_good(os.path.join(out_dir, "checkpoints"), quarantine=self.is_main)
        if ck is not None:
            self.load_state_dict(ck, source=path)
        return path

    def load_state_dict(self, ck: dict, source: str = "checkpoint"):
        try:
            self.generator.load_state_dict(ck["generator"])
            if self.discriminator is not None:
                self.discriminator.load_state_dict(ck["discriminator"])
            if self.ema is not None:
                self.ema.load_state_dict(ck["ema"] if ck.get("ema") is not None else ck["generator"])
            for k, o in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
                if o is not None:
                    o.load_state_dict(ck[k])
            for k, m in self.nets.items():
                if k not in ("generator", "discriminator"):
                    m.load_state_dict(ck["nets"][k])
            for k, o in self.optimizers.items():
                if k not in ("g", "d"):
                    o.load_state_dict(ck["optimizers"][k])
            self.objective.load_state_dict(ck.get("objective") or {})
            if self.augment is not None and ck.get("augment"):
                self.augment.load_state_dict(ck["augment"], self.device)
            self.config.update(self.objective.config())  # what the objective restored (e.g. ProGAN's phase)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ckpt.CheckpointError(f"{source}: does not fit this trainer's models/optimizers: "
                                       f"{str(e).splitlines()[0]}") from None
        for k, sc in self.scalers.items():
            saved = ck.get(f"scaler_{k}") if k in ("g", "d") else (ck.get("scalers") or {}).get(k)
            if saved:
                sc.load_state_dict(saved)
        self.step = int(ck["step"])
        self.history = list(ck.get("history") or [])
        self._data_state = ck.get("data")
        self._batches = None
        rng = ck.get("rng") or []
        if len(rng) == self.world and rng[self.rank].get("paths"):  # the fused/eager paths measured before
            try:
                _choose.restore(rng[self.rank]["paths"])
            except (TypeError, ValueError, AttributeError, RuntimeError) as e:
                warnings.warn(f"{source}: the measured kernel paths could not be restored ({e}); they are "
                              "measured again (training continues, not necessarily bit-identically)")
        if len(rng) == self.world:
            _set_rng_state(rng[self.rank])
        else:  # another process count: fresh but deterministic streams
            warnings.warn(f"{source}: saved with {len(rng)} process(es), resumed with {self.world}: "
                          "the random streams restart (training continues, not bit-identically)")
            torch.manual_seed(self.seed + self.rank + 1_000 * self.step)
        self._bad.fill_(-1)
        self._sums.zero_()
        self._count = 0


def _models_meta(kind, generator, discriminator):
    """What `fastgan sample` needs to rebuild the generator (fastgan.models only): the generator's class
    and config, and for a registered G/D pair its kind and D's config (older checkpoints: kind only)."""
    from .. import models
    if type(generator).__name__ not in models.GENERATORS or not hasattr(generator, "config"):
        return None
    meta = {"kind": kind, "generator_class": type(generator).__name__, "generator": dict(generator.config)}
    if kind is not None:
        meta["discriminator"] = dict(discriminator.config)
    return meta


def _rng_state() -> dict:
    st = np.random.get_state()
    py = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": {"keys": torch.from_numpy(st[1].astype(np.int64)), "pos": int(st[2]),
                     "has_gauss": int(st[3]), "gauss": float(st[4])},
           "python": [py[0], list(py[1]), py[2]],
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []}
    return out


def _set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if s.get("cuda") and torch.cuda.is_available():
        states = s["cuda"][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


