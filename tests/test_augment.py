"""GANTrainer(augment="diffaug" | "ada"): a step against a hand-written one (the reference
augmentation with the parameters the trainer drew), ADA's tuning of p, exact resume, the CLI's
--augment, and the refusals."""
import importlib
import json
import os

import pytest
import torch
from torch import nn

from fastgan.ops import reference as R
from fastgan.train import GANTrainer
from fastgan.train import trainer as trainer_mod
from fastgan.train.augment import Augment

da_mod = importlib.import_module("fastgan.ops.diff_augment")  # (fastgan.ops.diff_augment is the function)
DT = torch.float64
N, Z = 4, 2
SHAPE = (3, 4, 4)
pytestmark = pytest.mark.usefixtures("one_thread")


def nets(seed=3, dtype=DT):
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Linear(Z, 48), nn.Unflatten(1, SHAPE)).to(dtype)
    d = nn.Sequential(nn.Flatten(), nn.Linear(48, 5), nn.Tanh(), nn.Linear(5, 1)).to(dtype)
    return g, d


class Recorder:
    """Wraps diff_augment_params: records what the trainer drew, in order."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = da_mod.diff_augment_params

        def rec(x, *a, **kw):
            out = real(x, *a, **kw)
            self.calls.append((out[0].clone(), out[1]))
            return out
        monkeypatch.setattr(da_mod, "diff_augment_params", rec)


class Once:
    """The batch stream for one step: the given real batch."""

    def __init__(self, x):
        self.x = x

    def __next__(self):
        return self.x

    def state_dict(self):
        return {}


def softplus(x):
    return torch.logaddexp(x, torch.zeros_like(x))


@pytest.mark.parametrize("r1_gamma", [0.0, 0.8])
def test_step_matches_a_hand_written_one(monkeypatch, r1_gamma):
    """One step: D on T(x) and T(G(z).detach()), R1 w.r.t. x through T, then G on T'(G(z)) through the
    updated D, with plain SGD; T, T, T' are three independent draws."""
    g, d = nets()
    g0 = [p.detach().clone() for p in g.parameters()]
    d0 = [p.detach().clone() for p in d.parameters()]
    gen = torch.Generator().manual_seed(1)
    real = (torch.rand(N, *SHAPE, generator=gen, dtype=DT) * 2 - 1)
    z = torch.randn(N, Z, generator=gen, dtype=DT)
    rec = Recorder(monkeypatch)
    monkeypatch.setattr(trainer_mod, "make_batches", lambda *a, **kw: Once(real))
    t = GANTrainer(g, d, z_dim=Z, g_optimizer=lambda p: torch.optim.SGD(p, 0.07),
                   d_optimizer=lambda p: torch.optim.SGD(p, 0.11), r1_gamma=r1_gamma, augment="diffaug",
                   augment_p=0.9)
    monkeypatch.setattr(t, "noise", lambda n: z)
    t.fit(real, 1, N, progress=False)
    assert len(rec.calls) == 3
    (pr, hw), (pf, _), (pg, _) = rec.calls
    assert not torch.equal(pr, pf) and not torch.equal(pf, pg)

    # by hand
    gw, gb = [p.clone().requires_grad_(True) for p in g0]
    dp = [p.clone().requires_grad_(True) for p in d0]

    def G(zz, w, b):
        return (zz @ w.T + b).view(-1, *SHAPE)

    def D(x, p):
        return torch.tanh(x.flatten(1) @ p[0].T + p[1]) @ p[2].T + p[3]

    xr = real.clone().requires_grad_(r1_gamma > 0)
    lr = D(R.diff_augment_apply(xr, pr, hw), dp)
    fake = G(z, gw, gb)
    lf = D(R.diff_augment_apply(fake.detach(), pf, hw), dp)
    loss = softplus(-lr).mean() + softplus(lf).mean()
    if r1_gamma:
        (gx,) = torch.autograd.grad(lr.sum(), xr, create_graph=True)
        loss = loss + r1_gamma / 2 * gx.flatten(1).square().sum(1).mean()
    grads = torch.autograd.grad(loss, dp)
    d1 = [(p - 0.11 * gr).detach() for p, gr in zip(dp, grads)]
    lg = softplus(-D(R.diff_augment_apply(fake, pg, hw), d1)).mean()
    ggw, ggb = torch.autograd.grad(lg, (gw, gb))
    want_g = [gw - 0.07 * ggw, gb - 0.07 * ggb]
    for got, want in zip(list(t.discriminator.parameters()) + list(t.generator.parameters()), d1 + want_g):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-12, atol=1e-12)


def test_p_zero_is_no_augmentation():
    """augment_p=0: D sees the samples themselves; the same bits as a run without augment."""
    data = torch.rand(64, *SHAPE) * 2 - 1
    out = []
    for kw in ({}, {"augment": "diffaug", "augment_p": 0.0}):
        g, d = nets(dtype=torch.float32)
        t = GANTrainer(g, d, z_dim=Z, r1_gamma=0.5, **kw)
        t.fit(data, 3, 8, progress=False)
        out.append([p.detach().clone() for p in list(t.generator.parameters()) + list(t.discriminator.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*out))


def test_ada_moves_p_by_the_sign_of_the_real_logits():
    a = Augment("ada", target=0.6, kimg=1.0, interval=4)
    assert a.p == 0.0
    for _ in range(4):  # every real logit positive: r = 1 > 0.6, D overfits, p rises
        a.observe(torch.tensor([0.3, 2.0, 1.0, 0.1]))
    a.adjust(4, 16, 1)
    assert a.p == pytest.approx(16 * 4 / 1000) and a.last_r == 1.0
    a.adjust(5, 16, 1)  # not at an interval: unchanged
    assert a.p == pytest.approx(0.064)
    for _ in range(4):  # r = 0.5 - 0.5 = 0 < 0.6: p falls, not below 0
        a.observe(torch.tensor([1.0, -1.0]))
    a.adjust(8, 16, 1)
    assert a.p == 0.0 and a.last_r == 0.0
    d = Augment("diffaug", p=0.3)
    d.observe(torch.ones(3))
    d.adjust(4, 16, 1)
    assert d.p == 0.3  # diffaug keeps its p


def test_ada_tunes_p_in_training_and_resumes_exactly(tmp_path):
    """D on 32 images overfits within a few steps: ADA raises p (logged as augment_p). 6 steps in one
    go and 3 + resume + 3 give the same bits, p and its partial interval sums included."""
    data = torch.rand(32, *SHAPE) * 2 - 1

    def trainer():
        g, d = nets(dtype=torch.float32)
        return GANTrainer(g, d, z_dim=Z, lr_d=5e-3, augment="ada", ada_kimg=0.1, r1_gamma=0.1)
    a = trainer()
    hist = a.fit(data, 6, 8, progress=False, log_every=1)
    assert a.augment.p > 0 and [r["augment_p"] for r in hist if "augment_p" in r][-1] == a.augment.p
    b = trainer()
    b.fit(data, 3, 8, progress=False, out_dir=str(tmp_path / "run"), checkpoint_every=3, sample_every=100)
    c = trainer()
    assert c.load_latest(str(tmp_path / "run"))
    c.fit(data, 6, 8, progress=False)
    assert c.augment.p == a.augment.p
    for x, y in zip(list(a.generator.parameters()) + list(a.discriminator.parameters()),
                    list(c.generator.parameters()) + list(c.discriminator.parameters())):
        assert torch.equal(x, y)
    assert a.config["augment"] == "ada" and a.config["ada_target"] == 0.6


def test_refusals():
    g, d = nets()
    with pytest.raises(ValueError, match="argument 'augment' must be one of diffaug, ada or None"):
        GANTrainer(g, d, z_dim=Z, augment="flip")
    with pytest.raises(ValueError, match="argument 'policy'"):
        GANTrainer(g, d, z_dim=Z, augment="diffaug", augment_policy="color,rotate")
    with pytest.raises(ValueError, match="argument 'ada_target' is out of range"):
        GANTrainer(g, d, z_dim=Z, augment="ada", ada_target=1.5)
    with pytest.raises(ValueError, match="argument 'augment_p' is out of range"):
        GANTrainer(g, d, z_dim=Z, augment="diffaug", augment_p=-0.1)
    from fastgan.objectives import InfoGAN, QHead
    with pytest.raises(ValueError, match="the InfoGAN objective does not augment D's inputs; drop 'augment'"):
        GANTrainer(g, d, z_dim=Z, augment="diffaug", objective=InfoGAN(QHead(4, 2, 1)))
    g2, d2 = nn.Linear(2, 2), nn.Linear(2, 1)
    t = GANTrainer(g2, d2, z_dim=2, augment="diffaug")
    with pytest.raises(ValueError, match=r"augment needs images \(N, C, H, W\) for D; got samples of shape \(8, 2\)"):
        t.fit(torch.randn(64, 2), 1, 8, progress=False)


def test_cli_augment(tmp_path, capsys):
    from fastgan import cli
    base = ["train", "--data", "digits", "--image-size", "16", "--width", "4", "--batch-size", "16", "--no-progress",
            "--threads", "1", "--steps", "4", "--quiet"]
    out = str(tmp_path / "ada")
    assert cli.main(base + ["--out", out, "--augment", "ada", "--ada-target", "0.5"]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))["trainer"]
    assert (cfg["augment"], cfg["ada_target"], cfg["augment_policy"]) == ("ada", 0.5, "color,translation,cutout")
    out = str(tmp_path / "diff")
    assert cli.main(base + ["--out", out, "--augment", "diffaug", "--augment-policy", "translation,cutout"]) == 0
    cfg = json.load(open(os.path.join(out, "config.json")))["trainer"]
    assert (cfg["augment"], cfg["augment_p"], cfg["augment_policy"]) == ("diffaug", 1.0, "translation,cutout")
    capsys.readouterr()
    for argv, msg in ((["--data", "ring8", "--augment", "diffaug"], "--augment"),
                      (["--model", "infogan", "--augment", "ada"], "--augment"),
                      (["--ada-target", "0.5"], "--ada-target"),
                      (["--augment", "diffaug", "--augment-policy", "blur"], "--augment-policy")):
        rc = cli.main(["train", "--steps", "1", "--out", str(tmp_path / "bad"), "--no-progress", *argv])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
