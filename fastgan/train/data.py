"""An endless stream of training batches whose position can be saved and restored exactly.

Tensors and in-memory datasets are indexed with the trainer's own permutation (shared by all
processes, each taking its shard of every global batch); Datasets are collated item by item;
DataLoaders are replayed from the RNG state they started their epoch with (skipping the batches
already consumed), so a resumed run sees the same batches as an uninterrupted one.
"""
import warnings

import torch
from torch.utils.data import DataLoader, Dataset


def _first(item):
    return item[0] if isinstance(item, (tuple, list)) else item


def _labels(y, device):
    y = torch.as_tensor(y)
    if y.is_floating_point() or y.dtype == torch.bool or y.dim() != 1:
        raise TypeError(f"GANTrainer.fit: argument 'data' yields labels of dtype {y.dtype} and shape "
                        f"{tuple(y.shape)}; expected one integer class per sample")
    return y.to(device, dtype=torch.long, non_blocking=True)


def _item_label(item):
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise ValueError(_NO_LABELS)
    return item[1]


_NO_LABELS = ("GANTrainer.fit: this objective needs labelled data, but argument 'data' does not yield "
              "(x, label) pairs: pass a labelled dataset (e.g. fastgan.data.load_dataset('digits'))")


def _prep(x, device, channels_last):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"GANTrainer.fit: argument 'data' yields {type(x).__name__}, expected tensors "
                        "(or (tensor, label) pairs)")
    x = x.to(device, non_blocking=True)
    if not x.is_floating_point():
        raise TypeError(f"GANTrainer.fit: argument 'data' yields {x.dtype} tensors; expected floating point "
                        "(scale images to [-1, 1])")
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class IndexBatches:
    """Batches of `source` (a tensor, or a Dataset indexed item by item) in shuffled epochs."""

    def __init__(self, source, n, batch_size, *, device, channels_last, seed, rank, world, labels=None):
        if n < batch_size * world:
            raise ValueError(f"GANTrainer.fit: argument 'batch_size' ({batch_size}"
                             f"{f' x {world} processes' if world > 1 else ''}) exceeds the {n} samples of 'data'")
        self.source, self.n, self.bs = source, n, batch_size
        self.labels = labels  # None, a label tensor beside a tensor source, or True: from the items
        self.device, self.cl, self.rank, self.world = device, channels_last, rank, world
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos, self.epoch = None, 0, 0

    def __iter__(self):
        return self

    def __next__(self):
        g = self.bs * self.world
        if self.perm is None or self.pos + g > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
            self.epoch += 1
        idx = self.perm[self.pos:self.pos + g][self.rank::self.world]
        self.pos += g
        y = None
        if isinstance(self.source, torch.Tensor):
            x = self.source[idx.to(self.source.device)]
            if self.labels is not None:
                y = self.labels[idx.to(self.labels.device)]
        else:
            items = [self.source[int(i)] for i in idx]
            x = torch.stack([_first(it) for it in items])
            if self.labels is not None:
                y = torch.as_tensor([int(_item_label(it)) for it in items])
        x = _prep(x, self.device, self.cl)
        return x if self.labels is None else (x, _labels(y, self.device))

    def state_dict(self):
        return {"kind": "index", "gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos,
                "epoch": self.epoch, "batch_size": self.bs, "n": self.n, "world": self.world}

    def load_state_dict(self, s):
        if s.get("kind") != "index" or s.get("n") != self.n:
            warnings.warn("the saved data position does not fit this data; starting a new epoch order")
            return
        self.gen.set_state(s["gen"])
        self.perm, self.pos, self.epoch = s["perm"], int(s["pos"]), int(s["epoch"])


class LoaderBatches:
    """Batches from a DataLoader, epoch after epoch; restorable (see the module docstring).

    A DataLoader draws from the global torch RNG when its iterator is created (worker seeds) and
    when its first batch is fetched (a RandomSampler's seed): each epoch therefore opens with
    both at once, after recording the RNG state that a resumed run replays."""

    def __init__(self, loader: DataLoader, *, device, channels_last, labels=False):
        self.loader, self.device, self.cl, self.labels = loader, device, channels_last, labels
        self.it, self.first, self.consumed, self.epoch, self.start = None, None, 0, 0, None

    def _open(self):
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.it = iter(self.loader)
        try:
            self.first = next(self.it)
        except StopIteration:
            raise ValueError("GANTrainer.fit: argument 'data' is an empty DataLoader") from None

    def _new_epoch(self):
        self.start = {"torch": torch.get_rng_state(),
                      "gen": None if self.loader.generator is None else self.loader.generator.get_state()}
        self.consumed = 0
        self._open()

    def __iter__(self):
        return self

    def __next__(self):
        if self.it is None:
            self._new_epoch()
        if self.first is not None:
            b, self.first = self.first, None
        else:
            try:
                b = next(self.it)
            except StopIteration:
                self.epoch += 1
                self._new_epoch()
                b, self.first = self.first, None
        self.consumed += 1
        x = _prep(_first(b), self.device, self.cl)
        return (x, _labels(_item_label(b), self.device)) if self.labels else x

    def state_dict(self):
        return {"kind": "loader", "epoch": self.epoch, "consumed": self.consumed, "start": self.start}

    def load_state_dict(self, s):
        if s.get("kind") != "loader":
            warnings.warn("the saved data position does not fit this data; starting a new epoch")
            return
        self.epoch = int(s["epoch"])
        if s.get("start") is None:
            return
        now = torch.get_rng_state()
        torch.set_rng_state(s["start"]["torch"])
        if s["start"]["gen"] is not None and self.loader.generator is not None:
            self.loader.generator.set_state(s["start"]["gen"])
        self._open()
        self.start, self.consumed = s["start"], int(s["consumed"])
        try:
            if self.consumed:
                self.first = None
                for _ in range(self.consumed - 1):
                    next(self.it)
        except StopIteration:
            self.it = iter(())  # that epoch was complete: the next call opens a new one
        torch.set_rng_state(now)  # (the loader's own generator is left where the replay put it)


def _preload(t: torch.Tensor, device: torch.device) -> bool:
    """Whether to copy a CPU sample tensor to the CUDA device once, up front: indexing batches on the
    GPU beats a host-to-device copy per batch, for data under 2 GiB."""
    return device.type == "cuda" and t.device.type == "cpu" and t.numel() * t.element_size() < 2 ** 31


class DomainBatches:
    """Unpaired batches of several image domains (fastgan.data.DomainDataset): each next() is a
    tuple with one batch per domain, each domain drawn from its own shuffled order (its own seed),
    so that no two domains' samples are paired; their positions are saved and restored together."""

    def __init__(self, streams):
        self.streams = streams

    def __iter__(self):
        return self

    def __next__(self):
        return tuple(next(s) for s in self.streams)

    def state_dict(self):
        return {"kind": "domains", "streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, s):
        if s.get("kind") != "domains" or len(s["streams"]) != len(self.streams):
            warnings.warn("the saved data position does not fit this data; starting a new epoch order")
            return
        for stream, st in zip(self.streams, s["streams"]):
            stream.load_state_dict(st)


def make_batches(data, batch_size, *, device, channels_last=False, seed=0, rank=0, world=1, state=None,
                 labels=False):
    """The batch stream for GANTrainer.fit; `state` is a previous stream's state_dict().
    labels: yield (x, y) pairs (y: int64 class per sample) instead of x."""
    from ..data import DomainDataset
    if isinstance(data, DomainDataset):
        b = DomainBatches([IndexBatches(d.x.to(device) if _preload(d.x, device) else d.x, len(d), batch_size,
                                        device=device, channels_last=channels_last, seed=seed + 7919 * k,
                                        rank=rank, world=world) for k, d in enumerate(data.domains)])
    elif isinstance(data, DataLoader):
        if world > 1 and not isinstance(data.sampler, torch.utils.data.distributed.DistributedSampler):
            raise ValueError("GANTrainer.fit: under torchrun a DataLoader 'data' needs a DistributedSampler "
                             "(or pass the Dataset / tensor and the trainer shards it)")
        b = LoaderBatches(data, device=device, channels_last=channels_last, labels=labels)
    elif isinstance(data, torch.Tensor):
        if data.dim() < 2 or data.shape[0] == 0:
            raise ValueError(f"GANTrainer.fit: argument 'data' must be a tensor of samples (N, ...), got shape "
                             f"{tuple(data.shape)}")
        if labels:
            raise ValueError(_NO_LABELS)
        src = data.to(device) if _preload(data, device) else data
        b = IndexBatches(src, data.shape[0], batch_size, device=device, channels_last=channels_last, seed=seed,
                         rank=rank, world=world)
    elif isinstance(data, Dataset):
        x = getattr(data, "x", None)
        src = x if isinstance(x, torch.Tensor) and len(data) == x.shape[0] else data
        ys = getattr(data, "y", None) if src is x else None
        tensors = getattr(data, "tensors", None)
        if src is data and tensors and isinstance(tensors[0], torch.Tensor):
            src = tensors[0]  # TensorDataset
            ys = tensors[1] if len(tensors) > 1 else None
        n = len(data)
        if n == 0:
            raise ValueError("GANTrainer.fit: argument 'data' is an empty Dataset")
        lab = None
        if labels:
            if not isinstance(src, torch.Tensor):
                lab = True  # read from the items
            elif isinstance(ys, torch.Tensor) and ys.shape[:1] == (n,):
                lab = ys
            else:
                raise ValueError(_NO_LABELS)
        if isinstance(src, torch.Tensor) and _preload(src, device):
            src = src.to(device)
            lab = lab.to(device) if isinstance(lab, torch.Tensor) else lab
        b = IndexBatches(src, n, batch_size, device=device, channels_last=channels_last, seed=seed, rank=rank,
                         world=world, labels=lab)
    else:
        raise TypeError(f"GANTrainer.fit: argument 'data' must be a tensor, a Dataset or a DataLoader, "
                        f"got {type(data).__name__}")
    if state is not None:
        b.load_state_dict(state)
    return b
