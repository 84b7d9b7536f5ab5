"""Side-by-side timing of fastgan against eager PyTorch and torch.compile, in one run.

A *case* is one workload (op, shape, dtype, direction) with a zero-argument callable per
contender: "fastgan", "eager" (plain PyTorch) and "compile" (torch.compile of the eager code).
Each op family contributes a suite, a module fastgan/bench/<family>.py with a function
`(device, quick) -> list[Case]` decorated with @register_suite("<family>"). The same cases feed `fastgan bench` (a ratio table, JSON) and the pytest-benchmark
files in bench/.

Timing: torch.utils.benchmark.Timer (synchronises CUDA), after warm-up, median of blocks.
Ratios are contender time / fastgan time: above 1 means fastgan is faster.
"""
import dataclasses
import datetime
import json
import platform
import subprocess
from typing import Callable, Dict, List, Optional

import torch
import torch.utils.benchmark as tbench

CONTENDERS = ("fastgan", "eager", "compile")


@dataclasses.dataclass
class Case:
    family: str
    name: str                      # e.g. "lrelu fwd+bwd 64x128x32x32 float32"
    fns: Dict[str, Callable[[], object]]
    bytes: Optional[int] = None    # minimum bytes moved by one call (for GB/s)
    flops: Optional[int] = None    # useful FLOPs of one call (for TFLOP/s)


def grad_fn(f, inputs, grad_out):
    """A callable running forward + backward of f(*inputs) against grad_out (no .grad accumulation)."""
    def run():
        out = f(*inputs)
        return torch.autograd.grad(out, [t for t in inputs if t.requires_grad], grad_out)
    return run


def compiled(f):
    """torch.compile of f; compilation happens during the warm-up calls."""
    return torch.compile(f, dynamic=False)


def _timeit(fn, min_run_time: float) -> float:
    for _ in range(3):  # warm-up (compiles, allocator, cuDNN choice)
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    # Timer defaults to one thread; time with the threads the warm-up (and compilation) used.
    t = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return t.blocked_autorange(min_run_time=min_run_time).median


def _suites():
    import importlib
    import pkgutil
    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")
    return dict(SUITES)


SUITES: Dict[str, Callable[[str, bool], List[Case]]] = {}


def register_suite(family: str):
    def deco(fn):
        SUITES[family] = fn
        return fn
    return deco


def run(device: str, quick: bool, families=None, contenders=CONTENDERS) -> List[dict]:
    rows = []
    min_time = 0.2 if quick else 1.0
    # Every case compiles the same eager function on other shapes: without a higher limit dynamo
    # stops compiling after 8 and the "compile" column silently becomes eager.
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 1024)
    suites = _suites()
    unknown = set(families or ()) - set(suites)
    if unknown:
        raise ValueError(f"unknown op families {sorted(unknown)}; known: {sorted(suites)}")
    for fam in families or list(suites):
        for case in suites[fam](device, quick):
            times = {}
            for who in contenders:
                if who in case.fns:
                    try:
                        times[who] = _timeit(case.fns[who], min_time)
                    except Exception as e:  # a contender that cannot run is reported, not fatal
                        times[who] = None
                        print(f"  {case.family} {case.name} [{who}] failed: {type(e).__name__}: {e}")
            row = {"family": case.family, "case": case.name,
                   **{f"{w}_ms": (None if t is None else t * 1e3) for w, t in times.items()}}
            f = times.get("fastgan")
            for w in contenders:
                if w != "fastgan" and times.get(w) and f:
                    row[f"vs_{w}"] = times[w] / f
            if f and case.bytes:
                row["fastgan_GBps"] = case.bytes / f / 1e9
            if f and case.flops:
                row["fastgan_TFLOPs"] = case.flops / f / 1e12
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def format_row(r: dict) -> str:
    def ms(k):
        v = r.get(k)
        return f"{v:9.3f}" if v is not None else "        -"

    def x(k):
        v = r.get(k)
        return f"{v:6.2f}x" if v is not None else "      -"
    extra = ""
    if "fastgan_GBps" in r:
        extra += f"  {r['fastgan_GBps']:7.1f} GB/s"
    if "fastgan_TFLOPs" in r:
        extra += f"  {r['fastgan_TFLOPs']:6.2f} TFLOP/s"
    return (f"{r['family']:15s} {r['case']:48s} {ms('fastgan_ms')} {ms('eager_ms')} {ms('compile_ms')}"
            f"  {x('vs_eager')} {x('vs_compile')}{extra}")


HEADER = (f"{'family':15s} {'case':48s} {'fastgan':>9s} {'eager':>9s} {'compile':>9s}"
          f"  {'/eager':>7s} {'/compile':>7s}   (ms, median; ratio > 1: fastgan faster)")


def environment(device: str) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "cuda": torch.version.cuda, "device": device,
           "python": platform.python_version(), "machine": platform.machine(),
           "threads": torch.get_num_threads()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["cpu"] = platform.processor() or platform.machine()
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def markdown(env: dict, rows: List[dict]) -> str:
    """The results as a markdown table, headed by the environment they were measured in."""
    lines = [f"Measured {env['date']} on {env.get('gpu') or env.get('cpu')} ({env['device']}, "
             f"{env['threads']} threads), torch {env['torch']}, commit {env.get('commit')}.", "",
             "| family | case | fastgan ms | eager ms | compile ms | vs eager | vs compile | fastgan GB/s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        def f(k, fmt):
            return fmt.format(r[k]) if r.get(k) is not None else "-"
        lines.append(f"| {r['family']} | {r['case']} | {f('fastgan_ms', '{:.3f}')} | {f('eager_ms', '{:.3f}')} | "
                     f"{f('compile_ms', '{:.3f}')} | {f('vs_eager', '{:.2f}x')} | {f('vs_compile', '{:.2f}x')} | "
                     f"{f('fastgan_GBps', '{:.1f}')} |")
    return "\n".join(lines) + "\n"


def main(quick: bool = False, device: Optional[str] = None, json_path: Optional[str] = None,
         families=None, md_path: Optional[str] = None) -> int:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    env = environment(device)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    print(HEADER)
    try:
        rows = run(device, quick, families)
    except ValueError as e:
        print(f"fastgan bench: {e}")
        return 2
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"environment": env, "results": rows}, f, indent=2)
        print(f"wrote {json_path}")
    if md_path:
        with open(md_path, "w") as f:
            f.write(markdown(env, rows))
        print(f"wrote {md_path}")
    return 0
