"""The autoencoders beside the GANs (issue 12 items 4-5): the adversarial autoencoder (AAE) and the
VAE baseline — their priors, losses against plain-PyTorch references, the order of their phases,
exact resume, the latent metrics (MMD, edge strength) and the command line."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from fastgan import models
from fastgan.data import load_dataset
from fastgan.objectives import AAE, GAN, VAE
from fastgan.objectives import aae as aae_mod
from fastgan.train import GANTrainer, metrics, report


# ---- priors ------------------------------------------------------------------------------------
def test_gaussian_prior_is_the_identity():
    z = torch.randn(5, 3)
    assert aae_mod.prior_from_normal("gaussian", z) is z


def test_mixture10_prior_components_and_spread():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    p = aae_mod.prior_from_normal("mixture10", z)
    assert p.shape == z.shape and torch.equal(p[:, 2], z[:, 2])   # dims from 2 on untouched
    ang = torch.arange(10, dtype=torch.float64) * 2 * math.pi / 10
    means = aae_mod.RADIUS * torch.stack([ang.cos(), ang.sin()], 1)
    k = torch.cdist(p[:, :2], means).argmin(1)
    frac = torch.bincount(k, minlength=10).double() / len(k)
    assert frac.sub(0.1).abs().max() < 0.005                      # each component 1/10
    for c in (0, 3, 7):
        d = p[k == c, :2] - means[c]
        assert d.mean(0).abs().max() < 0.01
        assert d.std(0).sub(aae_mod.MIX_STD).abs().max() < 0.01   # isotropic, MIX_STD each way
    assert torch.equal(aae_mod.prior_from_normal("mixture10", z), p)  # deterministic in z


def test_ring_prior_radius_and_angle():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(100_000, 2, generator=g, dtype=torch.float64)
    p = aae_mod.prior_from_normal("ring", z)
    r = p.norm(dim=1)
    assert abs(r.mean() - aae_mod.RADIUS) < 0.005 and abs(r.std() - aae_mod.RING_STD) < 0.005
    ang = torch.atan2(p[:, 1], p[:, 0])
    hist = torch.histc(ang, bins=8, min=-math.pi, max=math.pi) / len(ang)
    assert hist.sub(1 / 8).abs().max() < 0.005                    # uniform in angle


def test_prior_errors():
    with pytest.raises(ValueError, match="'prior' must be one of gaussian, mixture10, ring"):
        aae_mod.prior_from_normal("uniform", torch.randn(2, 2))
    with pytest.raises(ValueError, match="the ring prior needs a latent of at least 2 dims"):
        aae_mod.prior_from_normal("ring", torch.randn(2, 1))
    with pytest.raises(ValueError, match="'prior' must be one of"):
        AAE(models.ConvEncoder(2, 1, 16, 8), prior="laplace")
    with pytest.raises(TypeError, match="'encoder' must be an nn.Module"):
        AAE("encoder")


# ---- metrics -------------------------------------------------------------------------------------
def _mmd2_loop(x, y):
    """The unbiased MMD^2 written out pair by pair (the oracle of metrics.mmd2)."""
    z = torch.cat([x, y]).double()
    n, m = len(x), len(y)
    d2 = [[float(((a - b) ** 2).sum()) for b in z] for a in z]
    pairs = sorted(d2[i][j] for i in range(n + m) for j in range(i + 1, n + m))
    L = len(pairs)
    med = pairs[L // 2] if L % 2 else pairs[L // 2 - 1]  # torch.median: the lower of the two middles

    def k(i, j):
        return sum(math.exp(-d2[i][j] / (2 * med * f * f)) for f in (0.5, 1.0, 2.0))
    xx = sum(k(i, j) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(i, j) for i in range(n, n + m) for j in range(n, n + m) if i != j) / (m * (m - 1))
    xy = sum(k(i, j) for i in range(n) for j in range(n, n + m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_pairwise_oracle():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g) + 0.5
    assert metrics.mmd2(x, y) == pytest.approx(_mmd2_loop(x, y), rel=1e-10, abs=1e-12)


def test_mmd2_separates_distributions():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(800, 4, generator=g), torch.randn(800, 4, generator=g)
    same = metrics.mmd2(a, b)
    assert abs(same) < 0.01
    assert metrics.mmd2(a, b + 0.5) > 10 * max(abs(same), 1e-3)
    assert metrics.mmd2(a, b * 0.5) > 10 * max(abs(same), 1e-3)
    with pytest.raises(ValueError, match="'x' and 'y' must be"):
        metrics.mmd2(a[:, :2], b)
    with pytest.raises(ValueError, match="'x' and 'y' must be"):
        metrics.mmd2(a[:1], b)


def test_edge_strength_oracle_and_blur():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 1.0]]]])
    # horizontal |1-0|, |1-3| -> 1.5; vertical |3-0|, |1-1| -> 1.5
    assert metrics.edge_strength(x) == pytest.approx(1.5)
    g = torch.Generator().manual_seed(4)
    img = torch.rand(8, 1, 16, 16, generator=g) * 2 - 1
    blur = F.avg_pool2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), 3, 1)
    assert metrics.edge_strength(blur) < 0.6 * metrics.edge_strength(img)


def test_image_evaluator_reports_sharpness(monkeypatch):
    monkeypatch.setattr(metrics, "train_feature_net", lambda x, y, seed=0: metrics.FeatureNet(1, 3).eval())
    g = torch.Generator().manual_seed(5)
    x = torch.rand(30, 1, 16, 16, generator=g) * 2 - 1
    ev = metrics.ImageEvaluator(x, torch.arange(30) % 3)
    assert ev(x)["sharpness"] == pytest.approx(1.0)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    assert ev(blur)["sharpness"] < 0.6


# ---- the VAE ------------------------------------------------------------------------------------
def _tiny_vae(z=3, sigma=0.1):
    torch.manual_seed(0)
    return models.DCGANGenerator(z, 1, 16, 8), VAE(models.ConvEncoder(2 * z, 1, 16, 8), sigma=sigma)


def test_vae_losses_against_torch_distributions():
    g = torch.Generator().manual_seed(6)
    x, rec = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64), torch.randn(4, 1, 5, 5, generator=g,
                                                                                   dtype=torch.float64)
    mu, logvar = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g,
                                                                                 dtype=torch.float64)
    _, obj = _tiny_vae(sigma=0.3)
    loss, recon, kl = obj.losses(x, rec, mu, logvar)
    D = torch.distributions
    # the Gaussian decoder's negative log-likelihood, minus its constant
    nll = -D.Normal(rec, 0.3).log_prob(x).flatten(1).sum(1) - 25 * (math.log(0.3) + 0.5 * math.log(2 * math.pi))
    want_kl = D.kl_divergence(D.Normal(mu, (0.5 * logvar).exp()), D.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(recon, nll.mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kl, want_kl.mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, recon + kl, rtol=0, atol=0)


def test_vae_step_matches_the_reference_update():
    """One step = one Adam step of encoder + decoder on -ELBO with z = mu + s * eps (eps = t.noise)."""
    ds = load_dataset("digits", 16)
    G, obj = _tiny_vae()
    ref_G, ref_E = models.DCGANGenerator(3, 1, 16, 8), models.ConvEncoder(6, 1, 16, 8)
    ref_G.load_state_dict(G.state_dict())
    ref_E.load_state_dict(obj.encoder.state_dict())
    t = GANTrainer(G, None, z_dim=3, objective=obj, device="cpu", lr_g=1e-3)
    assert set(t.optimizers) == {"g"} and t.opt_d is None
    assert {id(p) for p in t.opt_g.param_groups[0]["params"]} == \
        {id(p) for m in (G, obj.encoder) for p in m.parameters()}
    seen = {}
    real_noise = t.noise

    def noise(n):
        seen.setdefault("noise", []).append(real_noise(n))
        return seen["noise"][-1]
    t.noise = noise
    obj.encoder.register_forward_hook(lambda m, a, o: None if "x" in seen else seen.update(x=a[0].detach().clone()))
    (rec,) = t.fit(ds, 1, 8, progress=False)
    (x, (eps, prior)) = seen["x"], seen["noise"]
    mu, logvar = ref_E(x).chunk(2, 1)
    stats = [b.clone() for b in ref_G.buffers()]
    out = ref_G(mu + (0.5 * logvar).exp() * eps)
    for b, v in zip(ref_G.buffers(), stats):   # the training pass leaves the running statistics
        if b.is_floating_point():
            b.copy_(v)
    recon = ((x - out) ** 2).flatten(1).sum(1).mean() / (2 * 0.1 ** 2)
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1).mean()
    opt = torch.optim.Adam(list(ref_G.parameters()) + list(ref_E.parameters()), lr=1e-3, betas=(0.5, 0.999))
    opt.zero_grad()
    (recon + kl).backward()
    opt.step()
    with torch.no_grad():
        ref_G(prior)                           # ... which come from a pass on prior draws
    assert rec["loss"] == pytest.approx(float((recon + kl).detach()), rel=1e-5)
    assert rec["kl"] == pytest.approx(float(kl.detach()), rel=1e-5)
    torch.testing.assert_close(G.state_dict(), ref_G.state_dict(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(obj.encoder.state_dict(), ref_E.state_dict(), rtol=1e-5, atol=1e-6)


def test_vae_running_statistics_come_from_prior_draws():
    from fastgan.objectives.vae import running_stats_kept
    G, _ = _tiny_vae()
    bn = G.blocks[0].bn
    bn.momentum = 0.3
    before = bn.running_mean.clone()
    with running_stats_kept(G):
        G(torch.randn(4, 3) + 5)
    assert torch.equal(bn.running_mean, before) and bn.momentum == 0.3
    G(torch.randn(4, 3) + 5)
    assert not torch.equal(bn.running_mean, before)


def test_vae_resume_is_exact_and_writes_its_latent(tmp_path):
    ds = load_dataset("digits", 16)

    def trainer():
        G, obj = _tiny_vae()
        return GANTrainer(G, None, z_dim=3, objective=obj, ema_decay=0.9, device="cpu"), obj

    a, oa = trainer()
    a.fit(ds, 6, 16, progress=False)
    b, _ = trainer()
    b.fit(ds, 3, 16, progress=False, out_dir=str(tmp_path), checkpoint_every=3, sample_every=3)
    c, oc = trainer()
    assert c.load_latest(str(tmp_path)) is not None and c.step == 3
    c.fit(ds, 6, 16, progress=False)
    for x, y in ((c.generator, a.generator), (c.ema, a.ema), (oc.encoder, oa.encoder)):
        torch.testing.assert_close(x.state_dict(), y.state_dict(), rtol=0, atol=0)
    ck = torch.load(tmp_path / "checkpoints" / "ckpt-00000003.pt", weights_only=False)
    assert ck["discriminator"] is None and ck["opt_d"] is None and set(ck["nets"]) == {"encoder"}
    assert ck["config"]["objective"] == "vae" and ck["config"]["sigma"] == 0.1
    assert ck["models"]["generator_class"] == "DCGANGenerator"
    ev = [r["eval"] for r in b.history if "eval" in r][-1]
    assert {"fd", "sharpness", "latent_mmd", "latent_mmd_floor"} <= set(ev)
    assert os.path.getsize(tmp_path / "latent.png") > 1000 and os.path.getsize(tmp_path / "curves.png") > 1000


def test_vae_checks():
    G, obj = _tiny_vae()
    with pytest.raises(ValueError, match="the VAE has no discriminator: pass discriminator=None"):
        GANTrainer(G, models.DCGANDiscriminator(1, 16, 8), z_dim=3, objective=obj)
    with pytest.raises(ValueError, match=r"encoder must output 2 \* z_dim = 8 dims"):
        GANTrainer(models.DCGANGenerator(4, 1, 16, 8), None, z_dim=4, objective=obj)
    with pytest.raises(ValueError, match="'sigma' must be a number > 0"):
        VAE(obj.encoder, sigma=0)
    with pytest.raises(ValueError, match="names unknown networks"):   # the GAN needs its D
        GANTrainer(G, None, z_dim=3, objective=GAN())


# ---- the AAE ------------------------------------------------------------------------------------
def _tiny_aae(prior="gaussian", z=2):
    torch.manual_seed(0)
    return (models.DCGANGenerator(z, 1, 16, 8), models.MLPDiscriminator(z, 16, 2),
            AAE(models.ConvEncoder(z, 1, 16, 8), prior=prior))


def test_aae_phases_players_and_batches():
    """Reconstruction (encoder + decoder) on a batch, then D on prior draws vs the codes of the same
    batch, then the encoder against the frozen D."""
    ds = load_dataset("digits", 16)
    G, D, obj = _tiny_aae("ring")
    t = GANTrainer(G, D, z_dim=2, objective=obj, device="cpu")
    params = {k: {id(p) for p in o.param_groups[0]["params"]} for k, o in t.optimizers.items()}
    ids = lambda *ms: {id(p) for m in ms for p in m.parameters()}  # noqa: E731
    assert params == {"ae": ids(obj.encoder, G), "d": ids(D), "g": ids(obj.encoder)}
    calls, inputs = [], {"enc": [], "d": []}
    real_update = t.update

    def spy(player, loss):
        frozen = all(not p.requires_grad for p in D.parameters())
        calls.append((player, frozen, float(loss.detach())))
        real_update(player, loss)
    t.update = spy
    obj.encoder.register_forward_hook(lambda m, a, o: inputs["enc"].append(a[0].detach().clone()))
    D.register_forward_hook(lambda m, a, o: inputs["d"].append(a[0].detach().clone()))
    (rec,) = t.fit(ds, 1, 8, progress=False)
    assert [(p, f) for p, f, _ in calls] == [("ae", False), ("d", False), ("g", True)]
    assert torch.equal(inputs["enc"][0], inputs["enc"][1])            # one batch for both phases
    r = inputs["d"][0].norm(dim=1)                                     # D's reals: ring draws
    assert (r - aae_mod.RADIUS).abs().max() < 6 * aae_mod.RING_STD
    assert rec["recon"] == pytest.approx(calls[0][2]) and rec["d_loss"] == pytest.approx(calls[1][2])


def test_aae_reconstruction_loss_is_the_mse_of_the_decoded_codes():
    ds = load_dataset("digits", 16)
    G, D, obj = _tiny_aae()
    E0 = models.ConvEncoder(2, 1, 16, 8)
    E0.load_state_dict(obj.encoder.state_dict())
    G0 = models.DCGANGenerator(2, 1, 16, 8)
    G0.load_state_dict(G.state_dict())
    t = GANTrainer(G, D, z_dim=2, objective=obj, device="cpu")
    got = {}
    obj.encoder.register_forward_hook(lambda m, a, o: None if "x" in got else got.update(x=a[0].detach().clone()))
    (rec,) = t.fit(ds, 1, 8, progress=False)
    with torch.no_grad():
        want = ((G0(E0(got["x"])) - got["x"]) ** 2).mean()
    assert rec["recon"] == pytest.approx(float(want), rel=1e-5)


def test_aae_resume_is_exact_and_reports_the_latent(tmp_path):
    ds = load_dataset("digits", 16)

    def trainer():
        G, D, obj = _tiny_aae("mixture10")
        return GANTrainer(G, D, z_dim=2, objective=obj, r1_gamma=0.5, ema_decay=0.9, device="cpu"), obj

    a, oa = trainer()
    a.fit(ds, 6, 16, progress=False)
    b, _ = trainer()
    b.fit(ds, 3, 16, progress=False, out_dir=str(tmp_path), checkpoint_every=3, sample_every=3)
    c, oc = trainer()
    c.load_latest(str(tmp_path))
    c.fit(ds, 6, 16, progress=False)
    for x, y in ((c.generator, a.generator), (c.discriminator, a.discriminator), (oc.encoder, oa.encoder)):
        torch.testing.assert_close(x.state_dict(), y.state_dict(), rtol=0, atol=0)
    for k in ("ae", "g", "d"):
        sa, sc = a.optimizers[k].state_dict()["state"], c.optimizers[k].state_dict()["state"]
        assert all(torch.equal(sa[i]["exp_avg"], sc[i]["exp_avg"]) for i in sa)
    ck = torch.load(tmp_path / "checkpoints" / "ckpt-00000003.pt", weights_only=False)
    assert set(ck["nets"]) == {"encoder"} and set(ck["optimizers"]) == {"ae"}
    assert ck["config"]["objective"] == "aae" and ck["config"]["prior"] == "mixture10"
    ev = [r["eval"] for r in b.history if "eval" in r][-1]
    assert ev["latent_mmd"] > ev["latent_mmd_floor"] and abs(ev["latent_mmd_floor"]) < 0.01
    assert os.path.getsize(tmp_path / "latent.png") > 1000


def test_aae_samples_decode_prior_draws():
    G, D, obj = _tiny_aae("ring")
    t = GANTrainer(G, D, z_dim=2, objective=obj, device="cpu")
    z = torch.randn(4, 2)
    G.eval()
    torch.testing.assert_close(t.sample(4, z=z), G(aae_mod.prior_from_normal("ring", z)))


def test_aae_checks():
    G, D, obj = _tiny_aae()
    with pytest.raises(ValueError, match=r"player 'd' names unknown networks \['discriminator'\]"):
        GANTrainer(G, None, z_dim=2, objective=obj)
    with pytest.raises(ValueError, match="the AAE's encoder outputs 2 dims, z_dim is 3"):
        GANTrainer(models.DCGANGenerator(3, 1, 16, 8), models.MLPDiscriminator(3, 16, 2), z_dim=3, objective=obj)
    _, _, ring = _tiny_aae("ring", z=1)
    with pytest.raises(ValueError, match="the ring prior needs a latent of at least 2 dims"):
        GANTrainer(models.DCGANGenerator(1, 1, 16, 8), models.MLPDiscriminator(1, 16, 2), z_dim=1, objective=ring)


def test_conv_encoder_shapes_and_errors():
    e = models.ConvEncoder(5, 3, 32, 8)
    assert e(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"'x' must have shape \(N, 3, 32, 32\)"):
        e(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="'out_dim' must be a positive int"):
        models.ConvEncoder(0, 3, 32, 8)
    d = models.DCGANDiscriminator(3, 32, 8)   # the same body as D: same keys, same shapes
    assert {k: v.shape for k, v in e.blocks.state_dict().items()} == \
        {k: v.shape for k, v in d.blocks.state_dict().items()}


def test_curves_without_a_discriminator(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    made = []
    real = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    hist = [{"step": 1, "loss": 3.0, "recon": 2.0, "kl": 1.0, "img_per_s": 1.0, "s_per_step": 1.0},
            {"step": 1, "eval": {"fd": 5.0}}]
    report.plot_curves(hist, str(tmp_path / "c.png"))
    fig, axes = made[-1]
    assert len(axes) == 2 and [l.get_label() for l in axes[0].get_lines()] == ["reconstruction", "KL"]
    assert axes[1].get_title().startswith("Fréchet")


# ---- the command line ------------------------------------------------------------------------------
def test_cli_trains_and_samples_the_autoencoders(tmp_path, capsys):
    from fastgan import cli
    for model, extra in (("aae", ["--prior", "ring"]), ("vae", [])):
        out = str(tmp_path / model)
        assert cli.main(["train", "--model", model, *extra, "--steps", "3", "--sample-every", "3",
                         "--image-size", "16", "--width", "8", "--out", out, "--quiet"]) == 0
        summary = capsys.readouterr().out
        assert "latent_mmd=" in summary and "sharpness=" in summary
        cfg = json.load(open(os.path.join(out, "config.json")))
        assert cfg["trainer"]["objective"] == model and cfg["trainer"]["z_dim"] == 8
        assert cfg["trainer"]["r1_gamma"] == (1.0 if model == "aae" else 0.0)   # R1 on the AAE's prior draws
        assert os.path.exists(os.path.join(out, "latent.png"))
        png = str(tmp_path / f"{model}.png")
        assert cli.main(["sample", "--checkpoint", out, "--n", "6", "--out", png, "--save-tensor",
                         str(tmp_path / f"{model}.pt")]) == 0
        assert "6 samples from" in capsys.readouterr().out
        x = torch.load(tmp_path / f"{model}.pt")
        assert x.shape == (6, 1, 16, 16) and x.abs().max() <= 1
    assert cli.main(["train", "--prior", "ring", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--prior is the adversarial autoencoder's latent prior" in capsys.readouterr().err
    assert cli.main(["train", "--model", "aae", "--data", "ring8", "--steps", "1", "--out", str(tmp_path / "y")]) == 2
    assert "--model aae needs images" in capsys.readouterr().err
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "vae"), "--class", "1"]) == 2
    assert "holds an unconditional model (vae); drop --class" in capsys.readouterr().err


# ---- quality (seeded; fail on regression) -------------------------------------------------------------
@pytest.mark.quality
def test_aae_codes_match_the_prior():
    """Quality: the AAE at 16 px (width 16, an 8-d code, Gaussian prior, R1 1 on the prior draws as
    the CLI's default, Adam 2e-4, seed 0), 400 steps: the codes of the digits against prior draws,
    MMD^2 (measured 0.015; 0.060 at step 200, then 0.012 / 0.012 / 0.010 at 600-1,000 steps; the
    MMD^2 of two prior samples of that size: 0.0000)."""
    ds = load_dataset("digits", 16)
    torch.manual_seed(0)
    G, D = models.DCGANGenerator(8, 1, 16, 16), models.MLPDiscriminator(8)
    obj = AAE(models.ConvEncoder(8, 1, 16, 16), prior="gaussian")
    t = GANTrainer(G, D, z_dim=8, objective=obj, r1_gamma=1.0, ema_decay=0.99, seed=0, device="cpu")
    before = obj.evaluate(t, ds, None)["latent_mmd"]
    t.fit(ds, 400, 64, progress=False)
    res = obj.evaluate(t, ds, None)
    assert res["latent_mmd"] < 0.05 and before > 10 * res["latent_mmd"], (before, res)
    assert abs(res["latent_mmd_floor"]) < 0.005, res


@pytest.mark.quality
def test_vae_learns_digits():
    """Quality: the VAE at 16 px (width 16, an 8-d code, sigma 0.5 as the default, Adam 2e-4, EMA
    0.99, seed 0), 400 steps: -ELBO (measured 46.8 nats; 126 at step 200) and the samples' Fréchet
    distance (measured 492; 1,040 at step 200) with every class present."""
    ds = load_dataset("digits", 16)
    torch.manual_seed(0)
    G, obj = models.DCGANGenerator(8, 1, 16, 16), VAE(models.ConvEncoder(16, 1, 16, 16))
    t = GANTrainer(G, None, z_dim=8, objective=obj, ema_decay=0.99, seed=0, device="cpu")
    hist = t.fit(ds, 400, 64, progress=False, log_every=200)
    assert hist[-1]["loss"] < 70, hist
    res = metrics.evaluator_for(ds)(t.sample(1000, z=torch.randn(1000, 8, generator=torch.Generator().manual_seed(7))))
    assert res["fd"] < 750 and res["classes"] == 10, res
