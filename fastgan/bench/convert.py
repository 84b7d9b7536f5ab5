"""The DCGAN of the PyTorch tutorial, as a user has it (torch.nn, BCELoss on sigmoid outputs,
Adam(2e-4, betas=(0.5, 0.999))): one training step after fastgan.nn.convert against the same
model unconverted, eager and torch.compile."""
import copy

import torch
from torch import nn

from fastgan.bench import Case, compiled, register_suite


def tutorial_dcgan(nz=100, ngf=64, ndf=64, nc=3):
    """The tutorial's 64x64 G and D (Sequential of torch.nn layers) with its weight init."""
    g = [nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True)]
    for m in (8, 4, 2):
        g += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * m // 2),
              nn.ReLU(True)]
    g += [nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh()]
    d = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    for m in (1, 2, 4):
        d += [nn.Conv2d(ndf * m, ndf * m * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * m * 2),
              nn.LeakyReLU(0.2, inplace=True)]
    d += [nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
    G, D = nn.Sequential(*g), nn.Sequential(*d)
    for m in list(G.modules()) + list(D.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return G, D


def _step(G, D, real, nz):
    """The tutorial's loop body: D on real (1) and fake (0), then G through D with label 1."""
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(D.parameters(), lr=0.0002, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=0.0002, betas=(0.5, 0.999))
    b = real.shape[0]
    ones = torch.ones(b, device=real.device)
    zeros = torch.zeros(b, device=real.device)

    def run():
        D.zero_grad()
        err_real = criterion(D(real).view(-1), ones)
        err_real.backward()
        fake = G(torch.randn(b, nz, 1, 1, device=real.device))
        err_fake = criterion(D(fake.detach()).view(-1), zeros)
        err_fake.backward()
        opt_d.step()
        G.zero_grad()
        err_g = criterion(D(fake).view(-1), ones)
        err_g.backward()
        opt_g.step()
        return err_g
    return run


@register_suite("convert")
def cases(device: str, quick: bool):
    from fastgan.nn import convert
    if device == "cuda":
        configs = [(64, 128)]  # the tutorial's widths and batch size
    else:
        configs = [(32, 16)] if quick else [(32, 16), (64, 16)]
    out = []
    for width, batch in configs:
        torch.manual_seed(0)
        G, D = tutorial_dcgan(100, width, width, 3)
        G, D = G.to(device), D.to(device)
        real = torch.rand(batch, 3, 64, 64, device=device) * 2 - 1
        Gc, Dc = convert(copy.deepcopy(G)), convert(copy.deepcopy(D))
        copies = lambda: (copy.deepcopy(G), copy.deepcopy(D))  # noqa: E731
        ge, de = copies()
        gc, dc = copies()
        tag = f"tutorial DCGAN-64 w{width} b{batch}"
        out.append(Case("convert", f"step {tag}", {
            "fastgan": _step(Gc, Dc, real, 100),                       # converted, eager
            "eager": _step(ge, de, real, 100),                         # unconverted, eager
            "compile": _step(compiled(gc), compiled(dc), real, 100)}))  # unconverted, compiled
        gcc, dcc = convert(copy.deepcopy(G)), convert(copy.deepcopy(D))
        gu, du = copies()
        out.append(Case("convert", f"compiled step {tag}", {
            "fastgan": _step(compiled(gcc), compiled(dcc), real, 100),  # converted, compiled
            "compile": _step(compiled(gu), compiled(du), real, 100)}))   # unconverted, compiled
    return out
