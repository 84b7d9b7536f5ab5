"""gan_loss: fused D/G losses and the R1 step vs eager PyTorch and torch.compile."""
from conftest import run_case

FAMILY = "gan_loss"


def test_gan_loss(benchmark, case, who):
    run_case(benchmark, case, who)
