"""conv_transpose cases: FusedConvTranspose2d vs nn.ConvTranspose2d + activation (eager, cuDNN with
cudnn.benchmark on a GPU) and torch.compile of that eager module (mode="max-autotune" on CUDA; the
default mode on the CPU, where max-autotune's C++ GEMM search takes minutes).

Shapes: the DCGAN-64 generator blocks (k4 s2 p1 upsampling; the first block 1x1 -> 4x4 k4 s1 p0)
at batch 64 and 128 on a GPU, float32 and bfloat16, channels_last; on the CPU the issue's anchor
16x128x16x16 -> 64 channels in both layouts. FLOPs are the useful multiply-adds x2 (x3 for fwd+bwd).
"fwd" is a training forward (parameters require grad, so each contender records what its backward keeps).
"""
import torch
from torch import nn

from fastgan.bench import Case, register_suite
from fastgan.nn import FusedConvTranspose2d

# (name, cin, cout, h, k, s, p, act)
DCGAN_G = [("G1", 100, 512, 1, 4, 1, 0, "relu"), ("G2", 512, 256, 4, 4, 2, 1, "relu"),
           ("G3", 256, 128, 8, 4, 2, 1, "relu"), ("G4", 128, 64, 16, 4, 2, 1, "relu"),
           ("G5", 64, 3, 32, 4, 2, 1, "tanh")]
CPU_ANCHOR = [("cpu-anchor", 128, 64, 16, 4, 2, 1, "lrelu")]
_EAGER_ACT = {"relu": lambda: nn.ReLU(), "lrelu": lambda: nn.LeakyReLU(0.2), "tanh": lambda: nn.Tanh()}


def _modules(cin, cout, k, s, p, act, device, dtype, cl):
    eager = nn.Sequential(nn.ConvTranspose2d(cin, cout, k, s, p), _EAGER_ACT[act]()).to(device, dtype)
    fused = FusedConvTranspose2d(cin, cout, k, s, p, activation=act, negative_slope=0.2).to(device, dtype)
    fused.load_state_dict(eager[0].state_dict())
    if cl:
        eager, fused = eager.to(memory_format=torch.channels_last), fused.to(memory_format=torch.channels_last)
    return eager, fused


def _fwd_bwd(model, x, g, params):
    def run():
        y = model(x)
        return torch.autograd.grad(y, [x] + params, g)
    return run


@register_suite("conv_transpose")
def cases(device: str, quick: bool):
    if device == "cuda":
        layers, batches, dtypes, layouts = DCGAN_G, (64, 128), (torch.float32, torch.bfloat16), (True,)
        mode = "max-autotune"
        if quick:
            layers, batches = DCGAN_G[1:4], (128,)
    else:
        layers, batches, dtypes, layouts = CPU_ANCHOR, (16,), (torch.float32,), (False, True)
        mode = "default"
    out = []
    if device == "cuda":
        # The measured matrix rate these layers are compared with (bf16 GEMM, 8192^3).
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        out.append(Case("conv_transpose", "matrix rate: torch.mm 8192^3 bf16", {"fastgan": lambda a=a: a @ a},
                        flops=2 * 8192 ** 3))
    for name, cin, cout, h, k, s, p, act in layers:
        for n in batches:
            for dtype in dtypes:
                for cl in layouts:
                    torch.manual_seed(0)
                    eager, fused = _modules(cin, cout, k, s, p, act, device, dtype, cl)
                    comp = torch.compile(eager, mode=mode)
                    x = torch.randn(n, cin, h, h, device=device, dtype=dtype)
                    if cl:
                        x = x.contiguous(memory_format=torch.channels_last)
                    flops = 2 * n * cin * h * h * cout * k * k
                    tag = f"{name} {n}x{cin}x{h}x{h}->{cout} {str(dtype)[6:]}{' cl' if cl else ''}"
                    fwd = {"fastgan": lambda m=fused, x=x: m(x), "eager": lambda m=eager, x=x: m(x),
                           "compile": lambda m=comp, x=x: m(x)}
                    out.append(Case("conv_transpose", f"{act} fwd {tag}", fwd, flops=flops))
                    xr = x.clone().requires_grad_()
                    g = torch.randn_like(eager(x))
                    out.append(Case("conv_transpose", f"{act} fwd+bwd {tag}",
                                    {"fastgan": _fwd_bwd(fused, xr, g, list(fused.parameters())),
                                     "eager": _fwd_bwd(eager, xr, g, list(eager.parameters())),
                                     "compile": _fwd_bwd(comp, xr, g, list(eager.parameters()))},
                                    flops=3 * flops))
    return out
