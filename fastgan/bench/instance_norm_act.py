"""instance_norm_act cases: fused InstanceNorm + activation vs eager nn.InstanceNorm2d + activation and
its torch.compile, at CycleGAN's shapes (the 64x64 ResNet blocks at batch 1, the 128x128 encoder at
batch 4); fwd+bwd case names carry the bytes saved for backward relative to eager."""
import torch
from torch import nn

from fastgan.bench import Case, compiled, register_suite
from fastgan.bench.batch_norm_act import _fwd_bwd, saved_bytes


def _modules(C, act, device, dtype):
    from fastgan.nn import FusedInstanceNormAct2d
    fused = FusedInstanceNormAct2d(C, affine=True, activation=act, negative_slope=0.2).to(device=device, dtype=dtype)
    eager_act = {"relu": nn.ReLU(), "lrelu": nn.LeakyReLU(0.2)}[act]
    eager = nn.Sequential(nn.InstanceNorm2d(C, affine=True), eager_act).to(device=device, dtype=dtype)
    for m in (fused, eager[0]):
        with torch.no_grad():
            m.weight.copy_(torch.linspace(0.5, 1.5, C))
            m.bias.copy_(torch.linspace(-0.3, 0.3, C))
    return fused, eager


@register_suite("instance_norm_act")
def cases(device: str, quick: bool):
    # CycleGAN's generator: ResNet blocks at 256x64x64 (batch 1), the first downsampling at 128x128;
    # its PatchGAN D: InstanceNorm + LeakyReLU(0.2)
    work = [((1, 256, 64, 64), "relu"), ((4, 128, 128, 128), "relu"), ((1, 256, 32, 32), "lrelu")]
    if quick:
        work = work[:1]
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
    out = []
    for shape, act in work:
        for dtype in dtypes:
            for cl in (False, True) if not quick else (False,):
                x = torch.randn(shape, device=device, dtype=dtype)
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                g = torch.randn(shape, device=device, dtype=dtype)  # the output is NCHW, as eager's
                fused, eager = _modules(shape[1], act, device, dtype)
                comp = compiled(eager)
                tag = f"{'x'.join(map(str, shape))} {str(dtype)[6:]}{' cl' if cl else ''}"
                n, es = x.numel(), x.element_size()
                fwd = {"fastgan": lambda m=fused, x=x: m(x), "eager": lambda m=eager, x=x: m(x),
                       "compile": lambda m=comp, x=x: m(x)}
                out.append(Case("instance_norm_act", f"{act} fwd {tag}", fwd, bytes=3 * n * es))
                xr = x.clone().requires_grad_()
                ours, _ = saved_bytes(fused, xr)
                theirs, _ = saved_bytes(eager, xr)
                fb = {"fastgan": _fwd_bwd(fused, xr, g), "eager": _fwd_bwd(eager, xr, g),
                      "compile": _fwd_bwd(comp, xr, g)}
                out.append(Case("instance_norm_act", f"{act} fwd+bwd {tag} saved {ours / theirs:.2f}x", fb,
                                bytes=7 * n * es))
    return out
