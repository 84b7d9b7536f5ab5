"""Ready-made GANs built from fastgan.nn: DCGAN for images, small MLPs for 2-D data, and their
class-conditional versions."""
from .dcgan import DCGANDiscriminator, DCGANGenerator, IMAGE_SIZES, init_dcgan_  # noqa: F401
from .conditional import (ConditionalDCGANGenerator, ConditionalMLPGenerator, ProjectionDCGANDiscriminator,  # noqa: F401
                          ProjectionHead, ProjectionMLPDiscriminator)
from .mlp import MLPDiscriminator, MLPGenerator  # noqa: F401

# name -> (generator class, discriminator class): used by checkpoints and the command line
REGISTRY = {"dcgan": (DCGANGenerator, DCGANDiscriminator), "mlp": (MLPGenerator, MLPDiscriminator),
            "cmlp": (ConditionalMLPGenerator, ProjectionMLPDiscriminator),
            "cdcgan": (ConditionalDCGANGenerator, ProjectionDCGANDiscriminator)}


def build(kind: str, g_config: dict, d_config: dict):
    """Rebuild a (generator, discriminator) pair from the `config` dicts the models carry."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(REGISTRY)}")
    G, D = REGISTRY[kind]
    return G(**g_config), D(**d_config)


def kind_of(module) -> str:
    for name, (G, D) in REGISTRY.items():
        if isinstance(module, (G, D)):
            return name
    return None
