"""Where a DCGAN training step's time goes: torch.profiler over warm steps of fastgan's networks and
losses and of the same architecture in torch.nn (the contenders of fastgan/bench/train_step.py),
self CPU time grouped by what the op is.

    python bench/profile_step.py [--size 32 --channels 1 --width 32 --batch 64] [--steps 10]
                                 [--channels-last] [--table]

The default is the default `fastgan train` run (digits, DCGAN-32, batch 64, fp32). Groups, by op
name: convolution (forward and backward of Conv2d / ConvTranspose2d, with fastgan's fused
epilogue where the op does it), normalisation + activation, loss, Adam and in-place arithmetic
(gradient accumulation too), the rest (autograd engine, copies, allocation). --table also prints
the profiler's top ops.
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fastgan.bench.train_step import _contender

GROUPS = [
    ("convolution", ("convolution", "conv2d", "conv_transpose", "mkldnn", "_convolution")),
    ("norm + act", ("batch_norm", "bias_act", "leaky_relu", "relu", "threshold", "tanh", "clamp")),
    ("loss", ("gan_", "binary_cross_entropy", "log_sigmoid", "softplus", "sigmoid")),
    ("Adam + in-place arithmetic", ("Adam", "addcdiv", "addcmul", "lerp", "sqrt", "_foreach", "mul_", "add_", "div_")),
]


def group_of(name: str) -> str:
    for g, keys in GROUPS:
        if any(k in name for k in keys):
            return g
    return "rest"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--channels-last", action="store_true", help="networks and data in channels_last")
    ap.add_argument("--table", action="store_true")
    a = ap.parse_args()
    real = torch.rand(a.batch, a.channels, a.size, a.size) * 2 - 1
    print(f"DCGAN-{a.size} w{a.width} c{a.channels} b{a.batch} fp32, {torch.get_num_threads()} threads"
          f"{', channels_last' if a.channels_last else ''}")
    for kind in ("fastgan", "eager"):
        step = _contender(kind, a.size, a.channels, a.width, 100, real, None)
        if a.channels_last:
            real_cl = real.contiguous(memory_format=torch.channels_last)
            real.set_(real_cl)  # the step closure holds `real`; its data now has channels_last strides
            for m in step.__closure__:
                if isinstance(m.cell_contents, torch.nn.Module):
                    m.cell_contents.to(memory_format=torch.channels_last)
        for _ in range(3):
            step()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        wall = (time.perf_counter() - t0) / a.steps
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(a.steps):
                step()
        events = p.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        by = {}
        for e in events:
            by[group_of(e.key)] = by.get(group_of(e.key), 0) + e.self_cpu_time_total
        parts = ", ".join(f"{g} {100 * by.get(g, 0) / total:.0f}%" for g, _ in GROUPS + [("rest", ())])
        print(f"{kind:8s} {wall * 1e3:7.1f} ms/step unprofiled; self CPU: {parts}")
        if a.table:
            print(events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=48))


if __name__ == "__main__":
    main()
