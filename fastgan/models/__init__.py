"""Ready-made GANs built from fastgan.nn: DCGAN for images, small MLPs for 2-D data, their
class-conditional versions, and the encoder of the autoencoders (AAE, VAE)."""
from .autoencoder import ConvEncoder  # noqa: F401
from .dcgan import DCGANDiscriminator, DCGANGenerator, IMAGE_SIZES, init_dcgan_  # noqa: F401
from .conditional import (ConditionalDCGANGenerator, ConditionalMLPGenerator, ProjectionDCGANDiscriminator,  # noqa: F401
                          ProjectionHead, ProjectionMLPDiscriminator)
from .cyclegan import PatchDiscriminator, ResnetGenerator, patch_layers  # noqa: F401
from .progan import EqualizedConv2d, EqualizedLinear, MinibatchStddev, PixelNorm, ProDiscriminator, ProGenerator  # noqa: F401
from .stargan import StarDiscriminator, StarGenerator, star_layers  # noqa: F401
from .mlp import MLPDiscriminator, MLPGenerator  # noqa: F401

# name -> (generator class, discriminator class): used by checkpoints and the command line
REGISTRY = {"dcgan": (DCGANGenerator, DCGANDiscriminator), "mlp": (MLPGenerator, MLPDiscriminator),
            "cmlp": (ConditionalMLPGenerator, ProjectionMLPDiscriminator),
            "cdcgan": (ConditionalDCGANGenerator, ProjectionDCGANDiscriminator),
            "cyclegan": (ResnetGenerator, PatchDiscriminator), "stargan": (StarGenerator, StarDiscriminator),
            "progan": (ProGenerator, ProDiscriminator)}


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


# generator classes by name: checkpoints record the generator's class, so `fastgan sample` can rebuild
# the generator of any objective (the AAE's and the VAE's decoder is a DCGANGenerator beside an encoder)
GENERATORS = {G.__name__: G for G, _ in REGISTRY.values()}


def build_generator(cls_name: str, config: dict):
    if cls_name not in GENERATORS:
        raise ValueError(f"unknown generator class {cls_name!r}; expected one of {', '.join(GENERATORS)}")
    return GENERATORS[cls_name](**config)
