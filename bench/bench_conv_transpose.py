"""conv_transpose: FusedConvTranspose2d vs nn.ConvTranspose2d + activation, eager and torch.compile."""
from conftest import run_case

FAMILY = "conv_transpose"


def test_conv_transpose(benchmark, case, who):
    run_case(benchmark, case, who)
