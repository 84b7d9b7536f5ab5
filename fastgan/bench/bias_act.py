"""bias_act cases: fused vs `x + b`, activation, `* gain` in eager PyTorch and torch.compile."""
import torch

from fastgan.bench import Case, compiled, grad_fn, register_suite
from fastgan.ops import bias_act, reference


@register_suite("bias_act")
def cases(device: str, quick: bool):
    shapes = [(64, 128, 32, 32), (128, 64, 32, 32), (128, 512, 4, 4)]
    if device == "cuda":
        shapes.append((64, 256, 64, 64))  # 268 MB in fp32: bandwidth-bound
    if quick:
        shapes = shapes[:1] + shapes[2:3]
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
    out = []
    for shape in shapes:
        for dtype in dtypes:
            for cl in (False, True) if shape[2] > 4 and not quick else (False,):
                x = torch.randn(shape, device=device, dtype=dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                b = torch.randn(shape[1], device=device, dtype=dtype)
                g = torch.randn_like(x)
                fused = lambda x, b: bias_act(x, b, act="lrelu", gain=2 ** 0.5)  # noqa: E731
                eager = lambda x, b: reference.bias_act(x, b, act="lrelu", gain=2 ** 0.5)  # noqa: E731
                comp = compiled(eager)
                tag = f"{'x'.join(map(str, shape))} {str(dtype)[6:]}{' cl' if cl else ''}"
                n, es = x.numel(), x.element_size()
                out.append(Case("bias_act", f"lrelu fwd {tag}",
                                {"fastgan": lambda x=x, b=b: fused(x, b), "eager": lambda x=x, b=b: eager(x, b),
                                 "compile": lambda x=x, b=b, c=comp: c(x, b)},
                                bytes=2 * n * es + n))  # read x, write y and the 1-byte mask
                xr, br = x.clone().requires_grad_(), b.clone().requires_grad_()
                out.append(Case("bias_act", f"lrelu fwd+bwd {tag}",
                                {"fastgan": grad_fn(fused, (xr, br), g), "eager": grad_fn(eager, (xr, br), g),
                                 "compile": grad_fn(comp, (xr, br), g)},
                                bytes=4 * n * es + 2 * n))  # fwd: x, y, mask; bwd: g, mask, dx
    return out
