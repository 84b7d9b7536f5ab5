"""Built-in datasets and loaders for the formats users have on disk, all returned as a GANDataset:
float32 images in [-1, 1] with shape (N, C, H, W) (or points (N, D)), and labels when the source
has them. No downloads: `digits` ships with scikit-learn, the mixtures are generated."""
import gzip
import math
import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

BUILTIN = ("digits", "digits-m", "digits-inv", "digits-thick", "stacked-digits", "ring8", "grid25")
#: the digits and the same digits as other image domains (translation models: --data digits:digits-m)
DIGIT_DOMAINS = ("digits", "digits-m", "digits-inv", "digits-thick")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """A data source that exists but cannot be used (empty, unreadable, wrong shape)."""


class GANDataset(Dataset):
    """In-memory samples `x` (and optional integer labels `y`); items are `(x[i], y[i])` or `x[i]`.

    kind: "image" (x is (N, C, H, W) in [-1, 1]) or "points" (x is (N, D)).
    For the Gaussian mixtures, `modes` (K, D) and `mode_std` describe the true distribution.
    For stacked images (stacked-digits), `channel_labels` (N, C) is the class of each channel's image,
    and `y` the mode they make together.
    """

    def __init__(self, x: torch.Tensor, y=None, *, name: str = "", kind: str = "image", modes=None,
                 mode_std=None, channel_labels=None):
        self.x, self.y, self.name, self.kind = x, y, name, kind
        self.modes, self.mode_std = modes, mode_std
        self.channel_labels = channel_labels

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i] if self.y is None else (self.x[i], self.y[i])

    @property
    def tensors(self):
        return (self.x,) if self.y is None else (self.x, self.y)

    @property
    def num_classes(self):
        return None if self.y is None else int(self.y.max()) + 1

    def __repr__(self):
        extra = f", {self.num_classes} classes" if self.y is not None else ""
        return f"GANDataset({self.name!r}, {self.kind}, x={tuple(self.x.shape)}{extra})"


# ---- built-in -----------------------------------------------------------------------------------
def _mixture(name: str, means, std: float, n: int, seed: int) -> GANDataset:
    g = torch.Generator().manual_seed(seed)
    means = torch.tensor(means, dtype=torch.float32)
    k = torch.randint(len(means), (n,), generator=g)
    x = means[k] + std * torch.randn(n, 2, generator=g)
    return GANDataset(x, k, name=name, kind="points", modes=means, mode_std=std)


def ring8(n: int = 50_000, seed: int = 0) -> GANDataset:
    """8 Gaussians (std 0.01) evenly spaced on the unit circle."""
    a = [2 * math.pi * i / 8 for i in range(8)]
    return _mixture("ring8", [(math.cos(t), math.sin(t)) for t in a], 0.01, n, seed)


def grid25(n: int = 50_000, seed: int = 0) -> GANDataset:
    """25 Gaussians (std 0.05) centred on {-4, -2, 0, 2, 4}^2."""
    return _mixture("grid25", [(float(i), float(j)) for i in range(-4, 5, 2) for j in range(-4, 5, 2)],
                    0.05, n, seed)


def digits(image_size=None) -> GANDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), resized."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 16.0 * 2 - 1
    return GANDataset(_resize(x, image_size), torch.from_numpy(d.target).long(), name="digits")


def stacked_digits(n: int = 50_000, image_size=None, seed: int = 0) -> GANDataset:
    """StackedMNIST made from the bundled digits: each sample stacks three independently drawn digits
    as its three channels, so the data has 10^3 = 1,000 equally likely modes (the construction of
    VEEGAN and PacGAN's mode-collapse benchmark). `y` is the mode, 100 d0 + 10 d1 + d2, and
    `channel_labels` the three digits; `seed` picks the draws."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"stacked_digits: argument 'n' must be a positive int, got {n!r}")
    base = digits(image_size)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(base), (n, 3), generator=g)
    labels = base.y[idx]
    return GANDataset(base.x[:, 0][idx], (labels * torch.tensor([100, 10, 1])).sum(1), name="stacked-digits",
                      channel_labels=labels)


def digit_domain(name: str, image_size=None, seed: int = 0) -> GANDataset:
    """The bundled digits as another image domain, with their digit labels (so a translation can be
    checked for keeping the class):

      digits-m      each digit blended over a random patch of one of scikit-learn's two bundled colour
                    photographs as |patch - digit|, the way MNIST-M is made from MNIST (Ganin et al.
                    2015); RGB
      digits-inv    the digits inverted (white background)
      digits-thick  the strokes dilated (a max filter 2k+1 wide at k x 16 px: 5 at 32 px)

    `seed` picks the patches; the same seed gives the same images."""
    if name not in DIGIT_DOMAINS:
        raise ValueError(f"digit_domain: argument 'name' must be one of {', '.join(DIGIT_DOMAINS)}; got {name!r}")
    base = digits(image_size)
    if name == "digits":
        return base
    d = (base.x + 1) / 2  # ink in [0, 1]
    s = d.shape[-1]
    if name == "digits-inv":
        x = 1 - d
    elif name == "digits-thick":
        k = 2 * max(1, s // 16) + 1
        x = F.max_pool2d(d, k, stride=1, padding=k // 2)
    else:
        from sklearn.datasets import load_sample_images
        photos = [torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in load_sample_images().images]
        g = torch.Generator().manual_seed(seed)
        which = torch.randint(len(photos), (len(d),), generator=g)
        patches = torch.empty(len(d), 3, s, s)
        for i, j in enumerate(which.tolist()):
            ph = photos[j]
            top = int(torch.randint(ph.shape[1] - s + 1, (), generator=g))
            left = int(torch.randint(ph.shape[2] - s + 1, (), generator=g))
            patches[i] = ph[:, top:top + s, left:left + s]
        x = (patches - d).abs()
    return GANDataset((x * 2 - 1).clamp_(-1, 1).contiguous(), base.y, name=name)


class DomainDataset:
    """Unpaired image domains for translation models (CycleGAN, StarGAN): `domains` is a list of
    GANDatasets of one image size and channel count (grayscale domains are repeated to RGB when
    another domain is RGB). GANTrainer.fit draws each domain's batch from its own shuffled order,
    so the samples of two domains are never paired."""

    kind = "domains"

    def __init__(self, domains, names=None, held_out=None):
        if len(domains) < 2:
            raise ValueError(f"DomainDataset: needs at least two domains, got {len(domains)}")
        sizes = {tuple(d.x.shape[2:]) for d in domains}
        if any(d.kind != "image" for d in domains) or len(sizes) != 1:
            raise DatasetError("DomainDataset: the domains must all be images of one size; got "
                               + ", ".join(f"{d.name or i}: {tuple(d.x.shape[1:])}" for i, d in enumerate(domains)))
        c = max(d.x.shape[1] for d in domains)
        self.domains = []
        for d in domains:
            if d.x.shape[1] != c:
                if d.x.shape[1] != 1:
                    raise DatasetError(f"DomainDataset: domain {d.name!r} has {d.x.shape[1]} channels, another {c}")
                d = GANDataset(d.x.expand(-1, c, -1, -1).contiguous(), d.y, name=d.name)  # the caller's is kept
            self.domains.append(d)
        self.names = list(names) if names is not None else [d.name for d in domains]
        #: per domain, images kept out of training (for evaluating translations), or None
        self.held_out = None if held_out is None else DomainDataset(held_out, self.names).domains

    def __len__(self):
        return max(len(d) for d in self.domains)

    @property
    def channels(self):
        return self.domains[0].x.shape[1]

    def __repr__(self):
        return f"DomainDataset({' : '.join(f'{n} {len(d)}' for n, d in zip(self.names, self.domains))})"


def load_domains(spec: str, image_size=None, holdout: float = 0.15, seed: int = 0) -> DomainDataset:
    """'A:B[:C...]' -> a DomainDataset of those datasets (built-in names or paths, as load_dataset),
    with a random `holdout` fraction of each kept out of training as `held_out` (the same indices in
    domains of equal length, so the digit domains hold out the same digits)."""
    parts = spec.split(":") if isinstance(spec, str) else []
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"load_domains: expected two or more datasets separated by ':' (e.g. digits:digits-m), "
                         f"got {spec!r}")
    if not 0 <= holdout < 1:
        raise ValueError(f"load_domains: argument 'holdout' must be in [0, 1), got {holdout!r}")
    train, held = [], []
    for p in parts:
        d = load_dataset(p, image_size)
        perm = torch.randperm(len(d), generator=torch.Generator().manual_seed(seed))
        k = int(round(holdout * len(d)))
        for out, idx in ((held, perm[:k].sort().values), (train, perm[k:].sort().values)):
            out.append(GANDataset(d.x[idx], None if d.y is None else d.y[idx], name=d.name, kind=d.kind))
    return DomainDataset(train, parts, held_out=held if holdout > 0 else None)


# ---- helpers ------------------------------------------------------------------------------------
def _resize(x: torch.Tensor, size):
    """Centre-crop (N, C, H, W) to a square and resize it to size x size (None: keep)."""
    h, w = x.shape[-2:]
    if h != w:
        s = min(h, w)
        t, l = (h - s) // 2, (w - s) // 2
        x = x[..., t:t + s, l:l + s]
    if size is None or x.shape[-1] == size:
        return x.contiguous()
    down = size < x.shape[-1]
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=down)
    return y.clamp_(-1, 1).contiguous()


def _to_unit(a: np.ndarray, src: str) -> torch.Tensor:
    """uint8 0..255, floats in [0, 1], [-1, 1] or 0..255 -> float32 in [-1, 1]."""
    if a.dtype == np.uint8:
        return torch.from_numpy(a.astype(np.float32) / 127.5 - 1)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DatasetError(f"{src}: expected a numeric array, got dtype {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise DatasetError(f"{src}: the array holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())  # not empty: _array_dataset rejects empty samples first
    if lo >= 0 and hi <= 1:
        a = a * 2 - 1
    elif lo >= -1 and hi <= 1:
        pass
    elif lo >= 0 and hi <= 255:
        a = a / 127.5 - 1
    else:
        raise DatasetError(f"{src}: image values span [{lo}, {hi}]; expected uint8, [0, 1], [-1, 1] or 0..255")
    return torch.from_numpy(a)


def _array_dataset(a: np.ndarray, y, name: str, image_size) -> GANDataset:
    """(N, D) points, (N, H, W), (N, C, H, W) or (N, H, W, C) images -> GANDataset."""
    if a.ndim < 2 or a.shape[0] == 0:
        raise DatasetError(f"{name}: expected an array of samples (N, ...) with N >= 1, got shape {a.shape}")
    if a.size == 0:
        raise DatasetError(f"{name}: the samples are empty (shape {a.shape}); every axis needs a size >= 1")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if y.shape[0] != a.shape[0] or not np.issubdtype(y.dtype, np.integer):
            y = None  # labels that do not fit are ignored, not fatal
        else:
            y = torch.from_numpy(y.astype(np.int64))
            if int(y.min()) < 0:
                y = None
    if a.ndim == 2:
        x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        if not torch.isfinite(x).all():
            raise DatasetError(f"{name}: the array holds NaN or infinite values")
        return GANDataset(x, y, name=name, kind="points")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
            a = a.transpose(0, 3, 1, 2)
        if a.shape[1] not in (1, 3, 4):
            raise DatasetError(f"{name}: cannot tell the channel axis of image array shape {a.shape}; "
                               "expected (N, C, H, W) or (N, H, W, C) with C in 1, 3, 4")
        if a.shape[1] == 4:
            a = a[:, :3]
    else:
        raise DatasetError(f"{name}: expected 2-D points (N, D) or images (N, H, W[, C]), got shape {a.shape}")
    x = _to_unit(np.ascontiguousarray(a), name)
    return GANDataset(_resize(x, image_size), y, name=name)


# ---- formats on disk ----------------------------------------------------------------------------
def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
        return gzip.decompress(data) if path.endswith(".gz") else data
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None


def read_idx(path: str) -> np.ndarray:
    """An MNIST-style IDX file (raw or .gz) as a numpy array."""
    b = _read_bytes(path)
    types = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(b) < 4 or b[0] != 0 or b[1] != 0 or b[2] not in types or b[3] == 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    nd = b[3]
    if len(b) < 4 + 4 * nd:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    dt = np.dtype(types[b[2]])
    need = int(np.prod(dims)) * dt.itemsize
    body = b[4 + 4 * nd:]
    if len(body) < need:
        raise DatasetError(f"{path}: truncated IDX data ({len(body)} of {need} bytes)")
    return np.frombuffer(body[:need], dtype=dt).reshape(dims)


def _idx_dataset(images: str, image_size) -> GANDataset:
    x = read_idx(images)
    base = os.path.basename(images)
    y = None
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if a in base:
            lab = os.path.join(os.path.dirname(images), base.replace(a, b))
            if os.path.exists(lab):
                y = read_idx(lab)
            break
    if x.ndim != 3:
        raise DatasetError(f"{images}: expected an IDX image file (N, H, W), got shape {x.shape}")
    return _array_dataset(x, y, images, image_size)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file must not be able to run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar_batch(path: str):
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = d.get(b"labels", d.get(b"fine_labels"))
        return data.reshape(-1, 3, 32, 32), (None if labels is None else np.asarray(labels))
    except Exception as e:  # noqa: BLE001 (any decoding failure is the same error for the user)
        raise DatasetError(f"{path}: not a readable CIFAR python batch ({type(e).__name__}: {e})") from None


def _cifar_dataset(files, name: str, image_size) -> GANDataset:
    parts = [_cifar_batch(f) for f in files]
    x = np.concatenate([p[0] for p in parts])
    y = None if any(p[1] is None for p in parts) else np.concatenate([p[1] for p in parts])
    return _array_dataset(x, y, name, image_size)


def _numpy_dataset(path: str, image_size) -> GANDataset:
    try:
        obj = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{path}: not a readable .npy/.npz file ({type(e).__name__}: {e})") from None
    if isinstance(obj, np.ndarray):
        return _array_dataset(obj, None, path, image_size)
    with obj:
        keys = list(obj.keys())
        if not keys:
            raise DatasetError(f"{path}: the .npz archive is empty")
        xk = next((k for k in ("x", "X", "images", "data", "arr_0") if k in keys), keys[0])
        yk = next((k for k in ("y", "Y", "labels", "targets") if k in keys), None)
        try:
            x, y = obj[xk], (obj[yk] if yk else None)
        except Exception as e:  # noqa: BLE001
            raise DatasetError(f"{path}: cannot read array {xk!r} ({type(e).__name__}: {e})") from None
    return _array_dataset(x, y, path, image_size)


def _image_folder(root: str, image_size) -> GANDataset:
    from PIL import Image
    files = []
    for d, dirs, names in os.walk(root):
        dirs.sort()
        files += [os.path.join(d, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTS)]
    if not files:
        raise DatasetError(f"{root}: no PNG/JPEG images found (searched recursively)")
    size = 64 if image_size is None else image_size
    imgs, gray = [], True
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                gray = gray and im.mode in ("1", "L", "I", "I;16", "F")
                imgs.append(im.copy())
        except Exception as e:  # noqa: BLE001
            raise DatasetError(f"{f}: unreadable image ({type(e).__name__}: {e})") from None
    mode = "L" if gray else "RGB"
    out = np.empty((len(imgs), 1 if gray else 3, size, size), np.uint8)
    for i, im in enumerate(imgs):
        if im.mode.startswith("I"):  # 16-bit grey PNG, 0..65535: scale (convert("L") would clip at 255)
            im = Image.fromarray(np.clip(np.rint(np.asarray(im, np.float64) / 257), 0, 255).astype(np.uint8))
        im = im.convert(mode)
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        l, t = (w - size) // 2, (h - size) // 2
        a = np.asarray(im.crop((l, t, l + size, t + size)))
        out[i] = a[None] if gray else a.transpose(2, 0, 1)
    # labels: first-level sub-folders, when every image is in one and there are at least two
    tops = [os.path.relpath(f, root).split(os.sep) for f in files]
    y = None
    if all(len(t) > 1 for t in tops) and len({t[0] for t in tops}) > 1:
        classes = sorted({t[0] for t in tops})
        y = np.array([classes.index(t[0]) for t in tops])
    return _array_dataset(out, y, root, None)


def load_dataset(name_or_path: str, image_size=None) -> GANDataset:
    """A built-in dataset by name, or a dataset on disk by path.

    Built-in: `digits` (8x8, resized to `image_size`), its domains `digits-m`, `digits-inv`,
    `digits-thick` (see digit_domain), `stacked-digits` (1,000 modes, see stacked_digits), `ring8`,
    `grid25` (2-D points).
    On disk: a folder of PNG/JPEG images (recursive; resized and centre-cropped to `image_size`,
    default 64; first-level sub-folders become labels), MNIST/Fashion-MNIST IDX files (raw or .gz;
    the images file or its folder; labels are read when next to it), a CIFAR-10/100 python batch
    or its folder, `.npy` / `.npz` arrays (`x`/`images` and optional `y`/`labels`).
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"load_dataset: argument 'name_or_path' must be a non-empty string, got {name_or_path!r}")
    if image_size is not None and not (isinstance(image_size, int) and not isinstance(image_size, bool)
                                       and image_size >= 1):
        raise ValueError(f"load_dataset: argument 'image_size' must be a positive int or None, got {image_size!r}")
    if name_or_path in DIGIT_DOMAINS:
        return digit_domain(name_or_path, image_size)
    if name_or_path == "stacked-digits":
        return stacked_digits(image_size=image_size)
    if name_or_path == "ring8":
        return ring8()
    if name_or_path == "grid25":
        return grid25()
    p = os.path.expanduser(name_or_path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"no such dataset: {name_or_path!r} is neither a built-in "
                                f"({', '.join(BUILTIN)}) nor an existing file or folder")
    low = os.path.basename(p).lower()
    if os.path.isfile(p):
        if os.path.getsize(p) == 0:
            raise DatasetError(f"{p}: the file is empty")
        if low.endswith((".npy", ".npz")):
            return _numpy_dataset(p, image_size)
        if "idx3" in low or low.endswith(("-ubyte", "-ubyte.gz")):
            return _idx_dataset(p, image_size)
        if low.startswith(("data_batch", "test_batch", "train", "test")):
            return _cifar_dataset([p], p, image_size)
        raise DatasetError(f"{p}: unknown data file type; expected .npy, .npz, an IDX images file "
                           "or a CIFAR python batch (or a folder of images)")
    names = sorted(os.listdir(p))
    batches = [os.path.join(p, n) for n in names if n.startswith("data_batch")] or \
        [os.path.join(p, n) for n in names if n == "test_batch"]
    if batches:
        return _cifar_dataset(batches, p, image_size)
    idx = [n for n in names if "images-idx3" in n or "images.idx3" in n]
    if idx:
        pick = next((n for n in idx if n.startswith("train")), idx[0])
        return _idx_dataset(os.path.join(p, pick), image_size)
    if any(n.endswith((".npy", ".npz")) for n in names) and not any(n.lower().endswith(IMAGE_EXTS) for n in names):
        raise DatasetError(f"{p}: a folder of .npy/.npz files; pass the file itself")
    return _image_folder(p, image_size)
