"""The one place where fastgan.models and fastgan.train import the fused losses and modules.

The fallback to fastgan._pending exists only until the loss (issue 3), BatchNorm+activation
(issue 4) and upsampling (issue 5) branches are merged; then delete it and _pending.py.
"""
try:
    from .ops import d_loss, g_loss, gradient_penalty, r1_penalty  # noqa: F401
except ImportError:  # pending: issue 3
    from ._pending import d_loss, g_loss, gradient_penalty, r1_penalty  # noqa: F401
try:
    from .nn import FusedBatchNormAct2d  # noqa: F401
except ImportError:  # pending: issue 4
    from ._pending import FusedBatchNormAct2d  # noqa: F401
try:
    from .nn import FusedConvTranspose2d  # noqa: F401
except ImportError:  # pending: issue 5
    from ._pending import FusedConvTranspose2d  # noqa: F401
from .nn import FusedBiasAct, FusedLeakyReLU  # noqa: F401,E402
