"""The argument checks torch.nn's modules make, with their exception types, for the drop-ins.

fastgan.ops raise ValueError/TypeError naming the argument; a drop-in must raise where its
torch.nn counterpart raises and with the same type (code that catches torch's errors keeps
working), so the modules check these first. tests/test_dropin.py compares every case with torch.
"""
import numbers

import torch


def floating_input(cls: str, x: torch.Tensor, exc=RuntimeError) -> None:
    """Integer, bool and complex inputs: torch's kernels have no implementation for them."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{cls}: input must be a Tensor, not {type(x).__name__}")
    if not x.is_floating_point():
        raise exc(f"{cls}: expected a floating-point input, got {x.dtype}")


def number(cls: str, name: str, v, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if not isinstance(v, numbers.Real):
        raise TypeError(f"{cls}: {name} must be a number, got {v!r}")


def same_device(cls: str, x: torch.Tensor, tensors: dict) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise RuntimeError(f"{cls}: input is on {x.device} but {name} is on {t.device}")


def conv_args(cls: str, stride, padding, output_padding, dilation) -> None:
    """Transposed convolution arguments as torch.nn.functional.conv_transpose2d checks them."""
    for name, v, low in (("stride", stride, 1), ("padding", padding, 0), ("output_padding", output_padding, 0),
                         ("dilation", dilation, 1)):
        if isinstance(v, str) or not all(isinstance(e, int) for e in v):
            raise TypeError(f"{cls}: {name} must be a tuple of ints, got {v!r}")
        if len(v) != 2:
            raise RuntimeError(f"{cls}: expected {name} to be a pair of ints, got {tuple(v)}")
        if min(v) < low:
            raise RuntimeError(f"{cls}: {name} must be >= {low}, got {tuple(v)}")
