"""Pure-PyTorch twins of every fastgan op, with the same signatures: the oracle of the tests.

They are written for clarity, not speed, from plain differentiable torch functions.
"""
import torch
import torch.nn.functional as F

# The defaults a user of these activations assumes (PyTorch's DCGAN-style LeakyReLU(0.2), nn.ELU's
# alpha 1): written here, not taken from the ops under test.
DEFAULT_ALPHA = {"lrelu": 0.2, "elu": 1.0}


def act_fn(act: str, x: torch.Tensor, alpha: float) -> torch.Tensor:
    if act == "linear":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "lrelu":
        return F.leaky_relu(x, alpha)
    if act == "tanh":
        return torch.tanh(x)
    if act == "sigmoid":
        return torch.sigmoid(x)
    if act == "elu":
        return F.elu(x, alpha)
    if act == "selu":
        return F.selu(x)
    if act == "softplus":
        return F.softplus(x, threshold=1e9)  # exact log(1 + e^x), no linear cut-off
    if act in ("swish", "silu"):
        return F.silu(x)
    if act == "gelu":
        return F.gelu(x)
    raise ValueError(f"unknown act {act!r}")


def bias_act(x, b=None, *, act="linear", alpha=None, gain=None, clamp=None, dim=1):
    """Reference for fastgan.ops.bias_act."""
    alpha = DEFAULT_ALPHA.get(act, 0.0) if alpha is None else alpha
    gain = 1.0 if gain is None else gain
    if b is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        x = x + b.reshape(shape)
    y = act_fn(act, x, alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y


# ---- GAN losses and penalties ----------------------------------------------------------------
LOSS_KINDS = ("ns", "minimax", "hinge", "wgan", "lsgan", "rals", "rpgan")


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """Exact log(1 + e^x) at every x (F.softplus returns x itself above its threshold of 20, off
    by up to 2e-9, and log1p(exp(x)) overflows in float32 above 88), with the exact derivative
    sigmoid(x) at x = 0 too (max(x, 0) + log1p(e^-|x|) gives 1 there: rpgan's pairs hit x = 0
    whenever a real and a fake logit are equal)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _reduce(t: torch.Tensor, reduction: str) -> torch.Tensor:
    return t.mean() if reduction == "mean" else t.sum()


def d_loss(real_logits, fake_logits, kind="ns", *, reduction="mean", real_label=1.0, fake_label=0.0,
           return_stats=False):
    """Reference for fastgan.ops.d_loss: reduce(real terms) + reduce(fake terms)."""
    r, f = real_logits, fake_logits
    if kind in ("ns", "minimax"):
        lr = F.binary_cross_entropy_with_logits(r, torch.full_like(r, real_label), reduction="none")
        lf = F.binary_cross_entropy_with_logits(f, torch.full_like(f, fake_label), reduction="none")
    elif kind == "hinge":
        lr, lf = F.relu(1 - r), F.relu(1 + f)
    elif kind == "wgan":
        lr, lf = -r, f
    elif kind == "lsgan":
        lr, lf = 0.5 * (r - 1) ** 2, 0.5 * f ** 2
    elif kind == "rals":
        lr, lf = _softplus(-(r - f.mean())), _softplus(f - r.mean())
    elif kind == "rpgan":  # one term per pair: the second side adds nothing
        if r.shape != f.shape:
            raise ValueError(f"rpgan pairs real and fake logits: shapes {tuple(r.shape)} and {tuple(f.shape)}")
        lr, lf = _softplus(-(r - f)), None
    else:
        raise ValueError(f"unknown kind {kind!r}")
    loss = _reduce(lr, reduction) + (0 if lf is None else _reduce(lf, reduction))
    if return_stats:
        return loss, {"d_real": torch.sigmoid(r).mean(), "d_fake": torch.sigmoid(f).mean()}
    return loss


def g_loss(fake_logits, kind="ns", *, real_logits=None, reduction="mean"):
    """Reference for fastgan.ops.g_loss."""
    f = fake_logits
    if kind == "ns":
        return _reduce(_softplus(-f), reduction)
    if kind == "minimax":
        return _reduce(-_softplus(f), reduction)
    if kind in ("hinge", "wgan"):
        return _reduce(-f, reduction)
    if kind == "lsgan":
        return _reduce(0.5 * (f - 1) ** 2, reduction)
    if kind == "rals":
        r = real_logits
        return _reduce(_softplus(-(f - r.mean())), reduction) + _reduce(_softplus(r - f.mean()), reduction)
    if kind == "rpgan":
        if real_logits.shape != f.shape:
            raise ValueError(f"rpgan pairs real and fake logits: shapes {tuple(real_logits.shape)} and {tuple(f.shape)}")
        return _reduce(_softplus(-(f - real_logits)), reduction)
    raise ValueError(f"unknown kind {kind!r}")


def r1_penalty(real_logits, real_inputs, gamma=1.0):
    """Reference for fastgan.ops.r1_penalty: gamma/2 * mean_i ||d D(x_i) / d x_i||^2."""
    (g,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return gamma / 2 * g.pow(2).flatten(1).sum(1).mean()


def r2_penalty(fake_logits, fake_inputs, gamma=1.0):
    """Reference for fastgan.ops.r2_penalty: R1's formula at the fakes."""
    return r1_penalty(fake_logits, fake_inputs, gamma)


def gradient_penalty(discriminator, real, fake, weight=10.0, *, eps=None, center=1.0):
    """Reference for fastgan.ops.gradient_penalty (WGAN-GP): weight * mean_i (||grad D(x_hat_i)|| - center)^2."""
    n = real.shape[0]
    if eps is None:
        eps = torch.rand(n, device=real.device, dtype=real.dtype)
    eps = eps.reshape([n] + [1] * (real.dim() - 1))
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    out = discriminator(x_hat)
    (g,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return weight * ((g.flatten(1).norm(dim=1) - center) ** 2).mean()


def grad_norm_penalty(grad, weight=1.0, *, center=None):
    """Reference for fastgan.ops.grad_norm_penalty."""
    n = grad.flatten(1).norm(dim=1)
    if center is None:
        return weight * grad.pow(2).flatten(1).sum(1).mean()
    return weight * ((n - center) ** 2).mean()


# ---- BatchNorm + activation --------------------------------------------------------------------
def batch_norm_act(x, weight=None, bias=None, running_mean=None, running_var=None, *, training=False,
                   momentum=0.1, eps=1e-5, act="relu", alpha=0.01, num_batches_tracked=None,
                   memory_efficient=True):
    """Reference for fastgan.ops.batch_norm_act: F.batch_norm followed by the activation."""
    if momentum is None:
        momentum = 1.0 / float(num_batches_tracked) if training and running_mean is not None else 0.0
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return act_fn(act, y, alpha)


def instance_norm_act(x, weight=None, bias=None, running_mean=None, running_var=None, *, use_input_stats=True,
                      momentum=0.1, eps=1e-5, act="relu", alpha=0.01, memory_efficient=True):
    """Reference for fastgan.ops.instance_norm_act: F.instance_norm followed by the activation."""
    y = F.instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps)
    return act_fn(act, y, alpha)


# ---- conv_transpose ---------------------------------------------------------------------------
def conv_transpose2d_act(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                         *, act="linear", alpha=None, gain=None, clamp=None):
    """Reference for fastgan.ops.conv_transpose2d_act: F.conv_transpose2d, then bias_act."""
    y = F.conv_transpose2d(x, weight, None, stride, padding, output_padding, groups, dilation)
    return bias_act(y, bias, act=act, alpha=alpha, gain=gain, clamp=clamp, dim=1 if x.dim() == 4 else 0)


def class_batch_norm_act(x, y, weight, bias, running_mean=None, running_var=None, *, training=False,
                         momentum=0.1, eps=1e-5, act="relu", alpha=0.01, num_batches_tracked=None):
    """Reference for fastgan.ops.class_batch_norm_act: F.batch_norm without affine, then the
    per-class affine weight[y], bias[y] gathered for each sample, then the activation."""
    if momentum is None:
        momentum = 1.0 / float(num_batches_tracked) if training and running_mean is not None else 0.0
    xhat = F.batch_norm(x, running_mean, running_var, None, None, training, momentum, eps)
    z = xhat * weight[y][:, :, None, None] + bias[y][:, :, None, None]
    return act_fn(act, z, alpha)


def diff_augment_apply(x, params, cutout):
    """Reference for fastgan.ops.diff_augment_apply: the five transforms one after another, as
    written in fastgan/ops/diff_augment.py, from plain torch ops (float64 when x is)."""
    p = params.to(x.dtype)
    b, s, k = (p[:, i].view(-1, 1, 1, 1) for i in range(3))
    u = x + b                                       # brightness
    m = u.mean(1, keepdim=True)
    v = (u - m) * s + m                             # saturation
    mu = v.mean((1, 2, 3), keepdim=True)
    w = (v - mu) * k + mu                           # contrast
    n, _, h, wd = x.shape
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(wd, device=x.device)
    out = []
    for i in range(n):
        ty, tx, top, left = (int(params[i, j]) for j in range(3, 7))
        padded = F.pad(w[i], (wd, wd, h, h))        # zeros around: a shift reads them
        shifted = padded[:, h - ty:2 * h - ty, wd - tx:2 * wd - tx]  # y[c, r, q] = w[c, r - ty, q - tx]
        cut = ((rows >= top) & (rows < top + cutout[0]))[:, None] & ((cols >= left) & (cols < left + cutout[1]))
        out.append(shifted * (~cut))
    return torch.stack(out) if n else w
