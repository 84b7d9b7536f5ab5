"""fastgan.data: the pixel values every loader produces, not just shapes.

Each test writes a tiny input with chosen values and checks the loaded tensor value by value:
uint8 v -> v / 127.5 - 1, floats in [0, 1] -> 2v - 1, floats in [-1, 1] unchanged, digits (0..16)
-> v / 8 - 1; centre crops at the documented offsets (floor of the surplus / 2); resizes against
references computed here (bilinear with a triangle anti-alias filter for arrays, which is what
`_resize` asks torch for; PIL bicubic for image folders, on exact cases: constants, crop-only)."""
import gzip
import math
import pickle

import numpy as np
import pytest
import torch

from fastgan.data import digits, grid25, load_dataset, ring8
from fastgan.train.data import make_batches


def u8(a):
    """The documented uint8 mapping, in float64 (compared to the loader's float32 within 1e-6)."""
    return torch.from_numpy(np.asarray(a, np.float64) / 127.5 - 1)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected).double(), atol=atol, rtol=0)


# ---- resize references, written out from the definitions ---------------------------------------
def resize_matrix(n_in, n_out):
    """(n_out, n_in) weights of 1-D bilinear resizing (half-pixel centres, align_corners=False):
    downscaling uses the triangle filter stretched by the scale (anti-aliased, as PIL does),
    upscaling plain linear interpolation with the source clamped to the edge pixels."""
    w = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for i in range(n_out):
        if n_out < n_in:
            centre = (i + 0.5) * scale
            for j in range(n_in):
                w[i, j] = max(0.0, 1 - abs(j + 0.5 - centre) / scale)
            w[i] /= w[i].sum()
        else:
            src = max((i + 0.5) * scale - 0.5, 0.0)
            j0 = min(math.floor(src), n_in - 1)
            j1 = min(j0 + 1, n_in - 1)
            lam = src - j0
            w[i, j0] += 1 - lam
            w[i, j1] += lam
    return w


def resize_ref(x, size):
    """(..., H, W) float64 numpy -> (..., size, size), separable, then clamped to [-1, 1]."""
    h, w = x.shape[-2:]
    return np.clip(resize_matrix(h, size) @ x @ resize_matrix(w, size).T, -1, 1)


def test_resize_matrix_hand_values():
    """The reference itself, against weights worked out by hand."""
    np.testing.assert_allclose(resize_matrix(4, 2), [[3 / 7, 3 / 7, 1 / 7, 0], [0, 1 / 7, 3 / 7, 3 / 7]])
    np.testing.assert_allclose(resize_matrix(2, 4), [[1, 0], [.75, .25], [.25, .75], [0, 1]])
    np.testing.assert_allclose(resize_matrix(8, 4)[1], [0, 1 / 8, 3 / 8, 3 / 8, 1 / 8, 0, 0, 0])


# ---- digits -------------------------------------------------------------------------------------
DIGIT0_ROW0 = [0, 0, 5, 13, 9, 1, 0, 0]  # sklearn's digits image 0, first row (values 0..16)


def test_digits_values():
    from sklearn.datasets import load_digits
    raw = load_digits().images  # (1797, 8, 8), 0..16
    d = digits()
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == torch.float32
    close(d.x[0, 0, 0], [v / 8 - 1 for v in DIGIT0_ROW0])  # 0 -> -1, 5 -> -0.375, 13 -> 0.625
    assert d.x[0, 0, 0, 0].item() == -1.0 and d.x[0, 0, 0, 3].item() == 0.625
    close(d.x[:, 0], raw / 8 - 1)  # every pixel: v / 16 * 2 - 1
    assert d.x.min().item() == -1.0 and d.x.max().item() == 1.0  # the full range, both ends present
    assert (d.x == 1.0).sum().item() == int((raw == 16).sum())
    torch.testing.assert_close(load_dataset("digits").x, d.x, atol=0, rtol=0)
    torch.testing.assert_close(digits(8).x, d.x, atol=0, rtol=0)  # already 8x8: untouched


@pytest.mark.parametrize("size", [16, 32, 4])
def test_digits_resized_values(size):
    from sklearn.datasets import load_digits
    raw = load_digits().images[:50] / 8 - 1
    d = load_dataset("digits", size)
    assert d.x.shape == (1797, 1, size, size)
    close(d.x[:50, 0], resize_ref(raw, size), atol=1e-5)
    assert d.x.min() >= -1 and d.x.max() <= 1


# ---- Gaussian mixtures --------------------------------------------------------------------------
RING8 = [(math.cos(2 * math.pi * i / 8), math.sin(2 * math.pi * i / 8)) for i in range(8)]
GRID25 = [(float(i), float(j)) for i in (-4, -2, 0, 2, 4) for j in (-4, -2, 0, 2, 4)]


@pytest.mark.parametrize("name,centres,std", [("ring8", RING8, 0.01), ("grid25", GRID25, 0.05)])
def test_mixture_centres_and_spread(name, centres, std):
    d = load_dataset(name)
    torch.testing.assert_close(d.modes, torch.tensor(centres, dtype=torch.float32), atol=1e-7, rtol=0)
    assert d.mode_std == std and len(d) == 50_000
    for k, c in enumerate(centres):
        xk = d.x[d.y == k].double()
        n = xk.shape[0]
        assert n > 50_000 / len(centres) * 0.9
        se = std / math.sqrt(n)
        assert (xk.mean(0) - torch.tensor(c, dtype=torch.float64)).abs().max() < 5 * se, (name, k)
        s = xk.std(0)
        assert ((s / std - 1).abs() < 0.1).all(), (name, k, s)  # per axis, per mode
    # every sample is closest to the centre it was drawn from
    assert torch.equal(torch.cdist(d.x, d.modes).argmin(1), d.y)


def test_mixtures_are_seeded():
    a, b = ring8(1000, seed=3), ring8(1000, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, ring8(1000, seed=4).x)
    assert torch.equal(grid25(1000, seed=3).x, grid25(1000, seed=3).x)


# ---- image folders ------------------------------------------------------------------------------
def _save(path, arr, mode=None):
    from PIL import Image
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path)


def test_image_folder_exact_rgb_and_gray(tmp_path):
    rgb = np.array([[[0, 255, 128], [1, 2, 3], [254, 127, 64], [10, 20, 30]],
                    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]],
                    [[7, 77, 177], [200, 100, 50], [33, 66, 99], [90, 180, 250]],
                    [[5, 6, 7], [8, 9, 10], [11, 12, 13], [250, 251, 252]]], np.uint8)  # (H, W, 3)
    _save(tmp_path / "a.png", rgb)
    d = load_dataset(str(tmp_path), 4)  # already 4x4: no resampling at all
    assert d.x.shape == (1, 3, 4, 4)
    close(d.x[0], u8(rgb.transpose(2, 0, 1)))
    assert d.x[0, 0, 0, 0].item() == -1.0 and d.x[0, 1, 0, 0].item() == 1.0
    assert d.x[0, 2, 0, 0].item() == pytest.approx(128 / 127.5 - 1, abs=1e-7)

    g = tmp_path / "gray"
    g.mkdir()
    gray = np.array([[0, 255, 128, 1], [2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13]], np.uint8)
    _save(g / "g.png", gray)
    d = load_dataset(str(g), 4)
    assert d.x.shape == (1, 1, 4, 4)
    close(d.x[0, 0], u8(gray))


def test_image_folder_mixed_gray_and_rgb(tmp_path):
    """One RGB image makes the folder RGB: a grey image becomes three equal channels, same values."""
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 17  # 0, 17, ..., 255
    _save(tmp_path / "a.png", gray)
    _save(tmp_path / "b.png", np.full((4, 4, 3), 200, np.uint8))
    d = load_dataset(str(tmp_path), 4)
    assert d.x.shape == (2, 3, 4, 4)
    for c in range(3):
        close(d.x[0, c], u8(gray))
    close(d.x[1], torch.full((3, 4, 4), 200 / 127.5 - 1))


def test_image_folder_bilevel(tmp_path):
    a = np.array([[0, 1, 1, 0]] * 4, bool)
    _save(tmp_path / "b.png", a)
    d = load_dataset(str(tmp_path), 4)
    close(d.x[0, 0], np.where(a, 1.0, -1.0))


@pytest.mark.parametrize("w,h", [(7, 4), (6, 4), (4, 7), (4, 6)])
def test_image_folder_centre_crop_exact(tmp_path, w, h):
    """Short side already the target: only a crop, at floor((long - short) / 2)."""
    a = (np.arange(w * h).reshape(h, w) * 9 % 256).astype(np.uint8)
    _save(tmp_path / "c.png", a)
    d = load_dataset(str(tmp_path), 4)
    t, left = (h - 4) // 2, (w - 4) // 2
    close(d.x[0, 0], u8(a[t:t + 4, left:left + 4]))


@pytest.mark.parametrize("w,h,size", [(40, 20, 8), (3, 5, 8), (64, 64, 16), (13, 29, 64)])
def test_image_folder_resize_constant(tmp_path, w, h, size):
    _save(tmp_path / "k.png", np.full((h, w, 3), (0, 93, 255), np.uint8))
    d = load_dataset(str(tmp_path), size)
    assert d.x.shape == (1, 3, size, size)
    close(d.x[0], u8(np.broadcast_to(np.array([0, 93, 255])[:, None, None], (3, size, size))))


@pytest.mark.parametrize("w,h,size", [(12, 8, 4), (8, 12, 4), (3, 2, 4), (9, 9, 4)])
def test_image_folder_resize_matches_pil_bicubic(tmp_path, w, h, size):
    """Shorter side scaled to `size` with PIL's bicubic, then the centre square."""
    from PIL import Image
    rng = np.random.default_rng(w * 100 + h)
    a = rng.integers(0, 256, (h, w), dtype=np.uint8)
    _save(tmp_path / "r.png", a)
    s = size / min(w, h)
    nw, nh = round(w * s), round(h * s)
    ref = np.asarray(Image.fromarray(a).resize((nw, nh), Image.BICUBIC))
    t, left = (nh - size) // 2, (nw - size) // 2
    d = load_dataset(str(tmp_path), size)
    close(d.x[0, 0], u8(ref[t:t + size, left:left + size]))


def test_image_folder_16bit_gray(tmp_path):
    """16-bit grey PNGs (Pillow mode I;16) span 0..65535: 65535 is white, 32896 mid-grey."""
    from PIL import Image
    a = (np.array([[0, 64, 128, 255], [1, 2, 3, 4], [100, 150, 200, 250], [255, 0, 255, 0]]) * 257).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "h.png")
    with Image.open(tmp_path / "h.png") as im:
        assert im.mode.startswith("I")
    d = load_dataset(str(tmp_path), 4)
    assert d.x.shape == (1, 1, 4, 4)
    close(d.x[0, 0], u8(a // 257))


# ---- IDX ----------------------------------------------------------------------------------------
def _write_idx(path, code, dims, payload: bytes):
    """An IDX file written byte by byte: 0, 0, type code, ndim, big-endian uint32 dims, data."""
    head = bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    data = head + payload
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if str(path).endswith(".gz") else data)


IDX_IMG = np.array([[[0, 128, 255, 64], [1, 2, 3, 4], [250, 251, 252, 253], [9, 99, 199, 254]],
                    [[255, 255, 255, 255], [0, 0, 0, 0], [127, 128, 129, 130], [10, 20, 30, 40]]], np.uint8)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_uint8_values(tmp_path, gz):
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", 0x08, [2, 4, 4], bytes(IDX_IMG.ravel().tolist()))
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", 0x08, [2], bytes([7, 2]))
    d = load_dataset(str(tmp_path))
    assert d.x.shape == (2, 1, 4, 4) and d.y.tolist() == [7, 2]
    close(d.x[:, 0], u8(IDX_IMG))
    assert d.x[0, 0, 0, 0].item() == -1.0 and d.x[0, 0, 0, 2].item() == 1.0
    assert d.x[0, 0, 0, 1].item() == pytest.approx(128 / 127.5 - 1, abs=1e-7)
    d2 = load_dataset(str(tmp_path / f"train-images-idx3-ubyte{sfx}"), 2)  # 2x down, anti-aliased
    close(d2.x[:, 0], resize_ref(u8(IDX_IMG).numpy(), 2))
    # by hand, image 0 first output pixel: rows/cols weighted (3, 3, 1) / 7
    w = np.array([3, 3, 1, 0]) / 7
    assert d2.x[0, 0, 0, 0].item() == pytest.approx(w @ u8(IDX_IMG[0]).numpy() @ w, abs=1e-6)
    d8 = load_dataset(str(tmp_path), 8)  # 2x up
    close(d8.x[:, 0], resize_ref(u8(IDX_IMG).numpy(), 8))
    assert d8.x[0, 0, 0, 0].item() == -1.0  # a corner copies the corner pixel


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_non_square_is_centre_cropped(tmp_path, gz):
    a = np.arange(2 * 3 * 7, dtype=np.uint8).reshape(2, 3, 7) * 6  # (N, H=3, W=7)
    p = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    _write_idx(p, 0x08, [2, 3, 7], a.tobytes())
    d = load_dataset(str(p))
    assert d.x.shape == (2, 1, 3, 3)
    close(d.x[:, 0], u8(a[:, :, 2:5]))  # left = (7 - 3) // 2


def test_idx_float32_in_unit_range(tmp_path):
    a = np.array([[[0.0, 0.25], [0.5, 1.0]]], ">f4")
    p = tmp_path / "x-images-idx3-ubyte"
    _write_idx(p, 0x0D, [1, 2, 2], a.tobytes())
    d = load_dataset(str(p))
    close(d.x[0, 0], [[-1.0, -0.5], [0.0, 1.0]], atol=0)


# ---- CIFAR --------------------------------------------------------------------------------------
def _cifar_rows(n):
    """Rows of 3072 uint8: R plane 0, G plane 255, B plane (32 r + c + 7 i) % 256 for image i."""
    rows = np.zeros((n, 3072), np.uint8)
    rows[:, 1024:2048] = 255
    rc = np.arange(1024)
    for i in range(n):
        rows[i, 2048:] = (rc + 7 * i) % 256
    return rows


@pytest.mark.parametrize("key", [b"labels", b"fine_labels"])
def test_cifar_values(tmp_path, key):
    rows = _cifar_rows(3)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": rows, key: [4, 0, 9], b"batch_label": b"x"}, f)
    d = load_dataset(str(tmp_path))
    assert d.x.shape == (3, 3, 32, 32) and d.y.tolist() == [4, 0, 9]
    assert (d.x[:, 0] == -1).all() and (d.x[:, 1] == 1).all()
    for i in range(3):
        b = (np.arange(1024).reshape(32, 32) + 7 * i) % 256  # row-major planes: pixel (r, c) = 32 r + c
        close(d.x[i, 2], u8(b))
    assert d.x[1, 2, 0, 1].item() == pytest.approx(8 / 127.5 - 1, abs=1e-7)
    d16 = load_dataset(str(tmp_path / "data_batch_1"), 16)
    close(d16.x, resize_ref(u8(rows.reshape(3, 3, 32, 32)).numpy(), 16))
    assert (d16.x[:, 0] == -1).all() and (d16.x[:, 1] == 1).all()  # constant planes stay exact


def test_cifar_batches_concatenate_in_order(tmp_path):
    rows = _cifar_rows(4)
    for k, sl in ((1, slice(0, 2)), (2, slice(2, 4))):
        with open(tmp_path / f"data_batch_{k}", "wb") as f:
            pickle.dump({b"data": rows[sl], b"labels": [k, k]}, f)
    with open(tmp_path / "test_batch", "wb") as f:  # ignored when training batches exist
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, f)
    d = load_dataset(str(tmp_path))
    assert d.y.tolist() == [1, 1, 2, 2]
    close(d.x, u8(rows.reshape(4, 3, 32, 32)))


# ---- .npy / .npz --------------------------------------------------------------------------------
NPY_CASES = {
    "uint8": (np.array([[[0, 128], [255, 64]]], np.uint8), [[-1.0, 128 / 127.5 - 1], [1.0, 64 / 127.5 - 1]]),
    "f32_unit": (np.array([[[0.0, 0.25], [0.5, 1.0]]], np.float32), [[-1.0, -0.5], [0.0, 1.0]]),
    "f64_unit": (np.array([[[0.0, 0.75], [0.125, 1.0]]], np.float64), [[-1.0, 0.5], [-0.75, 1.0]]),
    "f32_sym": (np.array([[[-1.0, -0.5], [0.25, 1.0]]], np.float32), [[-1.0, -0.5], [0.25, 1.0]]),
    "f32_sym_narrow": (np.array([[[-0.5, 0.0], [0.25, 0.5]]], np.float32), [[-0.5, 0.0], [0.25, 0.5]]),
    "f32_0_255": (np.array([[[0.0, 127.5], [255.0, 51.0]]], np.float32), [[-1.0, 0.0], [1.0, -0.6]]),
}


@pytest.mark.parametrize("case", list(NPY_CASES))
@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_numpy_values(tmp_path, case, fmt):
    a, expected = NPY_CASES[case]
    p = tmp_path / f"a.{fmt}"
    if fmt == "npy":
        np.save(p, a)
    else:
        np.savez(p, x=a, y=np.array([3]))
    d = load_dataset(str(p))
    assert d.x.shape == (1, 1, 2, 2) and d.x.dtype == torch.float32
    close(d.x[0, 0], expected)
    assert d.y is None if fmt == "npy" else d.y.tolist() == [3]
    for v, e in zip(d.x.flatten().tolist(), np.ravel(expected)):
        if e in (-1.0, 1.0, 0.0):
            assert v == e  # the ends of the range exactly


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_numpy_rgb_layouts(tmp_path, layout):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (2, 3, 5, 5), dtype=np.uint8)
    a[0, :, 0, 0] = (0, 128, 255)
    np.save(tmp_path / "c.npy", a if layout == "nchw" else a.transpose(0, 2, 3, 1))
    d = load_dataset(str(tmp_path / "c.npy"))
    close(d.x, u8(a))
    assert d.x[0, :, 0, 0].tolist() == pytest.approx([-1.0, 128 / 127.5 - 1, 1.0], abs=1e-7)


def test_numpy_rgba_drops_alpha(tmp_path):
    a = np.random.default_rng(6).integers(0, 256, (2, 4, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "r.npz", images=a)
    d = load_dataset(str(tmp_path / "r.npz"))
    close(d.x, u8(a[:, :3]))


@pytest.mark.parametrize("h,w", [(4, 6), (4, 7), (6, 4), (5, 2)])
def test_numpy_centre_crop_exact(tmp_path, h, w):
    a = (np.arange(2 * h * w).reshape(2, 1, h, w) * 5 % 256).astype(np.uint8)
    np.save(tmp_path / "c.npy", a)
    s = min(h, w)
    t, left = (h - s) // 2, (w - s) // 2
    d = load_dataset(str(tmp_path / "c.npy"))
    close(d.x, u8(a[:, :, t:t + s, left:left + s]))
    d = load_dataset(str(tmp_path / "c.npy"), s)  # the crop's own size: no resampling
    close(d.x, u8(a[:, :, t:t + s, left:left + s]))


@pytest.mark.parametrize("h,w,size", [(8, 8, 4), (8, 12, 2), (4, 4, 8), (3, 5, 6), (6, 6, 4)])
@pytest.mark.parametrize("kind", ["uint8", "unit"])
def test_numpy_crop_then_resize(tmp_path, h, w, size, kind):
    rng = np.random.default_rng(h * w + size)
    a = rng.integers(0, 256, (2, 1, h, w), dtype=np.uint8)
    src = a if kind == "uint8" else (a / 255.0).astype(np.float32)
    base = u8(a).numpy() if kind == "uint8" else (a / 255.0).astype(np.float32).astype(np.float64) * 2 - 1
    np.save(tmp_path / "r.npy", src)
    s = min(h, w)
    t, left = (h - s) // 2, (w - s) // 2
    d = load_dataset(str(tmp_path / "r.npy"), size)
    assert d.x.shape == (2, 1, size, size)
    close(d.x, resize_ref(base[:, :, t:t + s, left:left + s], size), atol=2e-6)


def test_numpy_constant_resize_is_exact(tmp_path):
    np.save(tmp_path / "k.npy", np.full((1, 3, 6, 10), 255, np.uint8))
    for size in (2, 4, 6, 12, 16):
        d = load_dataset(str(tmp_path / "k.npy"), size)
        assert (d.x == 1.0).all(), size


def test_numpy_points_untouched(tmp_path):
    pts = np.array([[0.0, 255.0], [-3.5, 1e4]], np.float64)  # points are never rescaled
    np.save(tmp_path / "p.npy", pts)
    d = load_dataset(str(tmp_path / "p.npy"), 8)
    assert d.kind == "points"
    close(d.x, pts, atol=0)


# ---- the training batch stream passes values through --------------------------------------------
def test_batches_carry_loader_values(tmp_path):
    a = np.arange(12 * 4, dtype=np.uint8).reshape(12, 1, 2, 2) * 5
    np.save(tmp_path / "b.npy", a)
    ds = load_dataset(str(tmp_path / "b.npy"))
    it = make_batches(ds, 4, device=torch.device("cpu"), seed=0)
    got = torch.cat([next(it) for _ in range(3)])  # one epoch
    assert got.dtype == torch.float32
    order = got[:, 0, 0, 0].argsort()
    torch.testing.assert_close(got[order], ds.x, atol=0, rtol=0)
    close(ds.x, u8(a))
