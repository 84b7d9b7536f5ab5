"""`fastgan selftest` and the one-call GPU proof (bench/gpu_proof.py) on a machine without a GPU."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan import selftest
from conftest import SIMT_OK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fastgan", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def test_selftest_cpu_table_and_json(tmp_path):
    out = cli("selftest", "--backend", "cpu", "--op", "bias_act,grad_penalty", "--json", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "op" in out.stdout and "err/tol" in out.stdout and "8 of 8 passed" in out.stdout
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert {(r["op"], r["dtype"]) for r in rows} == {(op, dt) for op in ("bias_act", "grad_penalty")
                                                     for dt in ("float32", "float16", "bfloat16", "float64")}
    assert all(r["ok"] and r["cases"] > 0 for r in rows)


def test_selftest_fails_on_a_wrong_kernel():
    lib = torch.library.Library("fastgan", "IMPL")
    lib.impl("grad_penalty", lambda g, c, w, sq: (torch.tensor(1.0), torch.ones(g.shape[0])), "CPU")
    try:
        rows = selftest.run(["cpu"], ["grad_penalty"], [torch.float32], log=lambda *a: None)
    finally:
        lib._destroy()
    assert not rows[0]["ok"] and "penalty" in rows[0]["where"]


def test_selftest_unknown_backend_is_a_one_line_error():
    out = cli("selftest", "--backend", "tpu")
    assert out.returncode == 2 and "not available here: tpu" in out.stdout


@pytest.mark.skipif(not SIMT_OK, reason="needs the SIMT build")
def test_selftest_simt_reports_conv_paths():
    out = cli("selftest", "--backend", "simt", "--op", "conv_transpose2d_act", "--quick")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "conv_transpose2d_act paths chosen on simt" in out.stdout and "(gemm mode)" in out.stdout


def test_info_reports_simt():
    out = cli("info")
    assert out.returncode == 0 and "simt" in out.stdout
    assert fastgan.info()["simt"] == (fastgan.simt.info()["flavour"] if SIMT_OK else None)


def _proof():
    spec = importlib.util.spec_from_file_location("gpu_proof", os.path.join(ROOT, "bench", "gpu_proof.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_proof_without_a_gpu_says_so_and_exits_cleanly():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_proof.py")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "no CUDA GPU here" in out.stdout


def test_gpu_proof_report_files(tmp_path, monkeypatch):
    proof = _proof()
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    os.makedirs(tmp_path / "out")
    report = {"gpu": "NVIDIA H200", "capability": "9.0", "date": "2026-12-01", "seconds": 420.0,
              "versions": {"commit": "abc", "torch": "2.11.0", "torch_cuda": "13.0", "nvcc": "13.0"},
              "stages": {"build": {"result": "pass", "seconds": 80, "summary": "ok"},
                         "tests": {"result": "FAIL", "seconds": 150, "summary": "2 failed, 900 passed"}},
              "selftest_rows": [dict(op="bias_act", backend="cuda", dtype="float32", cases=3, max_err=1e-6,
                                     worst=0.01, where="", seconds=0.1, ok=True)],
              "conv_paths": [["cuda Half [..]", "fused", 1e-4, 5e-5, "(phase mode)"]],
              "bench_markdown": "| case | ratio |"}
    base = proof.write(report, str(tmp_path / "results"))
    assert base.endswith("nvidia-h200-2026-12-01")
    md = open(base + ".md").read()
    assert "| tests | FAIL | 150 s | 2 failed, 900 passed |" in md and "fused (aten 0.100 ms" in md
    assert json.load(open(base + ".json"))["versions"]["commit"] == "abc"
    assert sorted(os.listdir(tmp_path / "out")) == ["nvidia-h200-2026-12-01.json", "nvidia-h200-2026-12-01.md"]
    assert proof.pytest_counts("== 3 failed, 10 passed, 2 skipped in 4.0s ==") == {"failed": 3, "passed": 10,
                                                                                  "skipped": 2}
    assert proof.sanitizer_errors("========= ERROR SUMMARY: 0 errors") == 0
