"""GANLoss: one object holding the loss kind and options, with .d() for the discriminator and
.g() for the generator (both fused, see fastgan.ops.gan_loss)."""
from torch import nn

from ..ops.gan_loss import KINDS, REDUCTIONS, d_loss, g_loss


class GANLoss(nn.Module):
    """GANLoss(kind="ns", reduction="mean", real_label=1.0, fake_label=0.0, return_stats=False).

        loss = GANLoss("hinge")
        d = loss.d(D(x), D(G(z).detach()))   # discriminator step
        g = loss.g(D(G(z)))                  # generator step (rals, rpgan: loss.g(fake, real_logits))

    real_label/fake_label (one-sided label smoothing) and return_stats apply to .d().
    """

    _OPTIONS = ("reduction", "real_label", "fake_label", "return_stats")

    def __init__(self, kind: str = "ns", **options):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"GANLoss: argument 'kind' must be one of {', '.join(KINDS)}; got {kind!r}")
        unknown = sorted(set(options) - set(self._OPTIONS))
        if unknown:
            raise TypeError(f"GANLoss: unexpected option(s) {', '.join(unknown)}; expected "
                            f"{', '.join(self._OPTIONS)}")
        self.kind = kind
        self.reduction = options.get("reduction", "mean")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"GANLoss: argument 'reduction' must be one of {', '.join(REDUCTIONS)}; "
                             f"got {self.reduction!r}")
        self.real_label = float(options.get("real_label", 1.0))
        self.fake_label = float(options.get("fake_label", 0.0))
        self.return_stats = bool(options.get("return_stats", False))

    def d(self, real_logits, fake_logits):
        """Discriminator loss (and stats if return_stats)."""
        return d_loss(real_logits, fake_logits, self.kind, reduction=self.reduction,
                      real_label=self.real_label, fake_label=self.fake_label,
                      return_stats=self.return_stats)

    def g(self, fake_logits, real_logits=None):
        """Generator loss; rals and rpgan need real_logits."""
        return g_loss(fake_logits, self.kind, real_logits=real_logits, reduction=self.reduction)

    def forward(self, *args, **kwargs):
        raise TypeError("GANLoss has two losses: call .d(real_logits, fake_logits) for the "
                        "discriminator or .g(fake_logits, real_logits=None) for the generator")

    def extra_repr(self) -> str:
        s = f"kind={self.kind!r}, reduction={self.reduction!r}"
        if (self.real_label, self.fake_label) != (1.0, 0.0):
            s += f", real_label={self.real_label}, fake_label={self.fake_label}"
        if self.return_stats:
            s += ", return_stats=True"
        return s
