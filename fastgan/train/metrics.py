"""Sample-quality metrics: mode coverage for 2-D Gaussian mixtures; for labelled image data a
Fréchet distance in the feature space of a small classifier trained on the dataset itself (cached)
plus class coverage; for stacked images (stacked-digits) the modes covered and the KL divergence of
the mode histogram from uniform. Evaluation never touches the global RNGs (training stays reproducible)."""
import hashlib
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def mixture_metrics(samples: torch.Tensor, modes: torch.Tensor, std: float, *, threshold: float = 3.0,
                    min_count: int = 20, labels=None) -> dict:
    """Mode coverage of 2-D samples against a Gaussian mixture (VEEGAN/PacGAN protocol).

    A sample is high quality if it lies within `threshold` std of its nearest mode; a mode is
    covered when at least `min_count` high-quality samples are nearest to it.
    Returns {"modes": covered count, "modes_total": K, "high_quality": percent of samples}, and with
    `labels` (the mode each sample was asked for, conditional models) "class_accuracy": the percent
    of samples that are high quality at the asked-for mode.
    """
    x = samples.detach().double().cpu()
    m = modes.double().cpu()
    d = torch.cdist(x, m)
    dist, k = d.min(1)
    good = dist <= threshold * std
    counts = torch.bincount(k[good], minlength=m.shape[0])
    out = {"modes": int((counts >= min_count).sum()), "modes_total": int(m.shape[0]),
           "high_quality": 100.0 * float(good.double().mean()) if len(x) else 0.0}
    if labels is not None:
        hit = good & (k == torch.as_tensor(labels).cpu())
        out["class_accuracy"] = 100.0 * float(hit.double().mean()) if len(x) else 0.0
    return out


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), with the trace of the root from eigenvalues."""
    mu1, mu2, s1, s2 = (np.asarray(a, np.float64) for a in (mu1, mu2, s1, s2))
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


class FeatureNet(nn.Module):
    """A small CNN classifier on 16x16 inputs (larger images are average-pooled down: cheap enough
    to train in seconds on a CPU); its pooled 128-d features define the Fréchet distance."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(32, 64, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 3, 2, 1), nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(128, num_classes)

    def forward(self, x):
        if x.shape[-1] > 16 or x.shape[-2] > 16:
            x = F.adaptive_avg_pool2d(x, 16)
        f = self.features(x)
        return f, self.head(f)


def cache_dir() -> str:
    d = os.environ.get("FASTGAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastgan")
    return d


def _fingerprint(x: torch.Tensor, y: torch.Tensor, settings: str = "") -> str:
    h = hashlib.sha1(f"featurenet-v2 {tuple(x.shape)} {int(y.max()) + 1} {settings}".encode())
    step = max(1, x.shape[0] // 4096)
    h.update(x[::step].contiguous().float().numpy().tobytes())
    h.update(y.numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def train_feature_net(x: torch.Tensor, y: torch.Tensor, *, steps: int = 400, batch_size: int = 64,
                      seed: int = 0, cache: bool = True) -> FeatureNet:
    """Train (or load from the cache) the classifier for images x (N, C, H, W) with labels y."""
    x, y = x.detach().cpu().float(), y.detach().cpu().long()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureNet(x.shape[1], int(y.max()) + 1)
    # the training settings are part of the key: a cached net is exactly the one this call would train
    key = _fingerprint(x, y, f"steps={steps} batch_size={batch_size} seed={seed}")
    path = os.path.join(cache_dir(), f"featurenet-{key}.pt")
    if cache and os.path.exists(path):
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return net.eval()
        except Exception:  # noqa: BLE001  (a broken cache entry is retrained)
            pass
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), 2e-3)
        net.train()
        for _ in range(steps):
            i = torch.randint(x.shape[0], (min(batch_size, x.shape[0]),), generator=g)
            xb = x[i] + 0.05 * torch.randn(x[i].shape, generator=g)  # a little noise: smoother features
            loss = F.cross_entropy(net(xb)[1], y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    if cache:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, path)
    return net


@torch.no_grad()
def _features(net, x, batch=500):
    fs, ps = [], []
    for i in range(0, x.shape[0], batch):
        f, logits = net(x[i:i + batch].float())
        fs.append(f.double())
        ps.append(logits.argmax(1))
    return torch.cat(fs).numpy(), torch.cat(ps)


class ImageEvaluator:
    """Fréchet distance and class coverage of generated images against a labelled dataset."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, n_real: int = 2000, seed: int = 0):
        self.net = train_feature_net(x, y, seed=seed)
        self.num_classes = int(y.max()) + 1
        step = max(1, x.shape[0] // n_real)
        f, pred = _features(self.net, x.cpu()[::step])
        self.mu, self.sigma = f.mean(0), np.cov(f, rowvar=False)
        self.accuracy = float((pred == y.cpu()[::step]).double().mean())
        self.edges = edge_strength(x.cpu()[::step])

    def __call__(self, fake: torch.Tensor, labels=None) -> dict:
        """{"fd": Fréchet distance, "classes": classes covered, "sharpness"}; a class is covered when it
        gets at least 10% of its fair share (n / num_classes) of the samples' predicted labels;
        sharpness is the samples' edge strength over the data's (1: as sharp; blur shows as < 1). With `labels`
        (the class each sample was asked for): "class_accuracy", the percent classified as asked,
        and "per_class", that percent for each class."""
        f, pred = _features(self.net, fake.detach().cpu())
        fd = frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.sigma)
        counts = torch.bincount(pred, minlength=self.num_classes)
        covered = int((counts >= 0.1 * len(pred) / self.num_classes).sum())
        out = {"fd": fd, "classes": covered, "classes_total": self.num_classes,
               "sharpness": edge_strength(fake) / self.edges if self.edges > 0 else float("nan")}
        if labels is not None:
            y = torch.as_tensor(labels).cpu()
            hit = (pred == y).double()
            out["class_accuracy"] = 100.0 * float(hit.mean())
            out["per_class"] = [100.0 * float(hit[y == k].mean()) if bool((y == k).any()) else None
                                for k in range(self.num_classes)]
            out.update(matched_accuracy(y, pred, self.num_classes))
        return out


def edge_strength(x: torch.Tensor) -> float:
    """The mean absolute difference between neighbouring pixels (both directions) of images
    (N, C, H, W): blurred images score lower than sharp ones."""
    x = x.detach().double().cpu()
    if x.numel() == 0:
        return float("nan")
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return float((dx + dy) / 2)


def mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased squared maximum mean discrepancy between samples x (N, D) and y (M, D) (Gretton et
    al. 2012) with a sum of Gaussian kernels of bandwidths 0.5, 1 and 2 times the median pairwise
    distance of the pooled samples: ~0 (up to sampling noise) when both come from one distribution."""
    x, y = x.detach().double().cpu().flatten(1), y.detach().double().cpu().flatten(1)
    if x.shape[0] < 2 or y.shape[0] < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"mmd2: arguments 'x' and 'y' must be (N>=2, D) and (M>=2, D), got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    n, m = x.shape[0], y.shape[0]
    med = d2[torch.triu_indices(n + m, n + m, 1).unbind()].median().clamp_min(1e-12)
    k = sum(torch.exp(-d2 / (2 * med * f * f)) for f in (0.5, 1.0, 2.0))
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    return float((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diagonal().sum()) /
                 (m * (m - 1)) - 2 * kxy.mean())


def matched_accuracy(codes, pred, num_classes: int) -> dict:
    """How well unsupervised codes (e.g. InfoGAN's categorical code) match classes: the code x class
    confusion counts and the percent accuracy under the best one-to-one code -> class assignment
    (Hungarian algorithm). Returns {"matched_accuracy", "assignment" (code -> class), "confusion"}."""
    from scipy.optimize import linear_sum_assignment
    codes, pred = torch.as_tensor(codes).cpu().long(), torch.as_tensor(pred).cpu().long()
    k = max(int(codes.max()) + 1 if codes.numel() else 0, num_classes)
    conf = torch.zeros(k, k, dtype=torch.long)
    conf.index_put_((codes, pred), torch.ones_like(codes), accumulate=True)
    rows, cols = linear_sum_assignment(-conf.numpy())
    hits = int(conf[rows, cols].sum())
    return {"matched_accuracy": 100.0 * hits / max(len(codes), 1),
            "assignment": {int(r): int(c) for r, c in zip(rows, cols)},
            "confusion": conf.tolist()}


def mode_histogram(modes, total: int) -> dict:
    """Mode coverage from the mode of each sample (ints in [0, total)), as VEEGAN and PacGAN count it:
    "modes", the modes with at least one sample, and "kl", KL(p || uniform) in nats of the samples'
    mode histogram p (summed over the modes that occur; 0 when every mode is hit equally)."""
    m = torch.as_tensor(modes).cpu().long().reshape(-1)
    if m.numel() == 0:
        raise ValueError("mode_histogram: argument 'modes' is empty")
    if int(m.min()) < 0 or int(m.max()) >= total:
        raise ValueError(f"mode_histogram: argument 'modes' must lie in [0, {total}), got [{int(m.min())}, "
                         f"{int(m.max())}]")
    counts = torch.bincount(m, minlength=total).double()
    p = counts[counts > 0] / m.numel()
    return {"modes": int((counts > 0).sum()), "modes_total": int(total), "kl": float((p * (p * total).log()).sum())}


class StackedEvaluator:
    """Mode coverage of stacked images (N, C, H, W) whose channels are independently drawn labelled
    images (stacked-digits: 3 digits, 1,000 modes). Each channel is classified by a FeatureNet trained
    on the data's own channels; a sample's mode is its tuple of channel classes. Scored on
    `n_samples` fakes (26,000 in PacGAN's protocol): "modes", "kl" (mode_histogram), and "fd", the
    Fréchet distance of the channels' features against the real channels' (and with `labels`, the
    asked-for modes of a conditional model, "class_accuracy"). `reference` holds the same
    metrics for n_samples real images: the best a generator can score with this classifier."""

    def __init__(self, x: torch.Tensor, channel_labels: torch.Tensor, *, n_samples: int = 26_000, seed: int = 0):
        x, cl = x.detach().cpu(), torch.as_tensor(channel_labels).cpu().long()
        if cl.dim() != 2 or cl.shape != x.shape[:2]:
            raise ValueError(f"StackedEvaluator: argument 'channel_labels' must have shape {tuple(x.shape[:2])} "
                             f"(one class per channel of 'x'), got {tuple(cl.shape)}")
        self.n_samples, self.channels = n_samples, x.shape[1]
        self.classes = int(cl.max()) + 1
        self.total = self.classes ** self.channels
        m = min(x.shape[0], 20_000 // self.channels)  # plenty to train the classifier on
        self.net = train_feature_net(x[:m].reshape(-1, 1, *x.shape[2:]), cl[:m].reshape(-1), seed=seed)
        real = x[:n_samples]
        f, pred = _features(self.net, real.reshape(-1, 1, *x.shape[2:]))
        self.mu, self.sigma = f.mean(0), np.cov(f, rowvar=False)
        self.accuracy = float((pred == cl[:n_samples].reshape(-1)).double().mean())
        self.reference = self._modes(pred)

    def _modes(self, pred):
        place = self.classes ** torch.arange(self.channels - 1, -1, -1)
        return mode_histogram((pred.reshape(-1, self.channels) * place).sum(1), self.total)

    def __call__(self, fake: torch.Tensor, labels=None) -> dict:
        fake = fake.detach().cpu()
        if fake.dim() != 4 or fake.shape[1] != self.channels:
            raise ValueError(f"StackedEvaluator: expected images (N, {self.channels}, H, W), got {tuple(fake.shape)}")
        f, pred = _features(self.net, fake.reshape(-1, 1, *fake.shape[2:]))
        out = self._modes(pred)
        out["fd"] = frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.sigma)
        if labels is not None:  # conditional: the percent of samples whose classified mode is the asked one
            place = self.classes ** torch.arange(self.channels - 1, -1, -1)
            got = (pred.reshape(-1, self.channels) * place).sum(1)
            out["class_accuracy"] = 100.0 * float((got == torch.as_tensor(labels).cpu()).double().mean())
        return out


def evaluator_for(dataset):
    """The metric function for a fastgan.data.GANDataset (None when none applies)."""
    modes = getattr(dataset, "modes", None)
    if modes is not None:
        return lambda fake, labels=None: mixture_metrics(fake, modes, dataset.mode_std, labels=labels)
    if getattr(dataset, "channel_labels", None) is not None:
        return StackedEvaluator(dataset.x, dataset.channel_labels)
    y = getattr(dataset, "y", None)
    if getattr(dataset, "kind", None) == "image" and y is not None and int(y.max()) >= 1:
        return ImageEvaluator(dataset.x, y)
    return None
