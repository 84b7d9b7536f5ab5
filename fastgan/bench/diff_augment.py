"""diff_augment cases: the fused DiffAugment (color, translation, cutout; one pass each way) vs the
same augmentation written as eager PyTorch the usual way (brightness, saturation and contrast as
broadcast arithmetic, translation as a gather from a zero-padded copy, cutout as a mask multiply)
and its torch.compile, with the same per-sample parameters, forward and forward + backward."""
import torch
import torch.nn.functional as F

from fastgan.bench import Case, compiled, grad_fn, register_suite
from fastgan.ops import diff_augment_apply, diff_augment_params


def eager(x, params, cutout):
    """The augmentation of fastgan.ops.diff_augment_apply in vectorised eager PyTorch."""
    n, _, h, w = x.shape
    p = params.to(x.dtype)
    b, s, k = (p[:, i].view(-1, 1, 1, 1) for i in range(3))
    x = x + b
    m = x.mean(1, keepdim=True)
    x = (x - m) * s + m
    m = x.mean((1, 2, 3), keepdim=True)
    x = (x - m) * k + m
    ty, tx, top, left = (params[:, i].long() for i in range(3, 7))
    rows = torch.arange(h, device=x.device).view(1, h) - ty.view(n, 1) + 1  # +1: the zero border
    cols = torch.arange(w, device=x.device).view(1, w) - tx.view(n, 1) + 1
    padded = F.pad(x, (1, 1, 1, 1))
    x = padded[torch.arange(n, device=x.device).view(n, 1, 1), :, rows.clamp(0, h + 1).view(n, h, 1),
               cols.clamp(0, w + 1).view(n, 1, w)].permute(0, 3, 1, 2)
    ar, ac = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
    keep = ~(((ar >= top.view(n, 1, 1)) & (ar < (top + cutout[0]).view(n, 1, 1))) &
             ((ac >= left.view(n, 1, 1)) & (ac < (left + cutout[1]).view(n, 1, 1))))
    return x * keep.unsqueeze(1).to(x.dtype)


@register_suite("diff_augment")
def cases(device: str, quick: bool):
    shapes = [(64, 3, 32, 32)] if quick else [(64, 1, 32, 32), (64, 3, 32, 32), (64, 3, 64, 64), (16, 3, 128, 128)]
    out = []
    for shape in shapes:
        x = (torch.rand(shape, device=device) * 2 - 1).requires_grad_(True)
        params, hw = diff_augment_params(x, generator=torch.Generator().manual_seed(0))
        params = params.to(device)
        gy = torch.randn(shape, device=device)
        fused = lambda t, p=params, c=hw: diff_augment_apply(t, p, c)  # noqa: E731
        plain = lambda t, p=params, c=hw: eager(t, p, c)  # noqa: E731
        comp = compiled(plain)
        tag = "x".join(map(str, shape)) + " float32"
        nbytes = x.numel() * 4
        with torch.no_grad():
            out.append(Case("diff_augment", f"fwd {tag}",
                            {"fastgan": lambda f=fused, t=x: f(t.detach()), "eager": lambda f=plain, t=x: f(t.detach()),
                             "compile": lambda f=comp, t=x: f(t.detach())}, bytes=2 * nbytes))
        out.append(Case("diff_augment", f"fwd+bwd {tag}",
                        {"fastgan": grad_fn(fused, (x,), gy), "eager": grad_fn(plain, (x,), gy),
                         "compile": grad_fn(comp, (x,), gy)}, bytes=4 * nbytes))
    return out
