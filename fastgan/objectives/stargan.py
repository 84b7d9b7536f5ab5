"""StarGAN (Choi et al. 2018): one generator G(x, c) translates an image x of any of K domains into
domain c; the discriminator D has a realness head D_src and a domain-classification head D_cls.
With c' the source domain and c a random target:

    D:  min  -D_src(x) + D_src(G(x, c)) + lam_gp GP  + lam_cls CE(D_cls(x), c')
    G:  min  -D_src(G(x, c)) + lam_cls CE(D_cls(G(x, c)), c) + lam_rec |G(G(x, c), c') - x|_1

as the paper's code: WGAN-GP (lam_gp 10, the trainer's gp_weight and loss="wgan"), lam_cls 1,
lam_rec 10, `d_steps` (5) discriminator updates per generator update, each on a fresh batch of
every domain, and the learning rates decayed linearly to 0 over `decay` = (first, last) steps.
`identity` > 0 adds identity * |G(x, c') - x|_1 (translating into its own domain changes nothing),
which the paper does not use; off by default."""
import torch
import torch.nn.functional as F

from .. import ops
from .base import Objective, check_decay, linear_decay
from .gan import RELATIVISTIC, acc


class StarGAN(Objective):
    """Multi-domain translation (see the module docstring). The trainer's generator is a
    StarGenerator-like G(x, domain) and its discriminator returns (realness logits, domain logits);
    data: a fastgan.data.DomainDataset whose domain k is label k (`names`: theirs, for the record)."""

    domains = True
    stats = ("d_loss", "g_loss", "d_adv", "d_cls", "gp", "g_adv", "g_cls", "rec", "identity")

    def __init__(self, *, lam_cls: float = 1.0, lam_rec: float = 10.0, identity: float = 0.0, decay=None,
                 names=None, classifier_steps: int = 1500):
        for name, v in (("lam_cls", lam_cls), ("lam_rec", lam_rec), ("identity", identity)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"StarGAN: argument '{name}' must be a number >= 0, got {v!r}")
        check_decay("StarGAN", decay)
        self.lam_cls, self.lam_rec, self.identity, self.decay = float(lam_cls), float(lam_rec), float(identity), decay
        self.names = None if names is None else list(names)  # the domains' names, recorded for `fastgan sample`
        self.classifier_steps = classifier_steps  # of the evaluation's domain and digit classifiers
        self.data, self.k = None, None

    def bind(self, t):
        k = getattr(t.generator, "num_domains", None)
        if k is None:
            raise ValueError("GANTrainer: StarGAN's generator must say how many domains it translates between "
                             "(num_domains), as fastgan.models.StarGenerator does")
        if t.r1_gamma != 0 or t.loss in RELATIVISTIC:
            raise ValueError(f"GANTrainer: StarGAN uses neither R1 nor a relativistic loss; got "
                             f"{'r1_gamma=' + str(t.r1_gamma) if t.r1_gamma else 'loss=' + t.loss}")
        self.k = k

    def check_data(self, data):
        if len(data.domains) != self.k:
            raise ValueError(f"GANTrainer.fit: the StarGAN generator translates between {self.k} domains; argument "
                             f"'data' has {len(data.domains)} ({', '.join(data.names)})")
        self.data = data

    def progress(self, t):
        return [("d_adv", "d", ".3f"), ("g_adv", "g", ".3f"), ("g_cls", "cls", ".3f"), ("rec", "rec", ".3f")]

    def logged(self, t):
        drop = {"identity"} if self.identity == 0 else set()
        if t.gp_weight == 0:
            drop.add("gp")
        return tuple(s for s in self.stats if s not in drop)

    def lr_factor(self, step: int) -> float:
        """The learning rates' factor at `step` (completed steps): 1, then linear to 0 over `decay`."""
        return linear_decay(self.decay, step)

    def reals_per_step(self, t):
        return t.d_steps * self.k  # a batch of each domain per discriminator update

    @staticmethod
    def batch(batches):
        """The next batch of every domain -> (images, their domains)."""
        xs = next(batches)
        x = torch.cat(xs)
        c = torch.cat([torch.full((len(b),), k, dtype=torch.long, device=x.device) for k, b in enumerate(xs)])
        return x, c

    def targets(self, c_org):
        """The target domain of each image: the batch's own domains shuffled (the paper's code), so
        every domain is a target as often as a source (its own included), from the global RNG."""
        return c_org[torch.randperm(len(c_org), device=c_org.device)]

    def step(self, t, batches):
        f = self.lr_factor(t.step)
        for player in ("g", "d"):
            t.scale_lr(player, f)
        G, D = t.net("generator"), t.net("discriminator")
        kind = t.loss
        zero = torch.zeros((), device=t.device)
        gp = zero
        for _ in range(t.d_steps):
            x, c_org = self.batch(batches)
            c_trg = self.targets(c_org)
            with t.autocast():
                with torch.no_grad():
                    fake = G(x, c_trg)
                src_r, cls_r = D(x)
                src_f, _ = D(fake)
            d_adv = ops.d_loss(acc(src_r).flatten(), acc(src_f).flatten(), kind)
            d_cls = F.cross_entropy(acc(cls_r), c_org)
            ld = d_adv + self.lam_cls * d_cls
            if t.gp_weight > 0:
                with t.autocast():
                    gp = acc(ops.gradient_penalty(lambda v: D(v)[0], x, fake.detach(), weight=t.gp_weight))
                ld = ld + gp
            t.update("d", ld)

        with t.frozen("discriminator"):
            with t.autocast():
                fake = G(x, c_trg)
                src_f, cls_f = D(fake)
                rec_x = G(fake, c_org)
                idt = zero
                if self.identity > 0:
                    idt = (acc(G(x, c_org)) - x).abs().mean()
            g_adv = ops.g_loss(acc(src_f).flatten(), kind)
            g_cls = F.cross_entropy(acc(cls_f), c_trg)
            rec = (acc(rec_x) - x).abs().mean()
            lg = g_adv + self.lam_cls * g_cls + self.lam_rec * rec + self.identity * idt
            t.update("g", lg)
        return {"d_loss": ld, "g_loss": lg, "d_adv": d_adv, "d_cls": d_cls, "gp": gp, "g_adv": g_adv,
                "g_cls": g_cls, "rec": rec, "identity": idt}

    # ---- samples and evaluation
    def generate(self, generator, z, y=None):
        return generator(z, y)  # "z": source images, y: their target domains

    def grid(self, t):
        """samples.png: two held-out images of each domain (rows), each translated into every domain
        (columns, in domain order)."""
        doms = self.data.held_out or self.data.domains
        src = torch.cat([d.x[:2] for d in doms])
        return src.repeat_interleave(self.k, 0), torch.arange(self.k).repeat(len(src)), self.k

    def translate(self, t, x, c, batch: int = 256):
        """Images x into domains c (the EMA generator if kept; eval mode, no grad) -> on the CPU."""
        return t.sample(len(x), z=x, y=c, batch_size=batch)

    def evaluate(self, t, data, out_dir):
        """On the held-out images of every domain translated into every domain (K x K tables, rows:
        source, columns: target): `domain_table`, the percent a domain classifier trained on the
        training images (`classifier_steps` Adam steps, cached) assigns to the target domain, and,
        when every domain is labelled, `class_table`, the percent whose digit a classifier trained on
        the target domain reads as the source image's; `domain_acc` and `class_acc` are their means
        over source != target, `cls_ceiling` the digit classifiers' own mean accuracy on held-out
        images, `rec` the L1 error of translating there and back. Writes translation.png: per row a
        source, then its K translations."""
        from ..train.metrics import train_feature_net, _features
        held = data.held_out
        if held is None:
            return {}
        k = self.k
        labelled = all(d.y is not None for d in held + data.domains)
        dom_net = train_feature_net(torch.cat([d.x for d in data.domains]).float(),
                                    torch.cat([torch.full((len(d),), i) for i, d in enumerate(data.domains)]),
                                    steps=self.classifier_steps)
        digit_nets = [train_feature_net(d.x.float(), d.y, steps=self.classifier_steps)
                      for d in data.domains] if labelled else None
        dom_t, cls_t, rec, pics = [], [], [], []
        for s in range(k):
            x = held[s].x
            outs = [self.translate(t, x, torch.full((len(x),), c)) for c in range(k)]
            dom_t.append([100.0 * float((_features(dom_net, f)[1] == c).double().mean()) for c, f in enumerate(outs)])
            if labelled:
                cls_t.append([100.0 * float((_features(digit_nets[c], f)[1] == held[s].y).double().mean())
                              for c, f in enumerate(outs)])
            for c in range(k):
                if c != s:
                    back = self.translate(t, outs[c].to(x.dtype), torch.full((len(x),), s))
                    rec.append(float((back.double() - x.double()).abs().mean()))
            for i in range(min(2, len(x))):
                pics += [x[i:i + 1].float()] + [o[i:i + 1] for o in outs]
        off = [(s, c) for s in range(k) for c in range(k) if s != c]
        out = {"domain_acc": sum(dom_t[s][c] for s, c in off) / len(off)}
        if labelled:
            out["class_acc"] = sum(cls_t[s][c] for s, c in off) / len(off)
            out["cls_ceiling"] = sum(100.0 * float((_features(n, h.x.float())[1] == h.y).double().mean())
                                     for n, h in zip(digit_nets, held)) / k
        out.update({"rec": sum(rec) / len(rec), "domains": list(data.names), "domain_table": dom_t})
        if labelled:
            out["class_table"] = cls_t
        if out_dir and pics:
            import os
            from ..train.report import save_image_grid
            save_image_grid(torch.cat(pics), os.path.join(out_dir, "translation.png"), nrow=k + 1)
        return out

    def config(self):
        return {"objective": "stargan", "lam_cls": self.lam_cls, "lam_rec": self.lam_rec, "identity": self.identity,
                "decay": None if self.decay is None else list(self.decay),
                "domains": self.names}
