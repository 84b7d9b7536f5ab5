"""Fused BatchNorm + activation, y = act(batch_norm(x)), keeping the memory of one activation for
backward (in-place activated BatchNorm, Rota Bulo et al., CVPR 2018), with second derivatives
(R1 / WGAN-GP penalties through a BatchNorm discriminator).

Ops (csrc/batch_norm_act):
  fastgan::batch_norm_act(x, weight, bias, running_mean, running_var, training, eps, act, alpha,
      keep_input) -> (y, mean, var)
      One pass for the batch statistics (Welford, fp32 accumulation), one fused normalise + affine
      + activation pass. mean/var are the statistics used (batch ones in training, biased var).
  fastgan::batch_norm_act_backward(grad, ref, mean, var, weight, bias, grad_mean, grad_var,
      training, eps, act, alpha, ref_is_output) -> (grad_x, grad_weight, grad_bias)
      One reduction pass (sum g, sum g*xhat) and one elementwise pass.
  fastgan::batch_norm_act_update_stats_(running_mean!, running_var!, mean, var,
      num_batches_tracked, momentum, count) -> ()
      The running-statistics update of nn.BatchNorm2d (unbiased variance; momentum None: the
      cumulative average 1/num_batches_tracked, read on the device, no host sync).

Why the running-stat update is a separate mutating op: torch.library.register_autograd accepts only
functional ops, so the differentiable forward cannot mutate the buffers. Returning the batch
statistics and updating the buffers with a second op marked `Tensor(a!)` keeps the forward
functional (opcheck, AOTAutograd), lets torch.compile(fullgraph=True) functionalise the buffer
update like any in-place op, and costs one tiny kernel over C values instead of the several
launches a torch-level lerp/mul/add update would take.

What the backward keeps (besides per-channel mean/var and the parameters):
  linear, lrelu with alpha > 0  the output y only: act is inverted (z = act^-1(y)) and the
                                normalised input recovered as xhat = (z - bias) / weight. This
                                needs weight != 0: a channel whose weight is exactly 0 gets a zero
                                weight gradient (keep_input=True / memory_efficient=False keeps x
                                instead, for exact gradients whatever the weights).
  relu, lrelu with alpha <= 0   the input x (relu's output loses z < 0, which BatchNorm's backward
                                needs); act'(z) is recomputed from x bit-exactly, so no mask.
Eager BatchNorm2d + activation keeps both x and y.

Second derivatives: grad_mean/grad_var carry the gradients that reach the mean/var outputs in
double backward, and batch_norm_act_backward has an autograd formula of its own in torch ops below.

Class-conditional BatchNorm + activation (conditional GANs' generators; de Vries et al. 2017,
Miyato & Koyama 2018): `class_batch_norm_act(x, y, weight, bias, ...)` normalises with per-channel
batch statistics, like BatchNorm2d(affine=False), then applies a per-class affine gathered inside
the kernel for each sample's label: act(weight[y] * xhat + bias[y]), weight and bias (K, C).
  fastgan::class_batch_norm_act(x, y, weight, bias, running_mean, running_var, training, eps, act,
      alpha) -> (out, mean, var)
  fastgan::class_batch_norm_act_backward(grad, x, y, mean, var, weight, bias, grad_mean, grad_var,
      training, eps, act, alpha) -> (grad_x, grad_weight (K, C), grad_bias (K, C))
The backward keeps x (the per-sample affine cannot be inverted from y without the label's row); the
running statistics are updated by batch_norm_act_update_stats_ as for the plain op. Its second
derivative is the autograd of the backward written in torch ops (cold code: R1 through a
conditional D; the conditional BN sits in G, whose double backward no penalty needs).
"""
import torch

from . import _choose, reference
from ._checks import check_choice, check_tensor
from ._verify import verified

ACTS = ("linear", "relu", "lrelu")
_FN = "fastgan.ops.batch_norm_act"


def invertible(act: str, alpha: float) -> bool:
    """Can y = act(z) be inverted (so that the backward may keep y instead of x)?"""
    return act == "linear" or (act == "lrelu" and alpha > 0)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@verified("batch_norm_act", reference.batch_norm_act, accumulates=True, mutates=("running_mean", "running_var"))
def batch_norm_act(x, weight=None, bias=None, running_mean=None, running_var=None, *, training=False,
                   momentum=0.1, eps=1e-5, act="relu", alpha=0.01, num_batches_tracked=None,
                   memory_efficient=True):
    """act(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)).

    x: (N, C, H, W), any float dtype and strides (channels_last is not copied). weight, bias,
    running_mean, running_var: (C,) or None, in x's dtype or float32 (fp16/bf16 x, as under
    autocast); y has x's dtype. act: linear, relu, lrelu (slope `alpha`).
    training: use batch statistics and, when running stats are given, update them in place as
    nn.BatchNorm2d does. momentum=None is the cumulative average and needs `num_batches_tracked`
    (already incremented for this batch, as nn.BatchNorm2d does).
    memory_efficient: for linear/lrelu(alpha > 0) the backward keeps only y (see the module doc);
    False keeps x instead.
    On the CPU, a shape where eager F.batch_norm + activation is faster runs that instead (measured
    at the first call of each shape, forward and backward where gradients are needed, and cached;
    it keeps what eager keeps; FASTGAN_BATCH_NORM_ACT_PATH=auto|fused|eager, see fastgan.ops._choose).
    """
    check_tensor(_FN, "x", x)
    eps, momentum, M, update = _check_stats(_FN, x, act, running_mean, running_var, training, eps, momentum,
                                            num_batches_tracked)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            _check_channels(_FN, name, t, x)
    alpha = float(alpha)
    keep_input = not memory_efficient
    if _choose.candidate("batch_norm_act", x):
        g = torch.is_grad_enabled()
        grads = (g and x.requires_grad, g and weight is not None and weight.requires_grad,
                 g and bias is not None and bias.requires_grad)
        if not training and not grads[0]:  # eval with only the parameters requiring grad: an evaluation
            grads = (False, False, False)  # outside no_grad far more often than a backward; time the forward
        key = ("batch_norm_act", x.dtype, x.shape, x.stride(), weight is not None, bias is not None,
               bool(training), running_mean is not None, act, bool(memory_efficient), grads,
               torch.get_num_threads())
        if _choose.use_eager(key, _contenders, x, weight, bias, running_mean, running_var, training, eps, act,
                             alpha, keep_input, grads):
            if update:
                factor = momentum if momentum is not None else 1.0 / float(num_batches_tracked)
            else:
                factor = 0.0
            return _eager(x, weight, bias, running_mean, running_var, training, factor, eps, act, alpha)
    y, mean, var = torch.ops.fastgan.batch_norm_act(x, weight, bias, running_mean, running_var, training,
                                                    eps, act, alpha, keep_input)
    if update:
        torch.ops.fastgan.batch_norm_act_update_stats_(running_mean, running_var, mean.detach(),
                                                       var.detach(), num_batches_tracked, momentum, M)
    return y


def _contenders(x, weight, bias, running_mean, running_var, training, eps, act, alpha, keep_input, grads):
    """The fused op and _eager, one call each on throwaway copies (in training without the running
    statistics: measuring updates nothing); None where _eager does not apply."""
    if not x.numel() or any(t is not None and t.dtype != x.dtype for t in (weight, bias, running_mean, running_var)):
        return None
    stats = (None, None) if training else (running_mean, running_var)
    return (_choose.run_once(lambda x, w, b: torch.ops.fastgan.batch_norm_act(
                x, w, b, *stats, training, eps, act, alpha, keep_input)[0], (x, weight, bias), grads),
            _choose.run_once(lambda x, w, b: _eager(x, w, b, *stats, training, 0.0, eps, act, alpha),
                             (x, weight, bias), grads))


def _eager(x, weight, bias, running_mean, running_var, training, momentum, eps, act, alpha):
    """The eager PyTorch this op replaces: F.batch_norm (which updates the running statistics in
    training) and the activation in place on its fresh output (BatchNorm's backward reads its input,
    not its output), as nn.BatchNorm2d + nn.ReLU(inplace=True) do. (A negative lrelu slope runs out of
    place: autograd cannot invert it from the output.)"""
    y = torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    if act == "relu":
        return torch.relu_(y)
    if act == "lrelu":
        return torch.nn.functional.leaky_relu(y, alpha, inplace=alpha >= 0)
    return y


def _check_channels(fn, name, t, x):
    check_tensor(fn, name, t)
    C = x.shape[1]
    if t.dim() != 1 or t.shape[0] != C:
        raise ValueError(f"{fn}: argument '{name}' must have shape ({C},) (x has {C} channels); "
                         f"got shape {tuple(t.shape)}")


def _check_stats(fn, x, act, running_mean, running_var, training, eps, momentum, num_batches_tracked):
    """The checks shared by batch_norm_act and class_batch_norm_act (x, act, statistics, eps,
    momentum) -> (eps, momentum, values per channel M, whether the running stats are updated)."""
    if x.dim() != 4:
        raise ValueError(f"{fn}: argument 'x' must be a 4-D tensor (N, C, H, W); got a {x.dim()}-D "
                         f"tensor of shape {tuple(x.shape)}")
    check_choice(fn, "act", act, ACTS)
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None:
            _check_channels(fn, name, t, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{fn}: arguments 'running_mean' and 'running_var' must be given together")
    if not training and running_mean is None:
        raise ValueError(f"{fn}: argument 'running_mean' is required when training=False "
                         f"(eval uses the running statistics)")
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"{fn}: argument 'eps' must be >= 0, got {eps}")
    C = x.shape[1]
    M = x.numel() // C if C else 0
    if training and x.numel() > 0 and M == 1:
        raise ValueError(f"{fn}: expected more than 1 value per channel when training, got input "
                         f"(argument 'x') of shape {tuple(x.shape)}")
    update = training and running_mean is not None
    if update and momentum is None:
        if num_batches_tracked is None:
            raise ValueError(f"{fn}: momentum=None (cumulative average) needs argument "
                             f"'num_batches_tracked'")
    elif momentum is not None:
        momentum = float(momentum)
    return eps, momentum, M, update


# ---- fake kernels (shapes, strides and dtypes for torch.compile) ---------------------------
@torch.library.register_fake("fastgan::batch_norm_act")
def _fake(x, weight, bias, running_mean, running_var, training, eps, act, alpha, keep_input):
    acc = _acc_dtype(x.dtype)
    C = x.shape[1]
    return torch.empty_like(x), x.new_empty((C,), dtype=acc), x.new_empty((C,), dtype=acc)


@torch.library.register_fake("fastgan::batch_norm_act_backward")
def _backward_fake(grad, ref, mean, var, weight, bias, grad_mean, grad_var, training, eps, act, alpha,
                   ref_is_output):
    acc = _acc_dtype(ref.dtype)
    C = ref.shape[1]
    gw = ref.new_empty((C,), dtype=weight.dtype) if weight is not None else ref.new_empty((0,), dtype=acc)
    gb = ref.new_empty((C,), dtype=bias.dtype) if bias is not None else ref.new_empty((0,), dtype=acc)
    return torch.empty_like(ref), gw, gb


@torch.library.register_fake("fastgan::batch_norm_act_update_stats_")
def _update_fake(running_mean, running_var, mean, var, num_batches_tracked, momentum, count):
    return None


# ---- autograd: first order in C++ (csrc/batch_norm_act/batch_norm_act_cpu.cpp, BnaFn) ---------------
# It keeps y (from_y: linear, lrelu with alpha > 0, unless keep_input) or x, mean, var, weight and
# bias, and calls batch_norm_act_backward, whose autograd (below) is the second derivative.

# ---- autograd of the backward: second order ---------------------------------------------
# With g = grad * s (s = act'(z)), xhat the normalised input, r = 1/sqrt(var + eps), per channel
# sums over M values, the backward op computes
#   dx = w r (g - Sg/M - xhat Sgx/M) + gm/M + 2 gv xhat/(r M)     (eval: dx = w r g)
#   dw = Sgx = sum g xhat,  db = Sg = sum g.
# Its vector-Jacobian product with (A, a, c) = upstream grads of (dx, dw, db) is below: Gg is the
# derivative w.r.t. g, Gx w.r.t. xhat (g fixed), and xhat depends on (ref, mean, var) for ref = x
# or on (ref, weight, bias) for ref = y.
def _bwd_setup(ctx, inputs, output):
    grad, ref, mean, var, weight, bias, gm, gv, training, eps, act, alpha, ref_is_output = inputs
    ctx.params = (training, eps, act, alpha, ref_is_output)
    ctx.save_for_backward(grad, ref, mean, var, weight, bias, gm, gv)


def _bwd_backward(ctx, ggx, ggw, ggb):
    grad, ref, mean, var, weight, bias, gm, gv = ctx.saved_tensors
    training, eps, act, alpha, from_y = ctx.params
    need = ctx.needs_input_grad
    C = ref.shape[1]
    M = ref.numel() // C if C else 0
    if M == 0:
        return (None,) * 13
    dt = _acc_dtype(ref.dtype)
    sh = (1, C, 1, 1)
    dims = (0, 2, 3)

    def chan(t, default):
        if t is None or t.numel() == 0:
            return torch.full(sh, default, dtype=dt, device=ref.device)
        return t.to(dt).reshape(sh)

    def csum(t):
        return t.sum(dims, keepdim=True)

    w, b = chan(weight, 1.0), chan(bias, 0.0)
    mu, r = chan(mean, 0.0), torch.rsqrt(chan(var, 1.0) + eps)
    gvv = chan(gv, 0.0) if training else None
    d, refc = grad.to(dt), ref.to(dt)
    A = ggx.to(dt) if ggx is not None else torch.zeros_like(refc)
    a = chan(ggw if weight is not None else None, 0.0)
    c = chan(ggb if bias is not None else None, 0.0)
    if from_y:
        if act == "lrelu":
            pos = refc > 0
            # a tensor alpha: torch.where of two Python scalars is float32 (alpha rounded to 24 bits)
            s = torch.where(pos, 1.0, refc.new_full((), alpha))
            z = torch.where(pos, refc, refc / alpha)
        else:
            s = torch.ones_like(refc)
            z = refc
        inv_w = torch.where(w != 0, 1.0 / torch.where(w != 0, w, 1.0), 0.0)
        xh = (z - b) * inv_w
    else:
        xh = (refc - mu) * r
        zz = w * xh + b
        if act == "linear":
            s = torch.ones_like(refc)
        elif act == "relu":
            s = (zz > 0).to(dt)
        else:
            s = torch.where(zz > 0, 1.0, refc.new_full((), alpha))
    g = d * s
    Sg, Sgx = csum(g), csum(g * xh)
    wr = w * r
    d_gm = d_gv = None
    if training:
        SA, SAx = csum(A), csum(A * xh)
        P = csum(A * g) - Sg * SA / M - Sgx * SAx / M
        Gg = wr * (A - SA / M - xh * SAx / M) + a * xh + c
        Gx = -wr * (g * SAx + Sgx * A) / M + a * g + 2 * gvv * A / (r * M)
        dL_dw = r * P
        dL_dr = w * P - 2 * gvv * SAx / (r * r * M)
        d_gm, d_gv = SA / M, 2 * SAx / (r * M)
    else:
        P = csum(A * g)
        Gg = wr * A + a * xh + c
        Gx = a * g
        dL_dw = r * P
        dL_dr = w * P
    d_grad = Gg * s
    d_mean = d_bias = None
    if from_y:
        d_ref = Gx * inv_w / s
        d_bias = -csum(Gx) * inv_w
        d_w = dL_dw - csum(Gx * xh) * inv_w
    else:
        d_ref = Gx * r
        d_mean = -r * csum(Gx)
        dL_dr = dL_dr + csum(Gx * xh) / r
        d_w = dL_dw
    d_var = dL_dr * (-0.5) * r * r * r

    def out(i, t, like):
        if not need[i] or t is None or like is None:
            return None
        return t.reshape(like.shape).to(like.dtype)

    return (out(0, d_grad, grad), out(1, d_ref, ref), out(2, d_mean, mean), out(3, d_var, var),
            out(4, d_w, weight), out(5, d_bias, bias), out(6, d_gm, gm), out(7, d_gv, gv)) + (None,) * 5


torch.library.register_autograd("fastgan::batch_norm_act_backward", _bwd_backward, setup_context=_bwd_setup)


# ---- class-conditional BatchNorm + activation ----------------------------------------------------
_CFN = "fastgan.ops.class_batch_norm_act"


@verified("class_batch_norm_act", reference.class_batch_norm_act, accumulates=True,
          mutates=("running_mean", "running_var"))
def class_batch_norm_act(x, y, weight, bias, running_mean=None, running_var=None, *, training=False,
                         momentum=0.1, eps=1e-5, act="relu", alpha=0.01, num_batches_tracked=None):
    """act(weight[y] * batch_norm(x) + bias[y]): BatchNorm statistics per channel, affine per class.

    x: (N, C, H, W), any float dtype and layout. y: (N,) int64 class of each sample, in [0, K).
    weight, bias: (K, C) in x's dtype or float32. running_mean/running_var, training, momentum,
    eps, num_batches_tracked: as fastgan.ops.batch_norm_act (running statistics are per channel,
    shared by the classes). act: linear, relu, lrelu (slope `alpha`).
    """
    check_tensor(_CFN, "x", x)
    eps, momentum, M, update = _check_stats(_CFN, x, act, running_mean, running_var, training, eps, momentum,
                                            num_batches_tracked)
    N, C = x.shape[0], x.shape[1]
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (N,):
        got = f"a {y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{_CFN}: argument 'y' must be an int64 tensor of shape ({N},) (one class per sample); "
                         f"got {got}")
    for name, t in (("weight", weight), ("bias", bias)):
        check_tensor(_CFN, name, t)
        if t.dim() != 2 or t.shape[1] != C:
            raise ValueError(f"{_CFN}: argument '{name}' must have shape (num_classes, {C}); got shape "
                             f"{tuple(t.shape)}")
    if bias.shape[0] != weight.shape[0]:
        raise ValueError(f"{_CFN}: argument 'bias' must have {weight.shape[0]} rows (the classes of 'weight'); "
                         f"got {bias.shape[0]}")
    out, mean, var = torch.ops.fastgan.class_batch_norm_act(x, y, weight, bias, running_mean, running_var,
                                                            training, eps, act, float(alpha))
    if update:
        torch.ops.fastgan.batch_norm_act_update_stats_(running_mean, running_var, mean.detach(), var.detach(),
                                                       num_batches_tracked, momentum, M)
    return out


@torch.library.register_fake("fastgan::class_batch_norm_act")
def _class_fake(x, y, weight, bias, running_mean, running_var, training, eps, act, alpha):
    acc = _acc_dtype(x.dtype)
    C = x.shape[1]
    return torch.empty_like(x), x.new_empty((C,), dtype=acc), x.new_empty((C,), dtype=acc)


@torch.library.register_fake("fastgan::class_batch_norm_act_backward")
def _class_backward_fake(grad, x, y, mean, var, weight, bias, grad_mean, grad_var, training, eps, act, alpha):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias)


def _class_setup(ctx, inputs, output):
    x, y, weight, bias, _rm, _rv, training, eps, act, alpha = inputs
    _out, mean, var = output
    ctx.set_materialize_grads(False)
    ctx.params = (training, eps, act, alpha)
    ctx.save_for_backward(x, y, mean, var, weight, bias)


def _class_backward(ctx, gout, gmean, gvar):
    x, y, mean, var, weight, bias = ctx.saved_tensors
    training, eps, act, alpha = ctx.params
    if gout is None:
        gout = torch.zeros_like(x)
    if not training:
        gmean = gvar = None
    gx, gw, gb = torch.ops.fastgan.class_batch_norm_act_backward(gout, x, y, mean, var, weight, bias, gmean, gvar,
                                                                training, eps, act, alpha)
    need = ctx.needs_input_grad
    return (gx if need[0] else None, None, gw if need[2] else None, gb if need[3] else None) + (None,) * 6


torch.library.register_autograd("fastgan::class_batch_norm_act", _class_backward, setup_context=_class_setup)


def class_backward_reference(grad, x, y, mean, var, weight, bias, gm, gv, training, eps, act, alpha):
    """The class-conditional backward in differentiable torch ops (the header's formulas, with
    mean and var as inputs): its autograd is the op's second derivative."""
    dt = _acc_dtype(x.dtype)
    C = x.shape[1]
    M = x.numel() // C if C else 0
    sh = (1, C, 1, 1)
    d, xc = grad.to(dt), x.to(dt)
    w, b = weight.to(dt)[y][:, :, None, None], bias.to(dt)[y][:, :, None, None]
    mu, r = mean.to(dt).reshape(sh), torch.rsqrt(var.to(dt).reshape(sh) + eps)
    u = xc - mu
    z = w * (u * r) + b
    if act == "linear":
        s = torch.ones_like(z)
    elif act == "relu":
        s = (z > 0).to(dt)
    else:
        s = torch.where(z > 0, 1.0, z.new_full((), alpha)).detach()
    g = d * s
    dims = (0, 2, 3)
    dx = r * w * g
    if training and M > 0:
        swg = (w * g).sum(dims, keepdim=True)
        swgu = (w * g * u).sum(dims, keepdim=True)
        dx = dx - r * swg / M - r ** 3 * u * swgu / M
        if gm is not None:
            dx = dx + gm.to(dt).reshape(sh) / M
        if gv is not None:
            dx = dx + 2 * gv.to(dt).reshape(sh) * u / M
    K = weight.shape[0]
    dw = torch.zeros(K, C, dtype=dt, device=x.device).index_add(0, y, (g * u * r).sum((2, 3)))
    db = torch.zeros(K, C, dtype=dt, device=x.device).index_add(0, y, g.sum((2, 3)))
    return dx.to(x.dtype), dw.to(weight.dtype), db.to(bias.dtype)


def _cbwd_setup(ctx, inputs, output):
    grad, x, y, mean, var, weight, bias, gm, gv, training, eps, act, alpha = inputs
    ctx.params = (training, eps, act, alpha)
    ctx.save_for_backward(grad, x, y, mean, var, weight, bias, gm, gv)


def _cbwd_backward(ctx, ggx, ggw, ggb):
    grad, x, y, mean, var, weight, bias, gm, gv = ctx.saved_tensors
    training, eps, act, alpha = ctx.params
    need = ctx.needs_input_grad
    idx = [0, 1, 3, 4, 5, 6, 7, 8]  # grad, x, mean, var, weight, bias, gm, gv
    vals = [grad, x, mean, var, weight, bias, gm, gv]
    higher = torch.is_grad_enabled()  # create_graph=True by the caller: third order through torch ops
    with torch.enable_grad():
        leaves = [None if v is None else v.detach().requires_grad_(need[i]) for i, v in zip(idx, vals)]
        outs = class_backward_reference(leaves[0], leaves[1], y, leaves[2], leaves[3], leaves[4], leaves[5],
                                        leaves[6], leaves[7], training, eps, act, alpha)
        pairs = [(o, g) for o, g in zip(outs, (ggx, ggw, ggb)) if g is not None]
        wrt = [v for i, v in zip(idx, leaves) if v is not None and need[i]]
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True,
                                    create_graph=higher) if pairs and wrt else []
    it = iter(grads)
    res = [None] * 13
    for i, v in zip(idx, leaves):
        if v is not None and need[i]:
            res[i] = next(it)
    return tuple(res)


torch.library.register_autograd("fastgan::class_batch_norm_act_backward", _cbwd_backward,
                                setup_context=_cbwd_setup)
