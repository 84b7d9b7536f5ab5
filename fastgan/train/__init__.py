"""fastgan.train: GANTrainer (alternating D/G updates, checkpoints, samples, metrics)."""
from .checkpoint import CheckpointError  # noqa: F401
from .trainer import GANTrainer, LOSS_KINDS, NonFiniteLossError  # noqa: F401
