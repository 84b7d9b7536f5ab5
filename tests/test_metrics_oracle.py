"""fastgan.train.metrics against answers known in advance.

  * the Fréchet distance against the closed form ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)
    evaluated independently with scipy.linalg.sqrtm, and against special cases with analytic answers;
  * mode coverage and the high-quality fraction of ring8 / grid25 on constructed sample sets (exactly on
    the modes, between them, all on one, known mixes, just inside / just outside 3 std);
  * class coverage and the evaluator's Fréchet distance with a stand-in classifier whose predictions
    and features are known;
  * the feature-net cache: miss (trains, writes), hit (loads, does not train), and no writes to $HOME.
"""
import os

import numpy as np
import pytest
import torch

from fastgan.data import grid25, ring8
from fastgan.train import metrics
from fastgan.train.metrics import (
    ImageEvaluator,
    evaluator_for,
    frechet_distance,
    mixture_metrics,
)


# ---- Fréchet distance ---------------------------------------------------------------------------------------
def _spd(rng, d, rank=None):
    """A random, non-diagonal symmetric positive (semi-)definite matrix, well away from diagonal."""
    a = rng.standard_normal((d, rank or d))
    s = a @ a.T / (rank or d)
    return s + (0.1 * np.eye(d) if rank is None else 0.0)


def _rotation(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _fd_scipy(mu1, s1, mu2, s2):
    """The closed form, with matrix square roots from scipy (Schur method; independent of eigh)."""
    from scipy.linalg import sqrtm
    r1 = sqrtm(s1)
    cross = sqrtm(r1 @ s2 @ r1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross).real)


@pytest.mark.parametrize("d", [1, 2, 5, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_matches_scipy_closed_form(d, seed):
    pytest.importorskip("scipy.linalg")
    from scipy.linalg import sqrtm
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _spd(rng, d), 3.0 * _spd(rng, d)
    want = _fd_scipy(mu1, s1, mu2, s2)
    # Tr((S1 S2)^1/2) is the same trace (S1 S2 is similar to S1^1/2 S2 S1^1/2): a second, independent route.
    want2 = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(sqrtm(s1 @ s2)).real)
    assert want == pytest.approx(want2, rel=1e-8, abs=1e-10)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(got, float)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-10)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-9, abs=1e-10)  # symmetric


@pytest.mark.parametrize("d", [1, 3, 8])
def test_frechet_identical_is_zero(d):
    rng = np.random.default_rng(d)
    mu, s = rng.standard_normal(d), _spd(rng, d)
    assert abs(frechet_distance(mu, s, mu, s)) <= 1e-10 * np.trace(s)
    # accepts torch tensors and lists too
    assert abs(frechet_distance(torch.tensor(mu), torch.tensor(s), list(mu), s.tolist())) <= 1e-10 * np.trace(s)


@pytest.mark.parametrize("d", [1, 4, 10])
def test_frechet_same_covariance_is_squared_mean_distance(d):
    rng = np.random.default_rng(10 + d)
    mu1, mu2, s = rng.standard_normal(d), 2 * rng.standard_normal(d), 5 * _spd(rng, d)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-9, abs=1e-10)


@pytest.mark.parametrize("rotate", [False, True], ids=["diagonal", "rotated"])
@pytest.mark.parametrize("singular", [False, True], ids=["full", "singular"])
def test_frechet_commuting_covariances(rotate, singular):
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: FD = ||dmu||^2 + sum (sqrt a_i - sqrt b_i)^2."""
    rng = np.random.default_rng(3)
    d = 6
    a, b = rng.uniform(0.2, 4.0, d), rng.uniform(0.01, 9.0, d)
    if singular:  # rank-deficient, as with fewer samples than features
        a[:2] = 0.0
        b[1:3] = 0.0
    q = _rotation(rng, d) if rotate else np.eye(d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    want = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    # a zero eigenvalue is only known to ~eps * ||S||, and its root to ~sqrt(eps * ||S||)
    tol = dict(rel=1e-9, abs=1e-6) if singular else dict(rel=1e-9, abs=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, **tol)


def test_frechet_one_dimensional_and_scaled():
    # 1-D Gaussians: (m1 - m2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance([1.5], [[4.0]], [-0.5], [[0.25]]) == pytest.approx(2.0 ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)
    # S2 = c^2 S1 (non-diagonal S1): (1 - c)^2 Tr(S1)
    rng = np.random.default_rng(7)
    s = _spd(rng, 7)
    mu = np.zeros(7)
    assert frechet_distance(mu, s, mu, 9.0 * s) == pytest.approx(4.0 * np.trace(s), rel=1e-9)


def test_frechet_is_not_a_cheaper_cross_term():
    """A case where Tr(S1 S2)^1/2 (or dropping the 2) differs a lot from the true cross term."""
    rng = np.random.default_rng(11)
    d = 5
    s1, s2 = _spd(rng, d), _spd(rng, d)
    mu = np.zeros(d)
    true_cross = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    wrong1 = np.trace(s1 + s2) - 2 * np.sqrt(np.trace(s1 @ s2))
    wrong2 = np.trace(s1 + s2) - true_cross
    right = np.trace(s1 + s2) - 2 * true_cross
    assert min(abs(wrong1 - right), abs(wrong2 - right)) > 0.1 * abs(right) + 1e-3  # the case discriminates
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(right, rel=1e-9, abs=1e-10)


# ---- mode coverage and high-quality fraction ------------------------------------------------------------------
MIXTURES = [pytest.param(ring8, id="ring8"), pytest.param(grid25, id="grid25")]


def _mixture(make):
    ds = make(n=16, seed=0)
    return ds, ds.modes.double(), float(ds.mode_std)


def _directions(n, seed):
    t = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 * torch.pi
    return torch.stack([t.cos(), t.sin()], 1)


def _nearest_neighbour_midpoints(m):
    d = torch.cdist(m, m)
    d.fill_diagonal_(float("inf"))
    return (m + m[d.argmin(1)]) / 2


@pytest.mark.parametrize("make", MIXTURES)
def test_samples_on_every_mode(make):
    ds, m, std = _mixture(make)
    k = m.shape[0]
    r = mixture_metrics(m.repeat(25, 1), ds.modes, std)
    assert r == {"modes": k, "modes_total": k, "high_quality": 100.0}
    # float32 samples as a generator produces them
    assert mixture_metrics(ds.modes.repeat(20, 1).float(), ds.modes, std)["modes"] == k


@pytest.mark.parametrize("make", MIXTURES)
def test_samples_between_modes(make):
    ds, m, std = _mixture(make)
    mid = _nearest_neighbour_midpoints(m)
    assert torch.cdist(mid, m).min() > 10 * std  # really off every mode
    r = mixture_metrics(mid.repeat(40, 1), ds.modes, std)
    assert r == {"modes": 0, "modes_total": m.shape[0], "high_quality": 0.0}


@pytest.mark.parametrize("make", MIXTURES)
@pytest.mark.parametrize("which", [0, 5])
def test_all_samples_on_one_mode(make, which):
    ds, m, std = _mixture(make)
    x = m[which] + 0.5 * std * _directions(500, which)
    r = mixture_metrics(x, ds.modes, std)
    assert r == {"modes": 1, "modes_total": m.shape[0], "high_quality": 100.0}


@pytest.mark.parametrize("make", MIXTURES)
def test_known_mix_30_percent_off_mode(make):
    """Per mode: 21 samples within 1 std, 9 at 5 std (nearest to that same mode): 70% high quality,
    every mode covered (21 >= 20)."""
    ds, m, std = _mixture(make)
    on = m.repeat_interleave(21, 0) + std * _directions(21 * len(m), 1)
    off = m.repeat_interleave(9, 0) + 5 * std * _directions(9 * len(m), 2)
    x = torch.cat([on, off])[torch.randperm(30 * len(m), generator=torch.Generator().manual_seed(0))]
    r = mixture_metrics(x, ds.modes, std)
    assert r["modes"] == len(m)
    assert r["high_quality"] == pytest.approx(70.0, abs=1e-9)


@pytest.mark.parametrize("make", MIXTURES)
def test_off_mode_samples_do_not_cover_a_mode(make):
    """A mode with 19 samples on it and many more just off it (nearest to it, but beyond 3 std) is not
    covered: only high-quality samples count towards min_count."""
    ds, m, std = _mixture(make)
    x = torch.cat([m[2].expand(19, 2), m[2] + 4 * std * _directions(200, 3),  # mode 2: 19 good, 200 off
                   m[4].expand(20, 2)])  # mode 4: exactly min_count good
    r = mixture_metrics(x, ds.modes, std)
    assert r["modes"] == 1
    assert r["high_quality"] == pytest.approx(100.0 * 39 / 239, rel=1e-12)
    # min_count is honoured
    assert mixture_metrics(x, ds.modes, std, min_count=19)["modes"] == 2
    assert mixture_metrics(x, ds.modes, std, min_count=21)["modes"] == 0


@pytest.mark.parametrize("make", MIXTURES)
@pytest.mark.parametrize("factor, inside", [(0.99, True), (1.01, False)], ids=["inside", "outside"])
def test_three_std_boundary(make, factor, inside):
    ds, m, std = _mixture(make)
    x = m.repeat_interleave(20, 0) + factor * 3 * std * _directions(20 * len(m), 4)
    want = {"modes": len(m) if inside else 0, "modes_total": len(m), "high_quality": 100.0 if inside else 0.0}
    assert mixture_metrics(x, ds.modes, std) == want
    assert evaluator_for(ds)(x) == want  # the trainer's metric: the dataset's std, 3 std
    # the threshold argument scales the boundary
    assert mixture_metrics(x, ds.modes, std, threshold=2.0)["high_quality"] == 0.0
    assert mixture_metrics(x, ds.modes, std, threshold=4.0)["high_quality"] == 100.0


@pytest.mark.parametrize("make", MIXTURES)
def test_true_distribution_high_quality_fraction(make):
    """Samples of the mixture itself: a 2-D isotropic Gaussian lies within 3 std of its mean with
    probability 1 - exp(-9/2) = 98.89%; every mode covered."""
    ds = make(n=40_000, seed=1)
    r = mixture_metrics(ds.x, ds.modes, ds.mode_std)
    assert r["modes"] == r["modes_total"] == len(ds.modes)
    p = 1 - np.exp(-4.5)
    se = np.sqrt(p * (1 - p) / len(ds.x))
    assert r["high_quality"] == pytest.approx(100 * p, abs=100 * 6 * se)


def test_no_samples():
    ds, _, std = _mixture(ring8)
    assert mixture_metrics(torch.empty(0, 2), ds.modes, std) == {"modes": 0, "modes_total": 8, "high_quality": 0.0}


# ---- class coverage and the evaluator's Fréchet distance (stand-in classifier) ------------------------------
NUM_CLASSES = 4


class _StandInNet(torch.nn.Module):
    """Features: the pixels; predicted class: the first pixel (rounded)."""

    def forward(self, x):
        cls = x[:, 0, 0, 0].round().long().clamp(0, NUM_CLASSES - 1)
        return x.flatten(1), torch.nn.functional.one_hot(cls, NUM_CLASSES).float()


def _images(labels, seed):
    """float32 images (the evaluator runs the net in float32): class k has first pixel k."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(len(labels), 1, 3, 3, generator=g) * torch.arange(1, 10).view(1, 1, 3, 3)
    x[:, 0, 0, 0] = labels.float()
    return x


@pytest.fixture
def stand_in_evaluator(monkeypatch):
    trained = []

    def fake_train(x, y, *, seed=0, **kw):
        trained.append((x, y))
        return _StandInNet()

    monkeypatch.setattr(metrics, "train_feature_net", fake_train)
    y = torch.arange(600) % NUM_CLASSES
    x = _images(y, 0)
    ev = ImageEvaluator(x, y, n_real=200)
    assert len(trained) == 1 and ev.num_classes == NUM_CLASSES
    return ev, x, y


@pytest.mark.parametrize("counts, covered", [
    pytest.param([50, 50, 50, 50], 4, id="uniform"),
    pytest.param([200, 0, 0, 0], 1, id="all-first"),
    pytest.param([0, 0, 0, 200], 1, id="all-last"),
    pytest.param([5, 4, 191, 0], 2, id="boundary"),  # n / K = 50, 10% of it 5: class 0 (5) covered, class 1 (4) not
    pytest.param([6, 6, 6, 182], 4, id="just-above"),
    pytest.param([1, 1, 1, 197], 1, id="stragglers"),  # a class seen once is not covered
])
def test_class_coverage(stand_in_evaluator, counts, covered):
    ev, _, _ = stand_in_evaluator
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    r = ev(_images(labels, 1))
    assert r["classes"] == covered
    assert r["classes_total"] == NUM_CLASSES


def test_evaluator_real_statistics_and_accuracy(stand_in_evaluator):
    ev, x, _ = stand_in_evaluator
    sub = x[::3]  # step = 600 // 200
    f = sub.flatten(1).double().numpy()
    np.testing.assert_allclose(ev.mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ev.sigma, np.cov(f, rowvar=False), rtol=1e-12)
    assert ev.accuracy == 1.0


def test_evaluator_frechet_distance_against_scipy(stand_in_evaluator):
    pytest.importorskip("scipy.linalg")
    ev, x, _ = stand_in_evaluator
    fake = _images(torch.arange(400) % NUM_CLASSES, 2)
    fake = fake * 1.3 + 0.2  # a different distribution
    fake[:, 0, 0, 0] = (torch.arange(400) % NUM_CLASSES).float()
    f_fake, f_real = fake.flatten(1).double().numpy(), x[::3].flatten(1).double().numpy()
    want = _fd_scipy(f_fake.mean(0), np.cov(f_fake, rowvar=False), f_real.mean(0), np.cov(f_real, rowvar=False))
    r = ev(fake)
    assert want > 1.0
    assert r["fd"] == pytest.approx(want, rel=1e-8)
    # the real subset itself: distance zero
    assert abs(ev(x[::3])["fd"]) < 1e-9


# ---- the feature-net cache ---------------------------------------------------------------------------------------
def test_suite_cache_is_not_the_home_default():
    """tests/conftest.py points the cache away from ~/.cache/fastgan (unless the caller set one)."""
    assert os.environ.get("FASTGAN_CACHE")
    assert metrics.cache_dir() == os.environ["FASTGAN_CACHE"]


def _listing(path):
    return sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """An empty cache folder (not yet created), a fake empty $HOME, and a count of training runs."""
    import pathlib
    real_cache = pathlib.Path(os.path.expanduser("~")) / ".cache" / "fastgan"
    before = _listing(real_cache)
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("FASTGAN_CACHE", str(cache))
    runs = []
    adam = torch.optim.Adam

    def counting_adam(*a, **kw):
        runs.append(1)
        return adam(*a, **kw)

    monkeypatch.setattr(torch.optim, "Adam", counting_adam)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 8, 8, generator=g), torch.arange(96) % 3
    yield cache, home, runs, x, y
    assert _listing(home) == []  # nothing written under $HOME
    assert _listing(real_cache) == before  # nor under the real one


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_miss_then_hit(cache_env):
    cache, _, runs, x, y = cache_env
    assert metrics.cache_dir() == str(cache) and not cache.exists()
    torch.manual_seed(1234)
    torch.rand(3)  # a global RNG state that no seeding reproduces by accident
    rng = torch.get_rng_state()
    a = metrics.train_feature_net(x, y, steps=3)
    assert runs == [1]  # miss: trained
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("featurenet-") and files[0].suffix == ".pt"
    stamp = files[0].stat().st_mtime_ns
    b = metrics.train_feature_net(x, y, steps=3)
    assert runs == [1]  # hit: loaded, not trained
    assert _same(a, b) and not b.training
    assert sorted(cache.iterdir()) == files and files[0].stat().st_mtime_ns == stamp
    assert torch.equal(torch.get_rng_state(), rng)  # neither path touches the global RNG
    # different data: a different entry
    metrics.train_feature_net(x, (y + 1) % 3, steps=3)
    assert runs == [1, 1] and len(list(cache.iterdir())) == 2


def test_cache_off_and_broken_entry(cache_env):
    cache, _, runs, x, y = cache_env
    metrics.train_feature_net(x, y, steps=3, cache=False)
    assert runs == [1] and not cache.exists()  # cache=False writes nothing
    a = metrics.train_feature_net(x, y, steps=3)
    (entry,) = cache.iterdir()
    entry.write_bytes(b"not a state dict")
    b = metrics.train_feature_net(x, y, steps=3)  # a broken entry is retrained and replaced
    assert runs == [1, 1, 1] and _same(a, b)
    assert metrics.train_feature_net(x, y, steps=3) is not None and runs == [1, 1, 1]
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temporary files left


@pytest.mark.parametrize("kw", [dict(seed=1), dict(steps=4), dict(batch_size=32)], ids=["seed", "steps", "batch"])
def test_cache_respects_training_settings(cache_env, kw):
    """A cached net stands for exactly what train_feature_net would train: a call with another seed,
    step count or batch size is not served the entry of the first."""
    cache, _, _, x, y = cache_env
    base = dict(steps=3, seed=0, batch_size=64)
    first = metrics.train_feature_net(x, y, **base)  # cached
    other = {**base, **kw}
    want = metrics.train_feature_net(x, y, cache=False, **other)
    assert not _same(first, want)  # the setting matters
    got = metrics.train_feature_net(x, y, **other)
    assert _same(got, want)
    assert len(list(cache.iterdir())) == 2


def test_default_cache_dir_is_under_home(cache_env, monkeypatch):
    """Without FASTGAN_CACHE the cache goes to $HOME/.cache/fastgan (here a fake, temporary home)."""
    cache, home, _, _, _ = cache_env
    monkeypatch.delenv("FASTGAN_CACHE")
    assert metrics.cache_dir() == str(home / ".cache" / "fastgan")
    monkeypatch.setenv("FASTGAN_CACHE", "")  # empty: the default too
    assert metrics.cache_dir() == str(home / ".cache" / "fastgan")
    monkeypatch.setenv("FASTGAN_CACHE", str(cache))


# ---- stacked-digits: modes and KL from uniform (VEEGAN / PacGAN protocol) ----------------------------------------
def _kl_oracle(modes, total):
    """KL(p || uniform) through scipy's relative entropy over all `total` bins (0 log 0 = 0)."""
    from scipy.stats import entropy
    p = np.bincount(np.asarray(modes), minlength=total) / len(modes)
    return float(entropy(p, np.full(total, 1.0 / total)))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("support", [1, 7, 300, 1000])
def test_mode_histogram_against_scipy(seed, support):
    pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(seed)
    which = torch.randperm(1000, generator=g)[:support]
    modes = which[torch.randint(support, (5000,), generator=g)]
    r = metrics.mode_histogram(modes, 1000)
    assert r["modes"] == len(modes.unique()) and r["modes_total"] == 1000
    assert r["kl"] == pytest.approx(_kl_oracle(modes.numpy(), 1000), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("support, kl", [(1000, 0.0), (1, np.log(1000)), (10, np.log(100)), (250, np.log(4))])
def test_mode_histogram_exact(support, kl):
    """Samples spread exactly evenly over `support` modes: KL = log(total / support)."""
    modes = torch.arange(support).repeat(3)
    r = metrics.mode_histogram(modes, 1000)
    assert r["modes"] == support and r["kl"] == pytest.approx(kl, abs=1e-12)


def test_mode_histogram_bad_input():
    with pytest.raises(ValueError, match="argument 'modes' is empty"):
        metrics.mode_histogram(torch.zeros(0, dtype=torch.long), 10)
    with pytest.raises(ValueError, match=r"argument 'modes' must lie in \[0, 10\), got \[0, 10\]"):
        metrics.mode_histogram(torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match="must lie in"):
        metrics.mode_histogram(torch.tensor([-1, 3]), 10)


class _ChannelNet(torch.nn.Module):
    """A stand-in channel classifier: the class is the first pixel (rounded); features: the pixels."""

    def forward(self, x):
        cls = x[:, 0, 0, 0].round().long().clamp(0, 9)
        return x.flatten(1), torch.nn.functional.one_hot(cls, 10).float()


def _stacked(triples, seed):
    """Stacked images (N, 3, 2, 2) whose channel c shows digit triples[:, c] in its first pixel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(len(triples), 3, 2, 2, generator=g)
    x[:, :, 0, 0] = triples.float()
    return x


@pytest.fixture
def stacked_evaluator(monkeypatch):
    trained = []

    def fake_train(x, y, *, seed=0, **kw):
        trained.append((x, y))
        return _ChannelNet()

    monkeypatch.setattr(metrics, "train_feature_net", fake_train)
    g = torch.Generator().manual_seed(0)
    triples = torch.randint(10, (3000, 3), generator=g)
    x = _stacked(triples, 0)
    ev = metrics.StackedEvaluator(x, triples, n_samples=2000)
    (tx, ty), = trained
    assert tx.shape == (9000, 1, 2, 2) and torch.equal(ty, triples.reshape(-1))  # every channel, one by one
    assert torch.equal(tx[:3, 0], x[0]) and ev.total == 1000 and ev.accuracy == 1.0
    return ev, x, triples


def test_stacked_evaluator_modes_and_kl(stacked_evaluator):
    pytest.importorskip("scipy.stats")
    ev, x, triples = stacked_evaluator
    modes = (triples * torch.tensor([100, 10, 1])).sum(1)
    assert ev.reference["modes"] == len(modes[:2000].unique())
    assert ev.reference["kl"] == pytest.approx(_kl_oracle(modes[:2000].numpy(), 1000), rel=1e-10)
    # a collapsed generator: 12 triples only
    few = triples[torch.arange(900) % 12]
    r = ev(_stacked(few, 5))
    want = (few * torch.tensor([100, 10, 1])).sum(1)
    assert r["modes"] == len(want.unique()) <= 12 and r["modes_total"] == 1000
    assert r["kl"] == pytest.approx(_kl_oracle(want.numpy(), 1000), rel=1e-10)
    # the channel order matters: (1, 2, 3) and (3, 2, 1) are different modes
    r = ev(_stacked(torch.tensor([[1, 2, 3], [3, 2, 1]]), 1))
    assert r["modes"] == 2 and r["kl"] == pytest.approx(np.log(500), abs=1e-12)
    # conditional models: the percent of samples whose classified mode is the asked-for one
    asked = torch.tensor([123, 321, 124, 5])
    assert ev(_stacked(torch.tensor([[1, 2, 3], [3, 2, 1], [1, 2, 3], [0, 0, 4]]), 2),
              labels=asked)["class_accuracy"] == 50.0


def test_stacked_evaluator_frechet_distance(stacked_evaluator):
    pytest.importorskip("scipy.linalg")
    ev, x, triples = stacked_evaluator
    real = x[:2000].reshape(-1, 4).double().numpy()
    np.testing.assert_allclose(ev.mu, real.mean(0), rtol=1e-12)
    fake = _stacked(triples[:500], 9) * 1.5
    f = fake.reshape(-1, 4).double().numpy()
    want = _fd_scipy(f.mean(0), np.cov(f, rowvar=False), real.mean(0), np.cov(real, rowvar=False))
    assert want > 0.1 and ev(fake)["fd"] == pytest.approx(want, rel=1e-8)
    assert abs(ev(x[:2000])["fd"]) < 1e-9


def test_stacked_evaluator_bad_input(stacked_evaluator):
    ev, x, triples = stacked_evaluator
    with pytest.raises(ValueError, match=r"expected images \(N, 3, H, W\), got \(5, 1, 2, 2\)"):
        ev(torch.zeros(5, 1, 2, 2))
    with pytest.raises(ValueError, match=r"argument 'channel_labels' must have shape \(3000, 3\)"):
        metrics.StackedEvaluator(x, triples[:, :2])


def test_stacked_digits_evaluator_real_data():
    """The real classifier on the real data: stacked-digits scores every mode with a KL near the
    sampling noise of 26,000 draws from 1,000 modes (about 999 / 52,000 = 0.019), and one digit
    repeated in every channel (a generator that lost the channels' independence) scores 10 modes."""
    from fastgan.data import stacked_digits
    ds = stacked_digits(n=26_000, image_size=16)
    ev = evaluator_for(ds)
    assert isinstance(ev, metrics.StackedEvaluator) and ev.n_samples == 26_000
    assert ev.accuracy > 0.95
    assert ev.reference["modes"] >= 995 and ev.reference["kl"] < 0.05
    same = ds.x[:5000, :1].expand(-1, 3, -1, -1)
    r = ev(same)
    assert r["modes"] <= 20 and r["kl"] > np.log(1000 / 20) and r["fd"] < 0.5  # each channel still a fine digit
