"""Per-call overhead of the fused ops: tiny tensors (the kernels cost next to nothing), one thread,
the mean time of one call in each of 15 blocks of 300 calls; prints the min and median block.

    python bench/overhead.py [out.json]

What it is for: telling how much of a small-tensor call is the dispatcher, autograd and the Python
wrapper (docs/design.md, "Autograd is registered ..."; docs/benchmarks.md). Eager rows are the
same computation in torch ops, "sum().backward() alone" the floor every fwd+bwd row includes.
"""
import sys, time, json, torch
import fastgan.ops as O
torch.set_num_threads(1)
torch.manual_seed(0)

def per_call(f, n=300, blocks=15):
    for _ in range(20): f()
    best = []
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(n): f()
        best.append((time.perf_counter() - t) / n * 1e6)
    best.sort()
    return best[0], best[len(best)//2]

x = torch.randn(2, 8, 2, 2, requires_grad=True); b = torch.randn(8, requires_grad=True)
w = torch.ones(8, requires_grad=True); bb = torch.zeros(8, requires_grad=True)
rm, rv = torch.zeros(8), torch.ones(8)
xc = torch.randn(2, 8, 2, 2, requires_grad=True); wc = torch.randn(8, 4, 4, 4, requires_grad=True); bc = torch.randn(4, requires_grad=True)
cases = {
 "bias_act fwd": lambda: O.bias_act(x.detach(), b.detach(), act="lrelu"),
 "bias_act fwd+bwd": lambda: O.bias_act(x, b, act="lrelu").sum().backward(),
 "eager bias+lrelu fwd+bwd": lambda: torch.nn.functional.leaky_relu(x + b.view(1,-1,1,1), 0.2).sum().backward(),
 "bna fwd+bwd": lambda: O.batch_norm_act(x, w, bb, rm, rv, training=True, act="relu").sum().backward(),
 "eager bn+relu fwd+bwd": lambda: torch.relu(torch.nn.functional.batch_norm(x, rm, rv, w, bb, True)).sum().backward(),
 "convt fwd+bwd": lambda: O.conv_transpose2d_act(xc, wc, bc, 2, 1, act="relu").sum().backward(),
 "eager convt+relu fwd+bwd": lambda: torch.relu(torch.nn.functional.conv_transpose2d(xc, wc, bc, 2, 1)).sum().backward(),
 "sum().backward() alone": lambda: x.sum().backward(),
}
out = {}
for k, f in cases.items():
    out[k] = per_call(f)
    print(f"{k:28s} min {out[k][0]:7.1f} us  median {out[k][1]:7.1f} us", flush=True)
if len(sys.argv) > 1: json.dump(out, open(sys.argv[1], "w"))
