"""FusedBatchNormAct2d: nn.BatchNorm2d followed by an activation, in one fused op that keeps the
memory of one activation for backward (see fastgan.ops.batch_norm_act)."""
import torch
from torch import nn

from ..ops.batch_norm_act import ACTS, batch_norm_act


class FusedBatchNormAct2d(nn.Module):
    """act(nn.BatchNorm2d(x)) with act in linear, relu, lrelu (slope `negative_slope`).

    Same arguments, attributes and state_dict as nn.BatchNorm2d (weight, bias, running_mean,
    running_var, num_batches_tracked), so checkpoints load either way. Not a subclass of
    nn.BatchNorm2d on purpose: tools that rewrite BatchNorm layers (SyncBatchNorm conversion,
    conv-BN folding) would silently drop the activation.

    memory_efficient (default True): for linear and lrelu with negative_slope > 0 the backward keeps
    only the output and recovers the normalised input from it; this needs weight != 0 (a channel
    with weight exactly 0 gets a zero weight gradient). False keeps the input instead.
    """

    _version = 2
    __constants__ = ["track_running_stats", "momentum", "eps", "num_features", "affine", "activation",
                     "negative_slope"]

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, activation: str = "relu", negative_slope: float = 0.01,
                 device=None, dtype=None, memory_efficient: bool = True):
        super().__init__()
        if activation not in ACTS:
            raise ValueError(f"FusedBatchNormAct2d: argument 'activation' must be one of {', '.join(ACTS)}; "
                             f"got {activation!r}")
        kw = {"device": device, "dtype": dtype}
        self.num_features = int(num_features)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.memory_efficient = memory_efficient
        if affine:
            self.weight = nn.Parameter(torch.empty(self.num_features, **kw))
            self.bias = nn.Parameter(torch.empty(self.num_features, **kw))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(self.num_features, **kw))
            self.register_buffer("running_var", torch.ones(self.num_features, **kw))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, **{k: v for k, v in kw.items() if k != "dtype"}))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4:
            raise ValueError(f"FusedBatchNormAct2d: expected 4D input (got {input.dim()}D input)")
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        # as nn.BatchNorm2d: batch statistics in training, and in eval when no running stats are kept
        use_batch_stats = self.training or self.running_mean is None
        keep = not self.training or self.track_running_stats
        return batch_norm_act(
            input, self.weight, self.bias, self.running_mean if keep else None,
            self.running_var if keep else None, training=use_batch_stats, momentum=self.momentum,
            eps=self.eps, act=self.activation,
            alpha=self.negative_slope if self.activation == "lrelu" else 0.0,
            num_batches_tracked=self.num_batches_tracked, memory_efficient=self.memory_efficient)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checkpoints of BatchNorm from before num_batches_tracked existed (version < 2) load with 0.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        s = (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
             f"track_running_stats={self.track_running_stats}, activation={self.activation!r}")
        if self.activation == "lrelu":
            s += f", negative_slope={self.negative_slope}"
        return s
