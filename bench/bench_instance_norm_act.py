"""instance_norm_act: fused InstanceNorm + activation vs eager nn.InstanceNorm2d + activation, and
torch.compile of it, at CycleGAN's shapes."""
from conftest import run_case

FAMILY = "instance_norm_act"


def test_instance_norm_act(benchmark, case, who):
    run_case(benchmark, case, who)
