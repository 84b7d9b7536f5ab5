"""diff_augment: fused DiffAugment vs eager PyTorch and torch.compile."""
from conftest import run_case

FAMILY = "diff_augment"


def test_diff_augment(benchmark, case, who):
    run_case(benchmark, case, who)
