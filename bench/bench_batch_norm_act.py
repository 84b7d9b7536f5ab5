"""batch_norm_act: fused BatchNorm + ReLU/LeakyReLU vs eager nn.BatchNorm2d + activation and torch.compile."""
from conftest import run_case

FAMILY = "batch_norm_act"


def test_batch_norm_act(benchmark, case, who):
    run_case(benchmark, case, who)
