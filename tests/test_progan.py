"""Progressive growing: the equalised-learning-rate layers, pixel norm and the minibatch standard
deviation against their formulas; the fade-in of G and D at its two ends; the stage in the state_dict;
the schedule; one step against a hand-written update (drift term included); exact resume across a
phase boundary; the command line."""
import copy
import json
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from fastgan import models
from fastgan.data import load_dataset
from fastgan.objectives import ProGAN
from fastgan.train import GANTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64


# ---- the stabilisers ------------------------------------------------------------------------------
def test_pixel_norm_and_minibatch_stddev_are_their_formulas():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 3, 2, dtype=DT, requires_grad=True)
    pn = models.PixelNorm()
    torch.testing.assert_close(pn(x), x / torch.sqrt((x ** 2).mean(1, keepdim=True) + 1e-8))
    assert torch.allclose((pn(x) ** 2).mean(1), torch.ones(6, 3, 2, dtype=DT))
    mb = models.MinibatchStddev(group=4)  # 6 samples: groups of 3 (the largest divisor up to 4)
    y = mb(x)
    assert y.shape == (6, 6, 3, 2) and torch.equal(y[:, :5], x)
    for n in range(6):
        members = x[[n % 2, n % 2 + 2, n % 2 + 4]]  # sample n is in group n mod (N / G)
        want = (members.var(0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(y[n, 5], want.expand(3, 2))
    assert models.MinibatchStddev(4)(x[:1]).shape == (1, 6, 3, 2)  # one sample: a group of one
    torch.autograd.gradcheck(lambda v: mb(pn(v)), (x,))
    torch.autograd.gradgradcheck(lambda v: mb(pn(v)), (x,))


def test_equalized_layers_scale_their_unit_weights_at_run_time():
    torch.manual_seed(0)
    conv = models.EqualizedConv2d(8, 4, 3).double()
    with torch.no_grad():
        conv.bias.normal_()
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(8 * 9))
    assert 0.8 < float(conv.weight.detach().std()) < 1.2
    assert torch.equal(models.EqualizedConv2d(8, 4, 3).bias, torch.zeros(4))
    x = torch.randn(2, 8, 5, 5, dtype=DT)
    want = F.leaky_relu(F.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1), 0.2)
    torch.testing.assert_close(conv(x), want)
    lin = models.EqualizedLinear(6, 3, act="linear", gain=1.0).double()
    v = torch.randn(4, 6, dtype=DT)
    torch.testing.assert_close(lin(v), F.linear(v, lin.weight / math.sqrt(6), lin.bias))
    torch.autograd.gradcheck(lambda a: conv(a), (x.requires_grad_(),))


# ---- the growing networks -------------------------------------------------------------------------
def _pair(z_dim=8, size=16, width=4):
    torch.manual_seed(0)
    return models.ProGenerator(z_dim, 1, size, width).double(), models.ProDiscriminator(1, size, width).double()


def test_fade_in_starts_from_the_previous_level_and_ends_at_the_new_one():
    G, D = _pair()
    z = torch.randn(5, 8, dtype=DT)
    G.set_stage(1, 1.0)
    low = G(z)
    G.set_stage(2, 0.0)  # alpha 0: the previous level's output, upsampled
    torch.testing.assert_close(G(z), F.interpolate(low, scale_factor=2, mode="nearest"))
    G.set_stage(2, 0.25)
    mid = G(z)
    G.set_stage(2, 1.0)
    new = G(z)
    torch.testing.assert_close(mid, 0.75 * F.interpolate(low, scale_factor=2) + 0.25 * new)
    assert new.shape == (5, 1, 16, 16) and not torch.allclose(new, F.interpolate(low, scale_factor=2))
    x = torch.randn(5, 1, 16, 16, dtype=DT)
    D.set_stage(1, 1.0)
    d_low = D(F.avg_pool2d(x, 2))
    D.set_stage(2, 0.0)  # alpha 0: the previous level on the downsampled image
    torch.testing.assert_close(D(x), d_low)
    for lv in range(3):
        G.set_stage(lv, 0.5)
        D.set_stage(lv, 0.5)
        assert D(G(z)).shape == (5,) and G(z).shape[-1] == 4 * 2 ** lv
    with pytest.raises(ValueError, match="at level 2 expected images \\(N, 1, 16, 16\\)"):
        D(x[..., :8, :8])
    for bad, msg in ((lambda: G.set_stage(3, 1.0), "level must be an int in \\[0, 2\\]"),
                     (lambda: G.set_stage(1, 1.5), "alpha must be in \\[0, 1\\]"),
                     (lambda: models.ProGenerator(8, 1, 24), "power of two >= 4"),
                     (lambda: G(torch.randn(2, 7, dtype=DT)), "expected z of shape \\(N, 8\\)")):
        with pytest.raises(ValueError, match=msg):
            bad()


def test_the_stage_is_saved_and_restored_with_the_weights():
    G, _ = _pair()
    G.set_stage(1, 0.4)
    fresh = models.ProGenerator(8, 1, 16, 4).double()
    assert fresh.level == 2 and not fresh.fading  # built at the full size
    fresh.load_state_dict(G.state_dict())
    assert fresh.level == 1 and fresh.fading and float(fresh.stage[1]) == pytest.approx(0.4)
    z = torch.randn(3, 8, dtype=DT)
    torch.testing.assert_close(fresh(z), G(z))


# ---- the objective --------------------------------------------------------------------------------
def test_schedule_fades_in_each_level_then_stabilises():
    obj = ProGAN(4)
    obj.levels = 3
    got = [obj.stage(s) for s in (0, 3, 4, 6, 8, 11, 12, 20, 24, 27, 28, 100)]
    assert got == [(0, 1.0), (0, 1.0), (1, 0.0), (1, 0.5), (1, 1.0), (1, 1.0), (2, 0.0), (3, 0.0), (3, 1.0),
                   (3, 1.0), (3, 1.0), (3, 1.0)]
    assert obj.total_steps() == 28
    for kw, msg in ((dict(phase=0), "argument 'phase'"), (dict(phase=2, drift=-1), "argument 'drift'")):
        with pytest.raises(ValueError, match=msg):
            ProGAN(**kw)


def _data(size=16):
    return load_dataset("digits", size)


def _game(seed=0, phase=2, gp=0.0, ema=None):
    G, D = (m.float() for m in _pair())  # float32: the trainer's noise
    obj = ProGAN(phase)
    t = GANTrainer(G, D, z_dim=8, loss="wgan", gp_weight=gp, lr_g=0.01, lr_d=0.02, betas=(0.0, 0.99),
                   objective=obj, seed=seed, ema_decay=ema, device="cpu")
    return t, G, D


def test_reals_fade_like_the_generator_and_adam_restarts_at_each_fade_boundary():
    """split(): reals pooled to the current level and, while it fades in, (1 - alpha) x their
    upsampled half-size version + alpha x them (alpha 0.25: a swapped blend shows); Adam's state is
    cleared when a fade-in starts and when it ends, and only then."""
    t, G, _ = _game(phase=4)
    obj = t.objective
    x = torch.randn(3, 1, 16, 16)
    obj.current = (1, 0.25)
    x8 = F.avg_pool2d(x, 2)
    want = 0.75 * F.interpolate(F.avg_pool2d(x8, 2), scale_factor=2) + 0.25 * x8
    torch.testing.assert_close(obj.split(t, x)[0], want)
    obj.current = (2, 1.0)
    assert torch.equal(obj.split(t, x)[0], x)
    with pytest.raises(ValueError, match="must be 16x16 images"):
        obj.split(t, x8)
    data, counts = _data(), []
    for _ in range(13):  # 4x4 (steps 0-3), 8x8 fading (4-7), 8x8 (8-11), 16x16 fading (12-)
        t.fit(data, t.step + 1, 4, progress=False)
        p = next(iter(G.parameters()))
        counts.append(int(t.optimizers["g"].state[p]["step"]))
    assert counts == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1], counts


def test_one_fading_step_is_the_papers_update(monkeypatch):
    """A step at level 1, alpha 0.5: reals pooled to 8x8 and blended with their 4x4 version, D's WGAN
    loss plus the drift 0.001 E[D(x)^2], then G's on the same fakes; the trainer's noise and data
    order replayed."""
    monkeypatch.setattr(ProGAN, "stage", lambda self, step: (1, 0.5))
    data = _data()
    t, G, D = _game()
    rG, rD = copy.deepcopy(G), copy.deepcopy(D)
    rng = torch.get_rng_state()
    t.fit(data, 1, 4, progress=False)
    assert t.objective.current == (1, 0.5) and G.level == 1 and G.fading
    torch.set_rng_state(rng)
    z = t.noise(4)  # the step's one draw from the global RNG
    x = data.x[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:4]]
    opt_g = torch.optim.Adam(rG.parameters(), 0.01, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(rD.parameters(), 0.02, betas=(0.0, 0.99))
    for m in (rG, rD):
        m.set_stage(1, 0.5)
    real = F.avg_pool2d(x, 2)
    real = 0.5 * F.interpolate(F.avg_pool2d(real, 2), scale_factor=2) + 0.5 * real
    fake = rG(z)
    dr = rD(real)
    wgan = rD(fake.detach()).mean() - dr.mean()
    ld = wgan + 0.001 * (dr ** 2).mean()
    opt_d.zero_grad()
    ld.backward()
    opt_d.step()
    lg = -rD(fake).mean()
    opt_g.zero_grad()
    lg.backward()
    opt_g.step()
    for m, r in ((G, rG), (D, rD)):
        for p, q in zip(m.parameters(), r.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert t.history[-1]["d_loss"] == pytest.approx(float(wgan.detach()), rel=1e-5)  # logged: the loss, no drift


def test_exact_resume_across_a_phase_boundary_with_ema(tmp_path):
    data = _data()
    t, _, _ = _game(phase=2, gp=10.0, ema=0.9)
    t.fit(data, 7, 4, progress=False)
    part, _, _ = _game(phase=2, gp=10.0, ema=0.9)
    part.fit(data, 3, 4, out_dir=str(tmp_path), checkpoint_every=3, sample_every=100, progress=False)
    resumed, G2, _ = _game(phase=2, gp=10.0, ema=0.9)
    resumed.load_latest(str(tmp_path))
    assert G2.level == 1 and G2.fading  # the stage came back with the weights
    resumed.fit(data, 7, 4, progress=False)
    for name in ("generator", "discriminator"):
        for p, q in zip(t.nets[name].parameters(), resumed.nets[name].parameters()):
            assert torch.equal(p, q), name
    for p, q in zip(t.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(p, q)
    s = t.sample(3)  # the EMA generator at the last stage, upsampled to the full size
    assert s.shape == (3, 1, 16, 16) and t.ema.level == 2


def test_refuses_networks_that_do_not_grow():
    with pytest.raises(ValueError, match="ProGAN's generator must grow"):
        GANTrainer(models.DCGANGenerator(8, 1, 16, 4), models.ProDiscriminator(1, 16, 4), z_dim=8,
                   objective=ProGAN(2))
    with pytest.raises(ValueError, match="generator has 3 levels, its discriminator 4"):
        GANTrainer(models.ProGenerator(8, 1, 16, 4), models.ProDiscriminator(1, 32, 4), z_dim=8, objective=ProGAN(2))


# ---- the command line -----------------------------------------------------------------------------
def test_cli_trains_resumes_and_samples(tmp_path, capsys):
    """10 steps at 16 px: phases of 2 steps (4x4; 8x8 fading in, stable; 16x16 fading in, stable); a
    checkpoint mid-fade holds the stage, samples from it are shown at the full size, and a run
    resumed from it ends where the uninterrupted one does."""
    from PIL import Image
    from fastgan import cli
    out, again = str(tmp_path / "pg"), str(tmp_path / "again")
    common = ["train", "--model", "progan", "--image-size", "16", "--width", "4", "--batch-size", "8", "--steps", "10",
              "--sample-every", "5", "--checkpoint-every", "4", "--quiet"]
    assert cli.main(common + ["--out", out]) == 0
    assert "fd=" in capsys.readouterr().out
    tr = json.load(open(os.path.join(out, "config.json")))["trainer"]
    assert tr["objective"] == "progan" and tr["phase"] == 2 and tr["loss"] == "wgan" and tr["gp_weight"] == 10
    assert tr["betas"] == [0.0, 0.99] and tr["lr_g"] == tr["lr_d"] == 1e-3 and tr["r1_gamma"] == 0
    ck4 = os.path.join(out, "checkpoints", "ckpt-00000004.pt")
    ck = torch.load(ck4, weights_only=False)
    assert ck["generator"]["stage"].tolist() == [1.0, 0.5] and ck["ema"]["stage"].tolist() == [1.0, 0.5]
    png, pt = str(tmp_path / "s.png"), str(tmp_path / "s.pt")
    assert cli.main(["sample", "--checkpoint", ck4, "--n", "4", "--out", png, "--save-tensor", pt]) == 0
    assert Image.open(png).size == (2 * 18 + 2, 2 * 18 + 2) and torch.load(pt).shape == (4, 1, 16, 16)
    os.makedirs(os.path.join(again, "checkpoints"))
    shutil.copy(ck4, os.path.join(again, "checkpoints"))
    assert cli.main(common + ["--out", again, "--resume"]) == 0
    capsys.readouterr()
    a, b = (torch.load(os.path.join(d, "checkpoints", "ckpt-00000010.pt"), weights_only=False) for d in (out, again))
    assert all(torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])
    # resumed with more steps: the checkpoint's schedule (phase 2) goes on, not 14 // 5 = 2 ... 16 // 5 = 3
    longer = str(tmp_path / "longer")
    os.makedirs(os.path.join(longer, "checkpoints"))
    shutil.copy(ck4, os.path.join(longer, "checkpoints"))
    steps = common.index("--steps") + 1
    assert cli.main(common[:steps] + ["16"] + common[steps + 1:] + ["--out", longer, "--resume"]) == 0
    capsys.readouterr()
    assert json.load(open(os.path.join(longer, "config.json")))["trainer"]["phase"] == 2
    a, c = (torch.load(os.path.join(d, "checkpoints", "ckpt-00000008.pt"), weights_only=False) for d in (out, longer))
    assert all(torch.equal(a["generator"][k], c["generator"][k]) for k in a["generator"])


def test_bf16_autocast_steps_and_compiled_generator():
    ds = load_dataset("digits", 16)
    torch.manual_seed(0)
    G, D = models.ProGenerator(8, 1, 16, 4), models.ProDiscriminator(1, 16, 4)
    t = GANTrainer(G, D, z_dim=8, loss="wgan", gp_weight=10.0, objective=ProGAN(1), amp="bf16", ema_decay=0.9,
                   device="cpu")
    t.fit(ds, 4, 8, progress=False, log_every=1)  # through 4x4, the 8x8 fade-in, 8x8 and the 16x16 fade-in
    assert all(math.isfinite(r["d_loss"]) and math.isfinite(r["g_loss"]) for r in t.history if "d_loss" in r)
    G.set_stage(1, 0.5)
    z = torch.randn(4, 8)
    torch.testing.assert_close(torch.compile(G, fullgraph=True)(z), G(z), rtol=1e-5, atol=1e-5)


@pytest.mark.quality
def test_progan_grows_digits():
    """Quality: 4x4 -> 8x8 (the digits' own size) with the CLI's recipe scaled down (width 16, z 32,
    batch 32, WGAN-GP 10 + drift, Adam 1e-3 (0, 0.99), EMA 0.99, seed 0): phases of 100 steps (4x4,
    the 8x8 fade-in, 8x8) and 200 more at 8x8. The EMA generator's Fréchet distance with every class
    present (measured 75.7; 56 at step 600, 577 mid-fade at step 200)."""
    from fastgan.train import metrics
    ds = load_dataset("digits", 8)
    torch.manual_seed(0)
    G, D = models.ProGenerator(32, 1, 8, 16), models.ProDiscriminator(1, 8, 16)
    t = GANTrainer(G, D, z_dim=32, loss="wgan", gp_weight=10.0, lr_g=1e-3, lr_d=1e-3, betas=(0.0, 0.99),
                   ema_decay=0.99, objective=ProGAN(100), seed=0, device="cpu")
    t.fit(ds, 500, 32, progress=False, log_every=100)
    assert G.level == 1 and not G.fading
    res = metrics.evaluator_for(ds)(t.sample(1000, z=torch.randn(1000, 32, generator=torch.Generator().manual_seed(7))))
    print(res)
    assert res["fd"] < 150 and res["classes"] == 10, res
