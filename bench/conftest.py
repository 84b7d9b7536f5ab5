"""pytest-benchmark over fastgan.bench's cases: one test per (case, contender), and at the end a
table of the ratios measured in this run (contender median / fastgan median).

    python -m pytest bench -o python_files='bench_*.py' --benchmark-only [--quick-bench]
"""
import collections

import torch


def pytest_configure(config):
    # Cases compile the same eager function on many shapes; see fastgan.bench.run.
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 1024)


def pytest_addoption(parser):
    parser.addoption("--quick-bench", action="store_true", help="fewer shapes")


def timed(fn):
    from fastgan.bench import _sync

    def run():
        out = fn()
        _sync()
        return out
    return run


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames and hasattr(metafunc.module, "FAMILY"):
        from fastgan import bench
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            torch.backends.cudnn.benchmark = True
        cases = bench._suites()[metafunc.module.FAMILY](device, metafunc.config.getoption("--quick-bench"))
        params = [(c, who) for c in cases for who in bench.CONTENDERS if who in c.fns]
        metafunc.parametrize(("case", "who"), params, ids=[f"{c.name} [{w}]" for c, w in params])


def run_case(benchmark, case, who):
    benchmark.group = f"{case.family}: {case.name}"
    benchmark.extra_info.update(contender=who, bytes=case.bytes, flops=case.flops)
    fn = timed(case.fns[who])
    for _ in range(3):
        fn()
    benchmark.pedantic(fn, rounds=20, iterations=3, warmup_rounds=1)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    groups = collections.defaultdict(dict)
    for b in bs.benchmarks:
        if b.stats is not None and b.stats.rounds:
            groups[b.group][b.extra_info.get("contender")] = b.stats.median
    tr = terminalreporter
    tr.write_sep("=", "fastgan ratios (this run; > 1: fastgan faster)")
    for g, t in groups.items():
        f = t.get("fastgan")
        if not f:
            continue
        ratios = "  ".join(f"vs {w}: {t[w] / f:5.2f}x" for w in ("eager", "compile") if w in t)
        tr.write_line(f"{g:70s} fastgan {f * 1e3:8.3f} ms  {ratios}")
