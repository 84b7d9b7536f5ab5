"""Verification mode: every fastgan op call also runs its float64 reference (fastgan.ops.reference).

Turned on by FASTGAN_VERIFY=1 in the environment, or for a block with `with fastgan.verify():`. Each
call of a public op then compares its outputs, and, when an input requires grad, its gradients for a
random incoming gradient, with the reference's, and raises VerificationError naming the op, the
inputs (shapes, dtypes, layouts, device), the output and the error if they disagree beyond the
dtype's tolerance. It costs a reference forward and two backward passes per call: a switch for the
first steps of a run on a new machine or GPU, not for a whole run. Calls inside torch.compile,
CUDA-graph capture or with fake/meta tensors are not checked.

Piecewise-linear activations (relu, lrelu, clamp) have kinks where a rounding error can flip the
slope: the incoming gradient is zeroed at outputs within rounding of a kink, so that only the
unambiguous elements are compared.
"""
import contextlib
import functools
import inspect
import os

import torch

__all__ = ["verify", "verifying", "VerificationError", "verified"]


class VerificationError(RuntimeError):
    """A fastgan op disagreed with its float64 reference."""


# On: FASTGAN_VERIFY=1, or inside verify() (process-wide; a plain module global, so that the check
# costs one global read when off and torch.compile traces it without a graph break).
_ON = os.environ.get("FASTGAN_VERIFY", "0") == "1"


def verifying() -> bool:
    """True where op calls are being verified (FASTGAN_VERIFY=1 or inside `verify()`)."""
    return _ON


@contextlib.contextmanager
def verify(enabled: bool = True):
    """Within the block, every fastgan op call is checked against its float64 reference (enabled=False
    turns the checks off within the block, even with FASTGAN_VERIFY=1). Process-wide, not per thread."""
    global _ON
    old = _ON
    _ON = bool(enabled)
    try:
        yield
    finally:
        _ON = old


# |got - want| <= atol * scale + rtol * |want|, by the output's dtype
TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3),
       torch.bfloat16: (3e-2, 3e-2)}


def _skip(tensors) -> bool:
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    for t in tensors:
        if t.device.type == "meta" or type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            return True
        if t.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return True
    return False


def _describe(names, values) -> str:
    parts = []
    for n, v in zip(names, values):
        if isinstance(v, torch.Tensor):
            layout = "channels_last" if v.dim() == 4 and not v.is_contiguous() and v.is_contiguous(
                memory_format=torch.channels_last) else ("contiguous" if v.is_contiguous() else "strided")
            parts.append(f"{n} {tuple(v.shape)} {str(v.dtype).replace('torch.', '')} {layout}")
    dev = next((v.device for v in values if isinstance(v, torch.Tensor)), "cpu")
    return ", ".join(parts) + f" on {dev}"


def _compare(op, what, got, want, tol, scale, inputs):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape:
        raise VerificationError(f"fastgan.verify: {op} ({inputs}): {what} has shape {tuple(got.shape)}, the "
                                f"reference {tuple(want.shape)}")
    if got.numel() == 0:
        return
    atol, rtol = tol
    err = (got - want).abs()
    bound = atol * scale + rtol * want.abs()
    bad = ~(err <= bound)  # NaN where the reference is finite counts as bad
    bad &= ~(got.isnan() & want.isnan())
    if bad.any():
        i = int(torch.nonzero(bad.flatten())[0])
        idx = tuple(int(k) for k in torch.unravel_index(torch.tensor(i), got.shape))
        raise VerificationError(
            f"fastgan.verify: {op} ({inputs}): {what} differs from the float64 reference in "
            f"{int(bad.sum())} of {got.numel()} elements; first at {idx}: {got.flatten()[i].item():.6g} vs "
            f"{want.flatten()[i].item():.6g} (allowed {bound.flatten()[i].item():.3g}); max difference "
            f"{err.nan_to_num(nan=float('inf')).max().item():.3g}. Please report this.")


def _kinks(kw, y_ref, tol):
    """Mask of the outputs within rounding of a kink of the activation (where slopes may flip)."""
    act = kw.get("act")
    near = torch.zeros_like(y_ref, dtype=torch.bool)
    width = 8 * (tol[0] * max(1.0, y_ref.abs().max().item() if y_ref.numel() else 1.0) + tol[1] * y_ref.abs())
    if act in ("relu", "lrelu"):
        near |= y_ref.abs() <= width
    clamp = kw.get("clamp")
    if clamp is not None:
        near |= (y_ref.abs() - clamp).abs() <= width
    return near


def verified(op, reference, *, accumulates=False, mutates=()):
    """Decorator of a public op: check each call against `reference` (same signature) when verifying.
    accumulates: outputs sum many products (scale the absolute tolerance by the output's magnitude);
    mutates: names of arguments the op updates in place (compared after the call)."""

    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not _ON:
                return fn(*args, **kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            named = dict(bound.arguments)
            tensors = [v for v in named.values() if isinstance(v, torch.Tensor)]
            if not tensors or _skip(tensors):
                return fn(*args, **kwargs)
            # float64 twins of the inputs as they are before the call (some are updated in place)
            twins = {k: (v.detach().double().cpu() if v.is_floating_point() else v.detach().cpu()).requires_grad_(
                v.requires_grad and v.is_floating_point() and torch.is_grad_enabled())
                for k, v in named.items() if isinstance(v, torch.Tensor)}
            out = fn(*args, **kwargs)
            ref_args = dict(named, **twins)
            with torch.enable_grad():
                want = reference(**ref_args)
            names = list(named)
            desc = _describe(names, [named[k] for k in names])
            got_main = out[0] if isinstance(out, tuple) else out
            want_main = want[0] if isinstance(want, tuple) else want
            tol = TOL[got_main.dtype]
            if op == "conv_transpose2d_act" and got_main.dtype == torch.float32 and got_main.is_cuda and \
                    torch.backends.cudnn.allow_tf32:
                tol = (2e-3, 2e-3)  # TF32 tensor cores (cuDNN's and fastgan's alike)
            if op in ("d_loss", "g_loss", "grad_norm_penalty"):
                tol = TOL[torch.float64 if got_main.dtype == torch.float64 else torch.float32]
            scale = max(1.0, want_main.detach().abs().max().item()) if accumulates and want_main.numel() else 1.0
            _compare(op, "the output", got_main, want_main, tol, scale, desc)
            if isinstance(out, tuple) and isinstance(out[1], dict):  # d_loss(..., return_stats=True)
                for k in out[1]:
                    _compare(op, k, out[1][k], want[1][k], tol, 1.0, desc)
            for name in mutates:
                if named.get(name) is not None and named.get("training", True):
                    _compare(op, name, named[name], twins[name], (tol[0] * 10, tol[1] * 10), scale, desc)
            # gradients, for a random incoming gradient (zero where a kink makes the slope ambiguous)
            wrt = [k for k, v in named.items() if isinstance(v, torch.Tensor) and v.requires_grad
                   and v.is_floating_point()]
            if wrt and torch.is_grad_enabled() and got_main.requires_grad:
                gy = torch.randn(got_main.shape, dtype=torch.float64)
                gy[_kinks(named, want_main.detach(), tol)] = 0
                got_g = torch.autograd.grad(got_main, [named[k] for k in wrt], gy.to(got_main),
                                            retain_graph=True, allow_unused=True)
                want_g = torch.autograd.grad(want_main, [twins[k] for k in wrt], gy, allow_unused=True)
                for k, a, b in zip(wrt, got_g, want_g):
                    if a is None or b is None:
                        continue
                    gs = max(1.0, b.abs().max().item()) if b.numel() else 1.0
                    _compare(op, f"the gradient of '{k}'", a, b, (tol[0] * 8, tol[1] * 8), gs, desc)
            return out

        wrapper.__wrapped_unverified__ = fn
        return wrapper

    return deco
