"""The SIMT emulator's own tests: csrc/simt/tests/selftest_kernels.cu, correct kernels and planted bugs,
built as a standalone program three ways (plain, ASan+UBSan, TSan) and run case by case.

Each case states what must happen in each build: a correct kernel gives the host's results under
every thread order (and both wmma fragment mappings) with no sanitizer report; a planted bug is
reported by the emulator, gives a wrong result under some order or mapping, or is reported by the
sanitizer that can see it. Together the builds must catch every planted bug.
"""
import os
import shutil
import subprocess
import sys

import pytest

import fastgan.simt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")

pytestmark = pytest.mark.skipif(not fastgan.simt.available() or not os.path.isdir(CSRC),
                                reason="needs the SIMT build and the source tree")

SAN = {"plain": [], "asan": ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
       "tsan": ["-fsanitize=thread"]}
ORDERS = ["fwd", "rev", "rand:1", "rand:2"]

OK = dict(plain="ok", asan="clean", tsan="clean")
# plain: "ok" | "wrong" (under some order or mapping) | "error:<text of the emulator's report>" | None
# asan, tsan: "clean" (no report, plain's outcome in fwd order) | sanitizer text that must appear | None
CASES = {
    "reduce": OK,
    "block_sum": OK,
    "neighbour": OK,
    "vote": OK,
    "shuffle": OK,
    "atomic": OK,
    "memory": OK,
    "blocks": OK,
    "wmma_half": OK,
    "wmma_bf16": OK,
    "wmma_tf32": OK,
    "cp_async": OK,
    "no_trap": OK,
    "config_smem_optin": OK,
    # planted bugs
    "reduce_no_barrier": dict(plain="wrong", asan=None, tsan="ThreadSanitizer: data race"),
    "reduce_partial_shuffle": dict(plain="error:which did not take part", asan="clean", tsan="clean"),
    "reduce_divergent_barrier": dict(plain="error:divergent __syncthreads", asan="clean", tsan="clean"),
    "reduce_exit_before_barrier": dict(plain="error:has already exited the kernel", asan="clean", tsan="clean"),
    "reduce_lane_not_in_mask": dict(plain="error:its own lane is not in the mask", asan="clean", tsan="clean"),
    "neighbour_no_syncwarp": dict(plain="wrong", asan=None, tsan="ThreadSanitizer: data race"),
    "memory_dynamic_short": dict(plain=None, asan="AddressSanitizer: heap-buffer-overflow", tsan=None),
    "memory_static_overrun": dict(plain=None, asan="out of bounds for type 'float [64]'", tsan=None),
    "memory_misaligned_vector": dict(plain=None, asan="misaligned address", tsan=None),
    "memory_grid_stride_bound": dict(plain=None, asan="AddressSanitizer: heap-buffer-overflow", tsan=None),
    "blocks_race": dict(plain="ok", asan="clean", tsan="ThreadSanitizer: data race"),
    "wmma_layout_assumed": dict(plain="wrong", asan="clean", tsan="clean"),
    "wmma_misaligned": dict(plain="error:must be 256-bit aligned", asan="clean", tsan="clean"),
    "wmma_diverged": dict(plain="error:diverged warp", asan="clean", tsan="clean"),
    "cp_async_no_wait": dict(plain="wrong", asan="clean", tsan=None),
    "cp_async_no_barrier": dict(plain="wrong", asan="clean", tsan="ThreadSanitizer: data race"),
    "cp_async_misaligned": dict(plain="error:with a misaligned address", asan="clean", tsan="clean"),
    "deadlock": dict(plain="error:lane 5 of its mask never arrives", asan="clean", tsan="clean"),
    "trap": dict(plain="error:thread (40,0,0) [warp 1 lane 8] executed __trap()", asan="clean", tsan="clean"),
    "config_empty_grid": dict(plain="error:invalid configuration argument", asan="clean", tsan="clean"),
    "config_too_many_threads": dict(plain="error:invalid configuration argument", asan="clean", tsan="clean"),
    "config_block_z": dict(plain="error:invalid configuration argument", asan="clean", tsan="clean"),
    "config_grid_y": dict(plain="error:invalid configuration argument", asan="clean", tsan="clean"),
    "config_smem_no_optin": dict(plain="error:too much dynamic shared memory", asan="clean", tsan="clean"),
}


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """The self-test program, built plain, with ASan+UBSan and with TSan (in parallel)."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = tmp_path_factory.mktemp("simt_selftest")
    src = out / "src"
    subprocess.run([sys.executable, os.path.join(CSRC, "simt", "cu2simt.py"), CSRC, str(src),
                    "simt/tests/selftest_kernels.cu", "common/block_reduce.cuh", "common/cp_async.cuh"], check=True)
    inc = fastgan.simt._simt.build_info()["cuda_include"]
    base = [cxx, "-std=c++17", "-O1", "-g", "-DFASTGAN_SIMT", f"-I{src}", f"-I{CSRC}/simt/include",
            f"-I{CSRC}/simt", f"-I{CSRC}", f"-I{inc}", str(src / "simt/tests/selftest_kernels.cu.cpp"),
            os.path.join(CSRC, "simt/tests/selftest_main.cpp")]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    procs = {fl: subprocess.Popen(base + SAN[fl] + ["-o", str(out / fl)], env=env, stderr=subprocess.PIPE, text=True)
             for fl in SAN}
    for fl, p in procs.items():
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"building the {fl} self-test failed:\n{err}"
    return {fl: str(out / fl) for fl in SAN}


def run(program, case, order="fwd", mapping="strided"):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", TSAN_OPTIONS="halt_on_error=0")
    env.pop("LD_PRELOAD", None)
    p = subprocess.run([program, case, order, mapping], capture_output=True, text=True, timeout=300, env=env)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("case=")), "")
    status = line.split(" status=")[1].split(" ")[0] if " status=" in line else "crashed"
    return status, line, p


def test_every_case_has_an_expectation(programs):
    listed = set(subprocess.run([programs["plain"], "list"], capture_output=True, text=True).stdout.split())
    assert listed == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_plain(programs, case):
    want = CASES[case]["plain"]
    if want is None:
        pytest.skip("undefined behaviour without a sanitizer")
    mappings = ["strided", "blocked"] if case.startswith("wmma") else ["strided"]
    results = [run(programs["plain"], case, o, m) for o in ORDERS for m in mappings]
    statuses = [r[0] for r in results]
    if want == "ok":
        assert statuses == ["ok"] * len(statuses), [r[1] for r in results]
    elif want == "wrong":
        assert "wrong" in statuses and set(statuses) <= {"ok", "wrong"}, [r[1] for r in results]
    else:
        text = want[len("error:"):]
        for status, line, _ in results:
            assert status == "error" and text in line, line


@pytest.mark.parametrize("flavour", ["asan", "tsan"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_sanitized(programs, case, flavour):
    want = CASES[case][flavour]
    if want is None:
        pytest.skip(f"not a {flavour} case")
    status, line, p = run(programs[flavour], case)
    report = p.stdout + p.stderr
    if want == "clean":
        assert "Sanitizer" not in report and "runtime error" not in report and p.returncode == 0, report[-3000:]
        plain = CASES[case]["plain"]
        if plain in ("ok", "wrong"):
            assert status in ("ok", "wrong"), line
        else:
            assert status == "error" and plain[len("error:"):] in line, line
    else:
        assert want in report, report[-3000:]


def test_every_planted_bug_is_caught():
    """Each planted bug is caught by at least one build (the emulator, ASan/UBSan or TSan)."""
    for case, e in CASES.items():
        if e is OK or case == "no_trap" or case == "config_smem_optin":
            continue
        caught = (e["plain"] not in (None, "ok")) or any(e[f] not in (None, "clean") for f in ("asan", "tsan"))
        assert caught, case
