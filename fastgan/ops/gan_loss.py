"""Fused GAN losses: the D loss on real and fake logits and the G loss on fake logits, each one
kernel forward (loss + d loss / d logits, saved) and one kernel backward (that gradient scaled by
the incoming one), numerically stable at any logit and accumulated in fp32 for fp16/bf16 logits.

Ops (csrc/gan_loss): `fastgan::gan_d_loss` -> (loss, stats, grad_real, grad_fake),
`fastgan::gan_g_loss` -> (loss, grad_fake, grad_real), `fastgan::gan_loss_backward`.
The loss is fp32 (fp64 for fp64 logits). Under autocast nothing is cast: the kernels already read
fp16/bf16 logits and compute in fp32.

The losses are differentiable twice: the saved gradient is an output of the forward op, so a
double backward (e.g. a penalty on d loss / d x) comes back to the forward op, whose backward then
applies the Hessian of the loss. Autograd is registered in C++, not with register_autograd: a loss
is microseconds of kernel, and the Python autograd path would cost several times that per call.
"""
import math

import torch

from . import reference
from ._checks import check_choice, check_tensor
from ._verify import verified

KINDS = ("ns", "minimax", "hinge", "wgan", "lsgan", "rals", "rpgan")
RELATIVISTIC = ("rals", "rpgan")  # the kinds whose G loss reads the real logits too
REDUCTIONS = ("mean", "sum")


def _check_logits(fn, name, t):
    check_tensor(fn, name, t)
    if t.numel() == 0:
        raise ValueError(f"{fn}: argument '{name}' is an empty batch (shape {tuple(t.shape)}); "
                         "a loss needs at least one logit")


def _check_device(fn, name, t, ref_name, ref):
    if t.device != ref.device:
        raise ValueError(f"{fn}: argument '{name}' is on {t.device} but '{ref_name}' is on {ref.device}; "
                         "move them to the same device")


def _check_pairs(fn, name, t, ref_name, ref):
    if t.shape != ref.shape:
        raise ValueError(f"{fn}: kind 'rpgan' pairs real and fake logits one to one, so argument '{name}' "
                         f"must have the shape of '{ref_name}': got {tuple(t.shape)} and {tuple(ref.shape)}")


def _check_label(fn, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TypeError(f"{fn}: argument '{name}' must be a finite number, got {v!r}")


def _promote(a, b):
    """Logits of two dtypes are brought to the wider one (the op takes one dtype)."""
    if a.dtype == b.dtype:
        return a, b
    t = torch.promote_types(a.dtype, b.dtype)
    return a.to(t), b.to(t)


@verified("d_loss", reference.d_loss, accumulates=True)
def d_loss(real_logits, fake_logits, kind="ns", *, reduction="mean", real_label=1.0, fake_label=0.0,
           return_stats=False):
    """Discriminator loss: reduce(real terms) + reduce(fake terms), one kernel each way.

    kind: ns / minimax (BCE on real_label and fake_label), hinge, wgan, lsgan, rals (relativistic
    average), rpgan (relativistic pairing, RpGAN / R3GAN: softplus(fake_i - real_i) over pairs).
    reduction: "mean" (mean over each batch, or over the pairs) or "sum". Logits of any shape, batch
    first; real and fake batches may differ in size, except for rpgan (the same shape).
    real_label/fake_label (ns, minimax) give one-sided label smoothing. return_stats=True returns (loss, {"d_real": mean sigmoid(real),
    "d_fake": mean sigmoid(fake)}) as tensors from the same pass (no host synchronisation).
    """
    fn = "fastgan.ops.d_loss"
    _check_logits(fn, "real_logits", real_logits)
    _check_logits(fn, "fake_logits", fake_logits)
    check_choice(fn, "kind", kind, KINDS)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    _check_label(fn, "real_label", real_label)
    _check_label(fn, "fake_label", fake_label)
    _check_device(fn, "fake_logits", fake_logits, "real_logits", real_logits)
    if kind == "rpgan":
        _check_pairs(fn, "fake_logits", fake_logits, "real_logits", real_logits)
    r, f = _promote(real_logits, fake_logits)
    loss, stats, _, _ = torch.ops.fastgan.gan_d_loss(r, f, kind, reduction, float(real_label),
                                                     float(fake_label), bool(return_stats))
    if return_stats:
        return loss, {"d_real": stats[0], "d_fake": stats[1]}
    return loss


@verified("g_loss", reference.g_loss, accumulates=True)
def g_loss(fake_logits, kind="ns", *, real_logits=None, reduction="mean"):
    """Generator loss on the fake logits, one kernel each way.

    kind: ns (softplus(-fake), non-saturating), minimax (-softplus(fake) = log(1 - D(G(z)))),
    hinge and wgan (-fake), lsgan ((fake - 1)^2 / 2), rals and rpgan (the D loss with real and fake
    swapped; they need real_logits, of fake_logits' shape for rpgan). real_logits is ignored by the
    other kinds.
    """
    fn = "fastgan.ops.g_loss"
    _check_logits(fn, "fake_logits", fake_logits)
    check_choice(fn, "kind", kind, KINDS)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    real = None
    if kind in RELATIVISTIC:
        if real_logits is None:
            raise ValueError(f"{fn}: kind '{kind}' needs argument 'real_logits' (the relativistic loss "
                             "compares fake logits with real ones)")
        _check_logits(fn, "real_logits", real_logits)
        _check_device(fn, "real_logits", real_logits, "fake_logits", fake_logits)
        if kind == "rpgan":
            _check_pairs(fn, "real_logits", real_logits, "fake_logits", fake_logits)
        fake_logits, real = _promote(fake_logits, real_logits)
    elif real_logits is not None:
        check_tensor(fn, "real_logits", real_logits)
    return torch.ops.fastgan.gan_g_loss(fake_logits, real, kind, reduction)[0]


# ---- fake kernels ------------------------------------------------------------------------------
def _acc(dtype):
    return torch.promote_types(dtype, torch.float32)


def _check_paired_fake(t, other, arg, other_arg):
    """The op's own rpgan shape check (csrc/gan_loss/gan_loss.h check_paired), for traced calls."""
    torch._check(tuple(t.shape) == tuple(other.shape), lambda: (
        f"fastgan: argument '{arg}': the rpgan loss pairs real and fake logits one to one, so '{arg}' must have "
        f"the shape of '{other_arg}': got {list(t.shape)} and {list(other.shape)}"))


@torch.library.register_fake("fastgan::gan_d_loss")
def _d_loss_fake(real, fake, kind, reduction, real_label, fake_label, stats):
    if kind == "rpgan":
        _check_paired_fake(fake, real, "fake", "real")
    a = _acc(real.dtype)
    return (real.new_empty((), dtype=a), real.new_empty((2 if stats else 0,), dtype=a),
            real.new_empty(real.shape, dtype=a), fake.new_empty(fake.shape, dtype=a))


@torch.library.register_fake("fastgan::gan_g_loss")
def _g_loss_fake(fake, real, kind, reduction):
    if kind in RELATIVISTIC:
        torch._check(real is not None, lambda: f"fastgan: argument 'real': the {kind} generator loss needs the "
                     "real logits")
        if kind == "rpgan":
            _check_paired_fake(real, fake, "real", "fake")
    a = _acc(fake.dtype)
    gr = real.new_empty(real.shape, dtype=a) if (kind in RELATIVISTIC and real is not None) \
        else fake.new_empty((0,), dtype=a)
    return fake.new_empty((), dtype=a), fake.new_empty(fake.shape, dtype=a), gr


@torch.library.register_fake("fastgan::gan_loss_backward")
def _loss_backward_fake(grad, g0, g1, dtype):
    return g0.new_empty(g0.shape, dtype=dtype), g1.new_empty(g1.shape, dtype=dtype)


# Autograd (first and second order) is registered in C++ (csrc/gan_loss/gan_loss_cpu.cpp): the
# Python autograd path would cost several times the kernel time of a loss on every call.
