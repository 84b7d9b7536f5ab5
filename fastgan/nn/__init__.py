"""Drop-in nn.Modules built on fastgan.ops (same constructor arguments and state_dict as torch.nn),
and `convert`, which swaps them into an existing torch.nn model."""
from .activation import FusedBiasAct, FusedLeakyReLU  # noqa: F401
from .batchnorm import ClassBatchNormAct2d, FusedBatchNormAct2d  # noqa: F401
from .conv import FusedConv2d, FusedConvTranspose2d  # noqa: F401
from .instancenorm import FusedInstanceNormAct2d  # noqa: F401
from .convert import convert  # noqa: F401
from .loss import GANLoss  # noqa: F401
