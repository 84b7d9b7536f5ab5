"""FusedInstanceNormAct2d: nn.InstanceNorm2d followed by an activation, in one fused op each way
(see fastgan.ops.instance_norm_act)."""
from torch.nn.modules.instancenorm import _InstanceNorm

from ..ops.batch_norm_act import ACTS as NATIVE_ACTS
from ..ops.bias_act import ACTS, bias_act
from ..ops.instance_norm_act import instance_norm_act
from . import _torch_errors
from .batchnorm import _DEFAULT_ALPHA


class FusedInstanceNormAct2d(_InstanceNorm):
    """act(nn.InstanceNorm2d(x)) with `activation` one of fastgan.ops.bias_act's names.

    Same positional and keyword arguments (affine=False and track_running_stats=False by default, as
    nn.InstanceNorm2d), attributes, errors, unbatched (C, H, W) input and state_dict as
    nn.InstanceNorm2d, so checkpoints load either way. It shares nn.InstanceNorm2d's base class but
    is not an nn.InstanceNorm2d, so that tools rewriting InstanceNorm layers do not silently drop
    the activation. linear, relu and lrelu run in the fused kernel; the other activations run the
    linear kernel followed by fastgan.ops.bias_act. `negative_slope`: lrelu's slope (default 0.01,
    as nn.LeakyReLU) or elu's alpha. memory_efficient: as FusedBatchNormAct2d's.
    """

    __constants__ = _InstanceNorm.__constants__ + ["activation", "negative_slope"]

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, *, bias: bool = True,
                 activation: str = "relu", negative_slope=None, memory_efficient: bool = True):
        if activation not in ACTS:
            raise ValueError(f"FusedInstanceNormAct2d: argument 'activation' must be one of {', '.join(ACTS)}; "
                             f"got {activation!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.activation = activation
        self.negative_slope = float(_DEFAULT_ALPHA.get(activation, 0.01) if negative_slope is None
                                    else negative_slope)
        self.memory_efficient = memory_efficient

    def _get_no_batch_dim(self) -> int:
        return 3

    def _check_input_dim(self, input) -> None:
        if input.dim() not in (3, 4):
            raise ValueError(f"expected 3D or 4D input (got {input.dim()}D input)")

    def _apply_instance_norm(self, input):
        # nn.InstanceNorm2d's checks, with its exception types (the op's own say ValueError throughout)
        cls = "FusedInstanceNormAct2d"
        _torch_errors.floating_input(cls, input, NotImplementedError)
        _torch_errors.number(cls, "momentum", self.momentum, allow_none=True)
        _torch_errors.number(cls, "eps", self.eps)
        _torch_errors.same_device(cls, input, {"weight": self.weight, "bias": self.bias,
                                               "running_mean": self.running_mean})
        if self.affine and input.shape[0] == 0:
            raise IndexError(f"{cls}: an empty batch with affine=True (nn.InstanceNorm2d raises IndexError too)")
        if self.running_mean is not None and input.shape[1] != self.num_features:
            raise RuntimeError(f"{cls}: input has {input.shape[1]} channels, running_mean {self.num_features} "
                               "(num_features)")
        use_input_stats = self.training or not self.track_running_stats
        if use_input_stats and input.shape[2] * input.shape[3] == 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size "
                             f"{list(input.shape)}")
        act = self.activation
        native = act in NATIVE_ACTS
        alpha = self.negative_slope if act in _DEFAULT_ALPHA else 0.0
        y = instance_norm_act(
            input, self.weight, self.bias, self.running_mean, self.running_var, use_input_stats=use_input_stats,
            momentum=self.momentum if self.momentum is not None else 0.0, eps=self.eps,
            act=act if native else "linear", alpha=alpha if native else 0.0, memory_efficient=self.memory_efficient)
        return y if native else bias_act(y, None, act=act, alpha=alpha if act == "elu" else None)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", activation={self.activation!r}"
        if self.activation in _DEFAULT_ALPHA:
            s += f", negative_slope={self.negative_slope}"
        return s
