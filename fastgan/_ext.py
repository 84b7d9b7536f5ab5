"""Load the compiled extension `fastgan._C`, after checking it was built for this torch.

The build records its facts in `_build_info.json` (see setup.py). A binary built against another
torch major.minor would fail to load with an undefined-symbol error, or worse load and misbehave,
so the versions are compared before the binary is touched.
"""
import json
import os

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."


def major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def check_torch_version(built: str, running: str) -> None:
    """Raise ImportError unless `built` and `running` torch versions share major.minor."""
    if major_minor(built) != major_minor(running):
        raise ImportError(
            f"fastgan was built against torch {built} but torch {running} is installed; its "
            f"kernels must be rebuilt for this torch: run `{REBUILD}` in the fastgan source folder.")


def read_build_info() -> dict:
    path = os.path.join(_HERE, "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ImportError(
            "fastgan's compiled kernels are missing (no fastgan/_build_info.json): build them with "
            "`pip install --no-build-isolation -e .` in the fastgan source folder.") from None


def check_cpu(cpu_arch: str, cpuinfo_path: str = "/proc/cpuinfo") -> None:
    """Raise ImportError if the binary needs AVX2/FMA and this CPU lacks them."""
    if cpu_arch != "avx2" or not os.path.exists(cpuinfo_path):
        return
    with open(cpuinfo_path) as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    if flags is not None and not {"avx2", "fma"} <= set(flags):
        raise ImportError("fastgan was built for CPUs with AVX2 and FMA, which this CPU lacks; rebuild "
                          f"with `FASTGAN_CPU_ARCH=generic {REBUILD}`.")


BUILD_INFO = read_build_info()
check_torch_version(BUILD_INFO["torch"], torch.__version__)
check_cpu(BUILD_INFO.get("cpu_arch", "generic"))
try:
    from fastgan import _C  # noqa: E402,F401  (registers torch.ops.fastgan.*)
except ImportError as e:
    raise ImportError(f"fastgan's compiled kernels failed to load ({e}); rebuild them: `{REBUILD}`") from e
