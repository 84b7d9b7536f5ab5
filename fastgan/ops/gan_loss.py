"""Fused GAN losses: the D loss on real and fake logits and the G loss on fake logits, each one
kernel forward (loss + d loss / d logits, saved) and one kernel backward (that gradient scaled by
the incoming one), numerically stable at any logit and accumulated in fp32 for fp16/bf16 logits.

Ops (csrc/gan_loss): `fastgan::gan_d_loss` -> (loss, stats, grad_real, grad_fake),
`fastgan::gan_g_loss` -> (loss, grad_fake, grad_real), `fastgan::gan_loss_backward`.
The loss is fp32 (fp64 for fp64 logits). Under autocast nothing is cast: the kernels already read
fp16/bf16 logits and compute in fp32.

The losses are differentiable twice: the saved gradient is an output of the forward op, so a
double backward (e.g. a penalty on d loss / d x) comes back to the forward op, whose backward then
applies the Hessian of the loss, written with torch ops below.
"""
import math

import torch

from ._checks import check_choice, check_tensor

KINDS = ("ns", "minimax", "hinge", "wgan", "lsgan", "rals")
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


def _check_label(fn, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TypeError(f"{fn}: argument '{name}' must be a finite number, got {v!r}")


def _promote(a, b):
    """Logits of two dtypes are brought to the wider one (the op takes one dtype)."""
    if a.dtype == b.dtype:
        return a, b
    t = torch.promote_types(a.dtype, b.dtype)
    return a.to(t), b.to(t)


def d_loss(real_logits, fake_logits, kind="ns", *, reduction="mean", real_label=1.0, fake_label=0.0,
           return_stats=False):
    """Discriminator loss: reduce(real terms) + reduce(fake terms), one kernel each way.

    kind: ns / minimax (BCE on real_label and fake_label), hinge, wgan, lsgan, rals (relativistic
    average). reduction: "mean" (mean over each batch) or "sum". Logits of any shape, batch first;
    real and fake batches may differ in size. real_label/fake_label (ns, minimax) give one-sided
    label smoothing. return_stats=True returns (loss, {"d_real": mean sigmoid(real),
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
    r, f = _promote(real_logits, fake_logits)
    loss, stats, _, _ = torch.ops.fastgan.gan_d_loss(r, f, kind, reduction, float(real_label),
                                                     float(fake_label), bool(return_stats))
    if return_stats:
        return loss, {"d_real": stats[0], "d_fake": stats[1]}
    return loss


def g_loss(fake_logits, kind="ns", *, real_logits=None, reduction="mean"):
    """Generator loss on the fake logits, one kernel each way.

    kind: ns (softplus(-fake), non-saturating), minimax (-softplus(fake) = log(1 - D(G(z)))),
    hinge and wgan (-fake), lsgan ((fake - 1)^2 / 2), rals (the D loss with real and fake swapped;
    needs real_logits). real_logits is ignored by the other kinds.
    """
    fn = "fastgan.ops.g_loss"
    _check_logits(fn, "fake_logits", fake_logits)
    check_choice(fn, "kind", kind, KINDS)
    check_choice(fn, "reduction", reduction, REDUCTIONS)
    real = None
    if kind == "rals":
        if real_logits is None:
            raise ValueError(f"{fn}: kind 'rals' needs argument 'real_logits' (the relativistic loss "
                             "compares fake logits with the mean real logit)")
        _check_logits(fn, "real_logits", real_logits)
        _check_device(fn, "real_logits", real_logits, "fake_logits", fake_logits)
        fake_logits, real = _promote(fake_logits, real_logits)
    elif real_logits is not None:
        check_tensor(fn, "real_logits", real_logits)
    return torch.ops.fastgan.gan_g_loss(fake_logits, real, kind, reduction)[0]


# ---- the loss terms, mirrored from csrc/gan_loss/gan_loss.h (for the second derivatives) --------
# form, and per side (a, s, b, tau):
#   softplus  l = a * softplus(s x + tau * mean(other)) + b x
#   hinge     l = relu(1 + s x)        linear  l = b x        square  l = (x - b)^2 / 2
def _spec(kind, generator, real_label=1.0, fake_label=0.0):
    if kind == "rals":
        return "softplus", ((1.0, -1.0, 0.0, 1.0), (1.0, 1.0, 0.0, -1.0))
    if generator:
        return {"ns": ("softplus", ((1.0, -1.0, 0.0, 0.0), None)),
                "minimax": ("softplus", ((-1.0, 1.0, 0.0, 0.0), None)),
                "hinge": ("linear", ((0.0, 1.0, -1.0, 0.0), None)),
                "wgan": ("linear", ((0.0, 1.0, -1.0, 0.0), None)),
                "lsgan": ("square", ((0.0, 1.0, 1.0, 0.0), None))}[kind]
    return {"ns": ("softplus", ((1.0, 1.0, -real_label, 0.0), (1.0, 1.0, -fake_label, 0.0))),
            "minimax": ("softplus", ((1.0, 1.0, -real_label, 0.0), (1.0, 1.0, -fake_label, 0.0))),
            "hinge": ("hinge", ((0.0, -1.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0))),
            "wgan": ("linear", ((0.0, 1.0, -1.0, 0.0), (0.0, 1.0, 1.0, 0.0))),
            "lsgan": ("square", ((0.0, 1.0, 1.0, 0.0), (0.0, 1.0, 0.0, 0.0)))}[kind]


def _hvp(form, coefs, xs, cots, mean):
    """Hessian of the loss (w.r.t. the logits xs) applied to cots, the incoming gradients of the
    saved d loss / d logits; None entries are zero. Written with torch ops, so differentiable."""
    n = [x.numel() for x in xs]
    acc = [x.to(torch.promote_types(x.dtype, torch.float32)) for x in xs]
    scale = [1.0 / k if mean else 1.0 for k in n]
    coupled = coefs[1] is not None and coefs[0][3] != 0
    tot = [torch.zeros((), dtype=a.dtype, device=a.device) if c is None else c.sum()
           for a, c in zip(acc, cots)]
    alpha = []
    for i, (x, c) in enumerate(zip(acc, cots)):
        a, s, b, tau = coefs[i]
        if form == "softplus":
            z = s * x + (tau * acc[1 - i].mean() if coupled else 0.0)
            sig = torch.sigmoid(z)
            d2 = a * sig * (1 - sig)
        elif form == "square":
            d2 = torch.ones_like(x)
        else:  # hinge, linear: piecewise linear
            d2 = torch.zeros_like(x)
        # d T / d z_i, T = sum(cot * grad); z_i = s x_i (+ tau mean(other))
        inner = s * c if c is not None else torch.zeros_like(x)
        if coupled:
            inner = inner + coefs[i][3] * tot[1 - i] / n[1 - i]
        alpha.append(scale[i] * d2 * inner)
    out = []
    for i in range(len(xs)):
        g = coefs[i][1] * alpha[i]
        if coupled:
            g = g + coefs[1 - i][3] * alpha[1 - i].sum() / n[i]
        out.append(g)
    return out


def _stats_grad(x, g):
    s = torch.sigmoid(x.to(g.dtype))
    return g * s * (1 - s) / x.numel()


def _add(a, b):
    return b if a is None else a + b


# ---- fake kernels ------------------------------------------------------------------------------
def _acc(dtype):
    return torch.promote_types(dtype, torch.float32)


@torch.library.register_fake("fastgan::gan_d_loss")
def _d_loss_fake(real, fake, kind, reduction, real_label, fake_label, stats):
    a = _acc(real.dtype)
    return (real.new_empty((), dtype=a), real.new_empty((2 if stats else 0,), dtype=a),
            real.new_empty(real.shape, dtype=a), fake.new_empty(fake.shape, dtype=a))


@torch.library.register_fake("fastgan::gan_g_loss")
def _g_loss_fake(fake, real, kind, reduction):
    a = _acc(fake.dtype)
    gr = real.new_empty(real.shape, dtype=a) if (kind == "rals" and real is not None) \
        else fake.new_empty((0,), dtype=a)
    return fake.new_empty((), dtype=a), fake.new_empty(fake.shape, dtype=a), gr


@torch.library.register_fake("fastgan::gan_loss_backward")
def _loss_backward_fake(grad, g0, g1, dtype):
    return g0.new_empty(g0.shape, dtype=dtype), g1.new_empty(g1.shape, dtype=dtype)


# ---- autograd ----------------------------------------------------------------------------------
def _d_setup(ctx, inputs, output):
    real, fake, kind, reduction, real_label, fake_label, stats = inputs
    _, _, g0, g1 = output
    ctx.set_materialize_grads(False)
    ctx.params = (kind, reduction, real_label, fake_label)
    ctx.save_for_backward(real, fake, g0, g1)


def _d_backward(ctx, gl, gstats, gg0, gg1):
    real, fake, g0, g1 = ctx.saved_tensors
    kind, reduction, real_label, fake_label = ctx.params
    dr = df = None
    if gl is not None:
        dr, df = torch.ops.fastgan.gan_loss_backward(gl, g0, g1, real.dtype)
    if gstats is not None and gstats.numel() == 2:
        dr = _add(dr, _stats_grad(real, gstats[0]).to(real.dtype))
        df = _add(df, _stats_grad(fake, gstats[1]).to(fake.dtype))
    if gg0 is not None or gg1 is not None:
        form, coefs = _spec(kind, False, real_label, fake_label)
        hr, hf = _hvp(form, coefs, (real, fake), (gg0, gg1), reduction == "mean")
        dr, df = _add(dr, hr.to(real.dtype)), _add(df, hf.to(fake.dtype))
    return dr, df, None, None, None, None, None


torch.library.register_autograd("fastgan::gan_d_loss", _d_backward, setup_context=_d_setup)


def _g_setup(ctx, inputs, output):
    fake, real, kind, reduction = inputs
    _, g0, g1 = output
    ctx.set_materialize_grads(False)
    ctx.params = (kind, reduction)
    ctx.has_real = real is not None and kind == "rals"
    ctx.save_for_backward(fake, real if ctx.has_real else None, g0, g1)


def _g_backward(ctx, gl, gg0, gg1):
    fake, real, g0, g1 = ctx.saved_tensors
    kind, reduction = ctx.params
    df = dr = None
    if gl is not None:
        df, dr = torch.ops.fastgan.gan_loss_backward(gl, g0, g1, fake.dtype)
    if gg0 is not None or (ctx.has_real and gg1 is not None):
        form, coefs = _spec(kind, True)
        xs = (fake, real) if ctx.has_real else (fake,)
        cots = (gg0, gg1) if ctx.has_real else (gg0,)
        if not ctx.has_real:
            coefs = coefs[:1] + (None,)
        h = _hvp(form, coefs, xs, cots, reduction == "mean")
        df = _add(df, h[0].to(fake.dtype))
        if ctx.has_real:
            dr = _add(dr, h[1].to(real.dtype))
    return df, (dr if ctx.has_real else None), None, None


torch.library.register_autograd("fastgan::gan_g_loss", _g_backward, setup_context=_g_setup)


def _lb_setup(ctx, inputs, output):
    grad, g0, g1, dtype = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad, g0, g1)


def _lb_backward(ctx, u0, u1):
    """(grad * g0, grad * g1) is bilinear: d/dgrad = <u0, g0> + <u1, g1>, d/dg = u * grad."""
    grad, g0, g1 = ctx.saved_tensors
    dgrad = dg0 = dg1 = None
    for u, g, k in ((u0, g0, 1), (u1, g1, 2)):
        if u is None:
            continue
        if ctx.needs_input_grad[0]:
            dgrad = _add(dgrad, (u.to(g.dtype) * g).sum().reshape(grad.shape).to(grad.dtype))
        if ctx.needs_input_grad[k]:
            d = u.to(g.dtype) * grad.to(g.dtype).reshape(())
            if k == 1:
                dg0 = d
            else:
                dg1 = d
    return dgrad, dg0, dg1, None


torch.library.register_autograd("fastgan::gan_loss_backward", _lb_backward, setup_context=_lb_setup)
