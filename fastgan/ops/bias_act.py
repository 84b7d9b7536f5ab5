"""Fused bias + activation: y = clamp(act(x + b) * gain, -clamp, clamp), with first and second
derivatives (R1 / WGAN-GP penalties differentiate through it twice).

Ops (csrc/bias_act): `fastgan::bias_act` returns (y, mask), `fastgan::bias_act_backward` returns
(grad_x, grad_b) with the bias reduction fused, `fastgan::bias_act_` is the in-place forward.

What the backward keeps (see csrc/bias_act/bias_act.h):
  relu, lrelu, clamped linear  a uint8 mask (1 byte per element; x and y are not kept)
  tanh, sigmoid, elu, selu     y
  softplus, swish, gelu        x (and b)
  linear                       nothing
The backward op is itself differentiable: its input-gradient is the same op again (it is linear
in the incoming gradient) and its ref-gradient is the activation's second derivative, written
with ATen ops (zero for the piecewise-linear activations). Both autograd formulas are registered
in C++ (csrc/bias_act/bias_act_cpu.cpp), as gan_loss's are: the Python path cost more than the
kernel at small tensors.
"""
import math

import torch

from . import _choose, reference
from ._checks import check_choice, check_same_device, check_tensor
from ._verify import verified

# act -> default alpha (only lrelu and elu use it)
ACTS = {"linear": 0.0, "relu": 0.0, "lrelu": 0.2, "tanh": 0.0, "sigmoid": 0.0, "elu": 1.0,
        "selu": 0.0, "softplus": 0.0, "swish": 0.0, "silu": 0.0, "gelu": 0.0}
_MASK_ACTS = ("relu", "lrelu")
_Y_ACTS = ("tanh", "sigmoid", "elu", "selu")
_X_ACTS = ("softplus", "swish", "silu", "gelu")
_SELU_L, _SELU_A = 1.0507009873554804934193349852946, 1.6732632423543772848170429916717


def ref_kind(act: str, clamp: float) -> str:
    """What the backward reads: 'mask', 'y', 'x' or 'none'."""
    if act in _MASK_ACTS or (act == "linear" and clamp >= 0):
        return "mask"
    if act in _Y_ACTS:
        return "y"
    if act in _X_ACTS:
        return "x"
    return "none"


def resolve(fn: str, act, alpha, gain, clamp):
    """Validate the scalar options and fill in defaults; returns (alpha, gain, clamp) as floats."""
    check_choice(fn, "act", act, tuple(ACTS))
    alpha = ACTS[act] if alpha is None else float(alpha)
    gain = 1.0 if gain is None else float(gain)
    if not math.isfinite(gain):
        raise ValueError(f"{fn}: argument 'gain' must be finite, got {gain}")
    if clamp is None:
        clamp = -1.0
    else:
        clamp = float(clamp)
        if not clamp >= 0:
            raise ValueError(f"{fn}: argument 'clamp' must be >= 0 (or None for no clamp), got {clamp}")
    return alpha, gain, clamp


@verified("bias_act", reference.bias_act)
def bias_act(x, b=None, *, act="linear", alpha=None, gain=None, clamp=None, dim=1):
    """y = clamp(act(x + b broadcast along `dim`) * gain, -clamp, clamp).

    act: linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish (silu), gelu (erf form).
    alpha: lrelu slope (default 0.2) or elu alpha (default 1.0); ignored by the others.
    gain: default 1.0. clamp: None for no clamp; where clamped, the gradient is zero.
    Any dtype of float32/float16/bfloat16/float64, any strides (channels_last is not copied).
    On the CPU, a shape where the eager ops are faster runs them instead (measured at the first call
    of each shape and cached; FASTGAN_BIAS_ACT_PATH=auto|fused|eager, see fastgan.ops._choose).
    """
    fn = "fastgan.ops.bias_act"
    check_tensor(fn, "x", x)
    if b is not None:
        check_tensor(fn, "b", b)
        check_same_device(fn, "b", b, "x", x)
    alpha, gain, clamp = resolve(fn, act, alpha, gain, clamp)
    if type(dim) is int and _choose.candidate("bias_act", x):
        g = torch.is_grad_enabled()
        grads = (g and x.requires_grad, g and b is not None and b.requires_grad)
        key = ("bias_act", x.dtype, x.shape, x.stride(), b is not None, dim, act, clamp >= 0, gain != 1.0, grads,
               torch.get_num_threads())
        if _choose.use_eager(key, _contenders, x, b, dim, act, alpha, gain, clamp, grads) and _bias_fits(x, b, dim):
            return _eager(x, b, dim, act, alpha, gain, clamp)  # (b's dtype and shape are not in the key)
    return torch.ops.fastgan.bias_act(x, b, dim, act, alpha, gain, clamp)[0]


def _bias_fits(x, b, dim):
    """Whether b is None or a (C,) bias of x's dtype for dim (else the fused op raises its error)."""
    if b is None:
        return True
    return (b.dtype == x.dtype and b.dim() == 1 and isinstance(dim, int) and -x.dim() <= dim < x.dim()
            and b.shape[0] == x.shape[dim])


def _eager(x, b, dim, act, alpha, gain, clamp):
    """The eager PyTorch this op replaces: x + b, activation, * gain, clamp. (softplus is F.softplus
    with its default threshold, within 2e-9 of the exact log(1 + e^x) and finite everywhere.)"""
    if b is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        x = x + b.reshape(shape)
    y = torch.nn.functional.softplus(x) if act == "softplus" else reference.act_fn(act, x, alpha)
    if gain != 1.0:
        y = y * gain
    return y.clamp(-clamp, clamp) if clamp >= 0 else y


def _contenders(x, b, dim, act, alpha, gain, clamp, grads):
    """The fused op and _eager, one call each on throwaway copies; None where _eager does not apply."""
    if not x.numel() or not _bias_fits(x, b, dim):
        return None
    return (_choose.run_once(lambda x, b: torch.ops.fastgan.bias_act(x, b, dim, act, alpha, gain, clamp)[0],
                             (x, b), grads),
            _choose.run_once(lambda x, b: _eager(x, b, dim, act, alpha, gain, clamp), (x, b), grads))


# ---- fake kernels (shapes, strides and dtypes for torch.compile) ---------------------------
@torch.library.register_fake("fastgan::bias_act")
def _bias_act_fake(x, b, dim, act, alpha, gain, clamp):
    mask = (torch.empty_like(x, dtype=torch.uint8) if ref_kind(act, clamp) == "mask"
            else x.new_empty((0,), dtype=torch.uint8))
    return torch.empty_like(x), mask


@torch.library.register_fake("fastgan::bias_act_backward")
def _bias_act_backward_fake(grad, ref, b, dim, act, alpha, gain, clamp, bias_grad):
    like = grad if ref_kind(act, clamp) == "none" else ref
    gx = torch.empty_like(like, dtype=grad.dtype)
    gb = grad.new_empty((grad.shape[dim],) if bias_grad else (0,))
    return gx, gb


@torch.library.register_fake("fastgan::bias_act_")
def _bias_act_inplace_fake(x, b, dim, act, alpha, gain, clamp):
    if ref_kind(act, clamp) == "mask":
        return torch.empty_like(x, dtype=torch.uint8)
    return x.new_empty((0,), dtype=torch.uint8)


# ---- autograd: registered in C++ (csrc/bias_act/bias_act_cpu.cpp), first and second order --------
# At small tensors the Python autograd path (torch.library.register_autograd) cost more than the
# kernel on every call; see docs/design.md.


# ---- in place (FusedLeakyReLU(inplace=True)) ---------------------------------------------
class _BiasActInplace(torch.autograd.Function):
    """In-place forward that keeps only the uint8 mask for backward."""

    @staticmethod
    def forward(ctx, x, b, dim, act, alpha, gain, clamp):
        mask = torch.ops.fastgan.bias_act_(x, b, dim, act, alpha, gain, clamp)
        ctx.mark_dirty(x)
        ctx.save_for_backward(mask if mask.numel() else None)
        ctx.params = (dim, act, alpha, gain, clamp)
        return x

    @staticmethod
    def backward(ctx, gy):
        (mask,) = ctx.saved_tensors
        dim, act, alpha, gain, clamp = ctx.params
        need_b = ctx.needs_input_grad[1]
        gx, gb = torch.ops.fastgan.bias_act_backward(gy, gy if mask is None else mask, None, dim, act,
                                                     alpha, gain, clamp, need_b)
        return gx, (gb if need_b else None), None, None, None, None, None


@verified("bias_act_", reference.bias_act)
def bias_act_(x, b=None, *, act="lrelu", alpha=None, gain=None, clamp=None, dim=1):
    """In-place bias_act for linear, relu and lrelu; returns x. The backward keeps a 1-byte mask."""
    fn = "fastgan.ops.bias_act_"
    check_tensor(fn, "x", x)
    if b is not None:
        check_tensor(fn, "b", b)
        check_same_device(fn, "b", b, "x", x)
    check_choice(fn, "act", act, ("linear", "relu", "lrelu"))
    alpha, gain, clamp = resolve(fn, act, alpha, gain, clamp)
    if torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad)):
        return _BiasActInplace.apply(x, b, dim, act, alpha, gain, clamp)
    torch.ops.fastgan.bias_act_(x, b, dim, act, alpha, gain, clamp)
    return x
