"""Differentiable augmentation (DiffAugment, Zhao et al. 2020; the augmentation ADA tunes, Karras
et al. 2020): brightness, saturation, contrast, translation with zero padding and cutout, applied to
images (N, C, H, W) in one fused kernel pass each way (`fastgan::diff_augment`,
csrc/diff_augment/diff_augment.h), differentiable w.r.t. the images so that gradients reach G.

Each sample draws its own parameters once (`diff_augment_params`); the backward reuses them. Every
transform of the policy is applied to each sample with probability p:

  brightness  x + b,                      b ~ U[-0.5, 0.5)
  saturation  s (x - pixel mean) + mean,  s ~ U[0, 2)      (the mean over channels, per pixel)
  contrast    k (x - sample mean) + mean, k ~ U[0.5, 1.5)
  translation a shift by (ty, tx) pixels, each uniform in [-r, r], r = round(0.125 * size); zeros in
  cutout      a zeroed rectangle of round(0.5 * size) pixels a side, centred uniformly in the image

Differentiable twice (the op is linear in x, so R1 through augmented reals works).
"""
import torch

from . import reference
from ._checks import check_same_device, check_tensor
from ._verify import verified

POLICIES = ("color", "translation", "cutout")


def _policy(fn, policy):
    if not isinstance(policy, str):
        raise TypeError(f"{fn}: argument 'policy' must be a comma-separated string, got {type(policy).__name__}")
    parts = [p.strip() for p in policy.split(",") if p.strip()]
    bad = [p for p in parts if p not in POLICIES]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"{fn}: argument 'policy' must name some of {', '.join(POLICIES)} (comma-separated, "
                         f"each once); got {policy!r}")
    return set(parts)


def _fraction(fn, name, v, *, closed=True):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v <= 1 if closed else 0 <= v < 1):
        raise ValueError(f"{fn}: argument '{name}' must be a number in [0, 1{']' if closed else ')'}, got {v!r}")
    return float(v)


def cutout_size(height: int, width: int, ratio: float = 0.5):
    """The (height, width) of the cutout rectangle for images of that size."""
    return int(height * ratio + 0.5), int(width * ratio + 0.5)


def diff_augment_params(x, policy="color,translation,cutout", p=1.0, *, generator=None, translation=0.125,
                        cutout=0.5):
    """Draw the per-sample parameters for images x (N, C, H, W): (params (N, 7) float32 on x's
    device, cutout (height, width)); rows are (b, s, k, ty, tx, top, left), see the module docstring.
    Random numbers come from `generator` (on its device; the global RNG when None)."""
    fn = "fastgan.ops.diff_augment"
    check_tensor(fn, "x", x)
    if x.dim() != 4:
        raise ValueError(f"{fn}: argument 'x' must be images (N, C, H, W), got shape {tuple(x.shape)}")
    use = _policy(fn, policy)
    p = _fraction(fn, "p", p)
    translation = _fraction(fn, "translation", translation)
    cutout = _fraction(fn, "cutout", cutout)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: argument 'generator' must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    n, _, h, w = x.shape
    dev = generator.device if generator is not None else x.device
    u = torch.rand(n, 7, generator=generator, device=dev)  # one draw per sample and parameter
    on = torch.rand(n, 5, generator=generator, device=dev) < p  # which transforms each sample gets
    if "color" not in use:
        on[:, :3] = False
    if "translation" not in use:
        on[:, 3] = False
    if "cutout" not in use:
        on[:, 4] = False
    ry, rx = int(h * translation + 0.5), int(w * translation + 0.5)
    ch, cw = cutout_size(h, w, cutout)
    params = torch.stack([
        torch.where(on[:, 0], u[:, 0] - 0.5, 0.0),
        torch.where(on[:, 1], u[:, 1] * 2, 1.0),
        torch.where(on[:, 2], u[:, 2] + 0.5, 1.0),
        torch.where(on[:, 3], (u[:, 3] * (2 * ry + 1)).floor().clamp(max=2 * ry) - ry, 0.0),
        torch.where(on[:, 3], (u[:, 4] * (2 * rx + 1)).floor().clamp(max=2 * rx) - rx, 0.0),
        torch.where(on[:, 4] & (ch > 0) & (cw > 0), (u[:, 5] * h).floor().clamp(max=h - 1) - ch // 2, float(h)),
        torch.where(on[:, 4], (u[:, 6] * w).floor().clamp(max=w - 1) - cw // 2, 0.0),
    ], 1)
    return params.to(x.device), (ch, cw)


def _check_apply(fn, x, params, cutout):
    check_tensor(fn, "x", x)
    if x.dim() != 4:
        raise ValueError(f"{fn}: argument 'x' must be images (N, C, H, W), got shape {tuple(x.shape)}")
    check_tensor(fn, "params", params)
    if params.dtype != torch.float32 or params.shape != (x.shape[0], 7):
        raise ValueError(f"{fn}: argument 'params' must be float32 of shape ({x.shape[0]}, 7) (one row per "
                         f"sample, from diff_augment_params), got {params.dtype} {tuple(params.shape)}")
    check_same_device(fn, "params", params, "x", x)
    if (not isinstance(cutout, (tuple, list)) or len(cutout) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cutout)):
        raise ValueError(f"{fn}: argument 'cutout' must be two ints >= 0 (height, width), got {cutout!r}")


@verified("diff_augment_apply", reference.diff_augment_apply)
def diff_augment_apply(x, params, cutout):
    """Augment images x (N, C, H, W) with given per-sample parameters (from diff_augment_params);
    one fused pass each way. The output is laid out like x."""
    _check_apply("fastgan.ops.diff_augment_apply", x, params, cutout)
    return torch.ops.fastgan.diff_augment(x, params, list(cutout), True)


def diff_augment(x, policy="color,translation,cutout", p=1.0, *, generator=None, translation=0.125, cutout=0.5):
    """DiffAugment of images x (N, C, H, W) in [-1, 1]: each transform of `policy` (color,
    translation, cutout) applied to each sample with probability p, with parameters drawn once per
    call (from `generator`) and reused by the backward. Apply it to real and fake images alike."""
    params, hw = diff_augment_params(x, policy, p, generator=generator, translation=translation, cutout=cutout)
    return diff_augment_apply(x, params, hw)


# ---- fake kernels and autograd -------------------------------------------------------------------
@torch.library.register_fake("fastgan::diff_augment")
def _diff_augment_fake(x, params, cutout, bias):
    return torch.empty_like(x)


@torch.library.register_fake("fastgan::diff_augment_backward")
def _diff_augment_backward_fake(grad, params, cutout):
    return torch.empty_like(grad)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.cutout = inputs[2]


def _forward_backward(ctx, grad):
    (params,) = ctx.saved_tensors
    return torch.ops.fastgan.diff_augment_backward(grad, params, ctx.cutout), None, None, None


def _backward_backward(ctx, grad):  # the backward is linear in grad: its own gradient is the forward without b
    (params,) = ctx.saved_tensors
    return torch.ops.fastgan.diff_augment(grad, params, ctx.cutout, False), None, None


torch.library.register_autograd("fastgan::diff_augment", _forward_backward, setup_context=_setup)
torch.library.register_autograd("fastgan::diff_augment_backward", _backward_backward, setup_context=_setup)
