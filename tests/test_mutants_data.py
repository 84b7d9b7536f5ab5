"""Tests written to kill mutants that survived mutation testing of fastgan/data (see docs/testing.md).

Each test names the behaviour it pins: the exact error messages (source named, what was expected),
dataset names, reprs and documented defaults, which file names select which loader, the IDX header
(every type code, magic and length checks, 4-byte big-endian dims), CIFAR batches as Python 2 wrote
them, the .npz key order, label handling, the value ranges `_to_unit` accepts, the [-1, 1] clamp
after resizing, and the rare image modes of image folders (bilevel, 32-bit integer, float).
Oracles are written out here (numpy / PIL / plain arithmetic), never taken from fastgan.
"""
import collections
import gzip
import math
import os
import pickle
import re

import numpy as np
import pytest
import torch

from fastgan.data import DatasetError, GANDataset, digits, grid25, load_dataset, read_idx, ring8


def _raises(exc, text):
    return pytest.raises(exc, match=re.escape(text))


def _starts(exc, text):
    """The message starts with `text` (the rest is a library's own wording)."""
    return pytest.raises(exc, match="^" + re.escape(text))


def u8(a):
    return torch.from_numpy(np.asarray(a, np.float64) / 127.5 - 1)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected).double(), atol=atol, rtol=0)


def _save_png(path, arr):
    from PIL import Image
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(arr).save(path)


# ---- GANDataset ---------------------------------------------------------------------------------
def test_gan_dataset_defaults_items_and_repr():
    x = torch.arange(12, dtype=torch.float32).reshape(3, 1, 2, 2)
    d = GANDataset(x)
    assert d.name == "" and d.kind == "image" and d.y is None and d.modes is None and d.mode_std is None
    assert torch.equal(d[1], x[1])  # no labels: the item is the sample alone, not a tuple
    assert d.tensors == (x,) and d.num_classes is None and len(d) == 3
    assert repr(d) == "GANDataset('', image, x=(3, 1, 2, 2))"
    dy = GANDataset(x, torch.tensor([0, 4, 1]), name="toy", kind="points")
    assert repr(dy) == "GANDataset('toy', points, x=(3, 1, 2, 2), 5 classes)"
    xi, yi = dy[2]
    assert torch.equal(xi, x[2]) and int(yi) == 1


# ---- built-ins ----------------------------------------------------------------------------------
def _ring8_modes():
    return np.array([(math.cos(2 * math.pi * i / 8), math.sin(2 * math.pi * i / 8)) for i in range(8)])


def test_mixture_samples_are_mode_plus_scaled_noise():
    """ring8(n, seed): labels k ~ randint(8), x = mode[k] + 0.01 * randn, from one seeded generator."""
    d = ring8(6, seed=3)
    g = torch.Generator().manual_seed(3)
    k = torch.randint(8, (6,), generator=g)
    noise = torch.randn(6, 2, generator=g).double()
    want = torch.from_numpy(_ring8_modes())[k] + 0.01 * noise
    assert torch.equal(d.y, k)
    close(d.x, want, atol=1e-6)
    assert d.name == "ring8" and d.kind == "points" and d.mode_std == 0.01
    # num_classes counts the labels present (max + 1), not the modes
    assert repr(d) == f"GANDataset('ring8', points, x=(6, 2), {int(k.max()) + 1} classes)"


def test_mixture_default_seed_and_names():
    assert torch.equal(ring8(64).x, ring8(64, seed=0).x)
    assert torch.equal(grid25(64).x, grid25(64, seed=0).x)
    g = grid25(8)
    assert g.name == "grid25" and g.modes.shape == (25, 2) and g.mode_std == 0.05
    assert load_dataset("ring8").name == "ring8" and load_dataset("grid25").name == "grid25"


def test_mixture_modes_stay_float32_under_float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        d = ring8(4)
    finally:
        torch.set_default_dtype(old)
    assert d.modes.dtype == torch.float32


def test_digits_name():
    assert digits().name == "digits"
    assert load_dataset("digits", 4).name == "digits"


# ---- load_dataset arguments ---------------------------------------------------------------------
def test_load_dataset_argument_errors(tmp_path):
    with _raises(TypeError, "load_dataset: argument 'name_or_path' must be a non-empty string, got ''"):
        load_dataset("")
    with _raises(TypeError, "load_dataset: argument 'name_or_path' must be a non-empty string, got 5"):
        load_dataset(5)
    with _raises(ValueError, "load_dataset: argument 'image_size' must be a positive int or None, got 0"):
        load_dataset("ring8", 0)
    with _raises(ValueError, "load_dataset: argument 'image_size' must be a positive int or None, got 2.0"):
        load_dataset("ring8", 2.0)
    with _raises(ValueError, "load_dataset: argument 'image_size' must be a positive int or None, got True"):
        load_dataset("digits", True)
    missing = str(tmp_path / "nope")
    with _raises(FileNotFoundError, f"no such dataset: {missing!r} is neither a built-in "
                                    "(digits, digits-m, digits-inv, digits-thick, stacked-digits, ring8, grid25) "
                                    "nor an existing file or folder"):
        load_dataset(missing)


def test_image_size_one_is_allowed(tmp_path):
    np.save(tmp_path / "k.npy", np.full((2, 1, 4, 4), 255, np.uint8))
    d = load_dataset(str(tmp_path / "k.npy"), 1)
    assert d.x.shape == (2, 1, 1, 1) and d.x.max() <= 1.0
    close(d.x, torch.ones(2, 1, 1, 1))


def test_unknown_file_type_message(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hi")
    with _raises(DatasetError, f"{p}: unknown data file type; expected .npy, .npz, an IDX images file "
                               "or a CIFAR python batch (or a folder of images)"):
        load_dataset(str(p))


# ---- resizing -----------------------------------------------------------------------------------
def test_resize_when_size_equals_channel_count(tmp_path):
    """image_size == C (3 for RGB) still resizes: the check is on the width, not the channels."""
    np.save(tmp_path / "c.npy", np.full((2, 3, 5, 5), 200, np.uint8))
    d = load_dataset(str(tmp_path / "c.npy"), 3)
    assert d.x.shape == (2, 3, 3, 3)
    close(d.x, torch.full((2, 3, 3, 3), 200 / 127.5 - 1))


@pytest.mark.parametrize("h,size", [(7, 6), (7, 3), (8, 2), (1, 9), (3, 7), (12, 4)])
@pytest.mark.parametrize("value", [0, 255])
def test_resize_clamps_to_exact_range(tmp_path, h, size, value):
    """A constant black or white image stays within [-1, 1] after resizing: float32 interpolation
    weights can sum to 1 + 1 ulp (these sizes do so on x86-64), the result is clamped."""
    np.save(tmp_path / "k.npy", np.full((2, 3, h, h), value, np.uint8))
    d = load_dataset(str(tmp_path / "k.npy"), size)
    assert d.x.shape == (2, 3, size, size)
    assert d.x.min() >= -1.0 and d.x.max() <= 1.0
    close(d.x, torch.full(d.x.shape, 1.0 if value else -1.0))


# ---- value ranges (_to_unit) --------------------------------------------------------------------
@pytest.mark.parametrize("vals,want", [
    ([0.0, 1.5, 2.0, 0.5], [-1.0, 1.5 / 127.5 - 1, 2 / 127.5 - 1, 0.5 / 127.5 - 1]),  # 0..255 branch
    ([-1.0, 0.0, 1.0, 0.5], [-1.0, 0.0, 1.0, 0.5]),  # [-1, 1]: unchanged
    ([0.0, 255.0, 100.0, 1.0], [-1.0, 1.0, 100 / 127.5 - 1, 1 / 127.5 - 1]),
])
def test_float_value_ranges(tmp_path, vals, want):
    np.save(tmp_path / "f.npy", np.array(vals, np.float32).reshape(1, 2, 2))
    d = load_dataset(str(tmp_path / "f.npy"))
    close(d.x.flatten(), want)


@pytest.mark.parametrize("vals", [[-1.5, 0.5, 0.0, 0.0], [-0.5, 1.5, 0.0, 0.0], [0.0, 255.5, 0.0, 0.0],
                                  [-2.0, 1.0, 0.0, 0.0]])
def test_float_values_outside_every_range(tmp_path, vals):
    p = tmp_path / "f.npy"
    np.save(p, np.array(vals, np.float32).reshape(1, 2, 2))
    lo, hi = float(min(vals)), float(max(vals))
    with _raises(DatasetError, f"{p}: image values span [{lo}, {hi}]; expected uint8, [0, 1], [-1, 1] or 0..255"):
        load_dataset(str(p))


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, "<U1"])
def test_non_numeric_images_rejected(tmp_path, dtype):
    p = tmp_path / "z.npy"
    a = np.zeros((2, 3, 3), dtype)
    np.save(p, a)
    with _raises(DatasetError, f"{p}: expected a numeric array, got dtype {a.dtype}"):
        load_dataset(str(p))


def test_nan_messages(tmp_path):
    img = np.zeros((2, 3, 3), np.float32)
    img[1, 2, 0] = np.nan
    np.save(tmp_path / "i.npy", img)
    with _raises(DatasetError, f"{tmp_path / 'i.npy'}: the array holds NaN or infinite values"):
        load_dataset(str(tmp_path / "i.npy"))
    pts = np.zeros((4, 2), np.float64)
    pts[3, 1] = np.inf
    np.save(tmp_path / "p.npy", pts)
    with _raises(DatasetError, f"{tmp_path / 'p.npy'}: the array holds NaN or infinite values"):
        load_dataset(str(tmp_path / "p.npy"))


# ---- array shapes and labels (_array_dataset) ---------------------------------------------------
@pytest.mark.parametrize("shape,text", [
    ((5,), "expected an array of samples (N, ...) with N >= 1, got shape (5,)"),
    ((), "expected an array of samples (N, ...) with N >= 1, got shape ()"),
    ((0, 3), "expected an array of samples (N, ...) with N >= 1, got shape (0, 3)"),
    ((0, 4, 4), "expected an array of samples (N, ...) with N >= 1, got shape (0, 4, 4)"),
    ((1, 1, 1, 1, 1), "expected 2-D points (N, D) or images (N, H, W[, C]), got shape (1, 1, 1, 1, 1)"),
    ((2, 5, 6, 7), "cannot tell the channel axis of image array shape (2, 5, 6, 7); "
                   "expected (N, C, H, W) or (N, H, W, C) with C in 1, 3, 4"),
])
def test_array_shape_messages(tmp_path, shape, text):
    p = tmp_path / "s.npy"
    np.save(p, np.zeros(shape, np.uint8))
    with _raises(DatasetError, f"{p}: {text}"):
        load_dataset(str(p))


@pytest.mark.parametrize("shape,size", [((2, 0, 4), None), ((2, 0, 4), 8), ((2, 4, 0), 8),
                                        ((2, 1, 3, 0), None), ((3, 0), None)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_empty_samples_rejected(tmp_path, shape, size, dtype):
    """Zero-height/width images (or 0-D points) are a DatasetError, not 0x0 images or a torch
    RuntimeError from the resize (the bug found by _to_unit's empty-array mutants)."""
    p = tmp_path / "e.npy"
    np.save(p, np.zeros(shape, dtype))
    with _raises(DatasetError, f"{p}: the samples are empty (shape {shape}); every axis needs a size >= 1"):
        load_dataset(str(p), size)


def test_nhwc_gray_and_rgba(tmp_path):
    rng = np.random.default_rng(7)
    g = rng.integers(0, 256, (2, 5, 6, 1), dtype=np.uint8)  # (N, H, W, 1)
    np.save(tmp_path / "g.npy", g)
    d = load_dataset(str(tmp_path / "g.npy"))
    assert d.x.shape == (2, 1, 5, 5)
    close(d.x, u8(g.transpose(0, 3, 1, 2)[:, :, :, 0:5]))
    rgba = rng.integers(0, 256, (2, 6, 6, 4), dtype=np.uint8)  # (N, H, W, 4): alpha dropped
    np.save(tmp_path / "r.npy", rgba)
    d = load_dataset(str(tmp_path / "r.npy"))
    assert d.x.shape == (2, 3, 6, 6)
    close(d.x, u8(rgba.transpose(0, 3, 1, 2)[:, :3]))


def test_labels_are_int64_tensors_flattened(tmp_path):
    x = np.zeros((3, 1, 2, 2), np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([[2], [0], [1]], np.uint8))
    d = load_dataset(str(tmp_path / "a.npz"))
    assert isinstance(d.y, torch.Tensor) and d.y.dtype == torch.int64 and d.y.shape == (3,)
    assert d.y.tolist() == [2, 0, 1] and d.num_classes == 3
    assert isinstance(d[0], tuple)


@pytest.mark.parametrize("labels", [np.array([0, 1], np.int64), np.array([0.0, 1.0, 2.0]),
                                    np.array([0, -1, 2], np.int64), np.array(["a", "b", "c"])])
def test_unusable_labels_are_dropped(tmp_path, labels):
    """Wrong length, non-integer or negative labels are ignored (y is None), the images load."""
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 1, 2, 2), np.uint8), y=labels)
    d = load_dataset(str(tmp_path / "a.npz"))
    assert d.y is None and d.x.shape == (3, 1, 2, 2)
    assert isinstance(d[0], torch.Tensor)


def test_points_keep_labels_name_and_become_float32(tmp_path):
    pts = np.array([[0.5, -2.0], [3.0, 1e3], [0.1, 0.2]], np.float64)
    np.savez(tmp_path / "p.npz", x=pts, labels=np.array([1, 0, 1], np.int32))
    p = str(tmp_path / "p.npz")
    d = load_dataset(p)
    assert d.kind == "points" and d.x.dtype == torch.float32 and d.name == p
    close(d.x, pts.astype(np.float32), atol=0)
    assert d.y.dtype == torch.int64 and d.y.tolist() == [1, 0, 1]
    np.save(tmp_path / "q.npy", pts)
    q = load_dataset(str(tmp_path / "q.npy"))
    assert q.x.dtype == torch.float32 and q.name == str(tmp_path / "q.npy") and q.y is None


# ---- .npy / .npz --------------------------------------------------------------------------------
def _pattern(v):
    return np.full((1, 1, 2, 2), v, np.uint8)


@pytest.mark.parametrize("key", ["x", "X", "images", "data", "arr_0"])
def test_npz_image_key_is_chosen_over_first(tmp_path, key):
    p = tmp_path / "k.npz"
    np.savez(p, **{"aaa": _pattern(10), key: _pattern(200)})
    d = load_dataset(str(p))
    close(d.x, u8(_pattern(200)))
    assert d.name == str(p)


def test_npz_image_key_priority(tmp_path):
    p = tmp_path / "k.npz"
    np.savez(p, **{"arr_0": _pattern(1), "data": _pattern(2), "images": _pattern(3), "X": _pattern(4),
                   "x": _pattern(5)})
    close(load_dataset(str(p)).x, u8(_pattern(5)))


def test_npz_falls_back_to_first_key(tmp_path):
    p = tmp_path / "k.npz"
    np.savez(p, **{"foo": _pattern(9), "bar": _pattern(250)})
    close(load_dataset(str(p)).x, u8(_pattern(9)))


@pytest.mark.parametrize("key", ["y", "Y", "labels", "targets"])
def test_npz_label_keys(tmp_path, key):
    p = tmp_path / "k.npz"
    np.savez(p, **{"x": np.zeros((2, 1, 2, 2), np.uint8), key: np.array([3, 1])})
    assert load_dataset(str(p)).y.tolist() == [3, 1]


def test_npz_errors(tmp_path):
    p = tmp_path / "none.npz"
    np.savez(p)  # a valid archive without arrays
    with _raises(DatasetError, f"{p}: the .npz archive is empty"):
        load_dataset(str(p))
    q = tmp_path / "obj.npz"
    np.savez(q, x=np.array([{"a": 1}], dtype=object))  # readable only with pickle
    with _starts(DatasetError, f"{q}: cannot read array 'x' (ValueError: "):
        load_dataset(str(q))


def test_npy_errors_name_the_exception(tmp_path):
    p = tmp_path / "bad.npy"
    p.write_bytes(b"\x93NUMPY garbage")
    with _starts(DatasetError, f"{p}: not a readable .npy/.npz file (ValueError: "):
        load_dataset(str(p))
    q = tmp_path / "obj.npy"
    np.save(q, np.zeros((2, 2, 2), dtype=object), allow_pickle=True)
    with _starts(DatasetError, f"{q}: not a readable .npy/.npz file (ValueError: "):
        load_dataset(str(q))


class _Touch:
    """Unpickling this creates a file: the sign that a loader ran code from a data file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_npy_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "ran"
    p = tmp_path / "evil.npy"
    p.write_bytes(pickle.dumps(_Touch(str(marker))))
    with _starts(DatasetError, f"{p}: not a readable .npy/.npz file (ValueError: "):
        load_dataset(str(p))
    assert not marker.exists()


def test_folder_of_numpy_files(tmp_path):
    for ext in ("npy", "npz"):
        d = tmp_path / ext
        d.mkdir()
        (np.save if ext == "npy" else np.savez)(d / f"a.{ext}", np.zeros((2, 2, 2), np.uint8))
        with _raises(DatasetError, f"{d}: a folder of .npy/.npz files; pass the file itself"):
            load_dataset(str(d))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", np.zeros((2, 2, 2), np.uint8))
    _save_png(mixed / "b.png", np.full((4, 4), 255, np.uint8))
    d = load_dataset(str(mixed), 4)  # images present: an image folder
    assert d.x.shape == (1, 1, 4, 4) and (d.x == 1.0).all()


# ---- IDX ----------------------------------------------------------------------------------------
def _idx_bytes(code, dims, payload=b"", ndim=None):
    nd = len(dims) if ndim is None else ndim
    return bytes([0, 0, code, nd]) + b"".join(int(d).to_bytes(4, "big") for d in dims) + payload


@pytest.mark.parametrize("code,dtype,vals", [
    (0x08, np.uint8, [0, 7, 255, 128]),
    (0x09, np.int8, [-128, -1, 0, 127]),
    (0x0B, ">i2", [-300, 1000, -1, 32767]),
    (0x0C, ">i4", [-70000, 2 ** 30, -1, 5]),
    (0x0D, ">f4", [0.5, -1.25, 3.0, 0.1]),
    (0x0E, ">f8", [0.1, -1e-300, 2.5, 1e300]),
])
def test_read_idx_every_type_code(tmp_path, code, dtype, vals):
    a = np.array(vals, dtype).reshape(2, 2)
    p = tmp_path / "t.idx"
    p.write_bytes(_idx_bytes(code, [2, 2], a.tobytes()))
    got = read_idx(str(p))
    assert got.dtype == np.dtype(dtype) and got.shape == (2, 2)
    np.testing.assert_array_equal(got, a)


def test_read_idx_dims_are_four_byte_big_endian(tmp_path):
    p = tmp_path / "t.idx"
    p.write_bytes(_idx_bytes(0x08, [2 ** 24 + 5, 2 ** 24 + 7, 0]))  # no data needed
    assert read_idx(str(p)).shape == (2 ** 24 + 5, 2 ** 24 + 7, 0)
    p.write_bytes(_idx_bytes(0x08, [1, 1, 1], b"\x2a"))  # exactly header + 1 byte
    np.testing.assert_array_equal(read_idx(str(p)), [[[42]]])


@pytest.mark.parametrize("data", [
    b"\x00\x00",
    bytes([1, 0, 8, 1, 0, 0, 0, 1, 9]),
    bytes([0, 1, 8, 1, 0, 0, 0, 1, 9]),
    bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 9]),
    bytes([0, 0, 8, 0, 0, 0, 0, 1, 9]),
], ids=["short", "byte0", "byte1", "type", "ndim0"])
def test_read_idx_bad_magic(tmp_path, data):
    p = tmp_path / "t.idx"
    p.write_bytes(data)
    with _raises(DatasetError, f"{p}: not an IDX file (bad magic number)"):
        read_idx(str(p))


@pytest.mark.parametrize("data,text", [
    (bytes([0, 0, 8, 1]), "truncated IDX header"),
    (bytes([0, 0, 8, 3, 0, 0, 0, 1]), "truncated IDX header"),
    (bytes([0, 0, 8, 3]) + bytes(4 * 2 + 3), "truncated IDX header"),
    (_idx_bytes(0x08, [2, 2, 2]), "truncated IDX data (0 of 8 bytes)"),
    (_idx_bytes(0x0C, [3], bytes(11)), "truncated IDX data (11 of 12 bytes)"),
])
def test_read_idx_truncated(tmp_path, data, text):
    p = tmp_path / "t.idx"
    p.write_bytes(data)
    with _raises(DatasetError, f"{p}: {text}"):
        read_idx(str(p))


def test_read_idx_unreadable_gzip(tmp_path):
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(b"not gzip at all")
    with _starts(DatasetError, f"{p}: cannot read (Not a gzipped file"):
        load_dataset(str(p))
    p.write_bytes(gzip.compress(_idx_bytes(0x08, [1, 2, 2], bytes(4)))[:-12])
    with _starts(DatasetError, f"{p}: cannot read ("):
        read_idx(str(p))


def test_idx_not_images_message(tmp_path):
    p = tmp_path / "x-images-idx3-ubyte"
    p.write_bytes(_idx_bytes(0x08, [2, 3], bytes(6)))
    with _raises(DatasetError, f"{p}: expected an IDX image file (N, H, W), got shape (2, 3)"):
        load_dataset(str(p))


IMG = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4) * 8


@pytest.mark.parametrize("name", ["digits.idx3", "mine-ubyte", "mine-ubyte.gz", "my.IDX3"])
def test_idx_file_names_select_the_idx_loader(tmp_path, name):
    p = tmp_path / name
    data = _idx_bytes(0x08, [2, 4, 4], IMG.tobytes())
    p.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    d = load_dataset(str(p))
    close(d.x[:, 0], u8(IMG))
    assert d.name == str(p) and d.y is None


@pytest.mark.parametrize("as_folder", [False, True])
def test_idx_dotted_names_find_labels(tmp_path, as_folder):
    """The `images.idx3` / `labels.idx1` spelling (as some mirrors name the files) pairs too."""
    img = tmp_path / "train-images.idx3-ubyte"
    img.write_bytes(_idx_bytes(0x08, [2, 4, 4], IMG.tobytes()))
    (tmp_path / "train-labels.idx1-ubyte").write_bytes(_idx_bytes(0x08, [2], bytes([6, 2])))
    d = load_dataset(str(tmp_path if as_folder else img))
    assert d.y.tolist() == [6, 2] and d.name == str(img)
    close(d.x[:, 0], u8(IMG))


def test_idx_folder_picks_train_else_first(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(0x08, [1, 4, 4], IMG[1].tobytes()))
    d = load_dataset(str(tmp_path))  # only the test split: that one
    assert d.x.shape == (1, 1, 4, 4) and d.name == str(tmp_path / "t10k-images-idx3-ubyte")
    close(d.x[0, 0], u8(IMG[1]))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(0x08, [2, 4, 4], IMG.tobytes()))
    d = load_dataset(str(tmp_path))  # both: the training split, though t10k sorts first
    assert d.x.shape == (2, 1, 4, 4) and d.name == str(tmp_path / "train-images-idx3-ubyte")


# ---- CIFAR --------------------------------------------------------------------------------------
def _py2_batch(pixels, labels):
    """A CIFAR batch as Python 2's cPickle wrote it (protocol 2): the keys are byte strings (opcode
    SHORT_BINSTRING), which Python 3 reads as bytes only with encoding="bytes"."""
    def ints(vals):
        return b"](" + b"".join(b"K" + bytes([v]) for v in vals) + b"e"
    return (b"\x80\x02}(" + b"U\x04data" + ints(pixels) + b"U\x06labels" + ints(labels) + b"u.")


def test_cifar_python2_batch(tmp_path):
    pix = np.zeros(2 * 3072, np.uint8)
    pix[::3] = 1  # values 0 and 1 only: as uint8 they are -1 and 1/127.5 - 1, not a [0, 1] image
    p = tmp_path / "data_batch_1"
    p.write_bytes(_py2_batch(pix.tolist(), [5, 2]))
    d = load_dataset(str(p))
    assert d.y.tolist() == [5, 2] and d.x.shape == (2, 3, 32, 32) and d.name == str(p)
    close(d.x, u8(pix.reshape(2, 3, 32, 32)))


@pytest.mark.parametrize("name", ["train", "test", "test_batch", "data_batch_3"])
def test_cifar_file_names(tmp_path, name):
    """CIFAR-100 ships `train` and `test`, CIFAR-10 `data_batch_*` and `test_batch`."""
    rows = np.full((2, 3072), 255, np.uint8)
    p = tmp_path / name
    with open(p, "wb") as f:
        pickle.dump({b"data": rows, b"fine_labels": [7, 3]}, f)
    d = load_dataset(str(p))
    assert d.y.tolist() == [7, 3] and (d.x == 1.0).all() and d.name == str(p)


def test_cifar_folder_with_test_batch_only(tmp_path):
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": [1, 2, 0]}, f)
    (tmp_path / "readme.html").write_text("x")
    d = load_dataset(str(tmp_path), 8)
    assert d.x.shape == (3, 3, 8, 8) and d.y.tolist() == [1, 2, 0] and d.name == str(tmp_path)
    assert (d.x == -1.0).all()


def test_cifar_batches_without_labels(tmp_path):
    for k in (1, 2):
        with open(tmp_path / f"data_batch_{k}", "wb") as f:
            pickle.dump({b"data": np.zeros((1, 3072), np.uint8)} if k == 1 else
                        {b"data": np.zeros((1, 3072), np.uint8), b"labels": [4]}, f)
    d = load_dataset(str(tmp_path))  # one batch without labels: no labels at all
    assert d.y is None and d.x.shape == (2, 3, 32, 32)
    d1 = load_dataset(str(tmp_path / "data_batch_1"))
    assert d1.y is None and d1.x.shape == (1, 3, 32, 32)


def test_cifar_refuses_other_classes_by_name(tmp_path):
    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump({b"data": collections.OrderedDict(), b"labels": []}, f)
    with _raises(DatasetError, f"{p}: not a readable CIFAR python batch "
                               "(UnpicklingError: refusing to load collections.OrderedDict)"):
        load_dataset(str(p))
    with open(p, "wb") as f:
        pickle.dump({b"labels": [1]}, f)
    with _raises(DatasetError, f"{p}: not a readable CIFAR python batch (KeyError: b'data')"):
        load_dataset(str(p))


# ---- image folders ------------------------------------------------------------------------------
def _write_tiff_as_png(path, arr):
    """A TIFF written under a .png name: PIL opens by content, so this reaches the loader's modes
    that PNG cannot hold (32-bit integer 'I', float 'F')."""
    from PIL import Image
    Image.fromarray(arr).save(path, format="TIFF")


def test_image_folder_32bit_integer_gray(tmp_path):
    a = np.array([[-3000, 0, 257, 128], [65535, 70000, 2 ** 30, 32896], [514, 1000, 129, 386],
                  [-1, 5140, 60000, 12850]], np.int32)
    _write_tiff_as_png(tmp_path / "i.png", a)
    from PIL import Image
    with Image.open(tmp_path / "i.png") as im:
        assert im.mode == "I"
    d = load_dataset(str(tmp_path), 4)
    assert d.x.shape == (1, 1, 4, 4)
    close(d.x[0, 0], u8(np.clip(np.rint(a / 257), 0, 255)))  # 0..65535 -> 0..255, clipped


def test_image_folder_float_gray(tmp_path):
    a = np.array([[0, 1, 2, 3], [100, 128, 200, 255], [7, 8, 9, 10], [50, 60, 70, 80]], np.float32)
    _write_tiff_as_png(tmp_path / "f.png", a)
    d = load_dataset(str(tmp_path), 4)
    assert d.x.shape == (1, 1, 4, 4)
    close(d.x[0, 0], u8(a))


def test_image_folder_bilevel_is_one_channel(tmp_path):
    from PIL import Image
    Image.fromarray(np.array([[0, 1, 1, 0]] * 4, bool)).save(tmp_path / "b.png")
    d = load_dataset(str(tmp_path), 4)
    assert d.x.shape == (1, 1, 4, 4) and d.name == str(tmp_path)


def test_image_folder_dark_pixels_stay_uint8_scaled(tmp_path):
    """Pixel values 0 and 1 are uint8 levels (1 -> 1/127.5 - 1), not a [0, 1] float image."""
    a = np.array([[0, 1] * 2] * 4, np.uint8)
    _save_png(tmp_path / "d.png", a)
    d = load_dataset(str(tmp_path), 4)
    close(d.x[0, 0], u8(a))


def test_image_folder_unreadable_message(tmp_path):
    p = tmp_path / "bad.png"
    p.write_bytes(b"not a png at all")
    with _starts(DatasetError, f"{p}: unreadable image (UnidentifiedImageError: "):
        load_dataset(str(tmp_path))


@pytest.mark.parametrize("layout", [["cats/a.png", "cats/b.png"],  # one class folder only
                                    ["a.png", "cats/b.png", "dogs/c.png"],  # an image at the root
                                    ["a.png", "b.png"]])
def test_image_folder_without_labels(tmp_path, layout):
    for i, rel in enumerate(layout):
        _save_png(tmp_path / rel, np.full((4, 4), 40 * i, np.uint8))
    d = load_dataset(str(tmp_path), 4)
    assert d.y is None and len(d) == len(layout)
    close(d.x[:, 0], u8(np.stack([np.full((4, 4), 40 * i) for i in range(len(layout))])))


def test_image_folder_labels_from_subfolders(tmp_path):
    for rel in ("b/x.png", "a/y.png", "a/z/w.png"):
        _save_png(tmp_path / rel, np.zeros((4, 4), np.uint8))
    d = load_dataset(str(tmp_path), 4)
    assert d.y.dtype == torch.int64 and d.y.tolist() == [0, 0, 1]  # files a/y, a/z/w, b/x
