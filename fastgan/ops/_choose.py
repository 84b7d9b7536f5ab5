"""Measured choice between a fused op and the eager ATen ops it replaces (issue 15: never slower).

Some fused CPU paths lose to eager PyTorch at some shapes (small tensors in eval, where ATen's
BatchNorm is one tight loop; channels_last reductions). For each call site family, the first call of
each new key (device, dtype, shape, layout, options, whether gradients are needed, thread count)
times both paths on throwaway copies of the inputs (forward, plus backward when gradients are
needed; running statistics are not touched, no random numbers are drawn) and caches the faster.
The eager path must win by more than 5% (TIE): within that the fused path, which keeps less memory
for backward, stays.

Environment, per family, read at import: FASTGAN_BIAS_ACT_PATH and FASTGAN_BATCH_NORM_ACT_PATH =
auto (default) | fused | eager; set_path() changes them at run time. FASTGAN_VERBOSE=1 prints every
choice to stderr. The choice is made on the CPU only: CUDA tensors, torch.compile tracing, autocast
and the SIMT emulator (`pinned()`) always take the fused op. The two paths round differently and a
timing can go either way in another process: the trainer's checkpoints carry the choices (export(),
restore()) so that a resumed run takes the same paths; elsewhere, pin a path where runs must be
bit-identical across processes.
"""
import contextlib
import os
import sys
import time

import torch

ENV = {"bias_act": "FASTGAN_BIAS_ACT_PATH", "batch_norm_act": "FASTGAN_BATCH_NORM_ACT_PATH"}
# what each family's key holds (dtype, shape and layout of x come first in every family)
FIELDS = {"bias_act": ("bias", "dim", "act", "clamp", "gain", "grad(x,b)"),
          "batch_norm_act": ("weight", "bias", "training", "running_stats", "act", "memory_efficient",
                             "grad(x,weight,bias)")}
MODES = ("auto", "fused", "eager")

# The eager path is chosen only where it is faster by more than this: within it the fused path,
# which keeps less memory for backward, stays (and a noisy first measurement cannot flip a tie).
TIE = 0.95
# key -> (use_eager, ms_fused, ms_eager)
_cache: dict = {}
_pinned = 0
_trace = None  # inside traced(): the keys whose cached choice the calls used


@contextlib.contextmanager
def traced():
    """Collects, in the set it yields, the key of every call that took a measured choice (fastgan
    bench labels each row with the paths its fastgan contender ran)."""
    global _trace
    old, _trace = _trace, set()
    try:
        yield _trace
    finally:
        _trace = old


def summary(keys) -> str:
    """'fused', 'eager' or 'eager k/n' for the distinct keys of traced(); '-' when there are none."""
    keys = set(keys)
    eager = sum(bool(_cache[k][0]) for k in keys if k in _cache)
    if not keys:
        return "-"
    return "fused" if eager == 0 else "eager" if eager == len(keys) else f"eager {eager}/{len(keys)}"


@contextlib.contextmanager
def pinned():
    """Within the block every call takes the fused op (the SIMT emulator, selftest: what they check
    is the kernels)."""
    global _pinned
    _pinned += 1
    try:
        yield
    finally:
        _pinned -= 1


# Read once, at import (as FASTGAN_VERIFY): the check costs a dict read per call. set_path() changes it.
_MODE = {f: os.environ.get(name) or "auto" for f, name in ENV.items()}
_DTYPES = (torch.float32, torch.float64)


def set_path(family: str, path: str):
    """Pin `family` ('bias_act', 'batch_norm_act') to 'fused' or 'eager', or measure ('auto')."""
    if path not in MODES:
        raise ValueError(f"fastgan: path must be auto, fused or eager, got {path!r}")
    _MODE[family] = path


def path(family: str) -> str:
    return _MODE[family]


def candidate(family: str, x: torch.Tensor) -> bool:
    """Whether a call on `x` may take the eager path at all (checked before building a key): not where
    the family is pinned to the fused op, inside torch.compile tracing, under autocast, or for other
    than float32/float64 CPU tensors. Ordered cheapest first: about a microsecond per call."""
    m = _MODE[family]
    if m == "fused" or _pinned or torch.compiler.is_compiling():
        return False
    if m not in MODES:
        raise ValueError(f"fastgan: environment variable {ENV[family]} must be auto, fused or eager, "
                         f"got {m!r}")
    return (x.is_cpu and x.dtype in _DTYPES and type(x) is torch.Tensor and not x.is_inference()
            and not torch.is_autocast_enabled("cpu"))


def _can_measure() -> bool:
    """Not inside torch.func transforms (vmap, grad), saved-tensor hooks (activation checkpointing,
    offloading), torch.jit tracing or Python dispatch / function modes (make_fx, FlopCounterMode,
    memory trackers), where the extra forward and backward of a measurement would be transformed,
    hooked, traced or counted. A call there takes the fused op whatever the cache holds, so that
    a checkpointed forward and its recomputation (both under hooks) take the same path."""
    return (torch._C._functorch.peek_interpreter_stack() is None
            and torch._C._autograd._top_saved_tensors_default_hooks(False) is None
            and torch._C._get_tracing_state() is None and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled())


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def use_eager(key: tuple, make, *args) -> bool:
    """True where the eager path should run for `key` (family, dtype, shape, strides, the family's
    fields, thread count). On a cache miss, make(*args) gives (fused, eager): closures that run one call
    each (forward and, where gradients are needed, backward) on throwaway inputs; or None where the
    eager path cannot take these arguments (the fused op then raises its error)."""
    if _MODE[key[0]] == "eager":  # pinned: whatever the cache holds (restored from a checkpoint too)
        return make(*args) is not None
    if not _can_measure():
        return False
    hit = _cache.get(key)
    if hit is not None:
        if _trace is not None:
            _trace.add(key)
        return hit[0]
    pair = make(*args)  # (no closure at the call site: it would make the caller's locals cells)
    if pair is None:
        return False
    fused, eager = pair
    with torch.random.fork_rng(devices=[]):  # the paths draw no random numbers; this makes sure
        fused()  # first: a bad argument raises the fused op's own error, and nothing is cached
        eager()
        fused()  # warm-up: the first calls of a new size pay for fresh pages (mmap) in both paths
        eager()
        tf, te, spent, rounds = [], [], 0.0, 0
        # interleaved rounds, the order alternating: at least 5 (3 where a round takes over 0.2 s),
        # more while they take under 50 ms in all
        while rounds < 15 and (rounds < 3 or (rounds < 5 and spent < 0.6) or spent < 0.05):
            if rounds % 2 == 0:
                a = _time(fused)
                b = _time(eager)
            else:
                b = _time(eager)
                a = _time(fused)
            tf.append(a)
            te.append(b)
            spent += a + b
            rounds += 1
    f, e = min(tf), min(te)
    choice = e < TIE * f
    _cache[key] = (choice, f * 1e3, e * 1e3)
    if _trace is not None:
        _trace.add(key)
    if os.environ.get("FASTGAN_VERBOSE", "0") == "1":
        print(f"fastgan {key[0]}: {_describe(key)} -> {'eager' if choice else 'fused'} "
              f"(fused {f * 1e3:.3f} ms, eager {e * 1e3:.3f} ms, min of {rounds})", file=sys.stderr)
    return choice


def _describe(key: tuple) -> str:
    """'float32 (128, 512, 4, 4) contiguous bias=True ... threads=2' for a cache key."""
    family, dtype, shape, stride, *rest, threads = key
    named = " ".join(f"{n}={v}" for n, v in zip(FIELDS[family], rest))
    return f"{str(dtype).replace('torch.', '')} {tuple(shape)} {_layout(shape, stride)} {named} threads={threads}"


def _layout(shape, stride) -> str:
    t = torch.empty_strided(shape, stride, device="meta")
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    return f"strides {tuple(stride)}"


def choices():
    """[(family, key, path, ms_fused, ms_eager)] of the choices made in this process, sorted."""
    out = [(k[0], _describe(k), "eager" if v[0] else "fused", v[1], v[2]) for k, v in _cache.items()]
    return sorted(out, key=lambda r: (r[0], r[1]))


def clear():
    """Forget every choice (the next call of each key measures again)."""
    _cache.clear()


def export() -> dict:
    """Every measured choice of this process (these ops' and the conv-transpose launcher's) as plain
    data, for a checkpoint: a resumed run restore()s them and takes the paths it took before, so that
    timing noise in the new process cannot change its numerics."""
    from .. import _C
    ops = [[str(k[1]).replace("torch.", ""), list(k[2]), list(k[3])] + [list(v) if isinstance(v, tuple) else v
                                                                       for v in (k[0],) + k[4:]] + list(c)
           for k, c in _cache.items()]
    conv = [list(e[:4]) for e in _C.conv_transpose_paths()]
    return {"ops": ops, "conv_transpose": conv}


def restore(state: dict):
    """Load the choices of export() (an older checkpoint without them: nothing happens)."""
    from .. import _C
    for e in (state or {}).get("ops", []):
        dtype, shape, stride, family, *fields = e[:-3]
        key = (family, getattr(torch, dtype), torch.Size(shape), tuple(stride),
               *(tuple(v) if isinstance(v, list) else v for v in fields))
        _cache[key] = tuple(e[-3:])
    for key, path, t_aten, t_fused in (state or {}).get("conv_transpose", []):
        _C.set_conv_transpose_path(key, path, t_aten, t_fused)


def run_once(fn, inputs, grads):
    """A closure running fn(*copies) and, where any grads[i], its backward with a ones gradient,
    on detached copies of `inputs` (so nothing the caller holds is touched)."""
    copies = [None if t is None else t.detach().requires_grad_(g) for t, g in zip(inputs, grads)]
    wrt = [c for c, g in zip(copies, grads) if g]

    def run():
        if not wrt:
            with torch.no_grad():
                fn(*copies)
            return
        with torch.enable_grad():
            y = fn(*copies)
            torch.autograd.grad(y, wrt, torch.ones_like(y))
    return run
