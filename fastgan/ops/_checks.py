"""Argument checks shared by the public ops: cheap, Python-level, and traceable by torch.compile
(they look only at types, dtypes, shapes and devices, never at values)."""
import torch


def check_tensor(fn: str, name: str, t, *, floating: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{fn}: argument '{name}' must be a floating-point tensor "
                        f"(float32, float16, bfloat16 or float64), got {t.dtype}")


def check_choice(fn: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{fn}: argument '{name}' must be one of {', '.join(map(str, choices))}; "
                         f"got {value!r}")


def check_same_device(fn: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise RuntimeError(f"{fn}: argument '{name}' is on {t.device} but '{ref_name}' is on "
                           f"{ref.device}; move them to the same device")
