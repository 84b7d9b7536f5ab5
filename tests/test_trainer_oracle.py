"""GANTrainer against a hand-computed oracle.

Tiny float64 networks (G = Linear(2, 3); D = Linear(3, 1), or Linear(3, 4)-tanh-Linear(4, 1) where a
penalty must depend on x), fixed real batches (fed through `fit` in place of its batch stream),
fixed noise (the trainer's `noise` replaced) and fixed WGAN-GP interpolation coefficients
(`torch.rand` replaced while `fit` runs). The expected parameters after one and after three steps
are computed here from plain torch autograd on leaf tensors, with the networks, losses, penalties,
optimisers and EMA written out by hand: nothing of fastgan.ops or of the trainer is used. They must
match to float64 round-off.

The semantics checked (GANTrainer's docstring and the GAN paper's alternating updates):
* each step, `d_steps` discriminator updates, each on its own real batch and its own fresh fake
  batch G(z) (noise drawn for that D step), D loss = mean(real terms) + mean(fake terms);
* then one generator update on the fake batch of the last D step, its loss through the UPDATED
  discriminator (rals, rpgan: the real logits too, with the updated D), D's parameters untouched;
* R1 (gamma/2 * mean_i ||dD(x_i)/dx_i||^2) at steps 0, k, 2k, ... scaled by k = r1_every;
* WGAN-GP: weight * mean_i (||dD(x_hat_i)/dx_hat_i|| - 1)^2, x_hat = eps real + (1 - eps) fake, on
  every D step;
* EMA: ema <- ema + (1 - decay) (G - ema) after each G step, starting from G's initial weights;
* amp="fp16": a step whose gradients are not finite is skipped by that network's GradScaler (whose
  scale halves) while the other network trains on; without a scaler the non-finite guard raises.
(Autocast leaves float64 tensors alone, and the scale is a power of two, so even the fp16 path is
exact in float64 here.)
"""
import pytest
import torch
from torch import nn

from fastgan.train import GANTrainer, NonFiniteLossError
from fastgan.train import trainer as trainer_mod

DT = torch.float64
N = 4            # batch size
Z, X = 2, 3      # noise and sample dimensions
LR_G, LR_D = 0.07, 0.11
TOL = dict(rtol=1e-12, atol=1e-12)
LOSSES = ["ns", "minimax", "hinge", "wgan", "lsgan", "rals", "rpgan"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks (conftest.one_thread)


# ---- the networks ------------------------------------------------------------------------------
def make_nets(d_kind="linear", seed=3, pack=1):
    torch.manual_seed(seed)
    g = nn.Linear(Z, X).to(DT)
    if d_kind == "linear":
        d = nn.Linear(X * pack, 1).to(DT)
    else:
        d = nn.Sequential(nn.Linear(X * pack, 4), nn.Tanh(), nn.Linear(4, 1)).to(DT)
    return g, d


def g_fwd(p, z):
    w, b = p
    return z @ w.T + b


def d_fwd(p, x):
    if len(p) == 2:
        w, b = p
        return x @ w.T + b
    w1, b1, w2, b2 = p
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


# ---- the losses, written out -------------------------------------------------------------------
def softplus(x):
    return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))


def d_loss(kind, r, f):
    if kind in ("ns", "minimax"):       # -log sigmoid(r) - log(1 - sigmoid(f))
        return softplus(-r).mean() + softplus(f).mean()
    if kind == "hinge":
        return torch.relu(1 - r).mean() + torch.relu(1 + f).mean()
    if kind == "wgan":
        return -r.mean() + f.mean()
    if kind == "lsgan":
        return (0.5 * (r - 1) ** 2).mean() + (0.5 * f ** 2).mean()
    if kind == "rals":
        return softplus(-(r - f.mean())).mean() + softplus(f - r.mean()).mean()
    if kind == "rpgan":                 # pairs: -log sigmoid(r_i - f_i)
        return softplus(f - r).mean()
    raise AssertionError(kind)


def g_loss(kind, f, r):
    if kind == "ns":                    # -log sigmoid(f)
        return softplus(-f).mean()
    if kind == "minimax":               # log(1 - sigmoid(f))
        return -softplus(f).mean()
    if kind in ("hinge", "wgan"):
        return -f.mean()
    if kind == "lsgan":
        return (0.5 * (f - 1) ** 2).mean()
    if kind == "rals":
        return softplus(-(f - r.mean())).mean() + softplus(r - f.mean()).mean()
    if kind == "rpgan":
        return softplus(r - f).mean()
    raise AssertionError(kind)


# ---- the optimisers, written out ---------------------------------------------------------------
class SGD:
    def __init__(self, lr):
        self.lr = lr

    def __call__(self, params, grads):
        return [p - self.lr * g for p, g in zip(params, grads)]


class Adam:
    def __init__(self, lr, betas, eps=1e-8):
        self.lr, (self.b1, self.b2), self.eps, self.t, self.m, self.v = lr, betas, eps, 0, None, None

    def __call__(self, params, grads):
        if self.m is None:
            self.m = [torch.zeros_like(p) for p in params]
            self.v = [torch.zeros_like(p) for p in params]
        self.t += 1
        self.m = [self.b1 * m + (1 - self.b1) * g for m, g in zip(self.m, grads)]
        self.v = [self.b2 * v + (1 - self.b2) * g * g for v, g in zip(self.v, grads)]
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        return [p - self.lr * (m / c1) / ((v / c2).sqrt() + self.eps) for p, m, v in zip(params, self.m, self.v)]


# ---- the oracle ----------------------------------------------------------------------------------
def leaves(ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def oracle(g0, d0, reals, zs, steps, *, kind="ns", d_steps=1, opt_g=None, opt_d=None, r1_gamma=0.0,
           r1_every=1, r2_gamma=0.0, gp_weight=0.0, eps=None, ema_decay=None, skip_d=(), frozen_d=(), pack=1):
    """The parameters (G, D, EMA) after each of `steps` steps. reals[i] / zs[i] / eps[i]: the
    real batch, noise and GP coefficients of the i-th D update; skip_d: (step, D update) pairs whose
    update a GradScaler skips; frozen_d: indices of D parameters that must never move. pack: D sees
    rows of `pack` consecutive samples side by side (PacGAN), penalties and GP coefficients per row."""

    def P(x):
        return x.reshape(x.shape[0] // pack, pack * X)

    opt_g = opt_g or SGD(LR_G)
    opt_d = opt_d or SGD(LR_D)
    pg, pd = [t.detach().clone() for t in g0], [t.detach().clone() for t in d0]
    ema = [t.clone() for t in pg]
    out, j = [], 0
    for step in range(steps):
        for i in range(d_steps):
            real, z = reals[j], zs[j]
            fake = g_fwd(pg, z).detach()           # a fresh fake batch for this D update
            p = leaves(pd)
            loss = d_loss(kind, d_fwd(p, P(real)), d_fwd(p, P(fake)))
            if r1_gamma > 0 and step % r1_every == 0:
                x = P(real).clone().requires_grad_(True)
                (gx,) = torch.autograd.grad(d_fwd(p, x).sum(), x, create_graph=True)
                loss = loss + r1_every * (r1_gamma / 2 * gx.pow(2).sum(1).mean())
            if r2_gamma > 0 and step % r1_every == 0:  # R2: the same penalty at the fakes
                x = P(fake).clone().requires_grad_(True)
                (gx,) = torch.autograd.grad(d_fwd(p, x).sum(), x, create_graph=True)
                loss = loss + r1_every * (r2_gamma / 2 * gx.pow(2).sum(1).mean())
            if gp_weight > 0:
                e = eps[j][:, None]
                xh = (e * P(real) + (1 - e) * P(fake)).requires_grad_(True)
                (gx,) = torch.autograd.grad(d_fwd(p, xh).sum(), xh, create_graph=True)
                loss = loss + gp_weight * ((gx.norm(dim=1) - 1) ** 2).mean()
            grads = list(torch.autograd.grad(loss, [q for k, q in enumerate(p) if k not in frozen_d]))
            if (step, i) not in skip_d:
                moved = opt_d([q for k, q in enumerate(pd) if k not in frozen_d], grads)
                it = iter(moved)
                pd = [q if k in frozen_d else next(it).detach() for k, q in enumerate(pd)]
            j += 1
        # G update: the last D update's noise, through the updated D (D itself untouched)
        p = leaves(pg)
        f = d_fwd(pd, P(g_fwd(p, zs[j - 1])))
        r = d_fwd(pd, P(reals[j - 1])).detach()
        grads = torch.autograd.grad(g_loss(kind, f, r), p)
        pg = [t.detach() for t in opt_g(pg, grads)]
        if ema_decay is not None:
            ema = [e + (1 - ema_decay) * (q - e) for e, q in zip(ema, pg)]
        out.append(dict(g=pg, d=pd, ema=ema))
    return out


# ---- driving the trainer -------------------------------------------------------------------------
class Stream:
    """Stands in for fit's batch stream: the given real batches, in order."""

    def __init__(self, reals):
        self.reals, self.i = reals, 0

    def __iter__(self):
        return self

    def __next__(self):
        x = self.reals[self.i]
        self.i += 1
        return x.clone()

    def state_dict(self):
        return {"i": self.i}


class Rig:
    """A GANTrainer over fixed real batches, noise and GP coefficients, run with `fit`."""

    def __init__(self, monkeypatch, g, d, *, n_updates, sgd=True, **kw):
        self.g0 = [p.detach().clone() for p in g.parameters()]
        self.d0 = [p.detach().clone() for p in d.parameters()]
        gen = torch.Generator().manual_seed(11)
        self.reals = [torch.randn(N, X, generator=gen, dtype=DT) for _ in range(n_updates)]
        self.zs = [torch.randn(N, Z, generator=gen, dtype=DT) for _ in range(n_updates)]
        self.pack = kw.get("pack", 1)
        self.eps = [torch.rand(N // self.pack, generator=gen, dtype=DT) for _ in range(n_updates)]
        if sgd:
            kw.setdefault("g_optimizer", lambda ps: torch.optim.SGD(ps, lr=LR_G))
            kw.setdefault("d_optimizer", lambda ps: torch.optim.SGD(ps, lr=LR_D))
        self.t = GANTrainer(g, d, z_dim=Z, device="cpu", **kw)
        self.stream = Stream(self.reals)
        self.noise_calls, self.rand_calls = [], []
        monkeypatch.setattr(trainer_mod, "make_batches", lambda data, batch_size, **k: self.stream)
        self.t.noise = self._noise
        self.monkeypatch = monkeypatch

    def _noise(self, n):
        self.noise_calls.append(n)
        return self.zs[len(self.noise_calls) - 1].clone()

    def _rand(self, *size, dtype=None, device=None, **kw):
        self.rand_calls.append(tuple(size))
        e = self.eps[len(self.rand_calls) - 1]
        assert tuple(size) == (N // self.pack,) and not kw
        return e.to(dtype=dtype or e.dtype, device=device)

    def fit(self, steps):
        with self.monkeypatch.context() as m:
            m.setattr(torch, "rand", self._rand)
            return self.t.fit(self.reals[0], steps, N, progress=False, log_every=1)

    def check(self, want, ema=False):
        torch.testing.assert_close(list(self.t.generator.parameters()), want["g"], **TOL)
        torch.testing.assert_close(list(self.t.discriminator.parameters()), want["d"], **TOL)
        if ema:
            torch.testing.assert_close(list(self.t.ema.parameters()), want["ema"], **TOL)


def run_and_check(monkeypatch, *, d_kind="linear", steps=3, d_steps=1, ema=False, sgd=True, opt=None, **kw):
    """fit 1 step, check; fit on to `steps`, check; the noise and data drawn as the oracle says."""
    g, d = make_nets(d_kind, pack=kw.get("pack", 1))
    rig = Rig(monkeypatch, g, d, n_updates=steps * d_steps, sgd=sgd, d_steps=d_steps, **kw)
    okw = {k: v for k, v in kw.items() if k in ("loss", "r1_gamma", "r1_every", "r2_gamma", "gp_weight",
                                                      "ema_decay", "pack")}
    okw["kind"] = okw.pop("loss", "ns")
    want = oracle(rig.g0, rig.d0, rig.reals, rig.zs, steps, d_steps=d_steps, eps=rig.eps, **(opt or {}), **okw)
    hist = rig.fit(1)
    assert rig.t.step == 1 and rig.stream.i == d_steps and rig.noise_calls == [N] * d_steps
    rig.check(want[0], ema)
    hist = rig.fit(steps)
    assert rig.t.step == steps and rig.stream.i == steps * d_steps
    assert rig.noise_calls == [N] * (steps * d_steps)  # one fake batch per D update, no other noise
    rig.check(want[-1], ema)
    return rig, want, hist


# ---- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("d_kind", ["linear", "mlp"])
@pytest.mark.parametrize("loss", LOSSES)
def test_steps_match_the_oracle(loss, d_kind, monkeypatch):
    """One D update on real + a fresh fake batch, then one G update through the updated D."""
    rig, _, _ = run_and_check(monkeypatch, d_kind=d_kind, loss=loss)
    assert rig.rand_calls == []


@pytest.mark.parametrize("loss", ["ns", "hinge", "rals"])
@pytest.mark.parametrize("d_steps", [2, 3])
def test_several_d_steps(d_steps, loss, monkeypatch):
    """Each D update on its own real and fake batch; the G update on the last D update's noise."""
    run_and_check(monkeypatch, d_kind="mlp", d_steps=d_steps, loss=loss)


@pytest.mark.parametrize("d_steps", [1, 2])
@pytest.mark.parametrize("r1_every", [1, 2, 3])
def test_lazy_r1(r1_every, d_steps, monkeypatch):
    """R1 at steps 0, k, 2k, ... (every D update of such a step), its gradient scaled by k."""
    _, _, hist = run_and_check(monkeypatch, d_kind="mlp", d_steps=d_steps, r1_gamma=0.7, r1_every=r1_every)
    # the logged penalty is the unscaled R1 of the step's last D update, 0 where there is none
    assert [r["step"] for r in hist] == [1, 2, 3]
    assert [r["r1"] > 0 for r in hist] == [s % r1_every == 0 for s in range(3)]


@pytest.mark.parametrize("loss", ["ns", "rals", "rpgan"])  # rpgan + R1 + R2: R3GAN's objective
@pytest.mark.parametrize("r1_gamma,r2_gamma,r1_every", [(0.0, 0.9, 1), (0.7, 0.7, 2)])
def test_r2_and_r1_with_r2(r1_gamma, r2_gamma, r1_every, loss, monkeypatch):
    """R2 (R1's penalty at the fakes of each D update), alone and beside R1, lazy as R1."""
    _, _, hist = run_and_check(monkeypatch, d_kind="mlp", d_steps=2, loss=loss, r1_gamma=r1_gamma,
                               r2_gamma=r2_gamma, r1_every=r1_every)
    assert [r["r2"] > 0 for r in hist] == [s % r1_every == 0 for s in range(3)]
    assert ("r1" in hist[0]) == (r1_gamma > 0)


@pytest.mark.parametrize("loss,penalty", [("ns", {}), ("rals", dict(r1_gamma=0.7, r2_gamma=0.4)),
                                          ("hinge", dict(r1_gamma=0.5)), ("wgan", dict(gp_weight=10.0))])
def test_pack(loss, penalty, monkeypatch):
    """pack=2 (PacGAN): D judges pairs of consecutive samples side by side, reals and fakes, in
    the D updates, their penalties and the G update; WGAN-GP draws one coefficient per pair."""
    rig, _, _ = run_and_check(monkeypatch, d_kind="mlp", d_steps=2, loss=loss, pack=2, **penalty)
    assert rig.rand_calls == ([(N // 2,)] * 6 if "gp_weight" in penalty else [])


def test_lazy_r1_logged_value(monkeypatch):
    """The logged R1 of step 1 (applied) is gamma/2 * mean ||dD/dx||^2 with the D it was taken on."""
    g, d = make_nets("mlp")
    rig = Rig(monkeypatch, g, d, n_updates=2, r1_gamma=0.7, r1_every=2)
    hist = rig.fit(2)
    x = rig.reals[0].clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(d_fwd(rig.d0, x).sum(), x)
    want = 0.7 / 2 * gx.pow(2).sum(1).mean()
    assert hist[0]["r1"] == pytest.approx(want.item(), rel=1e-6) and hist[1]["r1"] == 0


@pytest.mark.parametrize("d_steps", [1, 2])
@pytest.mark.parametrize("loss", ["wgan", "hinge"])
def test_wgan_gp(loss, d_steps, monkeypatch):
    """The GP on eps real + (1 - eps) fake, on every D update, with that update's fake batch."""
    rig, _, hist = run_and_check(monkeypatch, d_kind="mlp", d_steps=d_steps, loss=loss, gp_weight=10.0)
    assert rig.rand_calls == [(N,)] * (3 * d_steps)
    assert all(r["gp"] > 0 for r in hist)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9])
def test_ema(decay, monkeypatch):
    """EMA: a lerp of the generator after every G update, from G's initial weights."""
    _, want, _ = run_and_check(monkeypatch, ema=True, ema_decay=decay)
    # (the EMA differs from the generator unless decay is 0: the test can tell them apart)
    gap = max((a - b).abs().max().item() for a, b in zip(want[-1]["g"], want[-1]["ema"]))
    assert (gap == 0) == (decay == 0)


def test_ema_with_d_steps_and_r1(monkeypatch):
    run_and_check(monkeypatch, d_kind="mlp", ema=True, ema_decay=0.8, d_steps=2, r1_gamma=0.5, r1_every=2,
                  loss="lsgan")


def test_default_adam(monkeypatch):
    """The default optimisers: Adam with lr_g / lr_d and betas, each on its own network."""
    lr_g, lr_d, betas = 0.03, 0.05, (0.5, 0.9)
    run_and_check(monkeypatch, d_kind="mlp", sgd=False, lr_g=lr_g, lr_d=lr_d, betas=betas, loss="ns",
                  opt=dict(opt_g=Adam(lr_g, betas), opt_d=Adam(lr_d, betas)))


def test_history_losses(monkeypatch):
    """The logged losses are those of the step's last D update and of its G update."""
    g, d = make_nets("mlp")
    rig = Rig(monkeypatch, g, d, n_updates=2, d_steps=2, loss="hinge")
    hist = rig.fit(1)
    want = oracle(rig.g0, rig.d0, rig.reals, rig.zs, 1, d_steps=2, kind="hinge")[0]
    # the last D update started from the D after the first one
    d1 = oracle(rig.g0, rig.d0, rig.reals, rig.zs, 1, d_steps=1, kind="hinge")[0]["d"]
    fake = g_fwd(rig.g0, rig.zs[1])
    ld = d_loss("hinge", d_fwd(d1, rig.reals[1]), d_fwd(d1, fake))
    lg = g_loss("hinge", d_fwd(want["d"], fake), None)
    assert hist[0]["d_loss"] == pytest.approx(ld.item(), rel=1e-6)
    assert hist[0]["g_loss"] == pytest.approx(lg.item(), rel=1e-6)


def test_frozen_discriminator_parameter_stays_frozen(monkeypatch):
    """A D parameter the user froze is neither updated in the D step nor unfrozen by the G step."""
    g, d = make_nets("mlp")
    d[0].bias.requires_grad_(False)
    rig = Rig(monkeypatch, g, d, n_updates=3)
    want = oracle(rig.g0, rig.d0, rig.reals, rig.zs, 3, frozen_d=(1,))
    rig.fit(3)
    rig.check(want[-1])
    assert [p.requires_grad for p in d.parameters()] == [True, False, True, True]


# ---- fp16: the GradScaler's skip ---------------------------------------------------------------
def test_fp16_scaler_skips_a_non_finite_d_step(monkeypatch):
    """A NaN in the first real batch: D's scaler skips that D update (scale 65536 -> 32768) while G
    trains on through the unchanged D; the next steps are ordinary steps (scale kept)."""
    g, d = make_nets("mlp")
    rig = Rig(monkeypatch, g, d, n_updates=3, amp="fp16", ema_decay=0.5)
    rig.reals[0][1, 2] = float("nan")
    assert rig.t.scaler_d.get_scale() == rig.t.scaler_g.get_scale() == 65536.0
    want = oracle(rig.g0, rig.d0, rig.reals, rig.zs, 3, skip_d={(0, 0)}, ema_decay=0.5)
    rig.fit(1)
    torch.testing.assert_close(list(d.parameters()), rig.d0, rtol=0, atol=0)  # skipped: untouched
    rig.check(want[0], ema=True)
    assert rig.t.scaler_d.get_scale() == 32768.0 and rig.t.scaler_g.get_scale() == 65536.0
    hist = rig.fit(3)  # no NonFiniteLossError: the scaler dealt with it
    rig.check(want[-1], ema=True)
    assert hist[-1]["scale_d"] == 32768.0 and hist[-1]["scale_g"] == 65536.0


def test_fp16_scaler_skips_both_updates(monkeypatch):
    """Non-finite noise: a NaN fake batch, so both D's and G's updates are skipped and both scales
    halve; the EMA of an unchanged G stays put; the following step is an ordinary one."""
    g, d = make_nets("linear")
    rig = Rig(monkeypatch, g, d, n_updates=2, amp="fp16", ema_decay=0.5)
    rig.zs[0][0, 0] = float("inf")
    rig.fit(1)
    torch.testing.assert_close(list(g.parameters()) + list(d.parameters()), rig.g0 + rig.d0, rtol=0, atol=0)
    torch.testing.assert_close(list(rig.t.ema.parameters()), rig.g0, rtol=0, atol=0)
    assert rig.t.scaler_d.get_scale() == rig.t.scaler_g.get_scale() == 32768.0
    rig.fit(2)
    want = oracle(rig.g0, rig.d0, rig.reals[1:], rig.zs[1:], 1, ema_decay=0.5)[0]
    rig.check(want, ema=True)


def test_without_a_scaler_non_finite_raises(monkeypatch):
    """The same NaN batch without amp='fp16': the non-finite guard stops training."""
    g, d = make_nets("mlp")
    rig = Rig(monkeypatch, g, d, n_updates=3)
    rig.reals[0][1, 2] = float("nan")
    with pytest.raises(NonFiniteLossError, match="step 1"):
        rig.fit(2)
