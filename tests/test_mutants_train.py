"""Tests written for the mutants of fastgan/train that the other tests let survive (docs/testing.md).

Each test names what it pins down: an exact message, a default, a boundary, a rarely taken branch of
the batch streams, the metrics, the pictures and the checkpoints. Expected values come from the
test (by-hand arithmetic, PIL/numpy), not from the code under test.
"""
import random
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fastgan.train import data as tdata
from fastgan.train import metrics, report

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


# ---- fastgan/train/data.py: the DataLoader stream ----------------------------------------------
class _EpochSampler(torch.utils.data.Sampler):
    """A sequential sampler that records the epochs it is told about (as DistributedSampler is)."""

    def __init__(self, n):
        self.n, self.epochs = n, []

    def set_epoch(self, e):
        self.epochs.append(e)

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def _images(n=6):
    return torch.arange(n * 2 * 3 * 3, dtype=torch.float32).reshape(n, 2, 3, 3)


def test_loader_stream_tells_the_sampler_each_epoch_in_order():
    x = _images(6)
    sampler = _EpochSampler(6)
    b = tdata.make_batches(DataLoader(x, batch_size=3, sampler=sampler), 3, device=CPU)
    assert b.state_dict() == {"kind": "loader", "epoch": 0, "consumed": 0, "start": None}
    got = [next(b) for _ in range(7)]
    assert sampler.epochs == [0, 1, 2, 3]       # one call per epoch, counted from 0
    assert b.state_dict()["epoch"] == 3 and b.state_dict()["consumed"] == 1
    for i, t in enumerate(got):                 # plain tensors (not (x, y) pairs): whole batches
        assert t.shape == (3, 2, 3, 3)
        torch.testing.assert_close(t, x[3 * (i % 2):3 * (i % 2) + 3], rtol=0, atol=0)


def test_loader_stream_channels_last_and_pairs():
    x, y = _images(4), torch.arange(4)
    b = tdata.make_batches(DataLoader(TensorDataset(x, y), batch_size=2), 2, device=CPU, channels_last=True)
    t = next(b)
    assert t.shape == (2, 2, 3, 3) and t.is_contiguous(memory_format=torch.channels_last)
    assert not t.is_contiguous()
    torch.testing.assert_close(t, x[:2], rtol=0, atol=0)


def test_empty_loader_message():
    with pytest.raises(ValueError, match="^" + re.escape("GANTrainer.fit: argument 'data' is an empty DataLoader") + "$"):
        next(tdata.make_batches(DataLoader(torch.zeros(0, 2)), 1, device=CPU))


def test_loader_state_of_another_kind_warns_and_starts_over():
    b = tdata.make_batches(DataLoader(_images(4), batch_size=2), 2, device=CPU)
    with pytest.warns(UserWarning) as rec:
        b.load_state_dict({"kind": "index", "epoch": 5, "consumed": 1, "start": None})
    assert [str(w.message) for w in rec] == ["the saved data position does not fit this data; starting a new epoch"]
    assert b.state_dict()["epoch"] == 0


def test_loader_state_without_generator_loads_into_a_loader_with_one():
    """A state saved from a loader without its own generator restores the torch RNG only."""
    x = _images(6)
    a = tdata.make_batches(DataLoader(x, batch_size=2, shuffle=True), 2, device=CPU)
    torch.manual_seed(1)
    next(a)
    s = a.state_dict()
    assert s["start"]["gen"] is None
    gen = torch.Generator().manual_seed(5)
    b = tdata.make_batches(DataLoader(x, batch_size=2, shuffle=True, generator=gen), 2, device=CPU, state=s)
    assert b.state_dict()["consumed"] == 1 and b.state_dict()["start"]["gen"] is None
    assert next(b).shape == (2, 2, 3, 3)


def test_loader_state_past_the_end_of_a_shorter_loader_opens_the_next_epoch():
    """A saved position beyond the data's end (the data shrank): the epoch counts as complete."""
    long = tdata.make_batches(DataLoader(_images(8), batch_size=2), 2, device=CPU)
    for _ in range(4):
        next(long)
    s = long.state_dict()
    assert (s["epoch"], s["consumed"]) == (0, 4)
    short = tdata.make_batches(DataLoader(_images(4), batch_size=2), 2, device=CPU, state=s)
    t = next(short)
    assert short.state_dict()["epoch"] == 1 and short.state_dict()["consumed"] == 1
    torch.testing.assert_close(t, _images(4)[:2], rtol=0, atol=0)


# ---- fastgan/train/metrics.py ------------------------------------------------------------------
def test_mixture_metrics_boundary_is_inclusive():
    """A sample exactly `threshold` standard deviations from its mode is high quality (<=)."""
    modes = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    on_edge = torch.tensor([[1.5, 0.0]] * 3 + [[0.0, 1.5]])     # 3 * 0.5 exactly, in binary
    outside = torch.tensor([[1.5000001, 0.0]])
    r = metrics.mixture_metrics(torch.cat([on_edge, outside]), modes, 0.5, min_count=4)
    assert r == {"modes": 1, "modes_total": 2, "high_quality": 80.0}


# ---- fastgan/train/report.py -------------------------------------------------------------------
def _png(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_save_points_size_and_default_title(tmp_path):
    p = torch.tensor([[0.0, 0.0], [1.0, -1.0], [0.5, 0.25]])
    report.save_points(p, str(tmp_path / "a.png"))
    report.save_points(p, str(tmp_path / "b.png"), title="")
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png")
    assert a.shape == (400, 400, 3)            # figsize (4, 4) at 100 dpi
    assert np.array_equal(a, b)                # the default title is empty
    report.save_points(p, str(tmp_path / "c.png"), title="XXXX")
    assert not np.array_equal(a, _png(tmp_path / "c.png"))


def _frame(a):
    """Pixel columns/rows of the axes frame (the dark spines spanning most of the picture)."""
    dark = a.astype(int).sum(2) < 150
    cols = np.nonzero(dark.sum(0) > 0.5 * a.shape[0])[0]
    rows = np.nonzero(dark.sum(1) > 0.5 * a.shape[1])[0]
    assert len(cols) >= 2 and len(rows) >= 2
    return cols[0], cols[-1], rows[0], rows[-1]


def test_save_points_draws_samples_and_modes_where_they_are(tmp_path):
    """Axis limits +-(1.4 max|mode| + 0.1) on both axes; samples translucent; modes as red marks."""
    modes = torch.tensor([[2.0, 0.0], [-1.0, 1.0]])
    report.save_points(torch.tensor([[1.0, -2.0]]), str(tmp_path / "p.png"), modes=modes)
    a = _png(tmp_path / "p.png").astype(int)
    left, right, top, bottom = _frame(a)
    r = 2.0 * 1.4 + 0.1

    def at(x, y):  # data -> pixel (column, row)
        return left + (x + r) / (2 * r) * (right - left), top + (r - y) / (2 * r) * (bottom - top)

    inside = a[top + 2:bottom - 1, left + 2:right - 1]
    blue = inside[..., 2] > inside[..., 0] + 30
    ys, xs = np.nonzero(blue)
    cx, cy = at(1.0, -2.0)
    assert len(xs) and np.all(np.abs(xs + left + 2 - cx) <= 3) and np.all(np.abs(ys + top + 2 - cy) <= 3)
    assert inside[blue][:, 0].min() > 90      # alpha 0.4: no pixel of one sample is solid blue (R 31)
    red = (a[..., 0] > 200) & (a[..., 1] < 80) & (a[..., 2] < 80)
    ys, xs = np.nonzero(red)
    near = np.zeros(len(xs), bool)
    for x, y in modes.tolist():
        mx, my = at(x, y)
        here = (np.abs(xs - mx) <= 6) & (np.abs(ys - my) <= 6)
        assert here.sum() >= 10 and abs(xs[here].mean() - mx) < 1.5 and abs(ys[here].mean() - my) < 1.5
        near |= here
    assert near.all()                           # nothing else is red


def test_save_points_many_samples_darken(tmp_path):
    """Translucent samples accumulate: 40 samples on one point are darker than one."""
    report.save_points(torch.tensor([[0.5, 0.5]] * 40), str(tmp_path / "p.png"))
    a = _png(tmp_path / "p.png").astype(int)
    left, right, top, bottom = _frame(a)
    inside = a[top + 2:bottom - 1, left + 2:right - 1]
    assert inside[..., 0].min() < 60


# ---- fastgan/train/trainer.py: GANTrainer.__init__ ---------------------------------------------
from torch import nn  # noqa: E402

from fastgan.train import GANTrainer  # noqa: E402


def _nets():
    torch.manual_seed(0)
    return nn.Linear(2, 3), nn.Linear(3, 1)


@pytest.mark.parametrize("kw, err, msg", [
    (dict(loss="nope"), ValueError,
     "GANTrainer: argument 'loss' must be one of ns, minimax, hinge, wgan, lsgan, rals, rpgan; got 'nope'"),
    (dict(z_dim=0), ValueError, "GANTrainer: argument 'z_dim' must be a positive number, got 0"),
    (dict(z_dim=True), ValueError, "GANTrainer: argument 'z_dim' must be a positive number, got True"),
    (dict(z_dim=2.0), ValueError, "GANTrainer: argument 'z_dim' must be a positive number, got 2.0"),
    (dict(d_steps=0), ValueError, "GANTrainer: argument 'd_steps' must be a positive number, got 0"),
    (dict(r1_every=0), ValueError, "GANTrainer: argument 'r1_every' must be a positive number, got 0"),
    (dict(keep_checkpoints=0), ValueError,
     "GANTrainer: argument 'keep_checkpoints' must be a positive number, got 0"),
    (dict(lr_g=0.0), ValueError, "GANTrainer: argument 'lr_g' must be a positive number, got 0.0"),
    (dict(lr_d=-1e-3), ValueError, "GANTrainer: argument 'lr_d' must be a positive number, got -0.001"),
    (dict(lr_d="1e-3"), ValueError, "GANTrainer: argument 'lr_d' must be a positive number, got '1e-3'"),
    (dict(r1_gamma=-1.0), ValueError, "GANTrainer: argument 'r1_gamma' must be a non-negative number, got -1.0"),
    (dict(gp_weight=-1), ValueError, "GANTrainer: argument 'gp_weight' must be a non-negative number, got -1"),
    (dict(pack=0), ValueError, "GANTrainer: argument 'pack' must be a positive number, got 0"),
    (dict(r2_gamma=-0.5), ValueError, "GANTrainer: argument 'r2_gamma' must be a non-negative number, got -0.5"),
    (dict(r1_gamma=1.0, gp_weight=10.0), ValueError,
     "GANTrainer: use zero-centred penalties ('r1_gamma', 'r2_gamma') or WGAN-GP ('gp_weight'), not both"),
    (dict(r2_gamma=1.0, gp_weight=10.0), ValueError,
     "GANTrainer: use zero-centred penalties ('r1_gamma', 'r2_gamma') or WGAN-GP ('gp_weight'), not both"),
    (dict(ema_decay=1.0), ValueError, "GANTrainer: argument 'ema_decay' must be in [0, 1) or None, got 1.0"),
    (dict(ema_decay=-0.1), ValueError, "GANTrainer: argument 'ema_decay' must be in [0, 1) or None, got -0.1"),
    (dict(ema_decay="0.9"), ValueError, "GANTrainer: argument 'ema_decay' must be in [0, 1) or None, got '0.9'"),
    (dict(amp="fp8"), ValueError, "GANTrainer: argument 'amp' must be None, 'bf16' or 'fp16'; got 'fp8'"),
    (dict(device="nodev"), ValueError, "GANTrainer: argument 'device' is not a device: 'nodev'"),
    (dict(device=3.5), ValueError, "GANTrainer: argument 'device' is not a device: 3.5"),
    (dict(g_optimizer=3), TypeError, "GANTrainer: argument 'g_optimizer' must be an optimizer, a callable or None"),
    (dict(d_optimizer="adam"), TypeError,
     "GANTrainer: argument 'd_optimizer' must be an optimizer, a callable or None"),
])
def test_trainer_argument_messages(kw, err, msg):
    g, d = _nets()
    kw = {"z_dim": 2, **kw}
    with pytest.raises(err, match="^" + re.escape(msg) + "$"):
        GANTrainer(g, d, **kw)


def test_trainer_module_and_optimizer_messages():
    g, d = _nets()
    with pytest.raises(TypeError, match="^" + re.escape("GANTrainer: argument 'generator' must be an nn.Module, got str")):
        GANTrainer("G", d, z_dim=2)
    with pytest.raises(TypeError, match="^" + re.escape(
            "GANTrainer: argument 'discriminator' must be an nn.Module (or None for an objective without one, "
            "as the VAE), got function")):
        GANTrainer(g, lambda x: x, z_dim=2)
    other = torch.optim.SGD(nn.Linear(1, 1).parameters(), 0.1)
    for name in ("g_optimizer", "d_optimizer"):
        with pytest.raises(ValueError, match="^" + re.escape(
                f"GANTrainer: argument '{name}' optimises tensors that are not this model's parameters "
                "(build it after the model, before the trainer moves it)") + "$"):
            GANTrainer(g, d, z_dim=2, **{name: other})
    ok = torch.optim.SGD(d.parameters(), 0.1)
    assert GANTrainer(g, d, z_dim=2, d_optimizer=ok).opt_d is ok
    t = GANTrainer(g, d, z_dim=2, g_optimizer=lambda p: torch.optim.SGD(p, 0.3))
    assert isinstance(t.opt_g, torch.optim.SGD) and t.opt_g.param_groups[0]["lr"] == 0.3
    assert {id(p) for p in t.opt_g.param_groups[0]["params"]} == {id(p) for p in g.parameters()}


def test_trainer_defaults():
    """The documented defaults: Adam(2e-4, betas (0.5, 0.999)) for both, ns loss, one D step, R1
    every step when on, no penalty, no EMA, no AMP, CPU, seed 0, 3 checkpoints kept, NCHW."""
    g, d = _nets()
    t = GANTrainer(g, d, z_dim=2)
    for opt, model in ((t.opt_g, g), (t.opt_d, d)):
        assert type(opt) is torch.optim.Adam
        (grp,) = opt.param_groups
        assert grp["lr"] == 2e-4 and grp["betas"] == (0.5, 0.999)
        assert [id(p) for p in grp["params"]] == [id(p) for p in model.parameters()]
    assert (t.loss, t.d_steps, t.r1_gamma, t.r1_every, t.gp_weight, t.keep) == ("ns", 1, 0.0, 1, 0.0, 3)
    assert t.ema is None and t.amp is None and t.amp_dtype is None and t.scaler_g is None and t.scaler_d is None
    assert t.device == torch.device("cpu") and t.channels_last is False and t.world == 1 and t.rank == 0
    assert t.is_main is True and t.step == 0 and t.history == [] and t.interrupted is None
    assert t.r2_gamma == 0.0
    assert t.config == dict(z_dim=2, loss="ns", d_steps=1, lr_g=2e-4, lr_d=2e-4, betas=[0.5, 0.999], r1_gamma=0.0,
                            r1_every=1, r2_gamma=0.0, gp_weight=0.0, ema_decay=None, amp=None, seed=0, compile=False,
                            pack=1)
    assert int(t._bad) == -1 and t._bad.dtype == torch.long and t._count == 0
    assert t._sums.shape == (7,) and not t._sums.any()
    want = torch.randn(64, 2, generator=torch.Generator().manual_seed(1_000_003))
    torch.testing.assert_close(t.fixed_z, want, rtol=0, atol=0)
    assert t._G is g and t._D is d


def test_trainer_options_are_kept():
    g, d = _nets()
    t = GANTrainer(g, d, z_dim=2, loss="hinge", d_steps=2, lr_g=1e-3, lr_d=3e-3, betas=(0.0, 0.99), r1_gamma=2,
                   r1_every=4, r2_gamma=3, pack=2, ema_decay=0.5, amp="fp16", seed=5, keep_checkpoints=7, channels_last=True)
    assert t.opt_g.param_groups[0]["lr"] == 1e-3 and t.opt_d.param_groups[0]["lr"] == 3e-3
    assert t.opt_g.param_groups[0]["betas"] == (0.0, 0.99) and t.opt_d.param_groups[0]["betas"] == (0.0, 0.99)
    assert isinstance(t.r1_gamma, float) and t.r1_gamma == 2.0 and t.r1_every == 4 and t.keep == 7
    assert isinstance(t.r2_gamma, float) and t.r2_gamma == 3.0 and t.pack == 2
    assert t.seed == 5 and t.ema_decay == 0.5 and t.amp_dtype == torch.float16 and t.channels_last is True
    assert t.config == dict(z_dim=2, loss="hinge", d_steps=2, lr_g=1e-3, lr_d=3e-3, betas=[0.0, 0.99], r1_gamma=2,
                            r1_every=4, r2_gamma=3, gp_weight=0.0, ema_decay=0.5, amp="fp16", seed=5, compile=False,
                            pack=2)
    assert isinstance(t.scaler_g, torch.amp.GradScaler) and isinstance(t.scaler_d, torch.amp.GradScaler)
    assert t.scaler_g is not t.scaler_d
    assert t.ema is not g and not t.ema.training and not any(p.requires_grad for p in t.ema.parameters())
    for a, b in zip(t.ema.parameters(), g.parameters()):
        assert torch.equal(a, b)
    assert all(p.requires_grad for p in g.parameters())
    want = torch.randn(64, 2, generator=torch.Generator().manual_seed(5 + 1_000_003))
    torch.testing.assert_close(t.fixed_z, want, rtol=0, atol=0)
    assert GANTrainer(*_nets(), z_dim=2, amp="bf16").amp_dtype == torch.bfloat16
    assert GANTrainer(*_nets(), z_dim=2, ema_decay=0).ema is not None     # 0 is a decay, not "off"
    assert GANTrainer(*_nets(), z_dim=2, r1_gamma=0, gp_weight=0).gp_weight == 0.0


def test_trainer_seeds_every_rng():
    import random
    g, d = _nets()
    GANTrainer(g, d, z_dim=2, seed=11)
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(11), np.random.seed(11), random.seed(11)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_channels_last_conv_models():
    """channels_last=None means off on the CPU; True puts 4-D parameters of both networks in NHWC."""
    g = nn.Sequential(nn.Unflatten(1, (2, 1, 1)), nn.ConvTranspose2d(2, 3, 2))
    d = nn.Sequential(nn.Conv2d(3, 4, 2), nn.Flatten(), nn.Linear(4, 1))
    t = GANTrainer(g, d, z_dim=2)
    assert t.channels_last is False
    t = GANTrainer(g, d, z_dim=2, channels_last=True)
    assert g[1].weight.is_contiguous(memory_format=torch.channels_last) and not g[1].weight.is_contiguous()
    assert d[0].weight.is_contiguous(memory_format=torch.channels_last) and not d[0].weight.is_contiguous()


# ---- GANTrainer.fit, logging, sampling, signals, checkpoints -----------------------------------
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402

from fastgan.train import checkpoint as ckpt  # noqa: E402
from fastgan.train import trainer as trainer_mod  # noqa: E402
from fastgan.objectives import gan as gan_objective  # noqa: E402


def _data(n=8):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("args, kw, msg", [
    ((-1, 2), {}, "GANTrainer: argument 'steps' must be a non-negative number, got -1"),
    ((1.5, 2), {}, "GANTrainer: argument 'steps' must be a non-negative number, got 1.5"),
    ((1, 0), {}, "GANTrainer: argument 'batch_size' must be a positive number, got 0"),
    ((1, 2), dict(log_every=0), "GANTrainer: argument 'log_every' must be a positive number, got 0"),
    ((1, 2), dict(sample_every=0), "GANTrainer: argument 'sample_every' must be a positive number, got 0"),
    ((1, 2), dict(checkpoint_every=-2), "GANTrainer: argument 'checkpoint_every' must be a positive number, got -2"),
])
def test_fit_argument_messages(args, kw, msg):
    t = GANTrainer(*_nets(), z_dim=2)
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        t.fit(_data(), *args, progress=False, **kw)


def test_fit_zero_steps_and_default_batch_size():
    t = GANTrainer(*_nets(), z_dim=2)
    assert t.fit(_data(64), 0, progress=False) == [] and t.step == 0
    with pytest.raises(ValueError, match=re.escape("argument 'batch_size' (64) exceeds the 8 samples")):
        t.fit(_data(), 1, progress=False)     # batch_size defaults to 64


def test_fit_refuses_an_out_dir_that_is_ahead(tmp_path):
    t = GANTrainer(*_nets(), z_dim=2)
    os.makedirs(tmp_path / "checkpoints")
    t.fit(_data(), 2, 4, out_dir=str(tmp_path), progress=False)
    t2 = GANTrainer(*_nets(), z_dim=2)
    with pytest.raises(ValueError, match="^" + re.escape(
            "GANTrainer.fit: argument 'out_dir' already holds a checkpoint at step 2, ahead of this trainer "
            "(step 0): resume from it with load_latest(out_dir), or use another out_dir") + "$"):
        t2.fit(_data(), 3, 4, out_dir=str(tmp_path), progress=False)


def test_log_records_and_metrics_file(tmp_path, monkeypatch):
    """Per log: the means of the six statistics since the last log, the throughput from the clock,
    r1/gp only when on, the fp16 scales; all also appended to out_dir/metrics.jsonl."""
    clock = iter(float(i) for i in range(1000))
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: next(clock))
    t = GANTrainer(*_nets(), z_dim=2, d_steps=2)
    hist = t.fit(_data(), 5, 2, log_every=2, sample_every=100, checkpoint_every=100, out_dir=str(tmp_path),
                 progress=False)
    logs = [r for r in hist if "d_loss" in r]
    assert [r["step"] for r in logs] == [2, 4, 5]
    assert set(logs[0]) == {"step", "d_loss", "g_loss", "d_real", "d_fake", "img_per_s", "s_per_step"}
    # clock: t0 = 0 at the start, then one reading per log (the record's), one to restart t0
    assert logs[0]["img_per_s"] == 2 * 2 * 2 / 1.0 and logs[0]["s_per_step"] == 0.5
    assert logs[2]["img_per_s"] == 1 * 2 * 2 / 1.0 and logs[2]["s_per_step"] == 1.0
    lines = [json.loads(s) for s in open(tmp_path / "metrics.jsonl")]
    assert [r for r in lines if "d_loss" in r] == logs
    assert t._count == 0 and not t._sums.any()


def test_log_means_match_the_steps(monkeypatch):
    seen = []
    real_step = trainer_mod.GANTrainer._train_step

    def spy(self, batches):
        before = self._sums.clone()
        real_step(self, batches)
        seen.append((self._sums - before).tolist())

    monkeypatch.setattr(trainer_mod.GANTrainer, "_train_step", spy)
    t = GANTrainer(*_nets(), z_dim=2, r1_gamma=0.5, ema_decay=0.9)
    hist = t.fit(_data(), 3, 4, log_every=3, progress=False)
    (rec,) = hist
    mean = np.mean(np.array(seen), 0)
    for k, v in zip(("d_loss", "g_loss", "d_real", "d_fake", "r1"), mean):
        assert rec[k] == pytest.approx(v, rel=1e-6)
    assert "gp" not in rec and rec["r1"] > 0
    t = GANTrainer(*_nets(), z_dim=2, gp_weight=1.0, amp="fp16")
    (rec,) = t.fit(_data(), 1, 4, progress=False)
    assert "r1" not in rec and rec["gp"] >= 0
    assert (rec["scale_d"], rec["scale_g"]) == (t.scaler_d.get_scale(), t.scaler_g.get_scale())


def test_log_without_steps_is_nothing():
    t = GANTrainer(*_nets(), z_dim=2)
    assert t._log(4, 0.0, 0) is None and t.history == []


def test_non_finite_messages(tmp_path):
    t = GANTrainer(*_nets(), z_dim=2)
    t._ckpt_dir = None
    t._bad.fill_(7)
    msg = ("non-finite loss (NaN or inf) at step 7: training stopped; nothing was saved. Lower the learning rates, "
           "add a gradient penalty (r1_gamma, r2_gamma / gp_weight), or use amp='fp16' whose scaler skips such steps.")
    with pytest.raises(trainer_mod.NonFiniteLossError, match="^" + re.escape(msg) + "$"):
        t._check_finite()
    d = tmp_path / "checkpoints"
    d.mkdir()
    t._ckpt_dir = str(d)
    with pytest.raises(trainer_mod.NonFiniteLossError, match=re.escape("; nothing was saved.")):
        t._check_finite()
    for s in (3, 5):
        open(ckpt.path_for(str(d), s), "wb").close()
    with pytest.raises(trainer_mod.NonFiniteLossError, match=re.escape(
            f"at step 7: training stopped; the last good checkpoint, {ckpt.path_for(str(d), 5)}, is untouched. ")):
        t._check_finite()
    t._bad.fill_(0)
    with pytest.raises(trainer_mod.NonFiniteLossError, match="at step 0:"):
        t._check_finite()


def test_first_non_finite_step_is_kept():
    t = GANTrainer(*_nets(), z_dim=2)
    x = _data()
    t.fit(x, 2, 4, progress=False)
    with torch.no_grad():
        t.generator.weight.fill_(float("nan"))
    with pytest.raises(trainer_mod.NonFiniteLossError, match="at step 3:"):
        t.fit(x, 5, 4, progress=False)
    assert t.step == 5 and int(t._bad) == 3


def _no_abort(handler, sig):
    """Call a signal handler that must not abort (a KeyboardInterrupt would stop pytest itself, not
    fail the test)."""
    try:
        handler(sig, None)
    except KeyboardInterrupt:
        pytest.fail(f"the handler aborted on {signal.Signals(sig).name}")


def test_signal_handler_message_and_second_ctrl_c(capsys):
    t = GANTrainer(*_nets(), z_dim=2)
    t.step = 4
    stop = {"sig": None}
    old = t._install_signals(stop)
    try:
        h = signal.getsignal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGINT) is h
        _no_abort(h, signal.SIGTERM)
        assert stop["sig"] == signal.SIGTERM
        assert capsys.readouterr().out == ("\nfastgan: SIGTERM received: finishing step 5, then saving a checkpoint "
                                           "and stopping (Ctrl-C again to abort now)\n")
        _no_abort(h, signal.SIGTERM)                 # a second SIGTERM is not an abort
        assert stop["sig"] == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):       # Ctrl-C after any signal: stop now
            h(signal.SIGINT, None)
        stop["sig"] = None
        _no_abort(h, signal.SIGINT)                  # a first Ctrl-C is not an abort
        assert stop["sig"] == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            h(signal.SIGINT, None)
        t.is_main = False
        stop["sig"] = None
        capsys.readouterr()
        _no_abort(h, signal.SIGINT)
        assert capsys.readouterr().out == "" and stop["sig"] == signal.SIGINT
    finally:
        t._restore_signals(old)
    assert signal.getsignal(signal.SIGINT) is old[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is old[signal.SIGTERM]


def test_sample_batches_ema_and_mode():
    g = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5))
    t = GANTrainer(g, nn.Linear(3, 1), z_dim=2, ema_decay=0.5)
    with torch.no_grad():
        t.ema[0].weight.add_(1.0)
    z = torch.randn(7, 2)
    got = t.sample(7, z=z, batch_size=3)
    torch.testing.assert_close(got, t.ema[0](z), rtol=0, atol=1e-6)      # EMA, eval mode (no dropout)
    got = t.sample(7, z=z, ema=False, batch_size=2)
    torch.testing.assert_close(got, g[0](z), rtol=0, atol=1e-6)
    assert g.training and t.ema.training is False
    torch.manual_seed(4)
    a = t.sample(5)
    torch.manual_seed(4)
    torch.testing.assert_close(a, t.ema[0](torch.randn(5, 2)), rtol=0, atol=1e-6)
    assert t.sample(600, z=torch.randn(600, 2)).shape == (600, 3)     # more than one default chunk


def test_state_dict_contents():
    t = GANTrainer(*_nets(), z_dim=2, amp="fp16", ema_decay=0.5)
    t.fit(_data(), 2, 4, progress=False)
    sd = t.state_dict()
    assert sd["format"] == ckpt.FORMAT == "fastgan.checkpoint" and sd["version"] == ckpt.VERSION == 1
    assert sd["step"] == 2 and sd["world"] == 1 and sd["models"] is None and sd["torch"] == str(torch.__version__)
    assert sd["config"] == t.config and sd["history"] is t.history
    assert sd["scaler_g"]["scale"] == 65536.0 and sd["scaler_d"] is not None
    assert sd["data"]["kind"] == "index" and sd["data"]["pos"] == 8 and sd["data"]["epoch"] == 1
    assert len(sd["rng"]) == 1 and set(sd["rng"][0]) == {"torch", "numpy", "python", "cuda", "paths"}
    assert set(sd["rng"][0]["paths"]) == {"ops", "conv_transpose"}  # the kernel paths it measured
    for k in ("generator", "discriminator", "ema"):
        assert set(sd[k]) == {"weight", "bias"}


def test_load_state_dict_errors_and_scalers():
    a = GANTrainer(*_nets(), z_dim=2, amp="fp16")
    a.fit(_data(), 1, 4, progress=False)
    a.scaler_d.update(1024.0)
    a.scaler_g.update(2048.0)
    sd = a.state_dict()
    b = GANTrainer(*_nets(), z_dim=2, amp="fp16")
    b.load_state_dict(sd)
    assert b.scaler_d.get_scale() == 1024.0 and b.scaler_g.get_scale() == 2048.0
    bad = dict(sd, generator={"weight": torch.zeros(5, 5)})
    with pytest.raises(ckpt.CheckpointError, match="^" + re.escape("x.pt: does not fit this trainer's models/optimizers: ")):
        b.load_state_dict(bad, source="x.pt")
    with pytest.raises(ckpt.CheckpointError, match="^" + re.escape("checkpoint: does not fit this trainer's models/")):
        b.load_state_dict({k: v for k, v in sd.items() if k != "opt_d"})
    c = GANTrainer(*_nets(), z_dim=2, ema_decay=0.5)
    c.load_state_dict(dict(sd, ema=None))      # no EMA saved: the EMA starts from the generator
    for p, q in zip(c.ema.parameters(), a.generator.parameters()):
        assert torch.equal(p, q)


def test_load_state_dict_with_another_process_count_warns_and_reseeds():
    a = GANTrainer(*_nets(), z_dim=2, seed=3)
    a.fit(_data(), 2, 4, progress=False)
    sd = a.state_dict()
    sd["rng"] = sd["rng"] * 2
    b = GANTrainer(*_nets(), z_dim=2, seed=3)
    with pytest.warns(UserWarning) as rec:
        b.load_state_dict(sd, source="c.pt")
    assert [str(w.message) for w in rec] == [
        "c.pt: saved with 2 process(es), resumed with 1: the random streams restart (training continues, "
        "not bit-identically)"]
    x = torch.rand(4)
    torch.manual_seed(3 + 0 + 1000 * 2)
    assert torch.equal(x, torch.rand(4))
    b._bad.fill_(4)
    b._count = 3
    b.load_state_dict(a.state_dict())
    assert int(b._bad) == -1 and b._count == 0 and b.history == a.history and b.history is not a.history


def test_rng_state_round_trip_every_generator():
    import random
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()                       # a cached Gaussian (has_gauss = 1)
    s = trainer_mod._rng_state()
    assert s["numpy"]["has_gauss"] == 1 and s["cuda"] == [] and s["numpy"]["keys"].dtype == torch.int64
    assert s["numpy"]["pos"] == np.random.get_state()[2] != 1
    want = (torch.rand(2), np.random.rand(2), np.random.randn(), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    trainer_mod._set_rng_state(s)
    got = (torch.rand(2), np.random.rand(2), np.random.randn(), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2:] == got[2:]


def test_fit_cadence_of_logs_samples_evaluations_and_checkpoints(tmp_path):
    """log_every, sample_every, checkpoint_every and the final step; evaluations on 2,500 fixed-seed
    samples of 2-D data (1,000 for images) recorded as {"step", "eval"}; keep_checkpoints newest kept."""
    calls = []

    def evaluator(x):
        calls.append(x.clone())
        return {"n": len(x)}

    t = GANTrainer(nn.Linear(2, 2), nn.Linear(2, 1), z_dim=2, seed=4, keep_checkpoints=2)
    hist = t.fit(torch.randn(16, 2), 7, 4, out_dir=str(tmp_path), log_every=3, sample_every=2, checkpoint_every=3,
                 progress=False, evaluator=evaluator)
    assert [r["step"] for r in hist if "d_loss" in r] == [3, 6, 7]
    assert [(r["step"], r["eval"]) for r in hist if "eval" in r] == [(s, {"n": 2500}) for s in (2, 4, 6, 7)]
    z = torch.randn(2500, 2, generator=torch.Generator().manual_seed(4 + 7))
    torch.testing.assert_close(calls[-1], t.sample(2500, z=z), rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [os.path.basename(ckpt.path_for(".", s)) for s in (6, 7)]
    assert {"samples.png", "curves.png", "metrics.jsonl", "checkpoints"} <= set(os.listdir(tmp_path))
    lines = [json.loads(s) for s in open(tmp_path / "metrics.jsonl")]
    assert len(lines) == len(hist) and lines[-1] == json.loads(json.dumps(hist[-1]))


def test_fit_evaluates_images_on_1000_samples(tmp_path):
    calls = []
    g = nn.Sequential(nn.Linear(2, 4), nn.Unflatten(1, (1, 2, 2)))
    d = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    t = GANTrainer(g, d, z_dim=2)
    t.fit(torch.randn(8, 1, 2, 2), 1, 4, out_dir=str(tmp_path), progress=False,
          evaluator=lambda x: calls.append(x.shape) or {})
    assert calls == [(1000, 1, 2, 2)]


def test_fit_without_out_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = GANTrainer(*_nets(), z_dim=2)
    t.fit(_data(), 3, 4, progress=False, sample_every=1, checkpoint_every=1)
    assert os.listdir(tmp_path) == [] and t._ckpt_dir is None


def test_save_checkpoint_prunes_only_numbered_files(tmp_path):
    t = GANTrainer(*_nets(), z_dim=2, keep_checkpoints=1)
    t.fit(_data(), 1, 4, progress=False)
    d = tmp_path / "checkpoints"
    d.mkdir()
    for s in (1, 2):
        t.step = s
        assert t.save_checkpoint(ckpt.path_for(str(d), s)) == ckpt.path_for(str(d), s)
    other = str(tmp_path / "checkpoints" / "mine.pt")
    t.save_checkpoint(other)
    assert sorted(os.listdir(d)) == sorted(["mine.pt", os.path.basename(ckpt.path_for(str(d), 2))])
    u = GANTrainer(*_nets(), z_dim=2).load_checkpoint(other)
    assert u.step == 2
    assert GANTrainer(*_nets(), z_dim=2).load_latest(str(tmp_path)) == ckpt.path_for(str(d), 2)
    assert GANTrainer(*_nets(), z_dim=2).load_latest(str(tmp_path / "none")) is None


def test_index_stream_state_that_does_not_fit_warns():
    msg = "the saved data position does not fit this data; starting a new epoch order"
    b = tdata.make_batches(_data(8), 2, device=CPU)
    first = next(b)
    for bad in ({"kind": "loader", "n": 8}, {"kind": "index", "n": 9}):
        c = tdata.make_batches(_data(8), 2, device=CPU)
        with pytest.warns(UserWarning) as rec:
            c.load_state_dict(bad)
        assert [str(w.message) for w in rec] == [msg]
        torch.testing.assert_close(next(c), first, rtol=0, atol=0)    # a fresh order from the seed


# ---- metrics: Fréchet distance precision, the image evaluator and its selection ----------------
def test_frechet_distance_works_in_float64_whatever_the_input():
    c, n = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -n], [n, c]])
    s = (rot @ np.diag([1e6, 1.0]) @ rot.T).astype(np.float32)     # float32 input, badly conditioned
    mu = np.array([3.0, -1.0], np.float32)
    assert abs(metrics.frechet_distance(mu, s, mu, s)) < 1e-3       # float32 arithmetic leaves ~194
    t = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    assert metrics.frechet_distance(torch.zeros(2), t, torch.ones(2), t) == pytest.approx(2.0, abs=1e-12)


class _Net(torch.nn.Module):
    """A fixed 'feature net': features = the flattened image, class = argmax of the first 3 pixels."""

    def forward(self, x):
        f = x.flatten(1)
        return f, f[:, :3]


def test_image_evaluator_uses_every_kth_real_image(monkeypatch):
    seen = {}

    def fake_train(x, y, **kw):
        seen.update(kw)
        return _Net()

    monkeypatch.setattr(metrics, "train_feature_net", fake_train)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 1, 2, 2, generator=g).double()   # float32 values: the features are float32
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    ev = metrics.ImageEvaluator(x, y, n_real=4)
    assert seen == {"seed": 0}
    sub = x[::2].flatten(1).numpy()                      # step = 10 // 4 = 2
    np.testing.assert_allclose(ev.mu, sub.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ev.sigma, np.cov(sub.T), rtol=1e-12)
    assert ev.num_classes == 3
    assert ev.accuracy == float(np.mean(sub[:, :3].argmax(1) == y[::2].numpy()))
    ev = metrics.ImageEvaluator(x, y, seed=5)            # n_real 2000 > 10 images: all of them
    assert seen == {"seed": 5}
    np.testing.assert_allclose(ev.mu, x.flatten(1).numpy().mean(0), rtol=1e-12)
    x4 = torch.randn(4000, 1, 2, 2, generator=g).double()
    ev = metrics.ImageEvaluator(x4, torch.arange(4000) % 3)     # 4000 // 2000 = 2: every other image
    np.testing.assert_allclose(ev.mu, x4[::2].flatten(1).numpy().mean(0), rtol=1e-12)
    x2 = torch.randn(3999, 1, 2, 2, generator=g).double()
    ev = metrics.ImageEvaluator(x2, torch.arange(3999) % 3)     # 3999 // 2000 = 1: every image
    np.testing.assert_allclose(ev.mu, x2.flatten(1).numpy().mean(0), rtol=1e-12)
    fake = x[:6]
    r = ev(fake)
    f = fake.flatten(1).numpy()
    assert r["fd"] == pytest.approx(metrics.frechet_distance(f.mean(0), np.cov(f.T), ev.mu, ev.sigma), rel=1e-12)
    assert r["classes_total"] == 3


def test_evaluator_for_each_kind_of_dataset(monkeypatch):
    made = []
    monkeypatch.setattr(metrics, "ImageEvaluator", lambda x, y: made.append((x, y)) or "image-evaluator")

    class DS:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    x = torch.zeros(4, 1, 2, 2)
    y = torch.tensor([0, 1, 1, 0])
    assert metrics.evaluator_for(DS(kind="image", x=x, y=y)) == "image-evaluator" and made[0][1] is y
    assert metrics.evaluator_for(DS(kind="image", x=x, y=torch.zeros(4, dtype=torch.long))) is None  # one class
    assert metrics.evaluator_for(DS(kind="image", x=x, y=None)) is None
    assert metrics.evaluator_for(DS(kind="image", x=x)) is None
    assert metrics.evaluator_for(DS(kind="points", x=x, y=y)) is None
    assert metrics.evaluator_for(DS(x=x, y=y)) is None
    assert len(made) == 1
    modes = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    ev = metrics.evaluator_for(DS(kind="points", modes=modes, mode_std=0.5, y=y))
    assert ev(torch.tensor([[0.1, 0.0]] * 20 + [[9.0, 9.0]] * 5)) == {"modes": 1, "modes_total": 2,
                                                                       "high_quality": 80.0}


# ---- report: the grid, the dispatcher, the curves ----------------------------------------------
def test_image_grid_exact_pixels(tmp_path):
    from PIL import Image
    v = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0, 0.999])
    imgs = v.reshape(1, 1, 2, 4).repeat(3, 3, 1, 1)
    imgs[1] *= -1
    imgs[2, 1] = 0.25
    report.save_image_grid(imgs, str(tmp_path / "g.bin"))       # PNG whatever the name says
    with Image.open(tmp_path / "g.bin") as im:
        assert im.format == "PNG" and im.mode == "RGB"
        a = np.asarray(im)
    nrow, pad, h, w = 2, 2, 2, 4                                  # ceil(sqrt(3)) columns, 2 rows
    assert a.shape == (2 * (h + pad) + pad, nrow * (w + pad) + pad, 3)

    def px(t):
        return np.floor((np.clip(t.numpy(), -1, 1) + 1) * 127.5 + 0.5).astype(np.uint8)

    want = np.zeros_like(a)
    for i in range(3):
        r, q = divmod(i, nrow)
        want[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = \
            px(imgs[i]).transpose(1, 2, 0)
    assert np.array_equal(a, want)
    report.save_image_grid(imgs[:, :1], str(tmp_path / "l.png"), nrow=3, pad=1)
    with Image.open(tmp_path / "l.png") as im:
        assert im.mode == "L" and np.asarray(im).shape == (1 * (h + 1) + 1, 3 * (w + 1) + 1)
    rgba = torch.cat([imgs, torch.ones(3, 1, 2, 4)], 1)
    report.save_image_grid(rgba, str(tmp_path / "c.png"))
    with Image.open(tmp_path / "c.png") as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), want)


def test_save_samples_dispatch(tmp_path):
    pts = torch.tensor([[0.0, 0.5], [1.0, -1.0]])
    modes = torch.tensor([[1.0, 1.0]])
    report.save_samples(pts, str(tmp_path / "a.png"), modes, title="t")
    report.save_points(pts, str(tmp_path / "b.png"), modes, title="t")
    assert np.array_equal(_png(tmp_path / "a.png"), _png(tmp_path / "b.png"))
    report.save_samples(pts, str(tmp_path / "c.png"))
    report.save_points(pts, str(tmp_path / "d.png"), title="")
    assert np.array_equal(_png(tmp_path / "c.png"), _png(tmp_path / "d.png"))
    report.save_samples(torch.zeros(1, 1, 2, 2), str(tmp_path / "e.png"))
    assert _png(tmp_path / "e.png").shape == (2 + 4, 2 + 4, 3)


def _spy_figures(monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = []
    real = plt.subplots

    def subplots(*a, **kw):
        fig, ax = real(*a, **kw)
        figs.append((fig, ax, a, kw))
        return fig, ax

    monkeypatch.setattr(plt, "subplots", subplots)
    return figs


def test_save_points_figure(tmp_path, monkeypatch):
    figs = _spy_figures(monkeypatch)
    pts = torch.tensor([[0.0, 0.5], [1.0, -1.0]])
    modes = torch.tensor([[3.0, -1.0], [0.0, 2.0]])
    report.save_points(pts, str(tmp_path / "p.png"), modes, title="step 9")
    fig, ax, _, _ = figs[0]
    s, m = ax.collections
    np.testing.assert_array_equal(s.get_offsets(), pts.numpy())
    np.testing.assert_array_equal(m.get_offsets(), modes.numpy())
    assert list(s.get_sizes()) == [2] and s.get_alpha() == 0.4 and s.get_label() == "samples"
    assert list(m.get_sizes()) == [30] and m.get_label() == "modes"
    assert tuple(m.get_facecolor()[0][:3]) == (1.0, 0.0, 0.0) or tuple(m.get_edgecolor()[0][:3]) == (1.0, 0.0, 0.0)
    r = 3.0 * 1.4 + 0.1
    assert ax.get_xlim() == pytest.approx((-r, r)) and ax.get_ylim() == pytest.approx((-r, r))
    assert ax.get_title() == "step 9" and ax.title.get_fontsize() == 9 and ax.get_aspect() == 1.0
    assert tuple(fig.get_size_inches()) == (4.0, 4.0) and fig.dpi == 100
    import matplotlib.markers as mk
    x = mk.MarkerStyle("x")
    assert m.get_paths()[0].vertices.tolist() == x.get_path().transformed(x.get_transform()).vertices.tolist()


def test_plot_curves_figure(tmp_path, monkeypatch):
    figs = _spy_figures(monkeypatch)
    hist = [{"step": 1, "d_loss": 1.0, "g_loss": 2.0, "d_real": 0.6, "d_fake": 0.3},
            {"step": 2, "eval": {"fd": 9.0}},
            {"step": 3, "d_loss": 0.5, "g_loss": 1.5, "d_real": 0.7, "d_fake": 0.2},
            {"step": 4, "eval": {"fd": 7.0}}]
    report.plot_curves(hist, str(tmp_path / "c.png"))
    fig, axes, a, kw = figs[-1]
    assert a == (1, 3) and tuple(fig.get_size_inches()) == (12.0, 3.2) and fig.dpi == 100
    lines = [[(l.get_label(), list(l.get_xdata()), list(l.get_ydata())) for l in ax.get_lines()] for ax in axes]
    assert lines[0] == [("D loss", [1, 3], [1.0, 0.5]), ("G loss", [1, 3], [2.0, 1.5])]
    assert lines[1] == [("D(x)", [1, 3], [0.6, 0.7]), ("D(G(z))", [1, 3], [0.3, 0.2])]
    assert [(x, y) for _, x, y in lines[2]] == [([2, 4], [9.0, 7.0])]
    assert axes[2].get_lines()[0].get_marker() == "o"
    assert [ax.get_title() for ax in axes] == ["losses", "discriminator outputs (sigmoid)",
                                               "Fréchet distance (classifier features)"]
    assert axes[1].get_ylim() == (0, 1) and [ax.get_xlabel() for ax in axes] == ["step"] * 3
    legends = [ax.get_legend() for ax in axes]
    assert [t.get_text() for t in legends[0].get_texts()] == ["D loss", "G loss"] and legends[2] is None
    assert legends[0].get_texts()[0].get_fontsize() == 8
    report.plot_curves([hist[0], {"step": 2, "eval": {"modes": 5}}], str(tmp_path / "m.png"))
    fig, axes, a, kw = figs[-1]
    assert axes[2].get_title() == "modes covered" and [l.get_ydata().tolist() for l in axes[2].get_lines()] == [[5]]
    report.plot_curves([hist[0]], str(tmp_path / "n.png"))
    fig, axes, a, kw = figs[-1]
    assert a == (1, 2) and tuple(fig.get_size_inches()) == (8.0, 3.2) and len(axes) == 2
    assert _png(tmp_path / "n.png").shape == (320, 800, 3)
    report.plot_curves([hist[0], {"step": 2, "eval": {"other": 1}}], str(tmp_path / "o.png"))
    assert len(figs[-1][1]) == 2


# ---- checkpoints: the newest good one ----------------------------------------------------------
def test_latest_good_skips_broken_and_vanished_files(tmp_path, monkeypatch):
    t = GANTrainer(*_nets(), z_dim=2)
    t.fit(_data(), 1, 4, progress=False)
    d = str(tmp_path / "checkpoints")
    os.makedirs(d)
    for s in (1, 2, 3):
        t.step = s
        t.save_checkpoint(ckpt.path_for(d, s))
    with open(ckpt.path_for(d, 3), "r+b") as f:
        f.write(b"garbage")
    with pytest.warns(RuntimeWarning) as rec:
        p, ck = ckpt.latest_good(d)
    assert p == ckpt.path_for(d, 2) and ck["step"] == 2
    # attributed to the caller (stacklevel=2), not to checkpoint.py (under mutmut the caller is its trampoline)
    assert rec[0].filename != ckpt.__file__ and str(rec[0].message).startswith("skipping ")
    assert os.path.exists(ckpt.path_for(d, 3))                 # no quarantine by default
    real_read = ckpt.read

    def vanished(path):
        if path == ckpt.path_for(d, 2):
            raise FileNotFoundError(path)
        return real_read(path)

    monkeypatch.setattr(ckpt, "read", vanished)
    with pytest.warns(RuntimeWarning):
        p, ck = ckpt.latest_good(d)
    assert p == ckpt.path_for(d, 1) and ck["step"] == 1


def test_load_latest_names_the_file_that_does_not_fit(tmp_path):
    t = GANTrainer(*_nets(), z_dim=2)
    t.fit(_data(), 1, 4, out_dir=str(tmp_path), progress=False)
    other = GANTrainer(nn.Linear(2, 5), nn.Linear(5, 1), z_dim=2)
    with pytest.raises(ckpt.CheckpointError, match="^" + re.escape(
            f"{ckpt.path_for(str(tmp_path / 'checkpoints'), 1)}: does not fit this trainer's models/optimizers")):
        other.load_latest(str(tmp_path))


def test_samples_png_shows_the_fixed_noise(tmp_path):
    g = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Unflatten(1, (1, 2, 2)))
    d = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    t = GANTrainer(g, d, z_dim=2)
    t.fit(torch.rand(8, 1, 2, 2) * 2 - 1, 2, 4, out_dir=str(tmp_path / "run"), progress=False)
    report.save_image_grid(t.sample(64, z=t.fixed_z), str(tmp_path / "want.png"))
    assert np.array_equal(_png(tmp_path / "run" / "samples.png"), _png(tmp_path / "want.png"))


def test_samples_png_of_points_shows_the_evaluation_samples_and_modes(tmp_path):
    from fastgan.data import load_dataset
    ds = load_dataset("ring8")
    t = GANTrainer(nn.Linear(2, 2), nn.Linear(2, 1), z_dim=2, seed=1)
    t.fit(ds, 2, 8, out_dir=str(tmp_path / "run"), progress=False)
    z = torch.randn(2500, 2, generator=torch.Generator().manual_seed(1 + 7))
    report.save_points(t.sample(2500, z=z), str(tmp_path / "want.png"), ds.modes, title="step 2")
    assert np.array_equal(_png(tmp_path / "run" / "samples.png"), _png(tmp_path / "want.png"))


def test_load_state_dict_messages_and_mixed_amp():
    a = GANTrainer(*_nets(), z_dim=2, amp="fp16")
    a.fit(_data(), 1, 4, progress=False)
    sd = a.state_dict()
    b = GANTrainer(*_nets(), z_dim=2)                     # no scalers: an fp16 checkpoint still loads
    b.load_state_dict(sd)
    assert b.step == 1 and b.scaler_g is None
    bad = dict(sd, generator={"weight": torch.zeros(5, 5), "bias": torch.zeros(5)})
    with pytest.raises(ckpt.CheckpointError) as e:
        b.load_state_dict(bad)
    assert str(e.value) == ("checkpoint: does not fit this trainer's models/optimizers: "
                            "Error(s) in loading state_dict for Linear:")
    with pytest.raises(ckpt.CheckpointError) as e:
        b.load_state_dict({k: v for k, v in sd.items() if k != "generator"}, source="s")
    assert str(e.value) == "s: does not fit this trainer's models/optimizers: 'generator'"
    b.load_state_dict({k: v for k, v in sd.items() if k != "history"})
    assert b.history == []


# ---- fastgan/train/data.py: the index stream and make_batches ------------------------------------
def _oracle_batches(n, bs, world, rank, seed, count):
    """Shuffled epochs of whole global batches (the remainder dropped), each process its rank::world."""
    g = torch.Generator().manual_seed(seed)
    out, perm, pos = [], None, 0
    while len(out) < count:
        if perm is None or pos + bs * world > n:
            perm, pos = torch.randperm(n, generator=g), 0
        out.append(perm[pos:pos + bs * world][rank::world])
        pos += bs * world
    return out


@pytest.mark.parametrize("n, bs, world, rank, seed", [(10, 3, 1, 0, 0), (9, 3, 1, 0, 4), (12, 2, 3, 1, 7),
                                                      (6, 3, 2, 1, 0), (5, 5, 1, 0, 2)])
def test_index_stream_against_an_oracle(n, bs, world, rank, seed):
    x = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 2)
    kw = {} if seed == 0 else {"seed": seed}
    if rank:
        kw["rank"] = rank
    b = tdata.make_batches(x, bs, device=CPU, world=world, **kw)
    want = _oracle_batches(n, bs, world, rank, seed, 7)
    for i, idx in enumerate(want):
        got = next(b)
        torch.testing.assert_close(got, x[idx], rtol=0, atol=0)
    per_epoch = n // (bs * world)
    s = b.state_dict()
    assert s["epoch"] == -(-7 // per_epoch) and s["pos"] == ((7 - 1) % per_epoch + 1) * bs * world
    assert (s["kind"], s["batch_size"], s["n"], s["world"]) == ("index", bs, n, world)


def test_index_stream_of_a_dataset_and_its_pairs():
    class Pairs(Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.full((2, 2), float(i)), i

    b = tdata.make_batches(Pairs(), 3, device=CPU)
    (idx,) = _oracle_batches(6, 3, 1, 0, 0, 1)
    got = next(b)
    assert got.shape == (3, 2, 2) and got[:, 0, 0].tolist() == [float(i) for i in idx]
    td = TensorDataset(torch.arange(8.0)[:, None], torch.arange(8))
    b = tdata.make_batches(td, 4, device=CPU)
    assert isinstance(b.source, torch.Tensor) and b.source is td.tensors[0]

    class WithX(Dataset):
        x = torch.arange(10.0)[:, None]

        def __len__(self):
            return 10

        def __getitem__(self, i):
            raise AssertionError("indexed through .x")

    assert tdata.make_batches(WithX(), 2, device=CPU).source is WithX.x


def test_pack_checks():
    """pack: refused by objectives whose D judges samples one by one; batches must hold whole packs;
    packing keeps channels_last and groups consecutive samples."""
    from fastgan.objectives import Conditional
    from fastgan.objectives.gan import pack_samples
    g, d = nn.Linear(2, 3), nn.Linear(6, 1)
    with pytest.raises(ValueError, match=re.escape("GANTrainer: the Conditional objective does not pack samples; "
                                                   "drop 'pack'")):
        GANTrainer(g, d, z_dim=2, pack=2, objective=Conditional(3), device="cpu")
    t = GANTrainer(g, d, z_dim=2, pack=2, device="cpu")
    with pytest.raises(ValueError, match=re.escape("GANTrainer.fit: argument 'batch_size' (3) must be a multiple "
                                                   "of pack (2)")):
        t.fit(torch.randn(8, 3), 1, 3, progress=False)
    # a DataLoader's own batch size and its last batch count, not the batch_size argument
    with pytest.raises(ValueError, match=re.escape("argument 'data' is a DataLoader with batch_size 5, not a "
                                                   "multiple of pack (2)")):
        t.fit(DataLoader(TensorDataset(torch.randn(10, 3)), batch_size=5), 1, 4, progress=False)
    with pytest.raises(ValueError, match=re.escape("argument 'data' is a DataLoader whose last batch holds 3 "
                                                   "samples, not a multiple of pack (2); pass drop_last=True")):
        t.fit(DataLoader(TensorDataset(torch.randn(7, 3)), batch_size=4), 1, 4, progress=False)
    t.fit(DataLoader(TensorDataset(torch.randn(7, 3)), batch_size=4, drop_last=True), 3, 3, progress=False)
    t.fit(DataLoader(TensorDataset(torch.randn(6, 3)), batch_size=4), 6, 3, progress=False)  # last batch: 2
    assert t.step == 6
    one = DataLoader(TensorDataset(torch.randn(5, 3)), batch_sampler=[[0, 1, 2, 3, 4]])  # checked when packed
    with pytest.raises(ValueError, match="pack=2 needs batches whose size is a multiple of 2, got a batch of 5"):
        t.fit(one, 7, 4, progress=False)
    for c in (3, 1):  # a 1-channel channels_last batch is also contiguous: the layout comes from the trainer
        x = torch.randn(6, c, 4, 5).contiguous(memory_format=torch.channels_last)
        y = pack_samples(x, 3, channels_last=True)
        assert y.shape == (2, 3 * c, 4, 5) and y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y[1, c:2 * c], x[4], rtol=0, atol=0)
        assert pack_samples(x, 3).is_contiguous() and pack_samples(x, 1) is x


def test_stream_layouts():
    x4 = torch.randn(4, 2, 3, 3)
    t = next(tdata.make_batches(x4, 2, device=CPU))
    assert t.is_contiguous() and t.dtype == torch.float32
    t = next(tdata.make_batches(x4, 2, device=CPU, channels_last=True))
    assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    t = next(tdata.make_batches(torch.randn(4, 2), 2, device=CPU, channels_last=True))   # 2-D: left alone
    assert t.shape == (2, 2) and t.is_contiguous()


def test_stream_messages():
    def raises(err, msg, *a, **kw):
        with pytest.raises(err, match="^" + re.escape(msg) + "$"):
            next(tdata.make_batches(*a, device=CPU, **kw))

    raises(ValueError, "GANTrainer.fit: argument 'batch_size' (5) exceeds the 4 samples of 'data'", torch.randn(4, 2), 5)
    raises(ValueError, "GANTrainer.fit: argument 'batch_size' (3 x 2 processes) exceeds the 5 samples of 'data'",
           torch.randn(5, 2), 3, world=2)
    raises(ValueError, "GANTrainer.fit: argument 'data' must be a tensor of samples (N, ...), got shape (4,)",
           torch.randn(4), 1)
    raises(ValueError, "GANTrainer.fit: argument 'data' must be a tensor of samples (N, ...), got shape (0, 3)",
           torch.randn(0, 3), 1)
    raises(ValueError, "GANTrainer.fit: argument 'data' is an empty Dataset", TensorDataset(torch.zeros(0, 2)), 1)
    raises(TypeError, "GANTrainer.fit: argument 'data' must be a tensor, a Dataset or a DataLoader, got list",
           [1, 2], 1)
    raises(TypeError, "GANTrainer.fit: argument 'data' yields torch.int64 tensors; expected floating point "
           "(scale images to [-1, 1])", torch.ones(4, 2, dtype=torch.long), 2)

    class Strs(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return "x"

    raises(TypeError, "GANTrainer.fit: argument 'data' yields str, expected tensors (or (tensor, label) pairs)",
           DataLoader(Strs(), batch_size=None), 2)
    raises(ValueError, "GANTrainer.fit: under torchrun a DataLoader 'data' needs a DistributedSampler "
           "(or pass the Dataset / tensor and the trainer shards it)", DataLoader(torch.randn(4, 2)), 2, world=2)
    x = torch.randn(4, 2)
    sampler = torch.utils.data.distributed.DistributedSampler(x, num_replicas=2, rank=1, shuffle=False)
    t = next(tdata.make_batches(DataLoader(x, batch_size=2, sampler=sampler), 2, device=CPU, world=2, rank=1))
    torch.testing.assert_close(t, x[1::2], rtol=0, atol=0)


# ---- the multi-process branches, with torch.distributed replaced by a recording fake -----------
class _FakeDist:
    """Stands in for torch.distributed as seen by one process of `world` (the others' values given)."""

    def __init__(self, backend="gloo", others=(), gathered=None):
        self.backend, self.others, self.gathered, self.calls = backend, others, gathered, []

    def get_backend(self):
        return self.backend

    def all_reduce(self, t, op=None):
        self.calls.append(("all_reduce", t.device.type, op, t.clone()))
        if op is None:
            for o in self.others:
                t += o
        else:
            for o in self.others:
                torch.maximum(t, o, out=t)

    def all_gather_object(self, out, obj):
        self.calls.append(("all_gather_object", len(out)))
        out[:] = [obj] + list(self.gathered or [])

    ReduceOp = torch.distributed.ReduceOp


def test_agree_stop_takes_the_largest_signal_of_all_processes(monkeypatch):
    t = GANTrainer(*_nets(), z_dim=2)
    assert t._agree_stop(None) is None and t._agree_stop(15) == 15         # one process: its own
    t.world = 2
    fake = _FakeDist(others=[torch.tensor([15])])
    monkeypatch.setattr(trainer_mod, "dist", fake)
    assert t._agree_stop(None) == 15 and t._agree_stop(2) == 15
    ((name, dev, op, sent), _) = fake.calls
    assert (name, dev, op, sent.tolist()) == ("all_reduce", "cpu", torch.distributed.ReduceOp.MAX, [0])
    fake.others = [torch.tensor([0])]
    assert t._agree_stop(None) is None and t._agree_stop(2) == 2


def test_log_averages_over_processes(monkeypatch):
    t = GANTrainer(*_nets(), z_dim=2)
    t.world, t._count, t._ckpt_dir = 2, 2, None
    t._sums = torch.tensor([2.0, 4.0, 1.0, 0.5, 0.0, 0.0, 0.0])
    fake = _FakeDist(others=[torch.tensor([4.0, 0.0, 0.2, 0.4, 0.0, 0.0, 0.0])])
    monkeypatch.setattr(trainer_mod, "dist", fake)
    t.step = 6
    rec = t._log(3, trainer_mod.time.perf_counter() - 2.0, 4)
    # mean over this process's 2 steps, then over the 2 processes: ((1, 2, .5, .25) + (4, 0, .2, .4)) / 2
    assert [rec[k] for k in ("d_loss", "g_loss", "d_real", "d_fake")] == pytest.approx([2.5, 1.0, 0.35, 0.325])
    assert rec["img_per_s"] == pytest.approx(2 * 3 * 1 * 2 / 2.0, rel=0.05)     # steps x batch x d_steps x world / s
    t.is_main = False
    t._count = 1
    t._log(3, 0.0, 5)
    assert len(t.history) == 1                      # only rank 0 records


def test_state_dict_gathers_every_process_rng(monkeypatch):
    t = GANTrainer(*_nets(), z_dim=2)
    t.fit(_data(), 1, 4, progress=False)
    t.world = 3
    fake = _FakeDist(gathered=[{"torch": "r1"}, {"torch": "r2"}])
    monkeypatch.setattr(trainer_mod, "dist", fake)
    sd = t.state_dict()
    assert fake.calls == [("all_gather_object", 3)] and len(sd["rng"]) == 3 and sd["world"] == 3
    assert sd["rng"][1:] == [{"torch": "r1"}, {"torch": "r2"}] and set(sd["rng"][0]) >= {"torch", "numpy"}


def test_load_state_dict_takes_this_rank_rng():
    a = GANTrainer(*_nets(), z_dim=2)
    a.fit(_data(), 1, 4, progress=False)
    torch.manual_seed(123)
    r1 = trainer_mod._rng_state()
    want = torch.rand(3)
    sd = a.state_dict()
    sd["rng"] = [sd["rng"][0], r1]
    b = GANTrainer(*_nets(), z_dim=2)
    b.world, b.rank = 2, 1
    b.load_state_dict(sd)
    assert torch.equal(torch.rand(3), want)


class _TorchrunDist(_FakeDist):
    """A torchrun process group of 2 as seen by rank 1; init_process_group is recorded."""

    def __init__(self, initialized=False):
        super().__init__()
        self.initialized = initialized

    def is_available(self):
        return True

    def is_initialized(self):
        return self.initialized

    def init_process_group(self, backend):
        self.calls.append(("init", backend))
        self.initialized = True

    def get_world_size(self):
        return 2

    def get_rank(self):
        return 1


def _fake_torchrun(monkeypatch):
    """WORLD_SIZE=2, LOCAL_RANK=1 and a DDP stand-in; returns the list of (module, device_ids) it wrapped."""
    wrapped = []

    class DDP(nn.Module):
        def __init__(self, module, device_ids=None):
            super().__init__()
            wrapped.append((module, device_ids))
            self.module = module

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", DDP)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    return wrapped


def test_init_under_torchrun_with_a_fake_process_group(monkeypatch):
    """WORLD_SIZE > 1: gloo on the CPU, rank and world from the group, both networks wrapped in DDP
    (no device_ids on the CPU), per-rank noise seed, only rank 0 is main."""
    Dist = _TorchrunDist
    wrapped = _fake_torchrun(monkeypatch)
    for initialized in (False, True):
        fake = Dist(initialized)
        monkeypatch.setattr(trainer_mod, "dist", fake)
        wrapped.clear()
        g, d = _nets()
        t = GANTrainer(g, d, z_dim=2, seed=5)
        after, after_py = torch.rand(3), random.random()
        torch.manual_seed(5 + 1)
        random.seed(5 + 1)
        assert torch.equal(after, torch.rand(3)) and after_py == random.random()   # seed + rank
        assert fake.calls == ([] if initialized else [("init", "gloo")])
        assert (t.world, t.rank, t.local_rank, t.is_main, t.device) == (2, 1, 1, False, torch.device("cpu"))
        assert wrapped == [(g, None), (d, None)] and t._G.module is g and t._D.module is d
        assert t.generator is g and t.discriminator is d
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(trainer_mod, "dist", Dist(False))
    assert GANTrainer(*_nets(), z_dim=2).local_rank == 0          # LOCAL_RANK unset: 0
    monkeypatch.setenv("WORLD_SIZE", "1")
    fake = Dist(False)
    monkeypatch.setattr(trainer_mod, "dist", fake)
    t = GANTrainer(*_nets(), z_dim=2)
    assert t.world == 1 and t.rank == 0 and t.local_rank == 0 and fake.calls == []


# ---- inside the training step ------------------------------------------------------------------
class _SpyD(nn.Linear):
    """A linear D that records, per call, its input dtype and whether its weights take gradients."""

    def __init__(self):
        super().__init__(3, 1)
        self.seen, self.synced = [], []

    def forward(self, x):
        self.seen.append((x.dtype, self.weight.requires_grad))
        return super().forward(x)


def test_d_is_frozen_only_for_the_generator_update():
    torch.manual_seed(0)
    d = _SpyD()
    d.bias.requires_grad_(False)                    # frozen by the user: stays frozen
    t = GANTrainer(nn.Linear(2, 3), d, z_dim=2, d_steps=2, loss="rals")
    t.fit(_data(), 1, 4, progress=False)
    assert [rg for _, rg in d.seen] == [True, True, True, True, False, False]
    assert d.weight.requires_grad and not d.bias.requires_grad


def test_generator_update_runs_inside_no_sync_when_d_has_it():
    class D(_SpyD):
        def no_sync(self):
            import contextlib
            outer = self

            @contextlib.contextmanager
            def cm():
                outer.synced.append("enter")
                yield
                outer.synced.append("exit")
            return cm()

    torch.manual_seed(0)
    d = D()
    GANTrainer(nn.Linear(2, 3), d, z_dim=2).fit(_data(), 2, 4, progress=False)
    assert d.synced == ["enter", "exit"] * 2


def test_errors_in_the_generator_update_propagate():
    class Boom(Exception):
        pass

    class D(_SpyD):
        def forward(self, x):
            if not self.weight.requires_grad:
                raise Boom("in the G step")
            return super().forward(x)

    t = GANTrainer(nn.Linear(2, 3), D(), z_dim=2)
    with pytest.raises(Boom):
        t.fit(_data(), 1, 4, progress=False)


def test_amp_dtypes_reach_the_networks_and_losses_get_float32(monkeypatch):
    from fastgan import ops
    got = {}
    for name in ("d_loss", "g_loss", "r1_penalty"):
        real = getattr(ops, name)

        def spy(*a, _real=real, _name=name, **kw):
            got.setdefault(_name, []).append(a[0].dtype)
            return _real(*a, **kw)

        monkeypatch.setattr(ops, name, spy)
    for amp, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        got.clear()
        torch.manual_seed(0)

        class G(nn.Linear):
            outs = []

            def forward(self, z):
                y = super().forward(z)
                G.outs.append(y.dtype)
                return y

        t = GANTrainer(G(2, 3), nn.Linear(3, 1), z_dim=2, amp=amp, r1_gamma=1.0)
        t.fit(_data(), 1, 4, progress=False)
        assert G.outs == [dt]                                   # autocast with the asked-for dtype
        assert got == {"d_loss": [torch.float32], "r1_penalty": [torch.float32], "g_loss": [torch.float32]}


def test_gradient_penalty_weight_is_passed_whatever_its_size(monkeypatch):
    from fastgan import ops
    calls = []
    real = ops.gradient_penalty
    monkeypatch.setattr(ops, "gradient_penalty", lambda *a, **kw: calls.append(kw["weight"]) or real(*a, **kw))
    t = GANTrainer(nn.Linear(2, 3), nn.Linear(3, 1), z_dim=2, gp_weight=0.5, d_steps=2)
    hist = t.fit(_data(), 1, 4, progress=False)
    assert calls == [0.5, 0.5] and hist[0]["gp"] > 0


# ---- fit: the progress bar, the defaults, what a resumed run writes -----------------------------
def test_progress_bar(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)      # on a terminal: a tqdm bar
    t = GANTrainer(*_nets(), z_dim=2)
    hist = t.fit(_data(), 2, 4, log_every=1, progress=True)
    err = capsys.readouterr().err
    first, last = err.split("\r")[1], err.split("\r")[-1]
    assert first.startswith("  0%|") and "0/2" in first
    rec = hist[-1]
    assert last.endswith("\n") and "2/2 [" in last and ("step/s" in last or "s/step" in last)   # leave=True, unit
    post = (f"d={rec['d_loss']:.3f}, g={rec['g_loss']:.3f}, Dx={rec['d_real']:.2f}, DGz={rec['d_fake']:.2f}, "
            f"img_s={rec['img_per_s']:.0f}]")                       # the objective's order (GAN.progress)
    assert last.rstrip("\n").endswith(post)
    hist = t.fit(_data(), 3, 4, progress=True)                   # resumed: starts at 2 of 3
    err = capsys.readouterr().err
    assert "2/3" in err.split("\r")[1] and "3/3 [" in err.split("\r")[-1]
    t.fit(_data(), 3, 4, progress=True)                          # nothing left to do: no bar
    t.fit(_data(), 4, 4, progress=False)
    assert capsys.readouterr().err == ""


def test_fit_default_cadence(tmp_path):
    """log_every 50, sample_every 500, checkpoint_every 1000 by default."""
    evals = []
    t = GANTrainer(nn.Linear(2, 2), nn.Linear(2, 1), z_dim=2)
    hist = t.fit(torch.randn(8, 2), 1000, 4, out_dir=str(tmp_path), progress=False,
                 evaluator=lambda x: evals.append(len(x)) or {})
    assert [r["step"] for r in hist if "d_loss" in r] == list(range(50, 1001, 50))
    assert [r["step"] for r in hist if "eval" in r] == [500, 1000]
    assert os.listdir(tmp_path / "checkpoints") == [os.path.basename(ckpt.path_for(".", 1000))]


def test_resumed_fit_rewrites_metrics_with_its_history(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = GANTrainer(*_nets(), z_dim=2)
    t.fit(_data(), 2, 4, log_every=1, progress=False, out_dir="a")
    u = GANTrainer(*_nets(), z_dim=2)
    u.load_latest("a")
    u.fit(_data(), 3, 4, log_every=1, progress=False, out_dir="b")
    lines = open(os.path.join("b", "metrics.jsonl")).read().splitlines()
    assert [json.loads(s) for s in lines] == json.loads(json.dumps(u.history)) and len(lines) == 2 + 1
    assert lines[:2] == open(os.path.join("a", "metrics.jsonl")).read().splitlines()[:2]
    assert sorted(os.listdir(".")) == ["a", "b"]


def test_mid_run_checkpoint_holds_the_live_data_position(tmp_path):
    t = GANTrainer(*_nets(), z_dim=2, seed=3)
    t.fit(_data(16), 3, 4, out_dir=str(tmp_path), checkpoint_every=2, progress=False)
    ck = ckpt.read(ckpt.path_for(str(tmp_path / "checkpoints"), 2))
    assert ck["data"]["pos"] == 8 and ck["data"]["epoch"] == 1
    (a, b) = _oracle_batches(16, 4, 1, 0, 3, 2)
    torch.testing.assert_close(ck["data"]["perm"][:8], torch.cat([a, b]), rtol=0, atol=0)


def test_fit_uses_the_trainer_seed_and_layout_for_data():
    seen = []

    class D(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 1, 2)

        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return self.c(x).flatten(1)

    g = nn.Sequential(nn.Linear(2, 8), nn.Unflatten(1, (2, 2, 2)))
    x = torch.randn(8, 2, 2, 2)
    t = GANTrainer(g, D(), z_dim=2, channels_last=True, seed=9)
    t.fit(x, 1, 4, progress=False)
    assert seen[0] is True                                     # the real batch arrives in channels_last
    (idx,) = _oracle_batches(8, 4, 1, 0, 9, 1)
    assert torch.equal(t._data_state["perm"][:4], idx)


def test_feature_net_is_the_versioned_one():
    """The Fréchet distance is defined by this network; the cache key says "featurenet-v2". Changing
    the architecture must come with a new version tag (else stale cached weights are loaded into it)."""
    assert str(metrics.FeatureNet(3, 10)) == (
        "FeatureNet(\n  (features): Sequential(\n"
        "    (0): Conv2d(3, 32, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))\n"
        "    (1): LeakyReLU(negative_slope=0.2)\n"
        "    (2): Conv2d(32, 64, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))\n"
        "    (3): LeakyReLU(negative_slope=0.2)\n"
        "    (4): Conv2d(64, 128, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))\n"
        "    (5): LeakyReLU(negative_slope=0.2)\n"
        "    (6): AdaptiveAvgPool2d(output_size=1)\n"
        "    (7): Flatten(start_dim=1, end_dim=-1)\n  )\n"
        "  (head): Linear(in_features=128, out_features=10, bias=True)\n)")
    x, y = torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    assert metrics._fingerprint(x, y) != metrics._fingerprint(x, y, "steps=1")
    import hashlib
    h = hashlib.sha1(f"featurenet-v2 {tuple(x.shape)} 2 ".encode())
    h.update(x.numpy().tobytes())
    h.update(y.numpy().astype(np.int64).tobytes())
    assert metrics._fingerprint(x, y) == h.hexdigest()[:16]


def test_checkpoint_read_messages(tmp_path):
    p = str(tmp_path / "c.pt")
    with pytest.raises(FileNotFoundError, match="^" + re.escape(f"no such checkpoint: {p}") + "$"):
        ckpt.read(p)

    def bad(obj, msg):
        torch.save(obj, p)
        with pytest.raises(ckpt.CheckpointError) as e:
            ckpt.read(p)
        assert str(e.value) == f"{p}: {msg}"

    base = {"format": ckpt.FORMAT, "step": 1, "generator": {}, "discriminator": {}}
    bad(dict(base, version=2), "checkpoint format version 2 is newer than this fastgan understands (1); "
                               "upgrade fastgan")
    assert ckpt.read(p if torch.save(base, p) is None else p)["step"] == 1      # no version: taken as 0
    for k in ("step", "generator", "discriminator"):
        bad({q: v for q, v in base.items() if q != k}, f"incomplete checkpoint (missing '{k}')")
    bad([1], "not a fastgan checkpoint (no 'fastgan.checkpoint' marker)")
    torch.save({"x": torch.nn.Linear(1, 1)}, p)                 # an object: refused by weights_only
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.read(p)
    assert str(e.value).startswith(f"{p}: not a readable fastgan checkpoint (corrupt, truncated, or holding objects "
                                   "other than tensors and plain data): WeightsUnpickler error")
    open(p, "wb").close()                                       # empty file
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.read(p)
    assert str(e.value).startswith(f"{p}: not a readable fastgan checkpoint") and str(e.value).split(": ")[-1]


def test_prune_keeps_newest_and_removes_stale_temporaries(tmp_path):
    d = str(tmp_path)
    for s in (1, 2, 3):
        open(ckpt.path_for(d, s), "wb").close()
    mine = os.path.join(d, f".ckpt-00000004.pt.{os.getpid()}.tmp")
    stale = os.path.join(d, ".ckpt-00000004.pt.999999999.tmp")
    open(mine, "wb").close()
    open(stale, "wb").close()
    ckpt.prune(d, 2)
    assert sorted(os.listdir(d)) == sorted([os.path.basename(mine), "ckpt-00000002.pt", "ckpt-00000003.pt"])
    ckpt.prune(d, 0)                                             # keep 0: nothing removed
    assert len(os.listdir(d)) == 3


def test_feature_net_pools_large_images_to_16():
    torch.manual_seed(0)
    net = metrics.FeatureNet(1, 3).eval()
    for shape in ((2, 1, 32, 16), (2, 1, 16, 32), (2, 1, 17, 17)):
        x = torch.randn(shape)
        f, _ = net(x)
        want, _ = net.features(torch.nn.functional.adaptive_avg_pool2d(x, 16)), None
        torch.testing.assert_close(f, want)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(net(x)[0], net.features(x))
    x = torch.randn(2, 1, 16, 8)
    torch.testing.assert_close(net(x)[0], net.features(x))      # small images are not resized


# ---- fastgan/train/metrics.py: the feature net's training, pinned by an oracle loop --------------
def _feature_net_oracle(x, y, steps, batch_size, seed):
    """The documented recipe, written out: Adam(lr 2e-3) on cross-entropy, batches of
    min(batch_size, N) drawn with replacement from a generator seeded with `seed`, inputs jittered
    by 0.05 * N(0, 1) noise from the same generator; the net is initialised under manual_seed(seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = metrics.FeatureNet(x.shape[1], int(y.max()) + 1)
        gen = torch.Generator().manual_seed(seed)
        params = list(net.parameters())
        m = [torch.zeros_like(p) for p in params]
        v = [torch.zeros_like(p) for p in params]
        for t in range(1, steps + 1):
            idx = torch.randint(x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
            noise = torch.randn((len(idx),) + tuple(x.shape[1:]), generator=gen)
            logits = net(x[idx] + 0.05 * noise)[1]
            loss = -torch.log_softmax(logits, 1).gather(1, y[idx, None]).mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():  # Adam, betas (0.9, 0.999), eps 1e-8, by hand
                for p, g, mi, vi in zip(params, grads, m, v):
                    mi.mul_(0.9).add_(g, alpha=0.1)
                    vi.mul_(0.999).addcmul_(g, g, value=0.001)
                    step = 2e-3 / (1 - 0.9 ** t)
                    p.sub_(step * mi / ((vi / (1 - 0.999 ** t)).sqrt() + 1e-8))
    return net


@pytest.mark.parametrize("n,batch_size,steps,seed", [(7, 4, 3, 0), (5, 64, 2, 3), (9, 9, 1, 1)])
def test_feature_net_training_matches_the_recipe(n, batch_size, steps, seed):
    g = torch.Generator().manual_seed(100 + n)
    x = torch.rand(n, 2, 6, 6, generator=g) * 2 - 1
    y = torch.tensor([0, 1, 2] * 3)[:n]
    got = metrics.train_feature_net(x, y, steps=steps, batch_size=batch_size, seed=seed, cache=False)
    want = _feature_net_oracle(x, y, steps, batch_size, seed)
    assert not got.training
    assert got.head.out_features == 3
    for (name, a), b in zip(got.state_dict().items(), want.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6, msg=name)
    # and the recipe is not a no-op: training moved the weights away from the seeded initialisation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init = metrics.FeatureNet(2, 3)
    assert not torch.allclose(got.head.weight, init.head.weight)


def test_feature_net_defaults_are_400_steps_of_64_with_seed_0():
    """Called without settings, the net is the recipe's with steps=400, batch_size=64, seed=0 (70 samples:
    a batch of 65 would differ)."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(70, 1, 3, 3, generator=g) * 2 - 1, torch.arange(70) % 3
    got = metrics.train_feature_net(x, y, cache=False)
    want = _feature_net_oracle(x, y, 400, 64, 0)
    for (name, a), b in zip(got.state_dict().items(), want.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_feature_net_cache_is_read_onto_the_cpu_with_weights_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path))
    x, y = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1] * 3)
    metrics.train_feature_net(x, y, steps=1, batch_size=2)
    seen, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or load(*a, **k))
    metrics.train_feature_net(x, y, steps=1, batch_size=2)
    assert seen == [{"map_location": "cpu", "weights_only": True}]


def test_feature_net_without_cache_ignores_a_cached_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(6, 1, 4, 4, generator=g), torch.tensor([0, 1, 0, 1, 0, 1])
    trained = metrics.train_feature_net(x, y, steps=2, batch_size=3, cache=True)
    (entry,) = tmp_path.iterdir()
    torch.save({k: torch.zeros_like(t) for k, t in trained.state_dict().items()}, entry)
    assert all(t.abs().sum() == 0 for t in metrics.train_feature_net(x, y, steps=2, batch_size=3).state_dict().values())
    fresh = metrics.train_feature_net(x, y, steps=2, batch_size=3, cache=False)
    for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Poison:
    """Unpickling this runs `_poisoned` (what a crafted cache file could do with full pickle)."""
    ran = []

    def __reduce__(self):
        return (_poisoned, ())


def _poisoned():
    _Poison.ran.append(1)
    return {}


def test_feature_net_cache_is_loaded_without_running_pickled_code(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(6)
    x, y = torch.rand(6, 1, 4, 4, generator=g), torch.tensor([0, 1, 0, 1, 0, 1])
    trained = metrics.train_feature_net(x, y, steps=2, batch_size=3)
    (entry,) = tmp_path.iterdir()
    torch.save({"payload": _Poison()}, entry)
    _Poison.ran.clear()
    again = metrics.train_feature_net(x, y, steps=2, batch_size=3)  # refused entry: retrained, rewritten
    assert _Poison.ran == []
    for a, b in zip(again.state_dict().values(), trained.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.load(entry, weights_only=True).keys() == trained.state_dict().keys()


# ---- fastgan/train/data.py: where batches go -------------------------------------------------
def test_preload_only_cpu_data_under_2_gib_to_cuda():
    cuda = torch.device("cuda")  # a device object needs no GPU; nothing is copied here
    small = torch.zeros(4, 2)
    assert tdata._preload(small, cuda)
    assert not tdata._preload(small, CPU) and not tdata._preload(small, torch.device("meta"))
    assert not tdata._preload(torch.zeros(4, 2, device="meta"), cuda)  # only host data is preloaded
    byte = torch.zeros(1, dtype=torch.uint8)
    assert tdata._preload(byte.expand(2 ** 31 - 1), cuda)  # the limit is in bytes: 2 GiB - 1 fits
    assert not tdata._preload(byte.expand(2 ** 31), cuda)
    assert not tdata._preload(torch.zeros(1).expand(2 ** 29), cuda)  # 2 GiB of float32
    assert tdata._preload(torch.zeros(1).expand(2 ** 29 - 1), cuda)


def _with_x(x):
    class WithX(Dataset):  # the built-in datasets keep their samples in .x
        def __init__(self):
            self.x = x

        def __len__(self):
            return x.shape[0]

        def __getitem__(self, i):
            return self.x[i], 0
    return WithX()


@pytest.mark.parametrize("kind", ["tensor", "dataset", "tensordataset", "loader", "items"])
def test_every_stream_delivers_on_the_requested_device(kind):
    x = _images(4)

    class Items(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return x[i], 0

    data = {"tensor": x, "dataset": _with_x(x), "tensordataset": TensorDataset(x),
            "loader": DataLoader(TensorDataset(x), batch_size=2), "items": Items()}[kind]
    b = tdata.make_batches(data, 2, device=torch.device("meta"), channels_last=True)
    out = next(b)
    assert out.device.type == "meta" and out.shape == (2, 2, 3, 3)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_batches_are_copied_asynchronously(monkeypatch):
    """non_blocking copies let a pinned-memory DataLoader overlap the host-to-device copy."""
    calls, to = [], torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking"))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    next(tdata.make_batches(DataLoader(TensorDataset(_images(4)), batch_size=2), 2, device=CPU))
    assert calls and all(c is True for c in calls)


def test_a_fresh_index_stream_is_at_position_zero():
    s = tdata.make_batches(_images(4), 2, device=CPU).state_dict()
    assert (s["pos"], s["epoch"], s["perm"]) == (0, 0, None)


# ---- fastgan/train/trainer.py: what the first pass left --------------------------------------
def test_samples_png_gets_the_modes_and_the_step(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(report, "save_samples", lambda x, path, modes=None, title="", nrow=None: calls.append(
        (x.shape, os.path.basename(path), modes, title)))
    monkeypatch.setattr(report, "plot_curves", lambda *a, **k: None)
    x = _data(8)
    x = type("Ring", (torch.utils.data.TensorDataset,), {"modes": torch.ones(2, 3)})(x)
    t = GANTrainer(*_nets(), z_dim=2)
    t.fit(x, 2, 4, out_dir=str(tmp_path), sample_every=2, progress=False, evaluator=lambda s: {})
    (s1, n1, m1, t1), (s2, n2, m2, t2) = calls
    assert (n1, t1, n2, t2) == ("samples.png", "step 2", "samples.png", "step 2")
    assert m1 is x.modes and m2 is x.modes and s1 == (64, 3) and s2 == (2500, 3)


def test_state_dict_names_the_built_in_models():
    from fastgan import models
    g, d = models.build("mlp", {"z_dim": 2, "out_dim": 2, "width": 8, "depth": 2},
                        {"in_dim": 2, "width": 8, "depth": 2})
    sd = GANTrainer(g, d, z_dim=2).state_dict()
    assert sd["models"] == {"kind": "mlp", "generator_class": "MLPGenerator", "generator": dict(g.config),
                            "discriminator": dict(d.config)}
    # not a registered pair: the generator is still named (fastgan sample rebuilds it), D is not
    assert GANTrainer(g, nn.Linear(2, 1), z_dim=2).state_dict()["models"] == {
        "kind": None, "generator_class": "MLPGenerator", "generator": dict(g.config)}
    assert GANTrainer(nn.Linear(2, 2), d, z_dim=2).state_dict()["models"] is None   # a custom generator


def test_two_processes_gather_rng_and_meet_at_the_end(monkeypatch):
    t = GANTrainer(*_nets(), z_dim=2)
    t.fit(_data(), 1, 4, progress=False)
    t.world = 2
    fake = _FakeDist(gathered=[{"torch": "r1"}])
    fake.barrier = lambda: fake.calls.append(("barrier",))
    monkeypatch.setattr(trainer_mod, "dist", fake)
    assert len(t.state_dict()["rng"]) == 2 and fake.calls == [("all_gather_object", 2)]
    fake.calls.clear()
    t.fit(_data(), 1, 2, progress=False)             # nothing to do, but the processes still meet
    assert fake.calls == [("barrier",)]


def test_reseed_after_a_process_count_change_depends_on_the_rank():
    a = GANTrainer(*_nets(), z_dim=2, seed=10)
    a.fit(_data(), 2, 4, progress=False)
    sd = a.state_dict()
    b = GANTrainer(*_nets(), z_dim=2, seed=10)
    b.world, b.rank = 3, 2
    with pytest.warns(UserWarning, match="resumed with 3"):
        b.load_state_dict(sd)
    got = torch.rand(4)
    torch.manual_seed(10 + 2 + 1_000 * 2)
    assert torch.equal(got, torch.rand(4))


def test_non_finite_message_names_the_newest_of_several_checkpoints(tmp_path):
    t = GANTrainer(*_nets(), z_dim=2)
    t._ckpt_dir = str(tmp_path)
    for s in (3, 5, 9):
        open(ckpt.path_for(str(tmp_path), s), "wb").close()
    t._bad.fill_(11)
    with pytest.raises(trainer_mod.NonFiniteLossError, match=re.escape(ckpt.path_for(str(tmp_path), 9))):
        t._check_finite()


def test_noise_and_stop_votes_go_to_the_trainer_device(monkeypatch):
    t = GANTrainer(*_nets(), z_dim=2)
    t.device = torch.device("meta")  # stands in for a GPU: where tensors go is all that is checked
    assert t.noise(3).device.type == "meta" and t.noise(3).shape == (3, 2)

    class Seen(Exception):
        pass

    def all_reduce(x, op=None):
        raise Seen(x.device.type)

    t.world = 2
    for backend, dev in (("nccl", "meta"), ("gloo", "cpu")):
        fake = _FakeDist(backend=backend)
        fake.all_reduce = all_reduce
        monkeypatch.setattr(trainer_mod, "dist", fake)
        with pytest.raises(Seen, match=f"^{dev}$"):
            t._agree_stop(15)


# ---- fastgan/train/checkpoint.py: unreadable files -------------------------------------------
def test_read_reports_the_loaders_first_line(tmp_path):
    p = tmp_path / "junk.pt"
    p.write_bytes(b"not a zip file at all")
    try:
        torch.load(p, weights_only=True)
    except Exception as e:  # noqa: BLE001  (the oracle: what torch itself says)
        first = str(e).strip().splitlines()[0].strip()
    with pytest.raises(ckpt.CheckpointError) as ei:
        ckpt.read(str(p))
    assert str(ei.value).endswith(": " + first) and first


def test_read_names_an_exception_without_a_message(tmp_path, monkeypatch):
    p = tmp_path / "x.pt"
    p.write_bytes(b"x")

    def load(*a, **k):
        raise EOFError()

    monkeypatch.setattr(ckpt.torch, "load", load)
    with pytest.raises(ckpt.CheckpointError, match=r"tensors and plain data\): EOFError$"):
        ckpt.read(str(p))


# ---- fastgan/train/metrics.py: boundaries ------------------------------------------------------
def test_mixture_metrics_with_min_count_zero_counts_every_mode():
    modes = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    r = metrics.mixture_metrics(torch.zeros(4, 2), modes, 0.1, min_count=0)
    assert r["modes"] == 3


@pytest.mark.parametrize("h,w", [(17, 16), (16, 17), (17, 17), (16, 16), (9, 12)])
def test_feature_net_pools_inputs_larger_than_16(h, w):
    torch.manual_seed(0)
    net = metrics.FeatureNet(1, 2).eval()
    x = torch.randn(2, 1, h, w)
    small = F.adaptive_avg_pool2d(x, 16) if (h > 16 or w > 16) else x
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], net.features(small), rtol=0, atol=0)


def test_fingerprint_hashes_every_kth_sample_past_4096():
    import hashlib
    g = torch.Generator().manual_seed(0)
    for n, k in ((4096, 1), (8192, 2), (12288, 3)):
        x, y = torch.rand(n, 1, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g)
        y[0] = 2
        h = hashlib.sha1(f"featurenet-v2 {(n, 1, 2, 2)} 3 s".encode())
        h.update(np.ascontiguousarray(x.numpy()[::k]).tobytes())
        h.update(y.numpy().astype(np.int64).tobytes())
        assert metrics._fingerprint(x, y, "s") == h.hexdigest()[:16]



# ---- second pass: what the re-run with the tests above still let survive ------------------------
def test_checkpoints_are_read_onto_the_cpu_with_weights_only(tmp_path, monkeypatch):
    t = GANTrainer(*_nets(), z_dim=2)
    p = t.save_checkpoint(str(tmp_path / "a.pt"))
    seen, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or load(*a, **k))
    ckpt.read(p)
    assert seen == [{"map_location": "cpu", "weights_only": True}]


def test_load_checkpoint_names_the_file_that_does_not_fit(tmp_path):
    p = GANTrainer(*_nets(), z_dim=2).save_checkpoint(str(tmp_path / "a.pt"))
    other = GANTrainer(nn.Linear(2, 3), nn.Linear(3, 2), z_dim=2)
    with pytest.raises(ckpt.CheckpointError, match="^" + re.escape(f"{p}: does not fit this trainer's")):
        other.load_checkpoint(p)


def test_preloading_copies_to_the_device_what_the_rule_allows(monkeypatch):
    meta, seen = torch.device("meta"), []
    x = _images(4)
    b = tdata.make_batches(x, 2, device=meta)          # no preload off CUDA: the data is indexed in place
    assert b.source is x
    b = tdata.make_batches(_with_x(x), 2, device=meta)
    assert b.source is x
    monkeypatch.setattr(tdata, "_preload", lambda t, d: seen.append((t, d)) or True)
    for data in (x, _with_x(x), TensorDataset(x)):
        seen.clear()
        b = tdata.make_batches(data, 2, device=meta)
        assert b.source.device.type == "meta" and b.source.shape == x.shape
        assert len(seen) == 1 and seen[0][0] is x and seen[0][1] == meta


def test_dataset_stream_is_sharded_by_rank():
    x = _images(8)
    for rank in (0, 1):
        a = tdata.make_batches(x, 2, device=CPU, rank=rank, world=2, seed=3)
        b = tdata.make_batches(_with_x(x), 2, device=CPU, rank=rank, world=2, seed=3)
        c = tdata.make_batches(TensorDataset(x), 2, device=CPU, rank=rank, world=2, seed=3)
        for _ in range(3):
            u = next(a)
            assert torch.equal(u, next(b)) and torch.equal(u, next(c))
    r0 = next(tdata.make_batches(_with_x(x), 2, device=CPU, rank=0, world=2, seed=3))
    r1 = next(tdata.make_batches(_with_x(x), 2, device=CPU, rank=1, world=2, seed=3))
    assert not torch.equal(r0, r1)


def test_fit_passes_its_stream_settings(monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def make(data, batch_size, **kw):
        seen.update(kw, batch_size=batch_size)
        raise Stop

    monkeypatch.setattr(trainer_mod, "make_batches", make)
    t = GANTrainer(*_nets(), z_dim=2, seed=4, channels_last=True)
    t.rank, t.world, t._data_state = 1, 2, {"kind": "index"}
    with pytest.raises(Stop):
        t.fit(_data(), 3, 2, progress=False)
    assert seen == {"batch_size": 2, "device": CPU, "channels_last": True, "seed": 4, "rank": 1, "world": 2,
                    "state": {"kind": "index"}, "labels": False}


def test_fit_default_checkpoint_cadence_and_progress(tmp_path, capsys):
    t = GANTrainer(*_nets(), z_dim=2)
    t.step = 998
    t.fit(_data(), 1001, 4, out_dir=str(tmp_path), log_every=10 ** 6, sample_every=10 ** 6)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "checkpoints"))] == [1000, 1001]
    assert capsys.readouterr().err.startswith("step 1001/1001  d ")    # progress by default
    assert t.interrupted is None


def test_progress_bar_settings(monkeypatch):
    import tqdm.auto
    made, posts = [], []

    class Bar(tqdm.auto.tqdm):
        def __init__(self, **kw):
            made.append(kw)
            super().__init__(disable=True, **kw)

        def set_postfix(self, ordered_dict=None, **kw):
            posts.append(kw.pop("refresh", "missing"))

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    GANTrainer(*_nets(), z_dim=2).fit(_data(), 2, 4, log_every=1)
    assert made == [{"total": 2, "initial": 0, "unit": "step", "dynamic_ncols": True, "leave": True}]
    assert posts == [False, False]                              # redrawn by update(), not on every log


def test_fit_restores_the_signal_handlers_and_returns_history_when_stopped(tmp_path):
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    t = GANTrainer(*_nets(), z_dim=2)

    def stop_now(samples):  # as if SIGTERM arrived now (a real one would end pytest without the handler)
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler) and handler not in before, "fit did not install its signal handler"
        handler(signal.SIGTERM, None)          # the trainer's: finish the step, then stop
        return {}

    hist = t.fit(_data(), 10, 4, sample_every=2, evaluator=stop_now, out_dir=str(tmp_path),
                 progress=False)
    assert t.interrupted == signal.SIGTERM and hist is t.history and t.step == 3   # not 10
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_signal_message_is_flushed(monkeypatch):
    seen = []
    monkeypatch.setattr(trainer_mod, "print", lambda *a, **k: seen.append(k), raising=False)
    t = GANTrainer(*_nets(), z_dim=2)
    stop = {"sig": None}
    old = t._install_signals(stop)
    try:
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    finally:
        t._restore_signals(old)
    assert seen == [{"flush": True}]


def test_log_record_is_the_mean_of_the_per_step_records():
    """Two identically seeded runs: the log_every=3 record equals the mean of the log_every=1 ones."""
    per = GANTrainer(*_nets(), z_dim=2, seed=3, r1_gamma=0.5).fit(_data(), 3, 4, log_every=1, progress=False)
    (rec,) = GANTrainer(*_nets(), z_dim=2, seed=3, r1_gamma=0.5).fit(_data(), 3, 4, log_every=3, progress=False)
    for k in ("d_loss", "g_loss", "d_real", "d_fake", "r1"):
        assert rec[k] == pytest.approx(np.mean([r[k] for r in per]), rel=1e-6, abs=1e-9)


def test_no_r1_penalty_is_computed_when_gamma_is_zero(monkeypatch):
    calls = []
    r1 = gan_objective.ops.r1_penalty
    monkeypatch.setattr(gan_objective.ops, "r1_penalty", lambda *a, **k: calls.append(1) or r1(*a, **k))
    GANTrainer(*_nets(), z_dim=2, r1_gamma=0.0).fit(_data(), 2, 4, progress=False)
    assert calls == []
    GANTrainer(*_nets(), z_dim=2, r1_gamma=0.1).fit(_data(), 2, 4, progress=False)
    assert calls == [1, 1]


# ---- GANTrainer.__init__ on a pretend GPU: where things are placed, not how they run ---------------
class _RecordsTo:
    """A module whose .to() records its arguments and moves nothing (so CUDA placement can be read on
    a machine without CUDA)."""

    def to(self, *args, **kwargs):
        self.log.append((self.tag, args, kwargs))
        return self


class _Placed(_RecordsTo, nn.Linear):
    def __init__(self, i, o, log):
        super().__init__(i, o)
        self.log, self.tag = log, o


class _PlacedConv(_RecordsTo, nn.Conv2d):
    def __init__(self, log):
        super().__init__(1, 1, 3)
        self.log, self.tag = log, "conv"


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda says there are 2 devices, the current one is 1; set_device calls are recorded."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    return calls


def _build_until_cuda_is_needed(g, d, **kw):
    """GANTrainer(g, d) up to its first real CUDA tensor (which a CPU build of torch refuses)."""
    try:
        return GANTrainer(g, d, z_dim=2, **kw)
    except (RuntimeError, AssertionError):  # "Torch not compiled with CUDA enabled"
        return None


@pytest.mark.parametrize("device", [None, "cuda"], ids=["unset", "bare"])  # an id "cuda" would mark it a GPU test
def test_default_and_bare_cuda_devices_become_the_current_one(fake_cuda, device):
    log = []
    _build_until_cuda_is_needed(_Placed(2, 3, log), _Placed(3, 1, log), device=device)
    assert log[:2] == [(3, (torch.device("cuda", 1),), {}), (1, (torch.device("cuda", 1),), {})]


def test_cuda_device_checks(fake_cuda, monkeypatch):
    msg = "GANTrainer: argument 'device' is 'cuda:2' but there are only 2 CUDA devices"
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        GANTrainer(*_nets(), z_dim=2, device="cuda:2")
    log = []
    _build_until_cuda_is_needed(_Placed(2, 3, log), _Placed(3, 1, log), device="cuda:1")   # the last one fits
    assert log[0] == (3, (torch.device("cuda", 1),), {})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    log.clear()
    _build_until_cuda_is_needed(_Placed(2, 3, log), _Placed(3, 1, log), device="cuda")     # index 0 of 1
    assert log[0] == (3, (torch.device("cuda", 0),), {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    msg = "GANTrainer: argument 'device' is 'cuda' but no CUDA device is available"
    with pytest.raises(ValueError, match="^" + re.escape(msg) + "$"):
        GANTrainer(*_nets(), z_dim=2, device="cuda")


def test_channels_last_by_default_only_for_conv_nets_on_cuda(fake_cuda):
    log = []
    _build_until_cuda_is_needed(_Placed(2, 3, log), _PlacedConv(log), device="cuda:0")
    cl = {"memory_format": torch.channels_last}
    assert [k for _, _, k in log] == [{}, {}, cl, cl]
    log.clear()
    _build_until_cuda_is_needed(_Placed(2, 3, log), _Placed(3, 1, log), device="cuda:0")
    assert [k for _, _, k in log] == [{}, {}]
    log.clear()
    GANTrainer(_Placed(2, 3, log), _PlacedConv(log), z_dim=2, device="cpu")
    assert [k for _, _, k in log] == [{}, {}]


def test_torchrun_on_cuda_uses_nccl_and_the_local_device(fake_cuda, monkeypatch):
    wrapped = _fake_torchrun(monkeypatch)
    fake = _TorchrunDist()
    monkeypatch.setattr(trainer_mod, "dist", fake)
    log = []
    _build_until_cuda_is_needed(_Placed(2, 3, log), _Placed(3, 1, log))
    assert fake_cuda == [("set_device", torch.device("cuda", 1))] and fake.calls == [("init", "nccl")]
    assert log[0] == (3, (torch.device("cuda", 1),), {}) and [ids for _, ids in wrapped] == [[1], [1]]


def test_trainer_wraps_both_networks_for_the_jit_when_asked(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda m: ("jit", m))
    g, d = _nets()
    t = GANTrainer(g, d, z_dim=2, compile=True)
    assert t._G == ("jit", g) and t._D == ("jit", d) and t.generator is g


def test_fp16_scalers_are_made_for_the_trainer_device(monkeypatch):
    made = []

    class Scaler(torch.amp.GradScaler):
        def __init__(self, device="cuda", **kw):
            made.append(device)
            super().__init__(device, **kw)

    monkeypatch.setattr(torch.amp, "GradScaler", Scaler)
    GANTrainer(*_nets(), z_dim=2, amp="fp16")
    assert made == ["cpu", "cpu"]


def test_cuda_rng_states_are_saved_once_cuda_is_in_use_and_restored_per_device(fake_cuda, monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["s0", "s1"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert trainer_mod._rng_state()["cuda"] == []          # CUDA never touched: nothing to save
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    s = trainer_mod._rng_state()
    assert s["cuda"] == ["s0", "s1"]
    trainer_mod._set_rng_state(dict(s, cuda=["a", "b", "c"]))     # saved on 3 GPUs, resumed on 2
    assert restored == [["a", "b"]]
    trainer_mod._set_rng_state(dict(s, cuda=[]))
    assert restored == [["a", "b"]]


def test_progress_in_a_log_file_is_one_line_per_log(capsys):
    """stderr not a terminal (a log file, CI): no bar redraws, one line per log record."""
    t = GANTrainer(*_nets(), z_dim=2)
    hist = t.fit(_data(), 5, 4, log_every=2)
    err = capsys.readouterr().err
    assert "\r" not in err
    want = "".join(f"step {r['step']}/5  d {r['d_loss']:.3f}  g {r['g_loss']:.3f}  D(x) {r['d_real']:.2f}  "
                   f"D(G(z)) {r['d_fake']:.2f}  {r['img_per_s']:.0f} img/s\n" for r in hist)
    assert err == want and [r["step"] for r in hist] == [2, 4, 5]
    t.fit(_data(), 6, 4, log_every=1, progress=False)
    assert capsys.readouterr().err == ""
