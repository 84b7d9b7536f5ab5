"""Checkpoint files: atomic writes (temporary file, fsync, rename, fsync of the folder), the last
few kept, safe loading (`torch.load(weights_only=True)`: tensors and plain data only, so a file
from elsewhere cannot run code), and a fallback to the newest readable one."""
import glob
import os
import re
import warnings

import torch

FORMAT = "fastgan.checkpoint"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, truncated, foreign, or for other models."""


def _fsync_dir(path: str):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj, path: str):
    """torch.save to `path` such that a crash at any moment leaves the old file or the new one."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


def read(path: str) -> dict:
    """Load and validate a checkpoint file; CheckpointError with the path and the reason otherwise."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (zip errors, unpickling refusals, EOF: all "unusable")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        msg = next((ln for ln in lines if ln.startswith("WeightsUnpickler error")), lines[0] if lines else
                   type(e).__name__)
        raise CheckpointError(f"{path}: not a readable fastgan checkpoint (corrupt, truncated, or "
                              f"holding objects other than tensors and plain data): {msg}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastgan checkpoint (no '{FORMAT}' marker)")
    if ck.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ck.get('version')} is newer than this "
                              f"fastgan understands ({VERSION}); upgrade fastgan")
    for k in ("step", "generator", "discriminator"):
        if k not in ck:
            raise CheckpointError(f"{path}: incomplete checkpoint (missing '{k}')")
    return ck


def path_for(directory: str, step: int) -> str:
    return os.path.join(directory, f"ckpt-{step:08d}.pt")


def list_checkpoints(directory: str):
    """[(step, path)] of the checkpoints in `directory`, oldest first."""
    out = []
    for p in glob.glob(os.path.join(directory, "ckpt-*.pt")):
        m = _NAME.match(os.path.basename(p))
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def prune(directory: str, keep: int):
    """Keep the newest `keep` checkpoints; remove older ones and stale temporary files."""
    for _, p in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        try:
            os.remove(p)
        except OSError:
            pass
    for p in glob.glob(os.path.join(directory, ".ckpt-*.tmp")):
        pid = p.rsplit(".", 2)[-2]
        if pid != str(os.getpid()):
            try:
                os.remove(p)
            except OSError:
                pass


def latest_good(directory: str, *, quarantine: bool = False):
    """(path, checkpoint) of the newest readable checkpoint in `directory`, or (None, None).
    Unreadable ones are reported with a warning and skipped; with `quarantine` they are renamed
    to `<name>.corrupt` (kept for inspection, out of the way of the run that continues)."""
    for _, p in reversed(list_checkpoints(directory)):
        try:
            return p, read(p)
        except FileNotFoundError:  # moved away meanwhile (another process quarantined it)
            continue
        except CheckpointError as e:
            warnings.warn(f"skipping {e}", RuntimeWarning, stacklevel=2)
            if quarantine:
                try:
                    os.replace(p, p + ".corrupt")
                except OSError:
                    pass
    return None, None
