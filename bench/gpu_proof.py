#!/usr/bin/env python3
"""The one-call GPU proof: on a machine with an NVIDIA GPU, from the repository root,

    python bench/gpu_proof.py

builds fastgan with its CUDA kernels for this GPU against the torch that is installed, runs the whole
test suite, `fastgan selftest`, compute-sanitizer (memcheck, racecheck, synccheck, initcheck) over
every CUDA kernel (`fastgan selftest --backend cuda --quick --dtype float16,float32` under each
tool), and `fastgan bench`, then writes bench/results/<gpu>-<date>.json and .md: every stage's
outcome, figures and time, the commit, and the versions of everything involved. Each stage has a time budget, all of them together
under 9 minutes (PROOF_BUDGET_S, default 530 s): a stage that runs out is recorded as such and the
next one starts. Results are also copied to $OUT when that is set (the lent-GPU tool brings $OUT back).

Without a GPU it says so and exits 0: there is nothing to prove on this machine.
"""
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
# Stage budgets in seconds (caps; the overall budget cuts the last ones short when earlier ones ran long).
BUDGET = {"build": 200, "tests": 170, "selftest": 60, "sanitizer": 150, "bench": 90}


def sh(cmd, timeout, env=None, cwd=ROOT):
    """(returncode or 'timeout', seconds, combined output)."""
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=max(1, timeout))
        return p.returncode, time.time() - t0, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return "timeout", time.time() - t0, out.decode(errors="replace") if isinstance(out, bytes) else out


def versions():
    v = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch
        v.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    except ImportError:
        v["torch"] = None
    for name, cmd in (("nvcc", ["nvcc", "--version"]), ("driver", ["nvidia-smi", "--query-gpu=driver_version",
                                                                    "--format=csv,noheader"]),
                      ("compute_sanitizer", ["compute-sanitizer", "--version"]),
                      ("commit", ["git", "rev-parse", "HEAD"]), ("dirty", ["git", "status", "--porcelain"])):
        try:
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = None
        if name == "nvcc" and out:
            m = re.search(r"release ([\d.]+)", out)
            out = m.group(1) if m else out.splitlines()[-1]
        if name == "compute_sanitizer" and out:
            out = out.splitlines()[-1]
        if name == "dirty":
            out = bool(out)
        v[name] = out
    return v


def pytest_counts(text):
    """{'passed': n, 'failed': n, 'skipped': n, ...} from pytest's last summary line."""
    counts = {}
    for line in reversed(text.splitlines()):
        if re.search(r"\d+ (passed|failed|error)", line):
            for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", line):
                counts[what.rstrip("s") if what.startswith("error") else what] = int(n)
            break
    return counts


def sanitizer_errors(text):
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    return sum(int(x) for x in m) if m else None


def tail(text, n=40):
    return "\n".join(text.splitlines()[-n:])


def markdown(report):
    """The human-readable page of a report."""
    v = report["versions"]
    lines = [f"# GPU proof: {report['gpu']} ({report['date']})", "",
             f"Commit `{v.get('commit')}`{' (with uncommitted changes)' if v.get('dirty') else ''}; torch "
             f"{v.get('torch')} (CUDA {v.get('torch_cuda')}, cuDNN {v.get('cudnn')}), nvcc {v.get('nvcc')}, driver "
             f"{v.get('driver')}, Python {v.get('python')}; compute capability {report.get('capability')}. "
             f"Command: `python bench/gpu_proof.py`, {report['seconds']:.0f} s in all.", "",
             "| stage | result | time | figures |", "| --- | --- | --- | --- |"]
    for name, st in report["stages"].items():
        fig = st.get("summary", "")
        lines.append(f"| {name} | {st['result']} | {st['seconds']:.0f} s | {fig} |")
    if report.get("selftest_rows"):
        lines += ["", "## selftest (cuda)", "", "| op | dtype | cases | max error | err/tol | result |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in report["selftest_rows"]:
            if r["backend"] == "cuda":
                lines.append(f"| {r['op']} | {r['dtype']} | {r['cases']} | {r['max_err']:.2e} | {r['worst']:.3f} | "
                             f"{'pass' if r['ok'] else 'FAIL: ' + r['where']} |")
    if report.get("conv_paths"):
        lines += ["", "## conv_transpose2d_act paths chosen", ""]
        lines += [f"- `{p[0]}`: {p[1]}" + (f" (aten {p[2] * 1e3:.3f} ms, fused {p[3] * 1e3:.3f} ms)" if p[2] or p[3]
                                               else "") for p in report["conv_paths"]]
    if report.get("bench_markdown"):
        lines += ["", "## fastgan bench (ratios: above 1, fastgan is faster)", "", report["bench_markdown"]]
    return "\n".join(lines) + "\n"


def write(report, results_dir):
    os.makedirs(results_dir, exist_ok=True)
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", report["gpu"]).strip("-").lower() or "gpu"
    base = os.path.join(results_dir, f"{gpu}-{report['date']}")
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=2, default=str)
    with open(base + ".md", "w") as f:
        f.write(markdown(report))
    out = os.environ.get("OUT")
    if out and os.path.isdir(out):
        for ext in (".json", ".md"):
            shutil.copy(base + ext, out)
    return base


def main(argv=None):
    t_start = time.time()
    total = float(os.environ.get("PROOF_BUDGET_S", "530"))
    deadline = t_start + total

    def budget(stage, reserve_after):
        return max(10, min(BUDGET[stage], deadline - time.time() - reserve_after))

    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        print("gpu_proof: no CUDA GPU here (torch.cuda.is_available() is False): nothing to prove on this "
              "machine. Run it where a GPU is; the CUDA kernels run in CI on the SIMT emulator instead.")
        return 0
    cap = torch.cuda.get_device_capability()
    gpu = torch.cuda.get_device_name()
    report = {"gpu": gpu, "capability": f"{cap[0]}.{cap[1]}", "date": datetime.date.today().isoformat(),
              "versions": versions(), "stages": {}}
    env = dict(os.environ, FASTGAN_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{cap[0]}.{cap[1]}",
               MAX_JOBS=str(os.cpu_count() or 4), PYTHONUNBUFFERED="1")
    py = sys.executable

    def stage(name, cmd, seconds, summarize):
        print(f"== {name} ({seconds:.0f} s budget): {' '.join(cmd)}", flush=True)
        rc, dt, out = sh(cmd, seconds, env)
        ok, summary = summarize(rc, out)
        report["stages"][name] = {"result": "timeout" if rc == "timeout" else ("pass" if ok else "FAIL"),
                                  "returncode": rc, "seconds": dt, "summary": summary, "log_tail": tail(out)}
        print(f"   {report['stages'][name]['result']} in {dt:.0f} s: {summary}", flush=True)
        return out

    stage("build", [py, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", "."],
          budget("build", 250), lambda rc, out: (rc == 0, "CUDA kernels for sm_" + f"{cap[0]}{cap[1]}"))
    if report["stages"]["build"]["result"] != "pass":
        return finish(report, t_start)

    def tests_summary(rc, out):
        c = pytest_counts(out)
        return rc == 0, ", ".join(f"{v} {k}" for k, v in c.items()) or "no summary"
    stage("tests", [py, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider"]
          + (["--timeout=120"] if _has_timeout_plugin() else []), budget("tests", 200), tests_summary)

    sj = os.path.join(ROOT, "build", "gpu_proof_selftest.json")
    stage("selftest", [py, "-m", "fastgan", "selftest", "--backend", "cuda", "--json", sj],
          budget("selftest", 160), lambda rc, out: (rc == 0, out.strip().splitlines()[-1] if out.strip() else ""))
    if os.path.exists(sj):
        with open(sj) as f:
            report["selftest_rows"] = json.load(f)["rows"]
    if os.path.exists(sj):
        with open(sj) as f:
            report["conv_paths"] = json.load(f).get("conv_paths", {}).get("cuda")

    exe = shutil.which("compute-sanitizer") or os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin",
                                                            "compute-sanitizer")
    for tool in TOOLS:
        if not os.path.exists(exe):
            report["stages"][f"compute-sanitizer {tool}"] = {"result": "skipped", "seconds": 0,
                                                             "summary": "compute-sanitizer not found"}
            continue
        stage(f"compute-sanitizer {tool}",
              [exe, "--tool", tool, "--error-exitcode", "1", py, "-m", "fastgan", "selftest", "--backend", "cuda",
               "--quick", "--dtype", "float16,float32"], budget("sanitizer", 90) / len(TOOLS) * 1.5,
              lambda rc, out: (rc == 0 and sanitizer_errors(out) == 0,
                               f"{sanitizer_errors(out)} errors" if sanitizer_errors(out) is not None else "no summary"))

    bj = os.path.join(ROOT, "build", "gpu_proof_bench.json")
    bm = os.path.join(ROOT, "build", "gpu_proof_bench.md")
    stage("bench", [py, "-m", "fastgan", "bench", "--quick", "--device", "cuda", "--json", bj, "--markdown", bm],
          budget("bench", 10), lambda rc, out: (rc == 0, "ratio table below" if rc == 0 else ""))
    if os.path.exists(bj):
        with open(bj) as f:
            report["bench"] = json.load(f)
    if os.path.exists(bm):
        with open(bm) as f:
            report["bench_markdown"] = f.read()
    return finish(report, t_start)


def _has_timeout_plugin():
    try:
        import pytest_timeout  # noqa: F401
        return True
    except ImportError:
        return False


def finish(report, t_start):
    report["seconds"] = time.time() - t_start
    base = write(report, os.environ.get("PROOF_RESULTS", os.path.join(ROOT, "bench", "results")))
    print(markdown(report))
    print(f"gpu_proof: wrote {base}.json and {base}.md")
    failed = [k for k, v in report["stages"].items() if v["result"] not in ("pass", "skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
