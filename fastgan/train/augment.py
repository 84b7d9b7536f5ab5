"""The discriminator's input augmentation for GANTrainer(augment=...): DiffAugment (Zhao et al.
2020) at a fixed probability, or with the probability tuned by ADA's overfitting heuristic (Karras
et al. 2020). Reals and fakes go through the same augmentation (parameters drawn per sample) in D's
step, fakes again in G's step, so that D never sees an image G is not judged on and gradients
reach G through the augmentation (fastgan.ops.diff_augment, one fused kernel each way).

ADA: every `interval` steps, r = E[sign(D(augmented reals))] over those steps (all processes), and
p moves by sign(r - target) * (images seen in the interval) / (kimg * 1000), clamped to [0, 1]: D
growing confident on reals (r above the target, 0.6 in the paper) means it overfits, so p rises.
"""
import torch
import torch.distributed as dist

from ..ops.diff_augment import POLICIES, _policy, diff_augment

MODES = ("diffaug", "ada")


class Augment:
    """`mode` diffaug: every transform of `policy` with probability `p`; ada: p starts at 0 and is
    tuned toward `target` at a rate of `kimg` thousand images for a change of 1."""

    def __init__(self, mode: str, *, policy: str = "color,translation,cutout", p: float = 1.0, target: float = 0.6,
                 kimg: float = 100.0, interval: int = 4):
        fn = "GANTrainer"
        if mode not in MODES:
            raise ValueError(f"{fn}: argument 'augment' must be one of {', '.join(MODES)} or None; got {mode!r}")
        _policy(fn, policy)
        for name, v, ok in (("augment_p", p, lambda v: 0 <= v <= 1), ("ada_target", target, lambda v: 0 < v < 1),
                            ("ada_kimg", kimg, lambda v: v > 0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                raise ValueError(f"{fn}: argument '{name}' is out of range: {v!r} (augment_p in [0, 1], ada_target "
                                 "in (0, 1), ada_kimg > 0)")
        self.mode, self.policy, self.target, self.kimg, self.interval = mode, policy, float(target), float(kimg), interval
        self.p = 0.0 if mode == "ada" else float(p)
        self._sign = self._count = None

    def config(self) -> dict:
        out = {"augment": self.mode, "augment_policy": self.policy}
        out.update({"ada_target": self.target, "ada_kimg": self.kimg} if self.mode == "ada" else {"augment_p": self.p})
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"GANTrainer: augment needs images (N, C, H, W) for D; got samples of shape "
                             f"{tuple(x.shape)} (drop 'augment' for vector data)")
        return diff_augment(x, self.policy, self.p) if self.p > 0 else x

    def observe(self, real_logits: torch.Tensor) -> None:
        """ADA: accumulate the signs of D's logits on (augmented) reals (on the device, no sync)."""
        if self.mode != "ada":
            return
        s = real_logits.detach().float().sign().sum()
        n = torch.tensor(float(real_logits.numel()), device=s.device)
        self._sign = s if self._sign is None else self._sign + s
        self._count = n if self._count is None else self._count + n

    def adjust(self, step: int, images_per_step: int, world: int) -> None:
        """ADA, after a step: every `interval` steps, move p (the same on every process)."""
        if self.mode != "ada" or step % self.interval or self._sign is None:
            return
        both = torch.stack([self._sign, self._count])
        if world > 1:
            dist.all_reduce(both)
        r = float(both[0] / both[1].clamp_min(1))
        sign = (r > self.target) - (r < self.target)
        self.p = min(1.0, max(0.0, self.p + sign * images_per_step * world * self.interval / (self.kimg * 1000)))
        self._sign = self._count = None
        self.last_r = r

    def state_dict(self) -> dict:
        return {"p": self.p, "sign": None if self._sign is None else float(self._sign),
                "count": None if self._count is None else float(self._count)}

    def load_state_dict(self, s: dict, device) -> None:
        self.p = float(s.get("p", self.p))
        self._sign = None if s.get("sign") is None else torch.tensor(s["sign"], device=device)
        self._count = None if s.get("count") is None else torch.tensor(s["count"], device=device)


__all__ = ["Augment", "MODES", "POLICIES"]
