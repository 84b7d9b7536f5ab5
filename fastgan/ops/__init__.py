"""fastgan's fused ops. Each family lives in its own module with its torch.library registrations;
`fastgan.ops.reference` holds the pure-PyTorch twin of each."""
from .bias_act import bias_act, bias_act_  # noqa: F401
from .batch_norm_act import batch_norm_act, class_batch_norm_act  # noqa: F401
from .instance_norm_act import instance_norm_act  # noqa: F401
from .conv_transpose import conv_transpose2d_act  # noqa: F401
from .gan_loss import d_loss, g_loss  # noqa: F401
from .penalty import grad_norm_penalty, gradient_penalty, r1_penalty, r2_penalty  # noqa: F401
from .diff_augment import diff_augment, diff_augment_apply, diff_augment_params  # noqa: F401
from . import reference  # noqa: F401
