"""A whole DCGAN training step: fused fastgan networks vs torch.nn (eager and torch.compile)."""
from conftest import run_case

FAMILY = "train_step"


def test_train_step(benchmark, case, who):
    run_case(benchmark, case, who)
