"""conv_transpose2d_act's CPU paths against nn.ConvTranspose2d + LeakyReLU, with more rounds than
`fastgan bench` takes: each path pinned in turn (FASTGAN_CONV_TRANSPOSE_PATH is read per call), and
the measured choice (auto), each timed against eager in alternating order.

    python bench/conv_transpose_paths.py [--shape N,C,H,W,COUT] [--channels-last] [--backward]
                                         [--rounds 40]

Prints, per path, the median ms per call of both and the median [quartiles] of the per-round
ratios eager / fastgan (> 1: fastgan faster). docs/benchmarks.md, "conv_transpose2d_act's third
CPU path", holds what it measured.
"""
import argparse
import os
import statistics
import time

import torch
from torch import nn

import fastgan
from fastgan.nn import FusedConvTranspose2d


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="16,128,16,16,64")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--backward", action="store_true", help="time forward + backward")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--paths", default="aten,aten_cl,fused,auto")
    a = ap.parse_args()
    if a.rounds < 2:
        ap.error("--rounds must be at least 2 (the ratios' quartiles need two)")
    n, c, h, w, cout = (int(v) for v in a.shape.split(","))
    torch.manual_seed(0)
    ours = FusedConvTranspose2d(c, cout, 4, 2, 1, activation="lrelu")
    ref = nn.Sequential(nn.ConvTranspose2d(c, cout, 4, 2, 1), nn.LeakyReLU(0.2))
    x = torch.randn(n, c, h, w)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        ours.to(memory_format=torch.channels_last)
        ref.to(memory_format=torch.channels_last)

    def call(m):
        y = m(x)
        if a.backward:
            y.sum().backward()

    def two(m):
        t = time.perf_counter()
        call(m)
        call(m)
        return (time.perf_counter() - t) / 2

    for path in a.paths.split(","):
        os.environ["FASTGAN_CONV_TRANSPOSE_PATH"] = path
        fastgan._C.clear_conv_transpose_paths()
        for _ in range(3):
            call(ours)
            call(ref)
        t_ours, t_ref, ratios = [], [], []
        for r in range(a.rounds):
            if r % 2:
                to, tr = two(ours), two(ref)
            else:
                tr, to = two(ref), two(ours)
            t_ours.append(to)
            t_ref.append(tr)
            ratios.append(tr / to)
        q = statistics.quantiles(ratios)
        chosen = ",".join(e[1] for e in fastgan._C.conv_transpose_paths()) or "-"
        print(f"{path:8s} (chose {chosen:7s}) fastgan {statistics.median(t_ours) * 1e3:7.2f} ms  "
              f"eager {statistics.median(t_ref) * 1e3:7.2f} ms  ratio {statistics.median(ratios):.2f}x "
              f"[{q[0]:.2f}-{q[2]:.2f}]", flush=True)


if __name__ == "__main__":
    main()
