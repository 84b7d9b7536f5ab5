"""class_batch_norm_act: fused class-conditional BatchNorm + ReLU vs eager BatchNorm2d(affine=False) +
gathered per-class affine + ReLU, and torch.compile of it."""
from conftest import run_case

FAMILY = "class_batch_norm_act"


def test_class_batch_norm_act(benchmark, case, who):
    run_case(benchmark, case, who)
