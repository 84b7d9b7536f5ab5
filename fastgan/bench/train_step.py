"""A whole DCGAN training step (D update on real + fake, then G update through the frozen D, Adam):
fastgan's fused networks and losses vs the same architecture from torch.nn with PyTorch losses,
eager and torch.compile."""
import torch

from fastgan.bench import Case, register_suite


def _step(G, D, opt_g, opt_d, d_loss, g_loss, real, z_dim, amp_dtype):
    dev = real.device.type

    def run():
        z = torch.randn(real.shape[0], z_dim, device=real.device)
        with torch.autocast(dev, dtype=amp_dtype, enabled=amp_dtype is not None):
            fake = G(z)
            rl, fl = D(real), D(fake.detach())
        ld = d_loss(rl.float(), fl.float(), "ns")
        opt_d.zero_grad(set_to_none=True)
        ld.backward()
        opt_d.step()
        D.requires_grad_(False)
        with torch.autocast(dev, dtype=amp_dtype, enabled=amp_dtype is not None):
            fo = D(fake)
        lg = g_loss(fo.float(), "ns")
        opt_g.zero_grad(set_to_none=True)
        lg.backward()
        opt_g.step()
        D.requires_grad_(True)
        return lg
    return run


def _contender(kind, size, channels, width, z_dim, real, amp_dtype):
    from fastgan import ops
    from fastgan.models import DCGANDiscriminator, DCGANGenerator
    from fastgan.ops import reference
    torch.manual_seed(0)
    fused = kind == "fastgan"
    G = DCGANGenerator(z_dim, channels, size, width, fused=fused).to(real.device)
    D = DCGANDiscriminator(channels, size, width, fused=fused).to(real.device)
    if real.device.type == "cuda":
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    if fused:
        dl, gl = (lambda r, f, k: ops.d_loss(r, f, k)), ops.g_loss
    else:
        dl, gl = (lambda r, f, k: reference.d_loss(r, f, k)), reference.g_loss
    if kind == "compile":
        G, D = torch.compile(G), torch.compile(D)
        dl, gl = torch.compile(dl), torch.compile(gl)
    return _step(G, D, opt_g, opt_d, dl, gl, real, z_dim, amp_dtype)


def step_flops(size, channels, width, z_dim, batch):
    """FLOPs of one step, counting multiply-adds as 2: G forward (g), D forward x3 (real, fake, fake
    for the G update), the D update's backward on real and fake (2 x 2d: input and weight
    gradients), the G update's backward through the frozen D (d: input gradients only) and
    through G (2g): 3g + 8d."""
    import math
    k = int(math.log2(size)) - 2
    ws = [width * 2 ** (k - 1 - i) for i in range(k)]
    g = 2 * z_dim * ws[0] * 16                       # z -> 4x4
    s = 4
    for a, b in zip(ws, ws[1:] + [channels]):
        s *= 2
        g += 2 * a * b * 16 * (s // 2) ** 2          # ConvT k4 s2: MACs = Cin*Cout*16*Hin*Win
    d = 0
    s = size
    for a, b in zip([channels] + ws[::-1][:-1], ws[::-1]):
        s //= 2
        d += 2 * a * b * 16 * s * s
    d += 2 * ws[0] * 16
    return batch * (3 * g + 8 * d)


@register_suite("train_step")
def cases(device: str, quick: bool):
    if device == "cuda":
        configs = [(64, 3, 64, 100, 128, None), (64, 3, 64, 100, 128, torch.bfloat16)]
        if quick:
            configs = configs[1:]
    else:
        configs = [(32, 1, 32, 100, 64, None)]  # the default `fastgan train` run (digits, 32 px)
        if not quick:
            configs.append((64, 3, 64, 100, 16, None))
    out = []
    for size, ch, width, z_dim, batch, amp in configs:
        real = torch.rand(batch, ch, size, size, device=device) * 2 - 1
        if device == "cuda":
            real = real.contiguous(memory_format=torch.channels_last)
        fns = {k: _contender(k, size, ch, width, z_dim, real, amp) for k in ("fastgan", "eager", "compile")}
        tag = f"DCGAN-{size} w{width} c{ch} b{batch} {'bf16' if amp else 'fp32'}"
        out.append(Case("train_step", f"step {tag}", fns, flops=step_flops(size, ch, width, z_dim, batch)))
    return out
