"""The build contract: recorded facts, the torch-version guard, `fastgan info`."""
import json
import subprocess
import sys

import pytest
import torch

import fastgan
from fastgan import _ext

def test_info_reports_versions_and_kernels():
    info = fastgan.info()
    assert info["fastgan"] == fastgan.__version__
    assert _ext.major_minor(info["torch_built"]) == _ext.major_minor(torch.__version__)
    assert info["torch_running"] == torch.__version__
    # what the build recorded agrees with itself and with the running torch
    assert info["cuda_compiled"] == (info["cuda_version_built"] is not None)
    assert info["cuda_available"] == torch.cuda.is_available()
    assert len(info["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for name in ("bias_act", "bias_act_backward", "bias_act_"):
        assert info["ops"][name]["cpu"] is True
        assert info["ops"][name]["cuda"] is info["cuda_compiled"]
    if info["cuda_compiled"]:
        assert info["archs"], "a CUDA build records its archs"
    assert info["cuda_compiled"] == _ext.BUILD_INFO["cuda"]


def test_torch_version_guard():
    _ext.check_torch_version("2.13.0", "2.13.1+cu130")  # same major.minor: fine
    with pytest.raises(ImportError, match=r"built against torch 2\.12\.0.*2\.13\.0.*--no-build-isolation"):
        _ext.check_torch_version("2.12.0", "2.13.0")


def test_cpu_guard(tmp_path):
    no_avx2 = tmp_path / "cpuinfo"
    no_avx2.write_text("processor : 0\nflags : fpu sse sse2 ssse3 sse4_1\n")
    with pytest.raises(ImportError, match="AVX2.*FASTGAN_CPU_ARCH=generic"):
        _ext.check_cpu("avx2", str(no_avx2))
    _ext.check_cpu("generic", str(no_avx2))
    ok = tmp_path / "cpuinfo_ok"
    ok.write_text("flags : fpu avx avx2 fma\n")
    _ext.check_cpu("avx2", str(ok))


def run_cli(*args):
    # `python -m fastgan` from the current folder: the same fastgan this test process imported
    return subprocess.run([sys.executable, "-m", "fastgan", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_info():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    assert "torch_built" in r.stdout and "bias_act" in r.stdout
    r = run_cli("info", "--json")
    assert json.loads(r.stdout)["fastgan"] == fastgan.__version__


def test_cli_bad_arguments_one_line():
    r = run_cli("no-such-command")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
