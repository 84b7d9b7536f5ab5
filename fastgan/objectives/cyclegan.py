"""CycleGAN (Zhu et al. 2017): unpaired translation between domains A and B by two generators,
G: A -> B (the trainer's "generator") and F: B -> A ("g_ba"), and two discriminators, D_B (the
trainer's "discriminator", judging B) and D_A ("d_a"), tied by cycle consistency:

    G, F:     min  L_gan(D_B(G(a))) + L_gan(D_A(F(b)))
                   + lam |F(G(a)) - a|_1 + lam |G(F(b)) - b|_1 + identity lam (|G(b) - b|_1 + |F(a) - a|_1)
    D_A, D_B: min  d_loss(D_B(b), D_B(pool_B(G(a)))) + d_loss(D_A(a), D_A(pool_A(F(b))))

as the paper's code: LSGAN losses on PatchGAN logit maps (G's term MSE(D(G(a)), 1), which is
2 x fastgan's lsgan g_loss), lam 10, identity 0.5, the generators updated first, the
discriminators on fakes drawn from pools of 50 past ones, and the learning rates constant then
decayed linearly to 0 over `decay` = (first, last) steps."""
import torch

from .. import ops
from .base import Objective, check_decay, linear_decay
from .gan import RELATIVISTIC, acc


class ImagePool:
    """Shrivastava et al. 2017's history of generated images: until `size` are stored, a query returns
    its images and stores them; then each image, with probability 1/2, is swapped for a random
    stored one (returned instead, the new one stored in its place). Its RNG is its own and saved.
    Under torchrun each process keeps its own pools and checkpoints hold rank 0's, so a resumed
    multi-process run restarts every rank from rank 0's pools (single process: exact)."""

    def __init__(self, size: int = 50, seed: int = 0):
        self.size, self.images, self.count = size, None, 0
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.size == 0:
            return x
        if self.images is None:
            self.images = x.new_zeros((self.size,) + tuple(x.shape[1:]))
        out = x.clone()
        for i in range(x.shape[0]):
            if self.count < self.size:
                self.images[self.count] = x[i]
                self.count += 1
            elif float(torch.rand((), generator=self.gen)) < 0.5:
                j = int(torch.randint(self.size, (), generator=self.gen))
                out[i] = self.images[j]
                self.images[j] = x[i]
        return out

    def state_dict(self):
        return {"images": None if self.images is None else self.images.cpu(), "count": self.count,
                "gen": self.gen.get_state()}

    def load_state_dict(self, s, device):
        self.images = None if s["images"] is None else s["images"].to(device)
        self.count = int(s["count"])
        self.gen.set_state(s["gen"])


class CycleGAN(Objective):
    """Two-domain translation (see the module docstring). g_ba: F (B -> A); d_a: D_A. The trainer's
    generator is G (A -> B) and its discriminator D_B; data: a fastgan.data.DomainDataset of two
    domains (A first)."""

    domains = True
    stats = ("d_loss", "g_loss", "g_gan", "cycle", "identity", "d_real", "d_fake")

    def __init__(self, g_ba, d_a, *, lam: float = 10.0, identity: float = 0.5, pool: int = 50, decay=None,
                 classifier_steps: int = 1500):
        for name, v in (("lam", lam), ("identity", identity)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"CycleGAN: argument '{name}' must be a number >= 0, got {v!r}")
        if not (isinstance(pool, int) and not isinstance(pool, bool) and pool >= 0):
            raise ValueError(f"CycleGAN: argument 'pool' must be an int >= 0, got {pool!r}")
        check_decay("CycleGAN", decay)
        self.g_ba, self.d_a = g_ba, d_a
        self.lam, self.identity, self.pool_size, self.decay = float(lam), float(identity), pool, decay
        self.pools, self.data, self.device = None, None, None
        self.classifier_steps = classifier_steps  # of the evaluation's per-domain digit classifiers

    def networks(self):
        return {"g_ba": self.g_ba, "d_a": self.d_a}

    def players(self):
        return {"g": ("generator", "g_ba"), "d": ("discriminator", "d_a")}

    def bind(self, t):
        unused = [f"{name}={v}" for name, v, off in (("r1_gamma", t.r1_gamma, 0), ("gp_weight", t.gp_weight, 0),
                                                     ("d_steps", t.d_steps, 1)) if v != off]
        if unused or t.loss in RELATIVISTIC:
            raise ValueError("GANTrainer: CycleGAN uses neither R1, WGAN-GP, several D steps nor a relativistic "
                             f"loss (its step has none of them); got {', '.join(unused) or 'loss=' + t.loss}")
        self.pools = [ImagePool(self.pool_size, t.seed + 11), ImagePool(self.pool_size, t.seed + 13)]
        self.device = t.device

    def check_data(self, data):
        if len(data.domains) != 2:
            raise ValueError(f"GANTrainer.fit: CycleGAN translates between two domains; argument 'data' has "
                             f"{len(data.domains)} ({', '.join(data.names)})")
        self.data = data  # for the sample grid's source images

    def progress(self, t):
        return [("d_loss", "d", ".3f"), ("g_gan", "g", ".3f"), ("cycle", "cycle", ".3f"), ("d_real", "D(x)", ".2f")]

    def lr_factor(self, step: int) -> float:
        """The learning rates' factor at `step` (completed steps): 1, then linear to 0 over `decay`."""
        return linear_decay(self.decay, step)

    def reals_per_step(self, t):
        return 2  # a batch of each domain

    def step(self, t, batches):
        a, b = next(batches)
        f = self.lr_factor(t.step)
        for player in ("g", "d"):
            t.scale_lr(player, f)
        G, F, D_B, D_A = t.net("generator"), t.net("g_ba"), t.net("discriminator"), t.net("d_a")
        kind = t.loss
        gscale = 2.0 if kind == "lsgan" else 1.0  # the paper's MSE(D(G(a)), 1) is twice lsgan's g_loss
        zero = torch.zeros((), device=t.device)
        # ---- G and F (the discriminators frozen)
        with t.frozen("discriminator", "d_a"):
            with t.autocast():
                fake_b, fake_a = G(a), F(b)
                rec_a, rec_b = F(fake_b), G(fake_a)
                lb, la = D_B(fake_b), D_A(fake_a)
                idt = zero
                if self.identity > 0:
                    idt = (acc(G(b)) - b).abs().mean() + (acc(F(a)) - a).abs().mean()
            g_gan = gscale * (ops.g_loss(acc(lb).flatten(), kind) + ops.g_loss(acc(la).flatten(), kind))
            cycle = (acc(rec_a) - a).abs().mean() + (acc(rec_b) - b).abs().mean()
            lg = g_gan + self.lam * cycle + self.lam * self.identity * idt
            t.update("g", lg)
        # ---- D_B and D_A on pooled fakes
        pb, pa = self.pools[1].query(fake_b), self.pools[0].query(fake_a)
        with t.autocast():
            rb, fb, ra, fa = D_B(b), D_B(pb), D_A(a), D_A(pa)
        ld_b, st = ops.d_loss(acc(rb).flatten(), acc(fb).flatten(), kind, return_stats=True)
        ld_a = ops.d_loss(acc(ra).flatten(), acc(fa).flatten(), kind)
        ld = ld_b + ld_a
        t.update("d", ld)
        return {"d_loss": ld, "g_loss": lg, "g_gan": g_gan, "cycle": cycle, "identity": idt,
                "d_real": st["d_real"], "d_fake": st["d_fake"]}

    def logged(self, t):
        return self.stats if self.identity > 0 else tuple(s for s in self.stats if s != "identity")

    # ---- samples and evaluation
    def generate(self, generator, z, y=None):
        return generator(z)  # "z" is a batch of source images

    def grid(self, t):
        """samples.png: translations A -> B of 16 held-out A images."""
        src = (self.data.held_out or self.data.domains)[0].x[:16]
        return src, None, 8

    def translate(self, t, net: str, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Images x through network `net` (eval mode, no grad) -> on the CPU."""
        m = t.nets[net]
        was = m.training
        m.eval()
        try:
            with torch.no_grad():
                return torch.cat([m(x[i:i + batch].to(t.device)).cpu() for i in range(0, len(x), batch)])
        finally:
            m.train(was)

    def evaluate(self, t, data, out_dir):
        """On the held-out images of both domains: the class accuracy of the translations under a
        classifier trained on the target domain's training images (`classifier_steps` Adam steps,
        cached) (`acc_ab`, `acc_ba`; its own
        accuracy on held-out target images is `cls_b` / `cls_a`, the ceiling), and the L1 cycle
        reconstruction error (`cycle_a`, `cycle_b`); writes translation.png (rows: source,
        translation, reconstruction)."""
        from ..train.metrics import train_feature_net, _features
        held = data.held_out
        if held is None or any(d.y is None for d in held + data.domains):
            return {}
        out, pics = {}, []
        for src, dst, (there, back), tag in ((0, 1, ("generator", "g_ba"), "ab"), (1, 0, ("g_ba", "generator"), "ba")):
            net = train_feature_net(data.domains[dst].x.float(), data.domains[dst].y, steps=self.classifier_steps)
            x = held[src].x
            fake = self.translate(t, there, x)
            rec = self.translate(t, back, fake)
            pred = _features(net, fake.float())[1]
            out[f"acc_{tag}"] = 100.0 * float((pred == held[src].y).double().mean())
            out[f"cls_{'b' if dst == 1 else 'a'}"] = 100.0 * float(
                (_features(net, held[dst].x.float())[1] == held[dst].y).double().mean())
            out[f"cycle_{'a' if src == 0 else 'b'}"] = float((rec.double() - x.double()).abs().mean())
            pics += [x[:8].float(), fake[:8].float(), rec[:8].float()]
        if out_dir:
            import os
            from ..train.report import save_image_grid
            save_image_grid(torch.cat(pics), os.path.join(out_dir, "translation.png"), nrow=8)
        return out

    def config(self):
        return {"objective": "cyclegan", "lam": self.lam, "identity": self.identity, "pool": self.pool_size,
                "decay": None if self.decay is None else list(self.decay),
                "g_ba": dict(getattr(self.g_ba, "config", {}))}  # for `fastgan sample --reverse`

    def state_dict(self):
        return {"pools": [p.state_dict() for p in self.pools]} if self.pools else {}

    def load_state_dict(self, state):
        if state and self.pools:
            for p, s in zip(self.pools, state["pools"]):
                p.load_state_dict(s, self.device)
