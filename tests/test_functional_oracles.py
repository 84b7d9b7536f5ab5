"""fastgan's public ops and modules against torch.nn.functional / torch.nn, written the way a user
writes them, with the defaults a user assumes, in float64 on random inputs (never zeros).

These oracles share nothing with fastgan: no fastgan.ops.reference, no constant or default read
from fastgan. Each default a test relies on is the one fastgan documents:
  fastgan.ops.bias_act / conv_transpose2d_act, FusedBiasAct, FusedConv2d, FusedConvTranspose2d:
      lrelu slope 0.2 (DCGAN), elu alpha 1.0 (nn.ELU);
  fastgan.ops.batch_norm_act, FusedBatchNormAct2d, FusedLeakyReLU: lrelu slope 0.01 (nn.LeakyReLU).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastgan
import fastgan.simt
from fastgan.nn import FusedBatchNormAct2d, FusedBiasAct, FusedConv2d, FusedConvTranspose2d, FusedLeakyReLU
from fastgan.ops import batch_norm_act, bias_act, conv_transpose2d_act, d_loss, g_loss

from conftest import DEVICES, SIMT_OK

F64 = torch.float64
TOL = dict(atol=1e-10, rtol=1e-10)

# What a user writes for each activation name, with torch's own defaults except lrelu, whose
# documented default slope in bias_act is DCGAN's 0.2.
USER = {
    "linear": lambda t: t,
    "relu": F.relu,
    "lrelu": lambda t: F.leaky_relu(t, 0.2),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,            # alpha=1.0
    "selu": F.selu,
    "gelu": F.gelu,          # the erf form (approximate="none")
    "silu": F.silu,
    "swish": F.silu,
    "softplus": F.softplus,  # beta=1, threshold=20: the inputs below stay far under 20
}
ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "gelu", "silu", "swish", "softplus"]


def rand(*shape, device="cpu", scale=2.0, shift=0.0):
    """Random float64 values, none of them zero (nor within 1e-3 of zero, where relu/lrelu have a kink)."""
    t = torch.randn(tuple(shape), dtype=F64) * scale + shift
    t = torch.where(t.abs() < 1e-3, torch.full_like(t, 0.5), t)
    return t.to(device)


def cuda_path(device):
    """True where fastgan's CUDA kernels run: a GPU, or the SIMT emulator (CPU tensors)."""
    return device == "cuda" or (SIMT_OK and fastgan.simt._simt.routed())


def close(a, b, msg=""):
    torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{msg}: {m}" if msg else m)


def grads(y, inputs, gy):
    return torch.autograd.grad(y, inputs, gy, allow_unused=True)


def check_fwd_bwd(got_fn, want_fn, inputs, what):
    """got_fn(*inputs) == want_fn(*inputs), and their gradients for one random incoming gradient."""
    a = [t.detach().clone().requires_grad_() for t in inputs]
    b = [t.detach().clone().requires_grad_() for t in inputs]
    ya, yb = got_fn(*a), want_fn(*b)
    assert ya.shape == yb.shape and ya.dtype == yb.dtype, what
    close(ya, yb, what)
    gy = rand(*ya.shape, device=ya.device)
    for i, (ga, gb) in enumerate(zip(grads(ya, a, gy), grads(yb, b, gy))):
        close(ga, gb, f"{what}: gradient of input {i}")


# ---- bias_act -----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ACTS)
def test_bias_act_default_alpha_is_the_user_form(device, act):
    """alpha omitted: lrelu is F.leaky_relu(x, 0.2), elu is F.elu(x) (alpha 1.0), the rest torch's."""
    x, b = rand(3, 5, 4, 6, device=device), rand(5, device=device)
    check_fwd_bwd(lambda x, b: bias_act(x, b, act=act), lambda x, b: USER[act](x + b.view(1, -1, 1, 1)),
                  (x, b), f"bias_act(act={act!r})")
    check_fwd_bwd(lambda x: bias_act(x, act=act), USER[act], (x,), f"bias_act(act={act!r}), no bias")


@pytest.mark.parametrize("device", DEVICES)
def test_bias_act_explicit_alpha_gain_clamp_dim(device):
    x, b = rand(4, 3, 7, device=device), rand(7, device=device)
    check_fwd_bwd(lambda x: bias_act(x, act="lrelu", alpha=0.05), lambda x: F.leaky_relu(x, 0.05), (x,), "lrelu 0.05")
    check_fwd_bwd(lambda x: bias_act(x, act="elu", alpha=0.3), lambda x: F.elu(x, 0.3), (x,), "elu 0.3")
    check_fwd_bwd(lambda x: bias_act(x, act="lrelu", alpha=0.0), F.relu, (x,), "lrelu 0")
    # bias along the last dim, gain, clamp (kept away from the clamp's kink)
    want = lambda x, b: (F.leaky_relu(x + b, 0.2) * 1.7).clamp(-1.1, 1.1)  # noqa: E731
    got = lambda x, b: bias_act(x, b, act="lrelu", gain=1.7, clamp=1.1, dim=-1)  # noqa: E731
    check_fwd_bwd(got, want, (x, b), "lrelu gain 1.7 clamp 1.1 dim -1")
    check_fwd_bwd(lambda x, b: bias_act(x, b, act="gelu", gain=0.6, dim=2), lambda x, b: F.gelu(x + b) * 0.6,
                  (x, b), "gelu gain 0.6 dim 2")


@pytest.mark.parametrize("device", DEVICES)
def test_bias_act_inplace_default_alpha(device):
    """bias_act_'s default act is lrelu with the same 0.2 slope."""
    x, b = rand(2, 4, 3, 3, device=device), rand(4, device=device)
    y = x.clone()
    out = fastgan.ops.bias_act_(y, b)
    assert out is y
    close(y, F.leaky_relu(x + b.view(1, -1, 1, 1), 0.2), "bias_act_ default")


@pytest.mark.parametrize("clamp", [None, 0.9])
def test_bias_act_second_derivative_matches_torch(clamp):
    """d^2/dx^2 through bias_act (R1 through a D) equals torch autograd's of the user form (with a
    clamp too: the clamp mask of the second-order formula is computed apart from the kernels)."""
    c = float("inf") if clamp is None else clamp
    for act in ("tanh", "sigmoid", "elu", "selu", "gelu", "silu", "softplus"):
        x, b, v = rand(2, 3, 4, 2), rand(3), rand(2, 3, 4, 2)
        outs = []
        for fn in (lambda x, b: bias_act(x, b, act=act, gain=1.3, clamp=clamp),
                   lambda x, b: (USER[act](x + b.view(1, -1, 1, 1)) * 1.3).clamp(-c, c)):
            xx, bb = x.clone().requires_grad_(), b.clone().requires_grad_()
            (gx,) = torch.autograd.grad(fn(xx, bb).square().sum(), xx, create_graph=True)
            # (gx * v), not gx^2: nonzero where gx is zero (clamped), so the clamp mask of the
            # second-order formula matters
            outs.append(torch.autograd.grad((gx * v).sum(), (xx, bb)))
        for got, want in zip(*outs):
            close(got, want, f"{act}: second derivative, clamp {clamp}")


# ---- modules of the activations ---------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_fused_leaky_relu_default_slope_is_nn_leaky_relus(device):
    """FusedLeakyReLU() is a drop-in nn.LeakyReLU(): slope 0.01, not bias_act's 0.2."""
    m = FusedLeakyReLU()
    assert m.negative_slope == nn.LeakyReLU().negative_slope == 0.01
    x = rand(3, 4, 5, device=device)
    check_fwd_bwd(m, nn.LeakyReLU(), (x,), "FusedLeakyReLU()")
    check_fwd_bwd(m, F.leaky_relu, (x,), "FusedLeakyReLU() vs F.leaky_relu default")
    check_fwd_bwd(FusedLeakyReLU(0.3), nn.LeakyReLU(0.3), (x,), "FusedLeakyReLU(0.3)")
    # inplace=True on a non-leaf
    a, c = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yc = FusedLeakyReLU(inplace=True)(a * 1.0), nn.LeakyReLU(inplace=True)(c * 1.0)
    close(ya, yc, "inplace")
    gy = rand(*x.shape, device=device)
    close(grads(ya, [a], gy)[0], grads(yc, [c], gy)[0], "inplace gradient")


@pytest.mark.parametrize("device", DEVICES)
def test_fused_bias_act_module_defaults(device):
    """FusedBiasAct(C): documented default act lrelu, alpha 0.2, gain 1, bias initialised to 0."""
    m = FusedBiasAct(5).double().to(device)
    assert torch.equal(m.bias.detach().cpu(), torch.zeros(5, dtype=F64))
    with torch.no_grad():
        m.bias.copy_(rand(5, device=device))
    x = rand(2, 5, 3, 3, device=device)
    close(m(x), F.leaky_relu(x + m.bias.detach().view(1, -1, 1, 1), 0.2), "FusedBiasAct(5)")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation,user", [("lrelu", lambda t: F.leaky_relu(t, 0.2)), ("elu", F.elu),
                                             ("relu", F.relu), (None, lambda t: t)])
def test_fused_conv2d_defaults(device, activation, user):
    """FusedConv2d(activation=...) without negative_slope: lrelu 0.2, elu 1.0 (documented)."""
    m = FusedConv2d(3, 4, 3, padding=1, activation=activation).double().to(device)
    e = nn.Conv2d(3, 4, 3, padding=1).double().to(device)
    e.load_state_dict(m.state_dict())
    x = rand(2, 3, 5, 5, device=device)
    check_fwd_bwd(m, lambda t: user(e(t)), (x,), f"FusedConv2d(activation={activation!r})")


# ---- batch_norm_act ---------------------------------------------------------------------------
BN_USER = {"relu": F.relu, "lrelu": F.leaky_relu, "linear": lambda t: t}  # lrelu: torch's 0.01 default


def bn_inputs(device, C=4):
    x = rand(5, C, 3, 4, device=device, shift=0.7)
    w = rand(C, device=device, scale=0.5, shift=1.0)
    b = rand(C, device=device)
    rm = rand(C, device=device, scale=0.5)
    rv = torch.rand(C, dtype=F64).add(0.5).to(device)
    return x, w, b, rm, rv


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("act", ["relu", "lrelu", "linear"])
@pytest.mark.parametrize("memory_efficient", [True, False])
def test_batch_norm_act_is_f_batch_norm_then_act(device, training, act, memory_efficient):
    """alpha omitted: batch_norm_act's documented 0.01 (nn.LeakyReLU's). The running statistics
    are updated as F.batch_norm updates them (momentum 0.1, unbiased variance)."""
    x, w, b, rm, rv = bn_inputs(device)
    rm_a, rv_a, rm_b, rv_b = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    check_fwd_bwd(
        lambda x, w, b: batch_norm_act(x, w, b, rm_a, rv_a, training=training, act=act,
                                       memory_efficient=memory_efficient),
        lambda x, w, b: BN_USER[act](F.batch_norm(x, rm_b, rv_b, w, b, training)),
        (x, w, b), f"batch_norm_act(act={act!r}, training={training})")
    close(rm_a, rm_b, "running_mean")
    close(rv_a, rv_b, "running_var")
    if training:
        assert not torch.equal(rm_a, rm)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_norm_act_defaults_and_options(device):
    """Default act is relu; eps/momentum/alpha as given; no affine; no running stats in training."""
    x, w, b, rm, rv = bn_inputs(device)
    check_fwd_bwd(lambda x, w, b: batch_norm_act(x, w, b, rm.clone(), rv.clone()),
                  lambda x, w, b: F.relu(F.batch_norm(x, rm.clone(), rv.clone(), w, b)), (x, w, b), "eval default")
    r1, r2 = rm.clone(), rm.clone()
    v1, v2 = rv.clone(), rv.clone()
    check_fwd_bwd(lambda x, w, b: batch_norm_act(x, w, b, r1, v1, training=True, momentum=0.3, eps=1e-3,
                                                 act="lrelu", alpha=0.25),
                  lambda x, w, b: F.leaky_relu(F.batch_norm(x, r2, v2, w, b, True, 0.3, 1e-3), 0.25),
                  (x, w, b), "momentum 0.3 eps 1e-3 slope 0.25")
    close(r1, r2, "running_mean")
    close(v1, v2, "running_var")
    check_fwd_bwd(lambda x: batch_norm_act(x, training=True, act="lrelu"),
                  lambda x: F.leaky_relu(F.batch_norm(x, None, None, training=True)), (x,), "no affine, no stats")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation,eager", [
    ("relu", nn.ReLU), ("lrelu", nn.LeakyReLU), ("elu", nn.ELU), ("linear", nn.Identity), ("tanh", nn.Tanh),
    ("gelu", nn.GELU), ("silu", nn.SiLU), ("sigmoid", nn.Sigmoid)])
def test_fused_batch_norm_act2d_is_batch_norm2d_then_activation(device, activation, eager):
    """FusedBatchNormAct2d(C, activation=a) == nn.BatchNorm2d(C) + the nn activation with its own
    defaults (LeakyReLU 0.01, ELU 1.0): two training steps of SGD, then eval."""
    m = FusedBatchNormAct2d(4, activation=activation).double().to(device)
    e = nn.Sequential(nn.BatchNorm2d(4), eager()).double().to(device)
    with torch.no_grad():
        m.weight.copy_(rand(4, scale=0.5, shift=1.0))
        m.bias.copy_(rand(4))
    e[0].load_state_dict(m.state_dict())
    opt_m = torch.optim.SGD(m.parameters(), lr=0.1)
    opt_e = torch.optim.SGD(e.parameters(), lr=0.1)
    for step in range(2):
        x = rand(6, 4, 3, 3, device=device, shift=0.3)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = m(xa), e(xb)
        close(ya, yb, f"{activation} step {step}")
        gy = rand(*ya.shape, device=device)
        ya.backward(gy)
        yb.backward(gy)
        close(xa.grad, xb.grad, "grad x")
        close(m.weight.grad, e[0].weight.grad, "grad weight")
        close(m.bias.grad, e[0].bias.grad, "grad bias")
        opt_m.step()
        opt_e.step()
        opt_m.zero_grad()
        opt_e.zero_grad()
    for k, v in e[0].state_dict().items():
        close(m.state_dict()[k].to(v.dtype), v, k)
    m.eval()
    e.eval()
    x = rand(2, 4, 3, 3, device=device)
    close(m(x), e(x), f"{activation} eval")


def test_fused_batch_norm_act2d_default_is_relu():
    m = FusedBatchNormAct2d(3).double()
    e = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU()).double()
    x = rand(4, 3, 2, 5)
    close(m(x), e(x), "FusedBatchNormAct2d(3) default activation")
    assert FusedBatchNormAct2d(3, activation="lrelu").negative_slope == nn.LeakyReLU().negative_slope


# ---- conv_transpose2d_act -----------------------------------------------------------------------
CT_CFGS = [  # (N, Cin, Cout, H, W, k, stride, padding, output_padding, groups, dilation)
    (2, 4, 3, 3, 4, 4, 2, 1, 0, 1, 1),   # the DCGAN block
    (1, 6, 4, 2, 3, 3, 2, 0, 1, 2, 1),   # groups 2, output_padding 1
    (2, 3, 3, 3, 2, 3, 1, 1, 0, 3, 2),   # depthwise, dilation 2
    (1, 2, 5, 1, 1, 4, 1, 0, 0, 1, 1),   # DCGAN's first layer: 1x1 input
]


@pytest.fixture(params=["aten", "aten_cl", "fused"])
def ct_path(request, monkeypatch):
    monkeypatch.setenv("FASTGAN_CONV_TRANSPOSE_PATH", request.param)
    return request.param


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", range(len(CT_CFGS)))
@pytest.mark.parametrize("act", ["lrelu", "relu", "tanh", "elu", "linear"])
def test_conv_transpose2d_act_is_f_conv_transpose2d_then_act(device, cfg, act, ct_path):
    """alpha omitted: lrelu 0.2, elu 1.0 (conv_transpose2d_act takes bias_act's defaults)."""
    n, cin, cout, h, w, k, s, p, op, g, d = CT_CFGS[cfg]
    if ct_path == "fused" and (d != 1 or cuda_path(device)):
        pytest.skip("the fused path takes dilation 1 only, and float16/bfloat16/float32 on CUDA")
    x = rand(n, cin, h, w, device=device)
    wt = rand(cin, cout // g, k, k, device=device, scale=0.5)
    b = rand(cout, device=device)
    check_fwd_bwd(lambda x, wt, b: conv_transpose2d_act(x, wt, b, s, p, op, g, d, act=act),
                  lambda x, wt, b: USER[act](F.conv_transpose2d(x, wt, b, s, p, op, g, d)),
                  (x, wt, b), f"conv_transpose2d_act cfg {cfg} act={act!r}")


@pytest.mark.parametrize("device", DEVICES)
def test_conv_transpose2d_act_gain_clamp_unbatched(device):
    x, wt, b = rand(3, 4, 4, device=device), rand(3, 2, 4, 4, device=device, scale=0.5), rand(2, device=device)
    check_fwd_bwd(lambda x, wt, b: conv_transpose2d_act(x, wt, b, 2, 1, act="lrelu", alpha=0.1, gain=1.4),
                  lambda x, wt, b: F.leaky_relu(F.conv_transpose2d(x, wt, b, 2, 1), 0.1) * 1.4,
                  (x, wt, b), "unbatched, slope 0.1, gain 1.4")
    check_fwd_bwd(lambda x, wt: conv_transpose2d_act(x, wt, None, 2, 1, act="gelu", clamp=0.9),
                  lambda x, wt: F.gelu(F.conv_transpose2d(x, wt, None, 2, 1)).clamp(-0.9, 0.9),
                  (x, wt), "no bias, clamp 0.9")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation,user", [("lrelu", lambda t: F.leaky_relu(t, 0.2)), ("elu", F.elu),
                                             ("tanh", torch.tanh), (None, lambda t: t)])
def test_fused_conv_transpose2d_module_defaults(device, activation, user):
    """FusedConvTranspose2d(activation=...) without negative_slope: lrelu 0.2, elu 1.0 (documented)."""
    m = FusedConvTranspose2d(4, 3, 4, 2, 1, activation=activation).double().to(device)
    e = nn.ConvTranspose2d(4, 3, 4, 2, 1).double().to(device)
    e.load_state_dict(m.state_dict())
    x = rand(2, 4, 3, 3, device=device)
    check_fwd_bwd(m, lambda t: user(e(t)), (x,), f"FusedConvTranspose2d(activation={activation!r})")


# ---- GAN losses, as users write them --------------------------------------------------------------
def bce(t, label, reduction="mean"):
    return F.binary_cross_entropy_with_logits(t, torch.full_like(t, label), reduction=reduction)


def mse(t, label, reduction="mean"):
    return F.mse_loss(t, torch.full_like(t, label), reduction=reduction)


def red(t, reduction):
    return t.mean() if reduction == "mean" else t.sum()


USER_D = {  # (real, fake, reduction) -> the discriminator loss
    "ns": lambda r, f, red_: bce(r, 1.0, red_) + bce(f, 0.0, red_),
    "minimax": lambda r, f, red_: bce(r, 1.0, red_) + bce(f, 0.0, red_),
    "hinge": lambda r, f, red_: red(F.relu(1 - r), red_) + red(F.relu(1 + f), red_),
    "wgan": lambda r, f, red_: red(-r, red_) + red(f, red_),
    "lsgan": lambda r, f, red_: 0.5 * mse(r, 1.0, red_) + 0.5 * mse(f, 0.0, red_),
    "rals": lambda r, f, red_: bce(r - f.mean(), 1.0, red_) + bce(f - r.mean(), 0.0, red_),
    "rpgan": lambda r, f, red_: bce(r - f, 1.0, red_),  # pairs: -log sigmoid(r_i - f_i)
}
USER_G = {  # (fake, real, reduction) -> the generator loss
    "ns": lambda f, r, red_: bce(f, 1.0, red_),                    # -log D(G(z))
    "minimax": lambda f, r, red_: -bce(f, 0.0, red_),              # log(1 - D(G(z)))
    "hinge": lambda f, r, red_: red(-f, red_),
    "wgan": lambda f, r, red_: red(-f, red_),
    "lsgan": lambda f, r, red_: 0.5 * mse(f, 1.0, red_),
    "rals": lambda f, r, red_: bce(f - r.mean(), 1.0, red_) + bce(r - f.mean(), 0.0, red_),
    "rpgan": lambda f, r, red_: bce(f - r, 1.0, red_),
}
KINDS = list(USER_D)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", KINDS)
def test_d_loss_is_the_user_form(device, kind, reduction):
    real, fake = rand(17, 1, device=device, scale=3.0), rand(11, device=device, scale=3.0)
    if kind == "rpgan":  # pairs: the same shape
        fake = rand(17, 1, device=device, scale=3.0)
    check_fwd_bwd(lambda r, f: d_loss(r, f, kind, reduction=reduction),
                  lambda r, f: USER_D[kind](r, f, reduction), (real, fake), f"d_loss {kind} {reduction}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", KINDS)
def test_g_loss_is_the_user_form(device, kind, reduction):
    fake, real = rand(4, 3, device=device, scale=3.0), rand(9, device=device, scale=3.0)
    if kind == "rpgan":  # pairs: the same shape
        real = rand(4, 3, device=device, scale=3.0)
    if kind in ("rals", "rpgan"):
        check_fwd_bwd(lambda f, r: g_loss(f, kind, real_logits=r, reduction=reduction),
                      lambda f, r: USER_G[kind](f, r, reduction), (fake, real), f"g_loss {kind} {reduction}")
    else:
        check_fwd_bwd(lambda f: g_loss(f, kind, reduction=reduction),
                      lambda f: USER_G[kind](f, None, reduction), (fake,), f"g_loss {kind} {reduction}")


@pytest.mark.parametrize("device", DEVICES)
def test_loss_defaults_labels_and_stats(device):
    """Default kind is ns with labels 1/0 and mean reduction; smoothed labels are BCE targets;
    the stats are mean sigmoids; GANLoss() is the same."""
    real, fake = rand(13, device=device, scale=3.0), rand(7, 2, device=device, scale=3.0)
    check_fwd_bwd(d_loss, lambda r, f: bce(r, 1.0) + bce(f, 0.0), (real, fake), "d_loss default")
    check_fwd_bwd(g_loss, lambda f: bce(f, 1.0), (fake,), "g_loss default")
    check_fwd_bwd(lambda r, f: d_loss(r, f, real_label=0.9, fake_label=0.1),
                  lambda r, f: bce(r, 0.9) + bce(f, 0.1), (real, fake), "label smoothing")
    check_fwd_bwd(lambda r, f: d_loss(r, f, "minimax", real_label=0.8),
                  lambda r, f: bce(r, 0.8) + bce(f, 0.0), (real, fake), "minimax label smoothing")
    loss, stats = d_loss(real, fake, return_stats=True)
    close(loss, bce(real, 1.0) + bce(fake, 0.0), "loss with stats")
    close(stats["d_real"], torch.sigmoid(real).mean(), "d_real")
    close(stats["d_fake"], torch.sigmoid(fake).mean(), "d_fake")
    crit = fastgan.nn.GANLoss()
    close(crit.d(real, fake), bce(real, 1.0) + bce(fake, 0.0), "GANLoss().d")
    close(crit.g(fake), bce(fake, 1.0), "GANLoss().g")
