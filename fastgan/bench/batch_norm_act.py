"""batch_norm_act cases: fused BatchNorm + activation vs eager nn.BatchNorm2d + activation and its
torch.compile, at DCGAN shapes; fwd+bwd case names carry the bytes saved for backward relative to
eager (measured with saved_tensors_hooks)."""
import torch
from torch import nn

from fastgan.bench import Case, compiled, register_suite


def saved_bytes(fn, *args):
    """(bytes of the distinct storages autograd saves for backward while running fn(*args), output)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[(s.data_ptr(), t.device)] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return sum(storages.values()), out


def _modules(C, act, device, dtype):
    from fastgan.nn import FusedBatchNormAct2d
    fused = FusedBatchNormAct2d(C, activation=act, negative_slope=0.2).to(device=device, dtype=dtype)
    eager_act = {"relu": nn.ReLU(), "lrelu": nn.LeakyReLU(0.2), "linear": nn.Identity()}[act]
    eager = nn.Sequential(nn.BatchNorm2d(C), eager_act).to(device=device, dtype=dtype)
    for m in (fused, eager[0]):
        with torch.no_grad():
            m.weight.copy_(torch.linspace(0.5, 1.5, C))
            m.bias.copy_(torch.linspace(-0.3, 0.3, C))
    return fused, eager


def _fwd_bwd(m, x, g):
    params = [p for p in m.parameters()]

    def run():
        out = m(x)
        return torch.autograd.grad(out, [x] + params, g)
    return run


@register_suite("batch_norm_act")
def cases(device: str, quick: bool):
    # (shape, act): DCGAN generator BN+ReLU and discriminator BN+LeakyReLU layers, and the
    # 32x128x32x32 target shape
    work = [((32, 128, 32, 32), "lrelu"), ((32, 128, 32, 32), "relu"), ((128, 512, 4, 4), "relu"),
            ((128, 256, 8, 8), "lrelu"), ((64, 64, 32, 32), "relu")]
    if device == "cuda":
        work += [((128, 128, 16, 16), "lrelu"), ((128, 64, 64, 64), "relu")]
    if quick:
        work = work[:3]
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
    out = []
    for shape, act in work:
        for dtype in dtypes:
            for cl in (False, True) if (shape[2] > 4 and not quick) else (False,):
                x = torch.randn(shape, device=device, dtype=dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                g = torch.randn_like(x)
                fused, eager = _modules(shape[1], act, device, dtype)
                comp = compiled(eager)
                tag = f"{'x'.join(map(str, shape))} {str(dtype)[6:]}{' cl' if cl else ''}"
                n, es = x.numel(), x.element_size()
                fwd = {"fastgan": lambda m=fused, x=x: m(x), "eager": lambda m=eager, x=x: m(x),
                       "compile": lambda m=comp, x=x: m(x)}
                out.append(Case("batch_norm_act", f"{act} train fwd {tag}", fwd, bytes=3 * n * es))
                fused_ev, eager_ev = (m.eval() for m in _modules(shape[1], act, device, dtype))
                ev = {"fastgan": lambda m=fused_ev, x=x: m(x), "eager": lambda m=eager_ev, x=x: m(x),
                      "compile": lambda m=compiled(eager_ev), x=x: m(x)}
                out.append(Case("batch_norm_act", f"{act} eval fwd {tag}", ev, bytes=2 * n * es))
                xr = x.clone().requires_grad_()
                ours, _ = saved_bytes(fused, xr)
                theirs, _ = saved_bytes(eager, xr)
                ratio = ours / theirs
                fb = {"fastgan": _fwd_bwd(fused, xr, g), "eager": _fwd_bwd(eager, xr, g),
                      "compile": _fwd_bwd(comp, xr, g)}
                # fwd: x twice, y; bwd: dy, ref twice, dx
                out.append(Case("batch_norm_act", f"{act} train fwd+bwd {tag} saved {ratio:.2f}x", fb,
                                bytes=7 * n * es))
    return out


class _EagerClassBN(nn.Module):
    """What a conditional GAN writes in PyTorch: BatchNorm2d(affine=False), the class rows gathered
    with an embedding, the affine, the activation."""

    def __init__(self, C, K):
        super().__init__()
        self.bn = nn.BatchNorm2d(C, affine=False)
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, K * C).reshape(K, C))
        self.bias = nn.Parameter(torch.linspace(-0.3, 0.3, K * C).reshape(K, C))

    def forward(self, x, y):
        h = self.bn(x) * self.weight[y][:, :, None, None] + self.bias[y][:, :, None, None]
        return torch.relu(h)


@register_suite("class_batch_norm_act")
def class_cases(device: str, quick: bool):
    # the conditional DCGAN generator's BN + ReLU layers (10 classes), the digits run and DCGAN-64
    from fastgan.nn import ClassBatchNormAct2d
    K = 10
    work = [(64, 64, 8, 8), (64, 32, 16, 16), (128, 512, 4, 4), (64, 128, 16, 16)]
    if quick:
        work = work[:2]
    out = []
    for shape in work:
        C = shape[1]
        x = torch.randn(shape, device=device)
        y = torch.arange(shape[0], device=device) % K
        g = torch.randn_like(x)
        fused = ClassBatchNormAct2d(C, K).to(device)
        eager = _EagerClassBN(C, K).to(device)
        with torch.no_grad():
            fused.weight.copy_(eager.weight)
            fused.bias.copy_(eager.bias)
        comp = compiled(eager)
        tag = "x".join(map(str, shape))
        n, es = x.numel(), x.element_size()
        fwd = {"fastgan": lambda m=fused, x=x, y=y: m(x, y), "eager": lambda m=eager, x=x, y=y: m(x, y),
               "compile": lambda m=comp, x=x, y=y: m(x, y)}
        out.append(Case("class_batch_norm_act", f"relu train fwd {tag}", fwd, bytes=3 * n * es))
        xr = x.clone().requires_grad_()

        def fb(m, x=xr, y=y, g=g):
            params = list(m.parameters())

            def run():
                return torch.autograd.grad(m(x, y), [x] + params, g)
            return run
        out.append(Case("class_batch_norm_act", f"relu train fwd+bwd {tag}",
                        {"fastgan": fb(fused), "eager": fb(eager), "compile": fb(comp)}, bytes=7 * n * es))
    return out
