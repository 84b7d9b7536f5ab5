"""fastgan's CUDA kernels on the SIMT emulator (csrc/simt): the CUDA code path, run on the CPU.

No GPU is needed to execute fastgan's CUDA kernels: built with FASTGAN_SIMT=1, the extension
`fastgan._simt` holds every kernel and launcher of csrc/*/*_cuda.cu compiled as C++ against an
emulator of the CUDA execution model (one fiber per CUDA thread, every barrier and warp intrinsic
checked, shared memory poisoned, cp.async deferred, wmma emulated). Its ops are
`torch.ops.fastgan_simt.<op>`, with the schemas of `torch.ops.fastgan.<op>`, on CPU tensors.

    import fastgan.simt
    if fastgan.simt.available():
        with fastgan.simt.backend(schedule="rev"):   # torch.ops.fastgan.* on CPU tensors now
            y = fastgan.ops.bias_act(x, b, act="lrelu")  # runs the CUDA kernels, emulated

A kernel fault the emulator detects (a divergent barrier, a shuffle from a lane that did not take
part, a deadlock, a misaligned cp.async or wmma pointer, ...) raises a RuntimeError naming the
kernel, the block, the thread and the source line.
"""
import contextlib
import os

from .ops import _choose

__all__ = ["available", "info", "configure", "backend", "native", "ops", "schedules"]

# Thread orders a test runs a kernel under: a correct kernel gives the same bits in each.
# FASTGAN_SIMT_SCHEDULES=fwd narrows them (the sanitizer runs: the orders are compared in the plain one).
SCHEDULES = tuple(os.environ.get("FASTGAN_SIMT_SCHEDULES", "fwd,rev,rand:1,rand:7").split(","))

_ERROR = None
try:
    from . import _simt  # noqa: F401  (registers torch.ops.fastgan_simt.*)
except ImportError as e:  # not built (FASTGAN_SIMT=1), or a sanitizer build without its runtime
    _simt = None
    _ERROR = str(e)


def available() -> bool:
    """True when the SIMT build is present and loaded."""
    return _simt is not None


def _need():
    if _simt is None:
        raise RuntimeError("fastgan's SIMT build is not available"
                           + (f" ({_ERROR})" if _ERROR and "No module named" not in _ERROR else "")
                           + ": rebuild with `FASTGAN_SIMT=1 pip install --no-build-isolation -e .`")
    return _simt


def info() -> dict:
    """{'present': bool, 'flavour': 'plain'|'asan'|'tsan'|None, 'config': ..., 'error': ...}."""
    if _simt is None:
        return {"present": False, "flavour": None, "config": None, "error": _ERROR}
    return {"present": True, "flavour": _simt.build_info()["flavour"], "config": dict(_simt.config()),
            "error": None}


def configure(**options) -> dict:
    """Change the emulator's settings; returns the previous ones.

    schedule      "fwd" | "rev" | "rand:SEED": order of threads between sync points (and of blocks)
    sm_count      the multiProcessorCount the launchers see (grid sizes follow it)
    cc            (major, minor) the launchers see (e.g. (7, 5) takes the pre-sm_80 paths)
    wmma_map      "strided" | "blocked": which fragment element each lane holds
    capturing     what cudaStreamIsCapturing reports
    strict_sites  warp intrinsics of one rendezvous must come from one source line
    fault injection (to test the error paths of the launchers):
    fail_event_record_at  the k-th cudaEventRecord from now fails (0: the next one; -1: none)
    wmma_fault    added to one accumulator element of each mma_sync of block (0,0,0), warp 0
    """
    s = _need()
    old = dict(s.config())
    s.configure(**options)
    return old


@contextlib.contextmanager
def backend(**options):
    """Within the block, torch.ops.fastgan.* on CPU tensors run the emulated CUDA kernels
    (optionally with configure(**options)); on exit the CPU kernels and the settings are restored."""
    s = _need()
    old = configure(**options) if options else None
    was = s.routed()
    s.route(True)
    try:
        with _choose.pinned():  # the kernels are what runs, never the eager fallback
            yield
    finally:
        if not was:
            s.route(False)
        if old is not None:
            s.configure(**{k: v for k, v in old.items() if k in options})


@contextlib.contextmanager
def native():
    """Within the block, torch.ops.fastgan.* on CPU tensors run fastgan's own CPU kernels again (to
    compare against them inside a `backend()` block)."""
    s = _need()
    was = s.routed()
    s.route(False)
    try:
        yield
    finally:
        if was:
            s.route(True)


def schedules(fn, orders=SCHEDULES):
    """fn() run under each thread order (and block order): the list of its results."""
    s = _need()
    old = s.config()["schedule"]
    out = []
    try:
        for o in orders:
            s.configure(schedule=o)
            out.append(fn())
    finally:
        s.configure(schedule=old)
    return out


def ops():
    """torch.ops.fastgan_simt: the emulated ops, called directly (CPU tensors)."""
    _need()
    import torch
    return torch.ops.fastgan_simt
