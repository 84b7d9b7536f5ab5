"""Fused InstanceNorm + activation, y = act(instance_norm(x)) (CycleGAN's and StarGAN's ResNet
generators and PatchGAN discriminators), on the BatchNorm + activation kernels.

Instance normalisation of x (N, C, H, W) is batch normalisation of the same memory viewed as
(1, N*C, H, W): each (sample, channel) plane becomes one "channel" whose statistics are taken over
its H*W values, and the affine parameters are the (C,) weight and bias repeated N times (autograd
sums their gradients back over the samples). So this op is fastgan::batch_norm_act on that view:
one statistics pass and one fused normalise + affine + activation pass forward, one reduction and
one elementwise pass backward, second derivatives included, on CPU and CUDA, in every dtype the
BatchNorm kernels take; and its backward keeps what the BatchNorm op keeps: x for relu (the
activation's slope is recomputed from x bit-exactly, so no mask is stored), only y for linear and
lrelu with a positive slope. Eager keeps both x and y.

channels_last input: the (1, N*C, H, W) view exists only for NCHW memory, so a channels_last x is
copied to NCHW first, and the output is NCHW, as torch.instance_norm's is (one copy more than the
NCHW path; its gradient is copied back to channels_last by autograd).

Running statistics (track_running_stats): as torch.instance_norm, each sample's statistics update a
copy of the running ones and the copies are averaged, which, the update being linear, is the
update with the per-channel average over the batch of the instance means and unbiased variances;
fastgan::batch_norm_act_update_stats_ applies it. Without input statistics (eval with running
statistics), InstanceNorm is BatchNorm in eval mode over the original (N, C, H, W) tensor, in any
layout (its output then made NCHW, as torch's).
"""
import torch

from . import reference
from ._checks import check_choice, check_tensor
from ._verify import verified
from .batch_norm_act import ACTS, _check_channels

_FN = "fastgan.ops.instance_norm_act"


@verified("instance_norm_act", reference.instance_norm_act, accumulates=True, mutates=("running_mean", "running_var"))
def instance_norm_act(x, weight=None, bias=None, running_mean=None, running_var=None, *, use_input_stats=True,
                      momentum=0.1, eps=1e-5, act="relu", alpha=0.01, memory_efficient=True):
    """act(F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)).

    x: (N, C, H, W), any float dtype, NCHW or channels_last. weight, bias, running_mean, running_var:
    (C,) or None, in x's dtype or float32. use_input_stats: normalise with each sample's statistics
    (and, when running statistics are given, update them in place as torch.instance_norm does);
    False normalises with the running statistics. act: linear, relu, lrelu (slope `alpha`).
    memory_efficient: for linear / lrelu(alpha > 0) the backward keeps only y (see
    fastgan.ops.batch_norm_act); False keeps x.
    """
    check_tensor(_FN, "x", x)
    if x.dim() != 4:
        raise ValueError(f"{_FN}: argument 'x' must be a 4-D tensor (N, C, H, W); got a {x.dim()}-D tensor "
                         f"of shape {tuple(x.shape)}")
    check_choice(_FN, "act", act, ACTS)
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is not None:
            _check_channels(_FN, name, t, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{_FN}: arguments 'running_mean' and 'running_var' must be given together")
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"{_FN}: argument 'eps' must be >= 0, got {eps}")
    alpha = float(alpha)
    keep_input = not memory_efficient
    N, C, H, W = x.shape
    if not use_input_stats:
        if running_mean is None:
            raise ValueError(f"{_FN}: argument 'running_mean' is required when use_input_stats=False")
        y = torch.ops.fastgan.batch_norm_act(x, weight, bias, running_mean, running_var, False, eps, act, alpha,
                                             keep_input)[0]
        return y.contiguous()  # NCHW, as torch.instance_norm's output in every mode
    if x.numel() > 0 and H * W == 1:
        raise ValueError(f"{_FN}: expected more than 1 spatial element when using input statistics, got input "
                         f"(argument 'x') of shape {tuple(x.shape)}")
    if momentum is None or isinstance(momentum, bool):
        raise TypeError(f"{_FN}: argument 'momentum' must be a number, got {momentum!r}")
    momentum = float(momentum)
    planes = x.contiguous().view(1, N * C, H, W)
    w = weight.repeat(N) if weight is not None else None
    b = bias.repeat(N) if bias is not None else None
    y, mean, var = torch.ops.fastgan.batch_norm_act(planes, w, b, None, None, True, eps, act, alpha, keep_input)
    if running_mean is not None and N * C > 0:
        torch.ops.fastgan.batch_norm_act_update_stats_(
            running_mean, running_var, mean.detach().view(N, C).mean(0), var.detach().view(N, C).mean(0), None,
            momentum, H * W)
    return y.view(N, C, H, W)
