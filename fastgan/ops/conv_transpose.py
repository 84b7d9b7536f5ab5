"""Transposed convolution with the bias + activation epilogue fused:
y = clamp(act(conv_transpose2d(x, weight) + bias) * gain, -clamp, clamp).

This is where a DCGAN generator spends its FLOPs (ConvTranspose2d(4, 2, 1) at every block). Eager
PyTorch runs the deconvolution, then the activation as another pass, and keeps the pre-activation
for backward; torch.compile cannot fuse into a transposed convolution.

Op (csrc/conv_transpose): `fastgan::conv_transpose2d_act` returns (y, ref), where ref is what the
backward reads (see fastgan.ops.bias_act): a uint8 mask for relu/lrelu/clamped linear, the
pre-activation for softplus/swish/gelu, nothing otherwise (tanh/sigmoid/elu/selu read y). The
backward keeps x, weight and that ref, never the float pre-activation of relu/lrelu, and is made
of differentiable ops, so second derivatives work (the autograd is registered in C++,
csrc/conv_transpose/conv_transpose_cpu.cpp, for its per-call cost):
  g = bias_act_backward(grad_y, ref)       (activation derivative + fused bias-gradient sum)
  grad_x, grad_w = convolution_backward(g) (grad_x is an ordinary strided convolution)

Which kernel runs the forward is chosen per shape by measurement at its first call and cached:
"aten", ATen's transposed convolution (oneDNN / cuDNN) + the bias_act epilogue; "aten_cl" (CPU, NCHW
results), the same on a channels_last copy of x, since oneDNN's channels_last deconvolution skips the
copy its NCHW one makes of its output; or "fused", fastgan's phase decomposition with the epilogue
fused (CPU: one stride-1 convolution over phase-packed weights + one interleave/epilogue pass; CUDA: a
tensor-core implicit-GEMM kernel, verified against cuDNN at its first use). The backward is the same
for all three. FASTGAN_CONV_TRANSPOSE_PATH=auto|aten|aten_cl|fused overrides the choice;
FASTGAN_VERBOSE=1 (or FASTGAN_CONV_TRANSPOSE_VERBOSE=1) prints each decision to stderr.
"""
import torch

from . import reference
from ._checks import check_tensor
from ._verify import verified
from .bias_act import ref_kind, resolve

__all__ = ["conv_transpose2d_act"]


def _pair(fn: str, name: str, v, minimum: int):
    if isinstance(v, bool):
        raise TypeError(f"{fn}: argument '{name}' must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        v = (v, v)
    try:
        v = [int(e) for e in v]
    except TypeError:
        raise TypeError(f"{fn}: argument '{name}' must be an int or a pair of ints, got {v!r}") from None
    if len(v) == 1:
        v = v * 2
    if len(v) != 2:
        raise ValueError(f"{fn}: argument '{name}' must be an int or a pair of ints, got {v!r}")
    if min(v) < minimum:
        what = {0: "negative", 1: "non-positive"}[minimum]
        raise ValueError(f"{fn}: argument '{name}': {what} {name} is not supported, got {tuple(v)}")
    return v


@verified("conv_transpose2d_act", reference.conv_transpose2d_act, accumulates=True)
def conv_transpose2d_act(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                         *, act="linear", alpha=None, gain=None, clamp=None):
    """F.conv_transpose2d followed by fastgan.ops.bias_act's activation, in one op.

    Same positional arguments as torch.nn.functional.conv_transpose2d (x of shape (N, C, H, W) or
    unbatched (C, H, W)); act/alpha/gain/clamp as in fastgan.ops.bias_act. float32, float16,
    bfloat16, float64; a channels_last x gives a channels_last result without copies.
    """
    fn = "fastgan.ops.conv_transpose2d_act"
    check_tensor(fn, "x", x)
    check_tensor(fn, "weight", weight)
    if bias is not None:
        check_tensor(fn, "bias", bias)
    if x.dim() not in (3, 4):
        raise RuntimeError(f"{fn}: argument 'x': expected 3D (unbatched) or 4D (batched) input to "
                           f"conv_transpose2d, but got input of size: {list(x.shape)}")
    stride = _pair(fn, "stride", stride, 1)
    padding = _pair(fn, "padding", padding, 0)
    output_padding = _pair(fn, "output_padding", output_padding, 0)
    dilation = _pair(fn, "dilation", dilation, 1)
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"{fn}: argument 'groups' must be an int, got {groups!r}")
    alpha, gain, clamp = resolve(fn, act, alpha, gain, clamp)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    y = torch.ops.fastgan.conv_transpose2d_act(x, weight, bias, stride, padding, output_padding, groups,
                                               dilation, act, alpha, gain, clamp)[0]
    return y.squeeze(0) if unbatched else y


def output_shape(x_shape, w_shape, stride, padding, output_padding, groups, dilation):
    """(N, C_out, H_out, W_out) of a batched transposed convolution."""
    n, _, h, w = x_shape
    oh = (h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (w_shape[2] - 1) + output_padding[0] + 1
    ow = (w - 1) * stride[1] - 2 * padding[1] + dilation[1] * (w_shape[3] - 1) + output_padding[1] + 1
    return (n, w_shape[1] * groups, oh, ow)


def _strictly_channels_last(t):
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _is_channels_last(x, w):
    """The output layout rule of the op (csrc/conv_transpose/conv_transpose.h: channels_last_out)."""
    return _strictly_channels_last(x) or _strictly_channels_last(w)


@torch.library.register_fake("fastgan::conv_transpose2d_act")
def _fake(x, weight, bias, stride, padding, output_padding, groups, dilation, act, alpha, gain, clamp):
    torch._check(x.dim() == 4, lambda: "conv_transpose2d_act: x must be 4-D")
    torch._check(weight.dim() == 4, lambda: "conv_transpose2d_act: weight must be 4-D")
    torch._check(x.shape[1] == weight.shape[0], lambda: "conv_transpose2d_act: channel mismatch")
    stride, padding, output_padding, dilation = (list(v) * (2 // len(v))
                                                 for v in (stride, padding, output_padding, dilation))
    shape = output_shape(x.shape, weight.shape, stride, padding, output_padding, groups, dilation)
    fmt = torch.channels_last if _is_channels_last(x, weight) else torch.contiguous_format
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    kind = ref_kind(act, clamp)
    if kind == "mask":
        ref = torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=fmt)
    elif kind == "x":
        ref = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    else:
        ref = x.new_empty((0,), dtype=torch.uint8 if kind == "mask" else x.dtype)
    return y, ref
