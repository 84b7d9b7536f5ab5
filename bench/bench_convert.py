"""The PyTorch tutorial's DCGAN step after fastgan.nn.convert vs unconverted (eager, torch.compile)."""
from conftest import run_case

FAMILY = "convert"


def test_convert_step(benchmark, case, who):
    run_case(benchmark, case, who)
