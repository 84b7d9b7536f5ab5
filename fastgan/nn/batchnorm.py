"""FusedBatchNormAct2d: nn.BatchNorm2d followed by an activation, in one fused op that keeps the
memory of one activation for backward (see fastgan.ops.batch_norm_act)."""
import torch
from torch.nn.modules.batchnorm import _NormBase

from ..ops.batch_norm_act import ACTS as NATIVE_ACTS
from ..ops.batch_norm_act import batch_norm_act, class_batch_norm_act
from ..ops.bias_act import ACTS, bias_act
from . import _torch_errors

# The activation's own default for `negative_slope=None`: nn.LeakyReLU's slope, nn.ELU's alpha.
_DEFAULT_ALPHA = {"lrelu": 0.01, "elu": 1.0}


class FusedBatchNormAct2d(_NormBase):
    """act(nn.BatchNorm2d(x)) with `activation` one of fastgan.ops.bias_act's names.

    Same positional and keyword arguments (`bias=` included), attributes, errors and state_dict as
    nn.BatchNorm2d (weight, bias, running_mean, running_var, num_batches_tracked), so checkpoints
    load either way. It shares nn.BatchNorm2d's base class (_NormBase) but is not a _BatchNorm on
    purpose: tools that rewrite BatchNorm layers (SyncBatchNorm conversion, conv-BN folding) would
    silently drop the activation.

    linear, relu and lrelu run in the fused kernel; the others (tanh, sigmoid, elu, selu, swish,
    silu, gelu, softplus) run the linear kernel followed by fastgan.ops.bias_act, which keeps what
    eager keeps (one tensor each). `negative_slope` is lrelu's slope (default 0.01, as
    nn.LeakyReLU) or elu's alpha (default 1.0, as nn.ELU).

    memory_efficient (default True): for linear and lrelu with negative_slope > 0 the backward keeps
    only the output and recovers the normalised input from it; this needs weight != 0 (a channel
    with weight exactly 0 gets a zero weight gradient). False keeps the input instead.
    """

    __constants__ = _NormBase.__constants__ + ["activation", "negative_slope"]

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, *, bias: bool = True,
                 activation: str = "relu", negative_slope=None, memory_efficient: bool = True):
        if activation not in ACTS:
            raise ValueError(f"FusedBatchNormAct2d: argument 'activation' must be one of {', '.join(ACTS)}; "
                             f"got {activation!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.activation = activation
        self.negative_slope = float(_DEFAULT_ALPHA.get(activation, 0.01) if negative_slope is None
                                    else negative_slope)
        self.memory_efficient = memory_efficient

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # nn.BatchNorm2d's checks, with its exception types (the op's own say ValueError throughout)
        cls = "FusedBatchNormAct2d"
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)  # before the other checks, as nn.BatchNorm2d
        _torch_errors.floating_input(cls, input, NotImplementedError)
        _torch_errors.number(cls, "momentum", self.momentum, allow_none=True)
        _torch_errors.number(cls, "eps", self.eps)
        _torch_errors.same_device(cls, input, {"weight": self.weight, "bias": self.bias,
                                               "running_mean": self.running_mean})
        stats = self.affine or self.running_mean is not None
        if input.shape[1] == 0 and stats:
            raise IndexError(f"{cls}: input has no channels (nn.BatchNorm2d raises IndexError too)")
        if input.shape[1] != self.num_features and stats:
            raise RuntimeError(f"{cls}: input has {input.shape[1]} channels, the module "
                               f"{self.num_features} (num_features)")
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats and input.shape[0] * input.shape[2] * input.shape[3] == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                             f"{tuple(input.shape)}")
        if use_batch_stats and not self.eps > 0:
            raise ValueError(f"{cls}: eps must be positive during training, got {self.eps}")
        if self.eps < 0:
            raise ValueError(f"{cls}: eps must be non-negative, got {self.eps}")
        # as nn.BatchNorm2d: batch statistics in training, and in eval when no running stats are kept
        keep = not self.training or self.track_running_stats
        act = self.activation
        native = act in NATIVE_ACTS
        alpha = self.negative_slope if act in _DEFAULT_ALPHA else 0.0
        y = batch_norm_act(
            input, self.weight, self.bias, self.running_mean if keep else None,
            self.running_var if keep else None, training=use_batch_stats, momentum=self.momentum,
            eps=self.eps, act=act if native else "linear", alpha=alpha if native else 0.0,
            num_batches_tracked=self.num_batches_tracked, memory_efficient=self.memory_efficient)
        return y if native else bias_act(y, None, act=act, alpha=alpha if act == "elu" else None)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", activation={self.activation!r}"
        if self.activation in _DEFAULT_ALPHA:
            s += f", negative_slope={self.negative_slope}"
        return s


class ClassBatchNormAct2d(torch.nn.Module):
    """Class-conditional BatchNorm + activation: act(weight[y] * batch_norm(x) + bias[y]).

    The statistics (and the running ones, buffers of nn.BatchNorm2d's names) are per channel and
    shared by the classes; the affine parameters are per class, `weight` and `bias` of shape
    (num_classes, num_features), starting at 1 and 0 (the unconditional BatchNorm). Called as
    `module(x, y)` with y the (N,) int64 class of each sample. One fused op each way
    (fastgan.ops.class_batch_norm_act); activation: linear, relu or lrelu (negative_slope,
    default 0.01)."""

    def __init__(self, num_features: int, num_classes: int, eps: float = 1e-5, momentum=0.1,
                 track_running_stats: bool = True, device=None, dtype=None, *, activation: str = "relu",
                 negative_slope=None):
        super().__init__()
        for name, v, low in (("num_features", num_features, 1), ("num_classes", num_classes, 1)):
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
                raise ValueError(f"ClassBatchNormAct2d: argument '{name}' must be a positive int, got {v!r}")
        if activation not in NATIVE_ACTS:
            raise ValueError(f"ClassBatchNormAct2d: argument 'activation' must be one of {', '.join(NATIVE_ACTS)}; "
                             f"got {activation!r}")
        kw = {"device": device, "dtype": dtype}
        self.num_features, self.num_classes = num_features, num_classes
        self.eps, self.momentum, self.track_running_stats = eps, momentum, track_running_stats
        self.activation = activation
        self.negative_slope = float(0.01 if negative_slope is None else negative_slope)
        self.weight = torch.nn.Parameter(torch.ones(num_classes, num_features, **kw))
        self.bias = torch.nn.Parameter(torch.zeros(num_classes, num_features, **kw))
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **kw))
            self.register_buffer("running_var", torch.ones(num_features, **kw))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def forward(self, input: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        use_batch_stats = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        alpha = self.negative_slope if self.activation == "lrelu" else 0.0
        return class_batch_norm_act(
            input, y, self.weight, self.bias, self.running_mean if keep else None, self.running_var if keep else None,
            training=use_batch_stats, momentum=self.momentum, eps=self.eps, act=self.activation, alpha=alpha,
            num_batches_tracked=self.num_batches_tracked)

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, num_classes={self.num_classes}, eps={self.eps}, momentum={self.momentum}, "
             f"track_running_stats={self.track_running_stats}, activation={self.activation!r}")
        return s + (f", negative_slope={self.negative_slope}" if self.activation == "lrelu" else "")
