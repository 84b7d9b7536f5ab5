"""Build fastgan's C++/CUDA extension `fastgan._C` against the torch that is installed.

Environment variables (all optional):
  FASTGAN_CUDA=1/0        force the CUDA kernels on / off. Default: on when the installed torch is a
                          CUDA build and nvcc is found. Never decided by torch.cuda.is_available(),
                          which is False on build machines without a GPU.
  CUDA_HOME               the CUDA toolkit folder. Default: found from the nvcc on PATH, following
                          symlinks and wrapper scripts (torch's own guess takes the parent of the
                          nvcc on PATH, which is wrong when that is a link outside the toolkit).
  TORCH_CUDA_ARCH_LIST    CUDA archs, e.g. "8.0;9.0". Default: the visible GPU's, else "8.0;9.0+PTX".
  MAX_JOBS                parallel compile jobs (ninja).
  FASTGAN_DEBUG=1         -O0 -g (and -G -lineinfo for nvcc) instead of -O3.
  FASTGAN_SIMT=1          also build fastgan._simt: the CUDA kernels and launchers compiled as C++ against
                          the SIMT emulator (csrc/simt), which runs them on the CPU for the tests. Needs
                          the CUDA toolkit's headers (CUDA_HOME or nvcc on PATH), not a GPU or a CUDA torch.
  FASTGAN_SIMT_SANITIZE   with FASTGAN_SIMT=1: "asan" (ASan + UBSan) or "tsan" builds of fastgan._simt;
                          load them with the sanitizer runtime preloaded (see .ci/run).
  FASTGAN_SIMT_ONLY=1     build only fastgan._simt (e.g. `python setup.py build_ext --inplace` to switch
                          its sanitizer flavour without rebuilding fastgan._C).
  FASTGAN_CPU_ARCH        x86-64 only: "avx2" (default; AVX2 + FMA, every x86-64 CPU since 2013-15)
                          or "generic" (no AVX2, slower CPU kernels). The CPU kernels use
                          at::vec, whose fast versions exist only when AVX2 is enabled at compile
                          time; an AVX2 build refuses to import on a CPU without it.

Install with `pip install --no-build-isolation .` (or `-e .`): the extension must be compiled
against the very torch it will run with, and an isolated build would fetch another one.
"""
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _fail(msg):
    sys.stderr.write("\nfastgan setup: " + msg + "\n\n")
    sys.exit(1)


def find_cuda_home():
    """CUDA_HOME / CUDA_PATH, else the toolkit that owns the nvcc on PATH (links and wrappers resolved)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
        return home
    # nvcc on PATH may be a wrapper script: nvcc itself reports where it runs from.
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
        for line in (out.stdout + out.stderr).splitlines():
            m = re.match(r"#\$ _HERE_=(.*)$", line.strip())
            if m:
                return os.path.dirname(os.path.realpath(m.group(1)))
    except (OSError, subprocess.SubprocessError):
        pass
    return None


try:
    import torch
except ImportError:
    _fail("torch is not importable. fastgan compiles against your installed torch: install torch "
          "first, then `pip install --no-build-isolation .` (build isolation would hide your torch).")

want = os.environ.get("FASTGAN_CUDA", "").strip()
if want not in ("", "0", "1"):
    _fail(f"FASTGAN_CUDA must be 0 or 1, got {want!r}")
cuda_home = find_cuda_home()
if cuda_home:
    # cpp_extension reads CUDA_HOME once, when it is imported: set it before that.
    os.environ["CUDA_HOME"] = cuda_home
if want == "1":
    WITH_CUDA = True
elif want == "0":
    WITH_CUDA = False
else:
    WITH_CUDA = torch.version.cuda is not None and cuda_home is not None and \
        os.path.isfile(os.path.join(cuda_home, "bin", "nvcc"))
if WITH_CUDA:
    if torch.version.cuda is None:
        _fail("FASTGAN_CUDA=1 but the installed torch is a CPU build; install a CUDA build of torch.")
    if cuda_home is None:
        _fail("FASTGAN_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME or put nvcc on PATH.")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
ARCHS = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if WITH_CUDA else ""

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

DEBUG = os.environ.get("FASTGAN_DEBUG", "0") == "1"
TORCH_MM = ".".join(torch.__version__.split("+")[0].split(".")[:2])

os.chdir(ROOT)  # setuptools wants source paths relative to the project folder
sources = ["csrc/fastgan.cpp"] + sorted(glob.glob("csrc/*/*_cpu.cpp"))
if WITH_CUDA:
    sources += sorted(glob.glob("csrc/*/*_cuda.cu"))

defines = [f'-DFASTGAN_ARCHS="{ARCHS}"', f'-DFASTGAN_VERSION="{VERSION}"']
CPU_ARCH = "generic"
if platform.machine() in ("x86_64", "AMD64"):
    CPU_ARCH = os.environ.get("FASTGAN_CPU_ARCH", "avx2")
    if CPU_ARCH not in ("avx2", "generic"):
        _fail(f"FASTGAN_CPU_ARCH must be avx2 or generic, got {CPU_ARCH!r}")
cpu_flags = ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"] \
    if CPU_ARCH == "avx2" else []
if WITH_CUDA:
    defines.append("-DFASTGAN_WITH_CUDA")
cxx = (["-O0", "-g"] if DEBUG else ["-O3"]) + defines + cpu_flags
extra = {"cxx": cxx}
if WITH_CUDA:
    nvcc_flags = (["-O0", "-g", "-G"] if DEBUG else ["-O3", "-lineinfo"]) + defines + [
        "--expt-relaxed-constexpr", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "-U__CUDA_NO_HALF2_OPERATORS__"]
    if os.environ.get("NVCC_THREADS"):
        nvcc_flags.append(f"--threads={os.environ['NVCC_THREADS']}")
    extra["nvcc"] = nvcc_flags



def library_headers_missing_from_toolkit():
    """A folder of links to the CUDA library headers (cuBLAS, cuSPARSE, cuDNN, ...) that ATen's CUDA
    headers include but a minimal toolkit lacks, taken from the nvidia-* wheels that the CUDA build
    of torch depends on. Only headers absent from CUDA_HOME/include are linked, so nothing of the
    toolkit is shadowed."""
    try:
        import nvidia
    except ImportError:
        return None
    have = set(os.listdir(os.path.join(cuda_home, "include")))
    out = os.path.join("build", "cuda_library_headers")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    for pkg_dir in list(nvidia.__path__):
        for inc in sorted(glob.glob(os.path.join(pkg_dir, "*", "include"))):
            for name in os.listdir(inc):
                dst = os.path.join(out, name)
                if name not in have and not os.path.lexists(dst):
                    os.symlink(os.path.join(inc, name), dst)
    return os.path.abspath(out)


include_dirs = [os.path.join(ROOT, "csrc")]
if WITH_CUDA:
    extra_headers = library_headers_missing_from_toolkit()
    if extra_headers:
        include_dirs.append(extra_headers)
Ext = CUDAExtension if WITH_CUDA else CppExtension
ext = Ext("fastgan._C", sources, include_dirs=include_dirs, extra_compile_args=extra)


def simt_extension():
    """fastgan._simt: every csrc/*/*_cuda.cu rewritten by csrc/simt/cu2simt.py (line-preserving) and
    compiled by the host compiler against the emulator's headers, which shadow the CUDA runtime,
    <mma.h> and ATen's CUDA headers."""
    flavour = os.environ.get("FASTGAN_SIMT_SANITIZE", "") or "plain"
    if flavour not in ("plain", "asan", "tsan"):
        _fail(f"FASTGAN_SIMT_SANITIZE must be asan or tsan (or empty), got {flavour!r}")
    if cuda_home is None or not os.path.isfile(os.path.join(cuda_home, "include", "cuda_fp16.h")):
        _fail("FASTGAN_SIMT=1 needs the CUDA toolkit's headers (vector types, cuda_fp16.h, cuda_bf16.h): "
              "set CUDA_HOME or put nvcc on PATH.")
    out = os.path.join("build", "simt", "src")
    cus = sorted(os.path.relpath(p, "csrc") for p in glob.glob("csrc/*/*_cuda.cu"))
    headers = sorted(os.path.relpath(p, "csrc") for p in glob.glob("csrc/*/*.cuh"))
    subprocess.run([sys.executable, os.path.join("csrc", "simt", "cu2simt.py"), "csrc", out] + cus + headers,
                   check=True)
    san = {"plain": [], "asan": ["-fsanitize=address,undefined", "-fno-sanitize=vptr",
                                 "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
           "tsan": ["-fsanitize=thread"]}[flavour]
    flags = (["-O0", "-g"] if DEBUG else ["-O2" if flavour == "plain" else "-O1", "-g"]) + san + [
        "-fvisibility=hidden", "-DFASTGAN_SIMT", '-DFASTGAN_OP_NAMESPACE="fastgan_simt"',
        f'-DFASTGAN_SIMT_FLAVOUR="{flavour}"', f'-DFASTGAN_SIMT_CUDA_INCLUDE="{os.path.join(cuda_home, "include")}"',
        "-Wno-unknown-pragmas"]
    return CppExtension(
        "fastgan._simt", [os.path.join(out, c + ".cpp") for c in cus] + ["csrc/simt/simt_ext.cpp"],
        include_dirs=[os.path.join(ROOT, out), os.path.join(ROOT, "csrc", "simt", "include"),
                      os.path.join(ROOT, "csrc", "simt"), os.path.join(ROOT, "csrc"),
                      os.path.join(cuda_home, "include")],
        extra_compile_args={"cxx": flags}, extra_link_args=san), flavour


ext_modules = [ext]
SIMT = None
if os.environ.get("FASTGAN_SIMT", "0") == "1" or os.environ.get("FASTGAN_SIMT_ONLY", "0") == "1":
    simt_ext, SIMT = simt_extension()
    ext_modules = [simt_ext] if os.environ.get("FASTGAN_SIMT_ONLY", "0") == "1" else [ext, simt_ext]

# Build facts read by `import fastgan` *before* loading the binary (a mismatched torch would fail
# to load it with an unreadable undefined-symbol error).
build_info = {
    "version": VERSION,
    "torch": torch.__version__,
    "torch_major_minor": TORCH_MM,
    "cuda": WITH_CUDA,
    "cuda_version": torch.version.cuda if WITH_CUDA else None,
    "cuda_home": cuda_home if WITH_CUDA else None,
    "archs": ARCHS,
    "debug": DEBUG,
    "cpu_arch": CPU_ARCH,
}
if os.environ.get("FASTGAN_SIMT_ONLY", "0") != "1":  # fastgan._simt reports its own facts
    with open(os.path.join(ROOT, "fastgan", "_build_info.json"), "w") as f:
        json.dump(build_info, f, indent=2)

setup(
    name="fastgan",
    version=VERSION,
    packages=find_packages(include=["fastgan", "fastgan.*"]),
    package_data={"fastgan": ["_build_info.json"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=[f"torch=={TORCH_MM}.*", "numpy", "tqdm", "matplotlib", "pillow", "scikit-learn"],
    zip_safe=False,
)
