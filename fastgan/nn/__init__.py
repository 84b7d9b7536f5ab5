"""Drop-in nn.Modules built on fastgan.ops (same constructor arguments and state_dict as torch.nn)."""
from .activation import FusedBiasAct, FusedLeakyReLU  # noqa: F401
from .batchnorm import FusedBatchNormAct2d  # noqa: F401
from .conv import FusedConvTranspose2d  # noqa: F401
from .loss import GANLoss  # noqa: F401
