"""Shared test setup: devices (CUDA params are marked and skip cleanly without a GPU), seeding."""
import pytest
import torch

import fastgan

CUDA_OK = torch.cuda.is_available() and fastgan.info()["cuda_compiled"]

# Use as @pytest.mark.parametrize("device", DEVICES)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# Tolerances against a float64 reference, by dtype.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def pytest_collection_modifyitems(config, items):
    if CUDA_OK:
        return
    why = ("no CUDA device" if not torch.cuda.is_available()
           else "fastgan was built without CUDA kernels")
    skip = pytest.mark.skip(reason=f"CUDA test: {why}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
