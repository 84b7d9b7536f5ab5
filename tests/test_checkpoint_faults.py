"""Checkpoint fault injection: every step of the atomic save (open of the temporary file, the
writes of torch.save, flush, fsync, os.replace) made to fail in turn; after each, the previous
checkpoint is byte-for-byte intact, loads, and is what resume picks, and no temporary file is left
or picked up. A successful save is recorded call by call: data written -> fsync of that file ->
os.replace onto the final name -> fsync of the folder."""
import errno
import os
import stat

import pytest
import torch

from fastgan import models
from fastgan.train import CheckpointError, GANTrainer
from fastgan.train import checkpoint as ckpt


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks (conftest.one_thread)


def trainer(seed=1):
    torch.manual_seed(seed)
    return GANTrainer(models.MLPGenerator(2, 2, 8, 2), models.MLPDiscriminator(2, 8, 2), z_dim=2, device="cpu")


def mark(t, step):
    """Give the trainer a step and a generator weight that say which checkpoint it came from."""
    t.step = step
    with torch.no_grad():
        next(t.generator.parameters()).fill_(float(step))
    return t


def marked(t):
    return int(next(t.generator.parameters()).flatten()[0].item())


def read_bytes(p):
    with open(p, "rb") as f:
        return f.read()


def temp_files(d):
    return [f for f in os.listdir(d) if f.endswith(".tmp")]


class Recorder:
    """The file object checkpoint.py writes through, recording (and optionally failing) calls."""

    def __init__(self, f, log, fail=None, fail_after=0):
        self.f, self.log, self.fail, self.fail_after, self.written = f, log, fail, fail_after, 0

    def write(self, b):
        if self.fail == "write" and self.written + len(b) > self.fail_after:
            part = max(0, self.fail_after - self.written)
            self.f.write(bytes(b)[:part])  # a short write, then the disk is full
            self.written += part
            self.log.append(("FAULT", "write"))
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.f.write(b)
        self.written += len(b)
        self.log.append(("write", len(b)))
        return n

    def flush(self):
        if self.fail == "flush":
            self.log.append(("FAULT", "flush"))
            raise OSError(errno.EIO, "I/O error")
        self.f.flush()
        self.log.append(("flush",))

    def fileno(self):
        return self.f.fileno()

    def close(self):
        self.f.close()
        self.log.append(("close",))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def instrument(monkeypatch, log, fail=None, fail_after=0):
    """Patch the calls atomic_save makes: `open` (as checkpoint.py sees it), torch.save, os.fsync,
    os.replace, os.open; each is logged, and the one named by `fail` raises."""
    real_open, real_save, real_fsync, real_replace, real_osopen = open, torch.save, os.fsync, os.replace, os.open

    def fake_open(path, mode="r", *a, **k):
        if "w" in mode:
            log.append(("open", os.path.abspath(path)))
            if fail == "open":
                log.append(("FAULT", "open"))
                raise OSError(errno.EACCES, "Permission denied", path)
            return Recorder(real_open(path, mode, *a, **k), log, fail, fail_after)
        return real_open(path, mode, *a, **k)

    def fake_save(obj, f, *a, **k):
        log.append(("torch.save",))
        if fail == "torch.save":  # half the bytes of a real checkpoint, then an error
            log.append(("FAULT", "torch.save"))
            import io
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, f, *a, **k)

    def fake_fsync(fd):
        st = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        log.append(("fsync", kind, st.st_ino, st.st_size))
        if fail == "fsync" and kind == "file" or fail == "fsync-dir" and kind == "dir":
            log.append(("FAULT", fail))
            raise OSError(errno.EIO, "I/O error")
        return real_fsync(fd)

    def fake_replace(src, dst, *a, **k):
        log.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
        if fail == "replace":
            log.append(("FAULT", "replace"))
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst, *a, **k)

    def fake_osopen(path, flags, *a, **k):
        log.append(("os.open", os.path.abspath(path)))
        if fail == "os.open-dir" and os.path.isdir(path):
            log.append(("FAULT", fail))
            raise OSError(errno.EACCES, "Permission denied", path)
        return real_osopen(path, flags, *a, **k)

    monkeypatch.setattr(ckpt, "open", fake_open, raising=False)  # checkpoint.py's builtins.open
    monkeypatch.setattr(torch, "save", fake_save)
    monkeypatch.setattr(os, "fsync", fake_fsync)
    monkeypatch.setattr(os, "replace", fake_replace)
    monkeypatch.setattr(os, "open", fake_osopen)


@pytest.fixture
def run(tmp_path):
    """A run folder holding one good checkpoint (step 2); returns (out, cdir, good path, its bytes)."""
    out = str(tmp_path / "run")
    cdir = os.path.join(out, "checkpoints")
    good = mark(trainer(), 2).save_checkpoint(ckpt.path_for(cdir, 2))
    return out, cdir, good, read_bytes(good)


def assert_previous_survives(out, cdir, good, good_bytes):
    assert [s for s, _ in ckpt.list_checkpoints(cdir)] == [2]
    assert read_bytes(good) == good_bytes
    assert ckpt.read(good)["step"] == 2
    assert not temp_files(cdir)
    r = trainer(seed=7)
    with warnings_as_errors():
        assert r.load_latest(out) == good
    assert r.step == 2 and marked(r) == 2


class warnings_as_errors:
    """No 'skipping ...' warning may be raised: nothing unreadable was looked at."""

    def __enter__(self):
        import warnings
        self.cm = warnings.catch_warnings()
        self.cm.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


FAULTS = [("open", {}), ("torch.save", {}), ("write", {"fail_after": 0}), ("write", {"fail_after": 700}),
          ("flush", {}), ("fsync", {}), ("replace", {})]


@pytest.mark.parametrize("fail,kw", FAULTS, ids=[f"{f}{kw.get('fail_after', '')}" for f, kw in FAULTS])
def test_fault_keeps_previous_checkpoint(run, monkeypatch, fail, kw):
    out, cdir, good, good_bytes = run
    log = []
    instrument(monkeypatch, log, fail, **kw)
    t = mark(trainer(), 4)
    with pytest.raises((OSError, RuntimeError)):
        t.save_checkpoint(ckpt.path_for(cdir, 4))
    monkeypatch.undo()
    assert ("FAULT", fail) in log, log  # the fault was hit
    assert not os.path.exists(ckpt.path_for(cdir, 4))
    assert_previous_survives(out, cdir, good, good_bytes)
    # and the next save goes through, becoming what resume picks
    mark(trainer(), 6).save_checkpoint(ckpt.path_for(cdir, 6))
    r = trainer(seed=7)
    assert r.load_latest(out) == ckpt.path_for(cdir, 6) and r.step == 6 and marked(r) == 6


@pytest.mark.parametrize("fail,kw", FAULTS, ids=[f"{f}{kw.get('fail_after', '')}" for f, kw in FAULTS])
def test_fault_when_overwriting_the_same_file(tmp_path, monkeypatch, fail, kw):
    """save_checkpoint(path) over an existing file: a failure leaves the old file whole."""
    p = str(tmp_path / "c.pt")
    mark(trainer(), 2).save_checkpoint(p)
    before = read_bytes(p)
    log = []
    instrument(monkeypatch, log, fail, **kw)
    with pytest.raises((OSError, RuntimeError)):
        mark(trainer(), 4).save_checkpoint(p)
    monkeypatch.undo()
    assert ("FAULT", fail) in log, log
    assert read_bytes(p) == before
    r = trainer(seed=7).load_checkpoint(p)
    assert r.step == 2 and marked(r) == 2
    assert os.listdir(tmp_path) == ["c.pt"]


def test_interrupt_during_save_cleans_up(run, monkeypatch):
    """A KeyboardInterrupt (not an Exception) in the middle of the save: same guarantees."""
    out, cdir, good, good_bytes = run
    real_fsync = os.fsync

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mark(trainer(), 4).save_checkpoint(ckpt.path_for(cdir, 4))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert_previous_survives(out, cdir, good, good_bytes)


@pytest.mark.parametrize("fail", ["fsync-dir", "os.open-dir"])
def test_directory_fsync_failure_is_tolerated(run, monkeypatch, fail):
    """Folders that refuse fsync (some network file systems): the renamed file is complete and used."""
    out, cdir, good, good_bytes = run
    log = []
    instrument(monkeypatch, log, fail)
    p = mark(trainer(), 4).save_checkpoint(ckpt.path_for(cdir, 4))
    monkeypatch.undo()
    assert ("FAULT", fail) in log, log
    assert ckpt.read(p)["step"] == 4 and read_bytes(good) == good_bytes
    assert trainer().load_latest(out) == p


def test_save_order_data_fsync_rename_dirfsync(run, monkeypatch):
    _, cdir, _, _ = run
    log = []
    instrument(monkeypatch, log)
    final = ckpt.path_for(cdir, 4)
    mark(trainer(), 4).save_checkpoint(final)
    monkeypatch.undo()
    st_final, st_dir = os.stat(final), os.stat(cdir)
    kinds = [e[0] for e in log]

    # 1. the data goes to a temporary file in the same folder, invisible to the resume search
    i_open = kinds.index("open")
    tmp = log[i_open][1]
    assert os.path.dirname(tmp) == os.path.abspath(cdir) and tmp != os.path.abspath(final)
    assert os.path.basename(tmp) not in [os.path.basename(p) for _, p in ckpt.list_checkpoints(cdir)]
    assert not os.path.exists(tmp)
    writes = [i for i, k in enumerate(kinds) if k == "write"]
    assert writes and min(writes) > i_open
    # 2. that file is fsynced after the last write, holding every byte of the final checkpoint
    fsyncs = [i for i, k in enumerate(kinds) if k == "fsync"]
    file_syncs = [i for i in fsyncs if log[i][1] == "file"]
    assert len(file_syncs) == 1, log
    i_fsync = file_syncs[0]
    assert i_fsync > max(writes)
    assert log[i_fsync][2] == st_final.st_ino  # the file that became the checkpoint (rename keeps the inode)
    assert log[i_fsync][3] == st_final.st_size  # all of it: nothing left in a buffer
    assert "flush" in kinds[max(writes):i_fsync]
    # 3. then renamed onto the final name
    replaces = [i for i, k in enumerate(kinds) if k == "replace"]
    assert [log[i][1:] for i in replaces] == [(tmp, os.path.abspath(final))]
    i_replace = replaces[0]
    assert i_replace > i_fsync
    # 4. then the folder is opened and fsynced, making the rename durable
    dir_syncs = [i for i in fsyncs if log[i][1] == "dir"]
    assert dir_syncs and max(dir_syncs) > i_replace, log
    assert any(log[i][2] == st_dir.st_ino for i in dir_syncs if i > i_replace)
    assert ("os.open", os.path.abspath(cdir)) in log[i_replace:]


def test_half_written_temp_file_is_never_resumed(run):
    """A crash mid-save leaves `.ckpt-<step>.pt.<pid>.tmp` behind: resume ignores it, even when it
    is newer than every checkpoint and even when it holds a complete checkpoint."""
    out, cdir, good, good_bytes = run
    names = [f".ckpt-{4:08d}.pt.{os.getpid() + 1}.tmp", f".ckpt-{99:08d}.pt.1.tmp"]
    for n in names[:1]:
        with open(os.path.join(cdir, n), "wb") as f:
            f.write(good_bytes[: len(good_bytes) // 3] + os.urandom(64))  # half-written garbage
    t = mark(trainer(), 99)
    torch.save(t.state_dict(), os.path.join(cdir, names[1]))  # complete, but never renamed
    assert ckpt.list_checkpoints(cdir) == [(2, good)]
    r = trainer(seed=7)
    with warnings_as_errors():
        assert r.load_latest(out) == good
    assert r.step == 2 and marked(r) == 2
    assert sorted(temp_files(cdir)) == sorted(names)  # resume neither used nor quarantined them
    # the next save of this process removes the stale temporary files of other processes
    mark(trainer(), 4).save_checkpoint(ckpt.path_for(cdir, 4))
    assert not temp_files(cdir)
    assert [s for s, _ in ckpt.list_checkpoints(cdir)] == [2, 4]


@pytest.mark.parametrize("cut", ["empty", "1", "100", "half", "minus1", "minus22"])
def test_truncated_newest_checkpoint_falls_back(run, cut):
    out, cdir, good, good_bytes = run
    newest = mark(trainer(), 4).save_checkpoint(ckpt.path_for(cdir, 4))
    data = read_bytes(newest)
    n = {"empty": 0, "1": 1, "100": 100, "half": len(data) // 2, "minus1": len(data) - 1,
         "minus22": len(data) - 22}[cut]
    with open(newest, "wb") as f:
        f.write(data[:n])
    with pytest.raises(CheckpointError, match="ckpt-00000004.pt"):
        ckpt.read(newest)
    r = trainer(seed=7)
    with pytest.warns(RuntimeWarning, match="skipping .*ckpt-00000004"):
        assert r.load_latest(out) == good
    assert r.step == 2 and marked(r) == 2
    assert read_bytes(good) == good_bytes


def test_all_checkpoints_unreadable_resumes_nothing(run):
    out, _, good, _ = run
    with open(good, "wb") as f:
        f.write(b"PK\x03\x04 truncated")
    r = trainer(seed=7)
    with pytest.warns(RuntimeWarning, match="skipping"):
        assert r.load_latest(out) is None
    assert r.step == 0
