"""gan_loss cases: fused D/G losses (forward + backward) vs the eager reference
(F.binary_cross_entropy_with_logits and friends) and its torch.compile; an R1 penalty step
(D forward, input gradient with create_graph, penalty, D-parameter gradient) on a D of
Conv2d + FusedBiasAct with the fused penalty vs a plain-torch D with the eager penalty."""
import torch
from torch import nn

from fastgan.bench import Case, compiled, grad_fn, register_suite
from fastgan.nn import FusedBiasAct
from fastgan.ops import d_loss, g_loss, r1_penalty, reference


def _loss_cases(device, quick):
    batches = [64, 4096, 65536] if quick else [64, 256, 1024, 4096, 16384, 65536]
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" and not quick else [])
    d_kinds = ["ns"] if quick else ["ns", "hinge", "rals", "rpgan"]
    out = []
    for dtype in dtypes:
        es = torch.tensor([], dtype=dtype).element_size()
        for b in batches:
            real = torch.randn(b, 1, device=device, dtype=dtype).requires_grad_(True)
            fake = torch.randn(b, 1, device=device, dtype=dtype).requires_grad_(True)
            go = torch.ones((), device=device, dtype=torch.float32)  # fastgan's loss is fp32
            geo = torch.ones((), device=device, dtype=dtype)  # the reference's is in the logits' dtype
            tag = f"B={b} {str(dtype)[6:]}"
            for kind in d_kinds:
                fused = lambda r, f, k=kind: d_loss(r, f, k)  # noqa: E731
                eager = lambda r, f, k=kind: reference.d_loss(r, f, k)  # noqa: E731
                comp = compiled(eager)
                out.append(Case("gan_loss", f"D {kind} fwd+bwd {tag}",
                                {"fastgan": grad_fn(fused, (real, fake), go),
                                 "eager": grad_fn(eager, (real, fake), geo),
                                 "compile": grad_fn(comp, (real, fake), geo)},
                                bytes=2 * b * (2 * es + 8)))  # per side: x, saved fp32 grad (w, r), dx
            fused = lambda f: g_loss(f, "ns")  # noqa: E731
            eager = lambda f: reference.g_loss(f, "ns")  # noqa: E731
            comp = compiled(eager)
            out.append(Case("gan_loss", f"G ns fwd+bwd {tag}",
                            {"fastgan": grad_fn(fused, (fake,), go), "eager": grad_fn(eager, (fake,), geo),
                             "compile": grad_fn(comp, (fake,), geo)},
                            bytes=b * (2 * es + 8)))
    return out


def _small_d(fused, device, width=32):
    layers = []
    cin = 3
    for cout in (width, 2 * width):
        if fused:
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), FusedBiasAct(cout, act="lrelu", alpha=0.2)]
        else:
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)]
        cin = cout
    layers += [nn.Flatten(), nn.LazyLinear(1)]
    return nn.Sequential(*layers).to(device)


def _r1_cases(device, quick):
    shapes = [(16, 3, 32, 32)] if device == "cpu" else [(64, 3, 64, 64)]
    if not quick and device == "cuda":
        shapes.append((128, 3, 64, 64))
    out = []
    for shape in shapes:
        x = torch.randn(shape, device=device)
        fd, pd = _small_d(True, device), _small_d(False, device)
        fd(x), pd(x)  # materialise the lazy head
        pd.load_state_dict({k.replace("1.bias", "0.bias").replace("3.bias", "2.bias"): v
                            for k, v in fd.state_dict().items()}, strict=False)

        def step(d, penalty):
            def run():
                xr = x.detach().requires_grad_(True)
                pen = penalty(d(xr), xr, 10.0)
                return torch.autograd.grad(pen, list(d.parameters()), allow_unused=True)
            return run
        out.append(Case("gan_loss", f"R1 step {'x'.join(map(str, shape))} float32",
                        {"fastgan": step(fd, r1_penalty), "eager": step(pd, reference.r1_penalty)}))
    return out


@register_suite("gan_loss")
def cases(device: str, quick: bool):
    return _loss_cases(device, quick) + _r1_cases(device, quick)
