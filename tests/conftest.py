"""Shared test setup: devices, seeding.

The "device" parameter of the op tests takes three values:
  cpu    the CPU kernels;
  cuda   the CUDA kernels on a GPU (marked `cuda`; skipped without one);
  simt   the CUDA kernels on the SIMT emulator (marked `simt`): the test runs on CPU tensors while
         torch.ops.fastgan.* are routed to fastgan._simt (see fastgan/simt.py), so every CUDA kernel
         runs without a GPU. Skipped when fastgan was built without FASTGAN_SIMT=1, unless
         FASTGAN_REQUIRE_SIMT=1 (CI), which makes a missing SIMT build an error.
"""
import atexit
import contextlib
import os
import shutil
import tempfile

# Seeded quality tests (mode coverage, Frechet distance) train GANs, whose trajectories amplify the
# last bit of every matrix product: MKL's code path depends on the CPU (AVX2, AVX-512), so a seed that
# covers every mode on one machine may not on another. MKL's compatible path gives the same bits on
# every x86-64 CPU (it must be chosen before MKL starts, hence before torch is imported).
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

# The suite leaves the user's home alone: the feature-net cache (fastgan.train.metrics.cache_dir(),
# ~/.cache/fastgan by default) goes to a fresh folder per session, so every session also exercises the
# cache-miss path. Set before fastgan is imported, and inherited by the CLI subprocesses. A caller's
# own FASTGAN_CACHE is respected (and left in place).
if not os.environ.get("FASTGAN_CACHE"):
    SESSION_CACHE = tempfile.mkdtemp(prefix="fastgan-test-cache-")
    os.environ["FASTGAN_CACHE"] = SESSION_CACHE
    _CACHE_OWNER = os.getpid()

    @atexit.register
    def _remove_session_cache():
        if os.getpid() == _CACHE_OWNER:  # not from a forked child
            shutil.rmtree(SESSION_CACHE, ignore_errors=True)
else:
    SESSION_CACHE = None

# The op tests test the kernels: the measured eager fallback (fastgan.ops._choose) is pinned off
# here, so that no test compares eager PyTorch with itself; tests/test_choose.py turns it back on.
# Inherited by the CLI subprocesses (whose runs are then the same bits in every process).
os.environ.setdefault("FASTGAN_BIAS_ACT_PATH", "fused")
os.environ.setdefault("FASTGAN_BATCH_NORM_ACT_PATH", "fused")

import pytest  # noqa: E402
import torch  # noqa: E402

# tqdm's default write lock includes a multiprocessing semaphore that forked processes share: one
# killed while holding it (as mutation testing's forked runs can be, on a timeout) hangs every later
# progress bar. The suite's bars are written by one process at a time, so a thread lock suffices.
import threading  # noqa: E402

from tqdm.auto import tqdm as _tqdm  # noqa: E402

_tqdm.set_lock(threading.RLock())

import fastgan  # noqa: E402
import fastgan.simt  # noqa: E402

CUDA_OK = torch.cuda.is_available() and fastgan.info()["cuda_compiled"]
SIMT_OK = fastgan.simt.available()

SIMT = pytest.param("cpu", id="simt", marks=pytest.mark.simt)
# Use as @pytest.mark.parametrize("device", DEVICES)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda), SIMT]
# The CUDA code path: a GPU, or the emulator.
CUDA_PATHS = [pytest.param("cuda", marks=pytest.mark.cuda), SIMT]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# Tolerances against a float64 reference, by dtype.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=5e-3, rtol=5e-3),
}


def pytest_collection_modifyitems(config, items):
    if not SIMT_OK and os.environ.get("FASTGAN_REQUIRE_SIMT") == "1":
        raise pytest.UsageError("FASTGAN_REQUIRE_SIMT=1 but fastgan's SIMT build is not available: "
                                f"{fastgan.simt.info()['error'] or 'build with FASTGAN_SIMT=1'}")
    why = ("no CUDA device" if not torch.cuda.is_available()
           else "fastgan was built without CUDA kernels")
    skip_cuda = pytest.mark.skip(reason=f"CUDA test: {why}")
    skip_simt = pytest.mark.skip(reason="SIMT test: fastgan was built without FASTGAN_SIMT=1")
    for item in items:
        if "cuda" in item.keywords and not CUDA_OK:
            item.add_marker(skip_cuda)
        if "simt" in item.keywords and not SIMT_OK:
            item.add_marker(skip_simt)


@pytest.fixture(autouse=True)
def _seed():
    """Each test starts from seed 0 and leaves torch's thread count as it found it (the CLI's
    --threads sets it process-wide, and float32 results depend on it)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def cpu_kernels():
    """A block in which torch.ops.fastgan.* on CPU tensors run the CPU kernels (inside a simt test
    too, where they are otherwise routed to the emulated CUDA kernels): the side to compare against."""
    if SIMT_OK and fastgan.simt._simt.routed():
        return fastgan.simt.native()
    return contextlib.nullcontext()


@pytest.fixture(autouse=True)
def _simt_backend(request):
    """Tests marked simt run with torch.ops.fastgan.* routed to the emulated CUDA kernels."""
    if request.node.get_closest_marker("simt") is None or not SIMT_OK:
        yield
        return
    with fastgan.simt.backend():
        yield


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny networks (pytestmark = pytest.mark.usefixtures("one_thread")): one thread
    is faster, and immune to spinning OpenMP threads on a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# A kernel off by a little must fail a test's comparison at that test's tolerance:
# lrelu slope 0.21 for 0.2, gain x1.01, bias + 0.01, as (alpha, gain factor, bias shift).
BUGS = {"slope": (0.21, 1.0, 0.0), "gain": (0.2, 1.01, 0.0), "bias": (0.2, 1.0, 0.01)}


def fails(got, want, **tol) -> bool:
    """Whether torch.testing.assert_close(got, want, **tol) rejects got."""
    try:
        torch.testing.assert_close(got, want, **tol)
    except AssertionError:
        return True
    return False


def too_loose(why):
    """The mark of a case whose tolerance is known too loose: an XPASS once it is tightened."""
    return pytest.mark.xfail(strict=True, reason=f"tolerance too loose: {why}")
