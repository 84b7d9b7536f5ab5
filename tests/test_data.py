"""fastgan.data: built-ins and every on-disk format, from small files written here; clear errors."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from fastgan.data import DatasetError, digits, load_dataset, read_idx, stacked_digits


def test_digits():
    d = load_dataset("digits", 32)
    assert d.x.shape == (1797, 1, 32, 32) and d.x.dtype == torch.float32
    assert d.x.min() >= -1 and d.x.max() <= 1 and d.x.std() > 0.3
    assert d.num_classes == 10 and len(d) == 1797
    x, y = d[3]
    assert x.shape == (1, 32, 32) and int(y) == 3
    assert load_dataset("digits").x.shape[-1] == 8


def test_stacked_digits():
    """Three independently drawn bundled digits as the channels: every channel is one of the digits
    images, labelled by its digit; y is the mode 100 d0 + 10 d1 + d2; the draws follow the seed."""
    base = digits(16)
    d = stacked_digits(n=6000, image_size=16, seed=3)
    assert d.x.shape == (6000, 3, 16, 16) and d.x.dtype == torch.float32 and d.kind == "image"
    assert d.channel_labels.shape == (6000, 3) and d.num_classes <= 1000
    assert torch.equal(d.y, d.channel_labels[:, 0] * 100 + d.channel_labels[:, 1] * 10 + d.channel_labels[:, 2])
    flat = base.x.flatten(1)
    for i in (0, 17, 5999):
        for c in range(3):  # the channel is a bundled digit image, with that image's label
            j = int((flat - d.x[i, c].flatten()).abs().sum(1).argmin())
            assert torch.equal(base.x[j, 0], d.x[i, c]) and int(base.y[j]) == int(d.channel_labels[i, c])
    counts = torch.bincount(d.channel_labels.flatten(), minlength=10)
    assert counts.min() > 0.08 * 18000 and counts.max() < 0.12 * 18000  # digits about equally likely per channel
    assert len(d.y.unique()) > 990  # 6,000 draws over 1,000 modes: about 2.5 modes missed on average
    # channels are independent: the first channel's digit says nothing about the second's
    joint = torch.bincount(d.channel_labels[:, 0] * 10 + d.channel_labels[:, 1], minlength=100).double()
    assert joint.min() > 0.5 * 60 and joint.max() < 1.6 * 60
    again = stacked_digits(n=6000, image_size=16, seed=3)
    assert torch.equal(again.x, d.x) and not torch.equal(stacked_digits(n=6000, image_size=16, seed=4).y, d.y)
    full = load_dataset("stacked-digits", 8)
    assert full.x.shape == (50_000, 3, 8, 8) and full.name == "stacked-digits"
    with pytest.raises(ValueError, match="argument 'n' must be a positive int"):
        stacked_digits(n=0)


@pytest.mark.parametrize("name,k,std,radius", [("ring8", 8, 0.01, 1.0), ("grid25", 25, 0.05, 4 * 2 ** 0.5)])
def test_mixtures(name, k, std, radius):
    d = load_dataset(name)
    assert d.kind == "points" and d.x.shape[1] == 2 and d.modes.shape == (k, 2) and d.mode_std == std
    dist = torch.cdist(d.x.double(), d.modes.double()).min(1).values
    assert dist.max() < 6 * std  # every sample near a mode
    assert abs(dist.pow(2).mean().sqrt() / (std * 2 ** 0.5) - 1) < 0.05  # the right spread
    assert torch.bincount(d.y, minlength=k).min() > len(d) / k * 0.8  # all modes present
    assert d.modes.norm(dim=1).max() == pytest.approx(radius, rel=1e-5)


def _png(path, size, mode="RGB", color=(200, 30, 10)):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def test_image_folder(tmp_path):
    _png(str(tmp_path / "cats" / "a.png"), (40, 20))
    _png(str(tmp_path / "cats" / "sub" / "b.jpg"), (20, 40), color=(0, 255, 0))
    _png(str(tmp_path / "dogs" / "c.jpeg"), (30, 30), color=(0, 0, 255))
    (tmp_path / "notes.txt").write_text("ignored")
    d = load_dataset(str(tmp_path), 16)
    assert d.x.shape == (3, 3, 16, 16) and d.y.tolist() == [0, 0, 1]
    torch.testing.assert_close(d.x[0, :, 8, 8], torch.tensor([200, 30, 10]) / 127.5 - 1, atol=0.02, rtol=0)
    torch.testing.assert_close(d.x[2, :, 8, 8], torch.tensor([0, 0, 255]) / 127.5 - 1, atol=0.02, rtol=0)
    assert load_dataset(str(tmp_path)).x.shape[-1] == 64  # default size


def test_image_folder_grayscale_and_crop(tmp_path):
    from PIL import Image
    a = np.zeros((20, 60), np.uint8)
    a[:, 12:48] = 255  # white around the centre square only: a centre crop keeps only white
    Image.fromarray(a).save(tmp_path / "x.png")
    d = load_dataset(str(tmp_path), 8)
    assert d.x.shape == (1, 1, 8, 8) and d.y is None
    assert d.x.min() > 0.9


def _idx(path, arr, code=0x08):
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    data = head + arr.astype(">u1" if code == 0x08 else ">i4").tobytes()
    if path.endswith(".gz"):
        data = gzip.compress(data)
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx(tmp_path, gz):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    lab = np.array([3, 1, 4, 1, 5], np.uint8)
    sfx = ".gz" if gz else ""
    _idx(str(tmp_path / f"train-images-idx3-ubyte{sfx}"), img)
    _idx(str(tmp_path / f"train-labels-idx1-ubyte{sfx}"), lab)
    np.testing.assert_array_equal(read_idx(str(tmp_path / f"train-images-idx3-ubyte{sfx}")), img)
    for src in (str(tmp_path), str(tmp_path / f"train-images-idx3-ubyte{sfx}")):
        d = load_dataset(src)
        assert d.x.shape == (5, 1, 28, 28) and d.y.tolist() == [3, 1, 4, 1, 5]
        torch.testing.assert_close(d.x, torch.from_numpy(img).float()[:, None] / 127.5 - 1)
    assert load_dataset(str(tmp_path), 32).x.shape == (5, 1, 32, 32)


def test_idx_truncated(tmp_path):
    p = tmp_path / "t10k-images-idx3-ubyte"
    _idx(str(p), np.zeros((4, 8, 8), np.uint8))
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset(str(p))


def test_cifar(tmp_path):
    rng = np.random.default_rng(1)
    batches = []
    for i in (1, 2):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        batches.append(data)
        with open(tmp_path / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": data, b"labels": [i, 0, 9, i]}, f)
    d = load_dataset(str(tmp_path))
    assert d.x.shape == (8, 3, 32, 32) and d.y.tolist() == [1, 0, 9, 1, 2, 0, 9, 2]
    torch.testing.assert_close(d.x[5], torch.from_numpy(batches[1][1].reshape(3, 32, 32)).float() / 127.5 - 1)
    assert load_dataset(str(tmp_path / "data_batch_2"), 16).x.shape == (4, 3, 16, 16)


def test_cifar_batch_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset(str(tmp_path))
    assert not marker.exists()


def test_numpy_formats(tmp_path):
    rng = np.random.default_rng(2)
    nhwc = rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", nhwc)
    d = load_dataset(str(tmp_path / "a.npy"))
    assert d.x.shape == (6, 3, 12, 12) and d.y is None
    torch.testing.assert_close(d.x, torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 127.5 - 1)
    f01 = rng.random((4, 1, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "b.npz", images=f01, labels=np.array([0, 1, 1, 0]))
    d = load_dataset(str(tmp_path / "b.npz"), 8)
    assert d.x.shape == (4, 1, 8, 8) and d.y.tolist() == [0, 1, 1, 0] and d.x.min() >= -1
    pts = rng.normal(size=(50, 2)).astype(np.float32) * 5
    np.save(tmp_path / "p.npy", pts)
    d = load_dataset(str(tmp_path / "p.npy"))
    assert d.kind == "points"
    torch.testing.assert_close(d.x, torch.from_numpy(pts))


def test_errors_name_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="no PNG/JPEG"):
        load_dataset(str(tmp_path))  # empty folder
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="bad.png"):
        load_dataset(str(tmp_path))
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DatasetError, match="bad.npy"):
        load_dataset(str(tmp_path / "bad.npy"))
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.npz.*empty"):
        load_dataset(str(tmp_path / "empty.npz"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError, match="obj.npy"):
        load_dataset(str(tmp_path / "obj.npy"))
    np.save(tmp_path / "big.npy", np.full((3, 8, 8), 1000.0))
    with pytest.raises(DatasetError, match="big.npy.*values"):
        load_dataset(str(tmp_path / "big.npy"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DatasetError, match="unknown data file type"):
        load_dataset(str(tmp_path / "x.txt"))
    with pytest.raises(TypeError, match="name_or_path"):
        load_dataset(None)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", 0)
