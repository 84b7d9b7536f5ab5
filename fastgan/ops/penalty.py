"""Gradient penalties: R1, R2 and WGAN-GP, with the per-sample norm and the penalty reduction fused
into one op (`fastgan::grad_penalty`, csrc/gan_loss/penalty.h) that has its own backward.

The D-parameter gradient of a penalty is a double backward: d penalty / d g (the fused op's
backward) flows back through the graph of g = dD/dx, i.e. through the backward ops of D's layers
(fastgan.nn modules included). Norms and sums are accumulated in fp32 for fp16/bf16 gradients,
which is where fp16 penalties overflow in plain PyTorch; the penalty is fp32 (fp64 for fp64).

Penalties stay eager: torch.compile does not support double backward (AOTAutograd raises).
"""
import math

import torch

from . import reference
from ._checks import check_tensor
from ._verify import verified


def _check_number(fn, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TypeError(f"{fn}: argument '{name}' must be a finite number, got {v!r}")


@verified("grad_norm_penalty", reference.grad_norm_penalty, accumulates=True)
def grad_norm_penalty(grad, weight=1.0, *, center=None):
    """weight * mean_i ||grad_i||^2 (center=None, the R1 form) or weight * mean_i (||grad_i|| - center)^2
    (the WGAN-GP form), norms over all non-batch dims of grad (batch first). One fused op."""
    fn = "fastgan.ops.grad_norm_penalty"
    check_tensor(fn, "grad", grad)
    if grad.dim() == 0 or grad.shape[0] == 0:
        raise ValueError(f"{fn}: argument 'grad' needs a non-empty batch dimension first, got shape "
                         f"{tuple(grad.shape)}")
    _check_number(fn, "weight", weight)
    if center is not None:
        _check_number(fn, "center", center)
    squared = center is None
    return torch.ops.fastgan.grad_penalty(grad, 0.0 if squared else float(center), float(weight),
                                          squared)[0]


def _input_grad(fn, outputs, inputs, name):
    if not torch.is_grad_enabled():
        raise RuntimeError(f"{fn}: gradient penalties need autograd; do not call it under torch.no_grad()")
    g = None
    if outputs.requires_grad:
        (g,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True, allow_unused=True)
    if g is None:
        raise ValueError(f"{fn}: the logits do not depend on '{name}' through autograd; compute them "
                         f"from '{name}' after {name}.requires_grad_(True)")
    return g


def _zero_centred(side, logits, inputs, gamma, how):
    """gamma / 2 * mean ||d logits / d inputs||^2 with `side`'s argument names (R1: real, R2: fake)."""
    fn = f"fastgan.ops.{'r1' if side == 'real' else 'r2'}_penalty"
    check_tensor(fn, f"{side}_logits", logits)
    check_tensor(fn, f"{side}_inputs", inputs)
    _check_number(fn, "gamma", gamma)
    if not inputs.requires_grad:
        raise ValueError(f"{fn}: argument '{side}_inputs' must require grad (call {how} before computing "
                         f"{side}_logits from it)")
    g = _input_grad(fn, logits, inputs, f"{side}_inputs")
    return grad_norm_penalty(g, gamma / 2)


def r1_penalty(real_logits, real_inputs, gamma=1.0):
    """R1: gamma / 2 * mean over the batch of ||d D(x) / d x||^2 (per-sample squared norm over all
    non-batch dims), differentiable w.r.t. the discriminator's parameters. real_logits must have
    been computed from real_inputs with real_inputs.requires_grad_(True)."""
    return _zero_centred("real", real_logits, real_inputs, gamma, "real_inputs.requires_grad_(True)")


def r2_penalty(fake_logits, fake_inputs, gamma=1.0):
    """R2: R1's zero-centred penalty on fake samples, gamma / 2 * mean ||d D(x) / d x||^2 at x = G(z)
    (Mescheder et al. 2018; R3GAN applies R1 and R2 with equal gamma). fake_logits must have been
    computed from fake_inputs (the fakes detached from G) after fake_inputs.requires_grad_(True)."""
    return _zero_centred("fake", fake_logits, fake_inputs, gamma,
                         "fake_inputs = fake.detach().requires_grad_(True)")


def gradient_penalty(discriminator, real, fake, weight=10.0, *, eps=None, center=1.0):
    """WGAN-GP: weight * mean (||grad D(x_hat)|| - center)^2, x_hat = eps real + (1 - eps) fake with
    eps ~ U[0, 1] per sample unless given (shape (N,) or N elements). real and fake are detached."""
    fn = "fastgan.ops.gradient_penalty"
    if not callable(discriminator):
        raise TypeError(f"{fn}: argument 'discriminator' must be callable (a module), got "
                        f"{type(discriminator).__name__}")
    check_tensor(fn, "real", real)
    check_tensor(fn, "fake", fake)
    _check_number(fn, "weight", weight)
    _check_number(fn, "center", center)
    if real.shape != fake.shape:
        raise ValueError(f"{fn}: arguments 'real' and 'fake' must have the same shape, got "
                         f"{tuple(real.shape)} and {tuple(fake.shape)}")
    if fake.device != real.device:
        raise ValueError(f"{fn}: argument 'fake' is on {fake.device} but 'real' is on {real.device}")
    if real.dim() == 0 or real.shape[0] == 0:
        raise ValueError(f"{fn}: argument 'real' needs a non-empty batch dimension first, got shape "
                         f"{tuple(real.shape)}")
    n = real.shape[0]
    if eps is None:
        eps = torch.rand(n, device=real.device, dtype=real.dtype)
    else:
        check_tensor(fn, "eps", eps)
        if eps.numel() != n:
            raise ValueError(f"{fn}: argument 'eps' must have one value per sample ({n}), got shape "
                             f"{tuple(eps.shape)}")
        if eps.device != real.device:
            raise ValueError(f"{fn}: argument 'eps' is on {eps.device} but 'real' is on {real.device}")
        eps = eps.detach().to(real.dtype)
    w = eps.reshape([n] + [1] * (real.dim() - 1))
    x_hat = torch.lerp(fake.detach(), real.detach().to(fake.dtype), w.to(fake.dtype))
    x_hat.requires_grad_(True)
    out = discriminator(x_hat)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{fn}: the discriminator must return a tensor, got {type(out).__name__}")
    g = _input_grad(fn, out, x_hat, "x_hat")
    return grad_norm_penalty(g, weight, center=center)


# ---- fake kernels ------------------------------------------------------------------------------
def _blocked(g):
    if g.is_contiguous():
        return g
    if g.dim() == 4 and g.is_contiguous(memory_format=torch.channels_last):
        return g
    if g.dim() == 5 and g.is_contiguous(memory_format=torch.channels_last_3d):
        return g
    return g.contiguous()


@torch.library.register_fake("fastgan::grad_penalty")
def _penalty_fake(g, center, weight, squared):
    a = torch.promote_types(g.dtype, torch.float32)
    return g.new_empty((), dtype=a), g.new_empty((g.shape[0],), dtype=a)


@torch.library.register_fake("fastgan::grad_penalty_backward")
def _penalty_backward_fake(grad, g, norms, center, weight, squared):
    return torch.empty_like(_blocked(g))


# ---- autograd ----------------------------------------------------------------------------------
def _setup(ctx, inputs, output):
    g, center, weight, squared = inputs
    _, norms = output
    ctx.mark_non_differentiable(norms)  # a by-product; its dependence on g is in g's gradient
    ctx.set_materialize_grads(False)
    ctx.params = (center, weight, squared)
    ctx.save_for_backward(g, norms)


def _backward(ctx, gp, _gnorms):
    g, norms = ctx.saved_tensors
    if gp is None:
        return None, None, None, None
    center, weight, squared = ctx.params
    return torch.ops.fastgan.grad_penalty_backward(gp, g, norms, center, weight, squared), None, None, None


torch.library.register_autograd("fastgan::grad_penalty", _backward, setup_context=_setup)


def _bwd_setup(ctx, inputs, output):
    grad, g, norms, center, weight, squared = inputs
    ctx.set_materialize_grads(False)
    ctx.params = (center, weight, squared)
    ctx.save_for_backward(grad, g)


def _bwd_backward(ctx, u):
    """out = s_i(grad, ||g_i||) * g: differentiate it w.r.t. grad and g (norms recomputed from g
    with torch ops, so this is differentiable again)."""
    grad, g = ctx.saved_tensors
    if u is None:
        return None, None, None, None, None, None
    center, weight, squared = ctx.params
    a = torch.promote_types(g.dtype, torch.float32)
    n = g.shape[0]
    ga, ua = g.to(a).flatten(1), u.to(a).flatten(1)
    go = grad.to(a).reshape(())
    if squared:
        t = torch.full((n, 1), 2.0 * weight / n, dtype=a, device=g.device)
    else:
        nrm = ga.norm(dim=1, keepdim=True)
        safe = torch.where(nrm > 0, nrm, torch.ones_like(nrm))
        t = torch.where(nrm > 0, 2.0 * weight / n * (1 - center / safe), torch.zeros_like(nrm))
    ug = (ua * ga).sum(1, keepdim=True)
    dgrad = dg = None
    if ctx.needs_input_grad[0]:
        dgrad = (t * ug).sum().reshape(grad.shape).to(grad.dtype)
    if ctx.needs_input_grad[1]:
        dga = go * t * ua
        if not squared:
            k = torch.where(nrm > 0, 2.0 * weight / n * center / safe ** 3, torch.zeros_like(nrm))
            dga = dga + go * k * ug * ga
        dg = dga.reshape(g.shape).to(g.dtype)
    return dgrad, dg, None, None, None, None


torch.library.register_autograd("fastgan::grad_penalty_backward", _bwd_backward, setup_context=_bwd_setup)
