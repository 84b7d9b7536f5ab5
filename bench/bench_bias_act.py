"""bias_act: fused bias + LeakyReLU (+ gain) vs eager PyTorch and torch.compile."""
from conftest import run_case

FAMILY = "bias_act"


def test_bias_act(benchmark, case, who):
    run_case(benchmark, case, who)
