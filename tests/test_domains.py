"""The digit domains (digits-m, digits-inv, digits-thick), DomainDataset / load_domains and the
unpaired batch stream translation models train on."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastgan.data import DatasetError, DomainDataset, digit_domain, load_dataset, load_domains
from fastgan.train import GANTrainer
from fastgan.train.data import make_batches


def test_domains_keep_the_digits_and_their_labels():
    base = load_dataset("digits", 16)
    for name in ("digits-m", "digits-inv", "digits-thick"):
        d = load_dataset(name, 16)
        assert d.name == name and torch.equal(d.y, base.y) and d.x.shape[2:] == (16, 16)
        assert d.x.dtype == torch.float32 and d.x.min() >= -1 and d.x.max() <= 1 and d.x.is_contiguous()
    assert load_dataset("digits-m", 16).x.shape[1] == 3 and load_dataset("digits-thick").x.shape == (1797, 1, 8, 8)
    torch.testing.assert_close(load_dataset("digits-inv", 16).x, -base.x, rtol=0, atol=1e-6)


def test_thick_digits_are_the_digits_dilated():
    base = (load_dataset("digits", 32).x + 1) / 2
    thick = (load_dataset("digits-thick", 32).x + 1) / 2
    assert (thick >= base - 1e-6).all()  # a max filter never removes ink
    assert thick.mean() > 1.3 * base.mean()
    # at a pixel, the ink is the most of its 5x5 neighbourhood (k = 2 at 32 px)
    i, r, c = 5, 14, 17
    torch.testing.assert_close(thick[i, 0, r, c], base[i, 0, r - 2:r + 3, c - 2:c + 3].max())


def test_digits_m_blends_each_digit_over_a_crop_of_a_bundled_photograph():
    """Where a digit has no ink, a digits-m image is a crop of one of the two photographs: found by
    searching every position of both (masked sum of squared differences)."""
    from sklearn.datasets import load_sample_images
    base = (load_dataset("digits").x + 1) / 2  # 8x8
    m = (load_dataset("digits-m").x + 1) / 2
    photos = [torch.from_numpy(np.array(p)).permute(2, 0, 1).double() / 255 for p in load_sample_images().images]
    for i in (0, 7, 1000):
        mask = (base[i] == 0).double()  # (1, 8, 8): background pixels
        x = m[i].double()
        best = []
        for ph in photos:
            # sum over the mask of (P - x)^2 at every position = conv(P^2, mask) - 2 conv(P, mask x) + const
            k1 = mask.expand(3, -1, -1)[None]
            ssd = (F.conv2d(ph[None] ** 2, k1) - 2 * F.conv2d(ph[None], (mask * x)[None])
                   + (mask * x ** 2).sum())[0, 0]
            r, c = divmod(int(ssd.argmin()), ssd.shape[1])
            best.append((float(ssd.min()), ph[:, r:r + 8, c:c + 8]))
        err, crop = min(best, key=lambda e: e[0])
        assert err < 1e-8, (i, err)  # float32 rounding of the stored image only
        # and everywhere, ink included: |crop - digit|, as MNIST-M
        torch.testing.assert_close(x, (crop - base[i].double()).abs(), rtol=0, atol=1e-6)


def test_digits_m_patches_follow_the_seed():
    a, b, c = (digit_domain("digits-m", 16, seed=s).x for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_load_domains_and_its_errors():
    gray = load_dataset("digits", 16)
    assert DomainDataset([gray, load_dataset("digits-m", 16)]).channels == 3 and gray.x.shape[1] == 1  # not mutated
    dd = load_domains("digits:digits-m", 16)
    assert isinstance(dd, DomainDataset) and dd.names == ["digits", "digits-m"] and dd.channels == 3
    assert dd.domains[0].x.shape == (1527, 3, 16, 16)  # grayscale repeated to RGB beside an RGB domain
    assert torch.equal(dd.domains[0].x[:, 0], dd.domains[0].x[:, 2]) and len(dd) == 1797 - 270
    # 15% held out, the same digits in both domains, none of them trained on
    assert [len(d) for d in dd.held_out] == [270, 270] and torch.equal(dd.held_out[0].y, dd.held_out[1].y)
    full = load_dataset("digits", 16)
    both = torch.cat([dd.held_out[0].x[:, :1], dd.domains[0].x[:, :1]])
    order = lambda x: x.flatten(1).double() @ torch.rand(256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # noqa: E731
    torch.testing.assert_close(order(both).sort().values, order(full.x).sort().values)  # a split of the digits
    assert load_domains("digits:digits-inv", 8, holdout=0).held_out is None
    with pytest.raises(ValueError, match="argument 'holdout' must be in"):
        load_domains("digits:digits-inv", holdout=1.0)
    assert load_domains("digits:digits-inv:digits-thick", 16).channels == 1
    for bad in ("digits", "digits:", ":digits", 3):
        with pytest.raises(ValueError, match="expected two or more datasets separated by ':'"):
            load_domains(bad)
    with pytest.raises(DatasetError, match="must all be images of one size"):
        load_domains("digits:ring8")
    with pytest.raises(ValueError, match="needs at least two domains"):
        DomainDataset([load_dataset("digits")])
    with pytest.raises(ValueError, match="argument 'name' must be one of"):
        digit_domain("digits-x")


def test_unpaired_batches_are_independent_and_resume_exactly():
    dd = load_domains("digits:digits-inv", 8)
    stream = make_batches(dd, 16, device=torch.device("cpu"), seed=3)
    a, b = next(stream)
    assert a.shape == b.shape == (16, 1, 8, 8)
    # digits-inv is -digits image for image: paired batches would satisfy b == -a
    assert not torch.allclose(b, -a)
    for _ in range(200):  # past an epoch (1797 / 16 batches) of each domain
        next(stream)
    state = stream.state_dict()
    want = [next(stream) for _ in range(3)]
    other = make_batches(dd, 16, device=torch.device("cpu"), seed=3, state=state)
    got = [next(other) for _ in range(3)]
    for (wa, wb), (ga, gb) in zip(want, got):
        assert torch.equal(wa, ga) and torch.equal(wb, gb)


def test_plain_objectives_reject_domains_and_vice_versa():
    g = nn.Sequential(nn.Linear(2, 64), nn.Unflatten(1, (1, 8, 8)))
    d = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    t = GANTrainer(g, d, z_dim=2, device="cpu")
    with pytest.raises(ValueError, match="argument 'data' is a DomainDataset, but this objective trains on one"):
        t.fit(load_domains("digits:digits-inv", 8), 1, 4, progress=False)
