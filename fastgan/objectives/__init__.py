"""What differs between GAN variants, one small file each; fastgan.train.GANTrainer runs the loop.
See base.py for the contract."""
from .base import Objective  # noqa: F401
from .gan import GAN  # noqa: F401
from .conditional import Conditional  # noqa: F401
from .infogan import InfoGAN, QHead  # noqa: F401
from .aae import AAE  # noqa: F401
from .vae import VAE  # noqa: F401
from .cyclegan import CycleGAN  # noqa: F401
from .stargan import StarGAN  # noqa: F401
from .progan import ProGAN  # noqa: F401
