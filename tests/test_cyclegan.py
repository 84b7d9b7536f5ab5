"""CycleGAN: its networks, the image pool, one step against a hand-written update, the learning-rate
decay, exact resume (pools included) and the translation evaluation."""
import copy
import math
import os

import pytest
import torch
from torch import nn

from fastgan import models
from fastgan.data import load_domains
from fastgan.objectives import CycleGAN
from fastgan.objectives.cyclegan import ImagePool
from fastgan.train import GANTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64


# ---- networks -------------------------------------------------------------------------------------
def test_resnet_generator_and_patch_discriminator_shapes_and_unfused_twins():
    torch.manual_seed(0)
    G = models.ResnetGenerator(1, 3, 8, 2).double()
    D = models.PatchDiscriminator(3, 8, 1).double()
    x = torch.rand(2, 1, 16, 16, dtype=DT) * 2 - 1
    y = G(x)
    assert y.shape == (2, 3, 16, 16) and y.abs().max() <= 1
    assert D(y).shape == (2, 1, 6, 6)  # 16 -> 8 (stride 2) -> 7 -> 6 (stride 1): the paper's 4x4 convs, padding 1
    for fused, twin in ((G, models.ResnetGenerator(1, 3, 8, 2, fused=False)), (D, models.PatchDiscriminator(3, 8, 1, fused=False))):
        twin = twin.double()
        assert list(twin.state_dict()) == list(fused.state_dict())
        twin.load_state_dict(fused.state_dict())
        inp = x if twin is not D and isinstance(twin, models.ResnetGenerator) else y.detach()
        torch.testing.assert_close(twin(inp), fused(inp), rtol=1e-10, atol=1e-10)
    assert [models.patch_layers(s) for s in (16, 32, 64, 128, 256, 512)] == [1, 1, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="multiples of 4"):
        G(torch.rand(1, 1, 10, 12, dtype=DT))
    with pytest.raises(ValueError, match="argument 'blocks' must be a positive int"):
        models.ResnetGenerator(3, 3, 8, 0)


def test_patch_discriminator_receptive_field_is_the_papers_70_pixels():
    """layers=3: a logit's convolutions see a 70x70 window of the input (the gradient support of one
    output, with the InstanceNorms, whose statistics span the image, taken out)."""
    D = models.PatchDiscriminator(1, 4, 3, fused=False).double()
    for i, m in enumerate(D.net):
        if isinstance(m, nn.InstanceNorm2d):
            D.net[i] = nn.Identity()
    x = torch.rand(1, 1, 128, 128, dtype=DT, requires_grad=True)
    out = D(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = (x.grad[0, 0].abs().sum(1) > 0).nonzero()
    cols = (x.grad[0, 0].abs().sum(0) > 0).nonzero()
    assert int(rows.max() - rows.min() + 1) == 70 and int(cols.max() - cols.min() + 1) == 70


# ---- the image pool -------------------------------------------------------------------------------
def test_image_pool_fills_then_swaps_half_and_resumes():
    pool = ImagePool(4, seed=3)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and pool.count == 4
    seen, swapped = set(range(4)), 0
    for k in range(1, 201):
        x = torch.full((1, 1, 1, 1), 100.0 + k)
        out = float(pool.query(x))
        if out != 100.0 + k:
            assert out in seen  # a stored image, which the new one replaced
            swapped += 1
        seen.add(100.0 + k)
    assert 70 <= swapped <= 130  # probability 1/2
    state = copy.deepcopy(pool.state_dict())
    want = [pool.query(torch.full((3, 1, 1, 1), 500.0 + k)) for k in range(5)]
    other = ImagePool(4, seed=99)
    other.load_state_dict(state, "cpu")
    for k, w in enumerate(want):
        assert torch.equal(other.query(torch.full((3, 1, 1, 1), 500.0 + k)), w)
    assert torch.equal(ImagePool(0).query(first), first)


# ---- one step against a hand-written update -------------------------------------------------------
class Tiny(nn.Module):
    """A 1x1 convolution and tanh: a generator (or, without tanh, a patch critic) on 1-channel images."""

    def __init__(self, squash=True):
        super().__init__()
        self.conv, self.squash = nn.Conv2d(1, 1, 1), squash

    def forward(self, x):
        y = self.conv(x)
        return torch.tanh(y) if self.squash else y


def _data(spec="digits:digits-inv"):
    """8x8 digit domains in float64 (the tiny networks' dtype)."""
    dd = load_domains(spec, 8)
    for d in dd.domains + dd.held_out:
        d.x = d.x.double()
    return dd


def _tiny_game(seed=0, pool=50, decay=None, ema=None):
    torch.manual_seed(seed)
    nets = [Tiny(True).double(), Tiny(False).double(), Tiny(True).double(), Tiny(False).double()]
    obj = CycleGAN(nets[2], nets[3], pool=pool, decay=decay, classifier_steps=400)
    t = GANTrainer(nets[0], nets[1], z_dim=1, loss="lsgan", lr_g=0.01, lr_d=0.02, objective=obj, seed=seed,
                   ema_decay=ema, device="cpu")
    return t, nets


def test_one_step_is_the_papers_update():
    data = _data()
    t, (G, DB, Fn, DA) = _tiny_game()
    ref = [copy.deepcopy(m) for m in (G, DB, Fn, DA)]
    stream_a, stream_b = (torch.Generator().manual_seed(0 + 7919 * k) for k in range(2))
    t.fit(data, 1, 4, progress=False)
    # the batches the trainer drew: each domain's first shuffled batch
    a, b = (data.domains[k].x[torch.randperm(len(data.domains[k]), generator=g)[:4]].double()
            for k, g in enumerate((stream_a, stream_b)))
    rG, rDB, rF, rDA = ref
    opt_g = torch.optim.Adam(list(rG.parameters()) + list(rF.parameters()), 0.01, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(list(rDB.parameters()) + list(rDA.parameters()), 0.02, betas=(0.5, 0.999))
    fb, fa = rG(a), rF(b)
    mse1 = lambda v: ((v - 1) ** 2).mean()  # noqa: E731
    lg = (mse1(rDB(fb)) + mse1(rDA(fa)) + 10 * ((rF(fb) - a).abs().mean() + (rG(fa) - b).abs().mean())
          + 5 * ((rG(b) - b).abs().mean() + (rF(a) - a).abs().mean()))
    opt_g.zero_grad()
    lg.backward()
    opt_g.step()
    # the discriminators: the pool returns the first fakes as they are, computed before G's update
    ld = (0.5 * (mse1(rDB(b)) + (rDB(fb.detach()) ** 2).mean()) + 0.5 * (mse1(rDA(a)) + (rDA(fa.detach()) ** 2).mean()))
    opt_d.zero_grad()
    ld.backward()
    opt_d.step()
    for m, r in zip((G, DB, Fn, DA), ref):
        for p, q in zip(m.parameters(), r.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    h = t.history[-1]
    assert h["g_loss"] == pytest.approx(float(lg.detach()), rel=1e-6)  # logged in float32
    assert h["d_loss"] == pytest.approx(float(ld.detach()), rel=1e-6)


def test_learning_rates_decay_linearly_to_zero():
    obj = CycleGAN(Tiny(), Tiny(False), decay=(4, 8))
    assert [obj.lr_factor(s) for s in (0, 3, 4, 6, 8, 9)] == [1, 1, 1, 0.5, 0, 0]
    data = _data()
    t, _ = _tiny_game(decay=(2, 6))
    t.fit(data, 4, 4, progress=False)  # the step from 3 to 4 ran with factor (6 - 3) / 4
    assert t.optimizers["g"].param_groups[0]["lr"] == pytest.approx(0.01 * 0.75)
    assert t.optimizers["d"].param_groups[0]["lr"] == pytest.approx(0.02 * 0.75)
    with pytest.raises(ValueError, match="argument 'decay'"):
        CycleGAN(Tiny(), Tiny(False), decay=(5, 5))
    with pytest.raises(ValueError, match="argument 'pool'"):
        CycleGAN(Tiny(), Tiny(False), pool=-1)


def test_without_a_pool_and_the_settings_it_refuses():
    data = _data()
    t, _ = _tiny_game(pool=0)
    t.fit(data, 2, 4, progress=False)  # D trains on the current fakes, detached from G's graph
    assert all(torch.isfinite(p).all() for p in t.nets["d_a"].parameters())
    for kw, what in ((dict(r1_gamma=1.0), "r1_gamma=1.0"), (dict(gp_weight=10.0), "gp_weight=10.0"),
                     (dict(d_steps=2), "d_steps=2"), (dict(loss="rals"), "loss=rals"),
                     (dict(loss="rpgan"), "loss=rpgan")):
        with pytest.raises(ValueError, match=f"CycleGAN uses neither R1.*got {what}"):
            GANTrainer(Tiny(), Tiny(False), z_dim=1, objective=CycleGAN(Tiny(), Tiny(False)), **kw)
    with pytest.raises(ValueError, match="GANTrainer: the CycleGAN objective does not apply R2; drop 'r2_gamma'"):
        GANTrainer(Tiny(), Tiny(False), z_dim=1, objective=CycleGAN(Tiny(), Tiny(False)), r2_gamma=1.0)


def test_exact_resume_with_the_pools_the_decay_and_ema(tmp_path):
    data = _data()
    t, _ = _tiny_game(pool=3, decay=(3, 9), ema=0.9)
    t.fit(data, 8, 2, progress=False)
    part, _ = _tiny_game(pool=3, decay=(3, 9), ema=0.9)
    part.fit(data, 4, 2, out_dir=str(tmp_path), checkpoint_every=4, progress=False)
    resumed, _ = _tiny_game(seed=0, pool=3, decay=(3, 9), ema=0.9)
    resumed.load_latest(str(tmp_path))
    resumed.fit(data, 8, 2, progress=False)
    for name in ("generator", "discriminator", "g_ba", "d_a"):
        for p, q in zip(t.nets[name].parameters(), resumed.nets[name].parameters()):
            assert torch.equal(p, q), name
    for p, q in zip(t.objective.pools, resumed.objective.pools):
        assert torch.equal(p.images, q.images) and p.count == q.count
    for p, q, g in zip(t.ema.parameters(), resumed.ema.parameters(), t.generator.parameters()):
        assert torch.equal(p, q) and not torch.equal(p, g)  # the EMA of G (A -> B) resumed, and lagging


def test_bf16_autocast_steps():
    """The paper's networks (4 px wide, one block) under bf16 autocast: finite losses, float32 weights,
    and the EMA generator's translations are images of the source's shape."""
    torch.manual_seed(0)
    data = load_domains("digits:digits-m", 16)
    G, F = models.ResnetGenerator(3, 3, 4, 1), models.ResnetGenerator(3, 3, 4, 1)
    D, DA = models.PatchDiscriminator(3, 4, 1), models.PatchDiscriminator(3, 4, 1)
    t = GANTrainer(G, D, z_dim=1, loss="lsgan", objective=CycleGAN(F, DA), amp="bf16", ema_decay=0.9, device="cpu")
    t.fit(data, 3, 2, progress=False, log_every=1)
    rows = [r for r in t.history if "d_loss" in r]
    assert len(rows) == 3 and all(math.isfinite(r[k]) for r in rows for k in ("d_loss", "g_loss", "cycle")), rows
    assert all(p.dtype == torch.float32 for p in G.parameters())
    x = data.domains[0].x[:4]
    y = t.sample(4, z=x)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.abs().max() <= 1


def test_needs_two_domains():
    t, _ = _tiny_game()
    with pytest.raises(ValueError, match="CycleGAN translates between two domains"):
        t.fit(_data("digits:digits-inv:digits-thick"), 1, 2, progress=False)
    with pytest.raises(ValueError, match="this objective trains on unpaired domains"):
        t.fit(_data().domains[0], 1, 2, progress=False)


def test_evaluation_scores_a_perfect_translator_at_the_classifiers_ceiling(tmp_path):
    """digits -> digits-inv is x -> -x exactly, and the held-out digits are the same in both domains:
    translating with the exact maps scores the classifier's own held-out accuracy, with no cycle error."""
    data = _data()
    t, (G, _, Fn, _) = _tiny_game()
    with torch.no_grad():
        for m in (G, Fn):
            m.squash = False
            m.conv.weight.fill_(-1.0)
            m.conv.bias.zero_()
    t.objective.check_data(data)
    res = t.objective.evaluate(t, data, str(tmp_path))
    assert res["acc_ab"] == res["cls_b"] and res["acc_ba"] == res["cls_a"] and res["cls_a"] > 80
    assert res["cycle_a"] == 0 and res["cycle_b"] == 0
    assert os.path.getsize(tmp_path / "translation.png") > 0
    with torch.no_grad():
        G.conv.weight.fill_(1.0)  # the identity keeps the digit but not the domain
    res = t.objective.evaluate(t, data, None)
    assert res["acc_ab"] < res["cls_b"] - 20


# ---- the command line -----------------------------------------------------------------------------
def test_cli_trains_resumes_and_translates(tmp_path, capsys):
    from PIL import Image
    from fastgan import cli
    out = str(tmp_path / "cg")
    common = ["train", "--model", "cyclegan", "--width", "4", "--batch-size", "4", "--sample-every", "3",
              "--checkpoint-every", "3", "--out", out, "--quiet"]
    assert cli.main(common + ["--steps", "3"]) == 0
    assert "acc_ab=" in capsys.readouterr().out
    assert cli.main(common + ["--steps", "6", "--resume"]) == 0
    assert "cycle_b=" in capsys.readouterr().out
    for f in ("samples.png", "translation.png", "curves.png", "metrics.jsonl", "checkpoints/ckpt-00000006.pt"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    cfg = __import__("json").load(open(os.path.join(out, "config.json")))
    assert cfg["data"] == "digits:digits-m" and cfg["image_size"] == 16 and cfg["trainer"]["loss"] == "lsgan"
    assert cfg["trainer"]["decay"] == [3, 6] and cfg["trainer"]["ema_decay"] is None
    # sample: sources and translations, 8 per row, both directions
    png, pt = str(tmp_path / "t.png"), str(tmp_path / "t.pt")
    assert cli.main(["sample", "--checkpoint", out, "--source", "digits", "--n", "12", "--out", png,
                     "--save-tensor", pt]) == 0
    assert "12 translations (A -> B) of digits" in capsys.readouterr().out
    assert Image.open(png).size == (8 * 18 + 2, 4 * 18 + 2) and torch.load(pt).shape == (12, 3, 16, 16)
    ck = torch.load(os.path.join(out, "checkpoints", "ckpt-00000006.pt"), weights_only=False)
    G = models.ResnetGenerator(**ck["models"]["generator"])
    G.load_state_dict(ck["generator"])
    G.eval()
    src = load_domains("digits:digits-m", 16, holdout=0).domains[0].x[:12]
    with torch.no_grad():
        torch.testing.assert_close(torch.load(pt), G(src), rtol=1e-5, atol=1e-5)
    Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(tmp_path / "one.png")
    assert cli.main(["sample", "--checkpoint", out, "--source", str(tmp_path / "one.png"), "--reverse",
                     "--out", png]) == 0
    assert "1 translations (B -> A)" in capsys.readouterr().out
    # errors: one line each
    for argv, msg in (
            (["sample", "--checkpoint", out], "holds a translation model (cyclegan): pass --source"),
            (["sample", "--checkpoint", out, "--source", "digits", "--n", "0"], "--n must be >= 1, got 0"),
            (["sample", "--checkpoint", out, "--source", str(tmp_path / "nope")], "--source: no such dataset"),
            (["train", "--model", "cyclegan", "--data", "digits", "--out", str(tmp_path / "x")],
             "translates between two image domains: pass --data A:B"),
            (["train", "--data", "digits:digits-m", "--out", str(tmp_path / "y")],
             "names several domains (A:B), which only translation models train on"),
            (["train", "--model", "cyclegan", "--data", "digits:digits-inv:digits-thick", "--steps", "1",
              "--out", str(tmp_path / "z")], "CycleGAN translates between two domains")):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, err
    plain = str(tmp_path / "plain")
    assert cli.main(["train", "--data", "ring8", "--steps", "2", "--out", plain, "--quiet"]) == 0
    assert cli.main(["sample", "--checkpoint", plain, "--source", "digits"]) == 2
    assert "holds no translation model" in capsys.readouterr().err


@pytest.mark.quality
def test_cyclegan_translations_keep_the_digit():
    """Quality: the CLI's settings (digits <-> digits-m at 16 px, width 16, 4 blocks, batch 8, LSGAN,
    lam 10, identity 0.5, pools of 50, seed 0), 500 steps, no decay: held-out digits translated to
    digits-m are read as their digit by the digits-m classifier, and back (the harder direction) well
    above chance; the cycles reconstruct."""
    torch.manual_seed(0)
    size, w, nb = 16, 16, 4
    G, F = models.ResnetGenerator(3, 3, w, nb), models.ResnetGenerator(3, 3, w, nb)
    D, DA = models.PatchDiscriminator(3, w, 1), models.PatchDiscriminator(3, w, 1)
    data = load_domains("digits:digits-m", size)
    t = GANTrainer(G, D, z_dim=1, loss="lsgan", objective=CycleGAN(F, DA), seed=0, device="cpu")
    t.fit(data, 500, 8, progress=False, log_every=100)
    res = t.objective.evaluate(t, data, None)
    print(res)
    assert res["acc_ab"] >= 70 and res["acc_ba"] >= 30 and res["cycle_a"] < 0.2 and res["cycle_b"] < 0.35, res
