"""fastgan: fused C++/CUDA kernels for GAN training in PyTorch, and a thin trainer.

    import fastgan
    fastgan.info()                       # what was built, for which torch and GPUs
    y = fastgan.ops.bias_act(x, b, act="lrelu")
    act = fastgan.nn.FusedLeakyReLU(0.2)  # drop-in for nn.LeakyReLU
    with fastgan.verify(): ...           # every op call checked against its float64 reference
                                         # (or FASTGAN_VERIFY=1 for the whole process)
"""
import torch

from ._ext import BUILD_INFO, _C  # noqa: F401  (must come first: loads the kernels)
from . import ops, nn  # noqa: E402,F401
from .ops._verify import VerificationError, verify  # noqa: E402,F401

__version__ = BUILD_INFO["version"]

_LAZY = ("models", "train", "data", "bench")


def __getattr__(name):
    """fastgan.models / .train / .data / .bench, imported on first use (they pull in more)."""
    if name in _LAZY:
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'fastgan' has no attribute {name!r}")


def info() -> dict:
    """Build and runtime facts: versions, CUDA, archs, the SIMT build (its flavour: plain, asan, tsan;
    None when absent), and which kernels each op has (cpu, cuda, simt)."""
    from . import simt
    facts = _C.build_info()
    simt_facts = simt.info()
    ops_table = {}
    for name in facts["ops"]:
        qual = f"fastgan::{name}"
        ops_table[name] = {
            "cpu": torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CPU"),
            "cuda": bool(facts["cuda"]) and torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CUDA"),
            "simt": simt_facts["present"] and torch._C._dispatch_has_kernel_for_dispatch_key(
                f"fastgan_simt::{name}", "CPU"),
        }
    return {
        "fastgan": facts["version"],
        "torch_built": facts["torch"],
        "torch_running": torch.__version__,
        "cuda_compiled": bool(facts["cuda"]),
        "cuda_version_built": facts["cuda_version"],
        "archs": [a for a in facts["archs"].split(";") if a],
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "simt": simt_facts["flavour"] if simt_facts["present"] else None,
        "ops": ops_table,
    }
