"""The README's two commands (`make train`, `make test`) and the Makefile behind them.

The set-up logic runs for real against a fake interpreter: its `-m venv` writes a fake pip and
python that log their arguments, so the tests see which torch would be installed (CPU or CUDA
build, which index), that fastgan is built with --no-build-isolation against it, and that the
set-up is reused, and redone when a kernel source changes, without downloading anything.
"""
import os
import re
import shutil
import stat
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _readme_block():
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README's 'The two commands' section must hold one fenced block"
    return [line.split("#", 1)[0].strip() for line in blocks[0].splitlines() if line.split("#", 1)[0].strip()]


def test_readme_gives_exactly_two_commands_and_ci_calls_the_test_one():
    assert _readme_block() == ["make train", "make test"]
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert re.search(r"^\s*run_tests make test\b", ci, re.M), ".ci/run must call the README's test command"


def _script(path, body):
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.fixture
def fake(tmp_path):
    """A PATH with a fake python3 (and optionally nvidia-smi) and a log of what the venv ran."""
    bindir, log = tmp_path / "bin", tmp_path / "log"
    bindir.mkdir()
    # The fake interpreter: -c checks succeed (Python 3.10+), except the CPU index's DNS lookup,
    # which follows $FAKE_ONLINE; -m venv DIR writes DIR/bin/{pip,python,fastgan} that log.
    logger = f'echo "$(basename "$0") $*" >> {log}\n'
    venv_body = (
        'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin"; '
        f'for t in pip fastgan; do printf \'#!/bin/sh\\n{logger}\' > "$3/bin/$t"; chmod +x "$3/bin/$t"; done; '
        'cp "$0" "$3/bin/python"; echo "venv $3" >> ' + str(log) + '; exit 0; fi\n'
        'if [ "$1" = -c ]; then case "$2" in *getaddrinfo*) [ "${FAKE_ONLINE:-0}" = 1 ]; exit $?;; esac; exit 0; fi\n'
        + logger)
    _script(bindir / "python3", venv_body)

    def run(*targets, gpu=False, online=False, check=True):
        # shadows a real nvidia-smi either way
        _script(bindir / "nvidia-smi", 'echo "GPU 0: NVIDIA H200"\n' if gpu else 'exit 9\n')
        env = dict(os.environ, PATH=f"{bindir}:/usr/bin:/bin", FAKE_ONLINE="1" if online else "0")
        r = subprocess.run(["make", "-C", ROOT, f"VENV={tmp_path / 'venv'}", *targets],
                           env=env, capture_output=True, text=True)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    run.log = log
    run.venv = tmp_path / "venv"
    return run


def _lines(fake):
    return fake.log.read_text().splitlines() if fake.log.exists() else []


def test_no_gpu_online_installs_the_cpu_build_then_builds_fastgan(fake):
    fake("setup", online=True)
    lines = _lines(fake)
    assert lines[0] == f"venv {fake.venv}"
    assert "pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert "pip install ninja wheel setuptools" in lines
    assert "pip install --no-build-isolation -e .[test]" in lines
    assert lines.index("pip install --no-build-isolation -e .[test]") > lines.index("pip install ninja wheel setuptools")
    assert lines[-1] == "fastgan info"


def test_no_gpu_offline_takes_torch_from_the_configured_index(fake):
    fake("setup", online=False)
    torch_lines = [x for x in _lines(fake) if "torch==" in x]
    assert torch_lines == ["pip install torch==2.13.0"]


def test_gpu_installs_the_cuda_build(fake):
    r = fake("setup", gpu=True, online=True)
    assert [x for x in _lines(fake) if "torch==" in x] == ["pip install torch==2.13.0"]
    assert "CUDA build" in r.stdout


def test_train_and_test_reuse_the_setup_and_run_the_commands(fake):
    fake("train", online=True)
    n = len(_lines(fake))
    fake("train", "ARGS=--model cdcgan --steps 5", online=True)
    fake("test", "PYTEST_ARGS=-x -k gan_loss", online=True)
    again = _lines(fake)[n:]
    assert again == ["fastgan train --model cdcgan --steps 5", "python -m pytest tests -n auto --maxprocesses 4 -x -k gan_loss"]
    assert _lines(fake)[n - 1] == "fastgan train"
    # xdist workers get one intra-op thread each (2 workers x 2 threads on 2 cores is slower)
    assert "OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}" in fake("-n", "test", online=True).stdout


def test_a_changed_kernel_source_rebuilds_fastgan_not_torch(fake):
    fake("setup", online=True)
    stamp = fake.venv / ".fastgan-built"
    assert fake("-q", str(stamp), check=False).returncode == 0  # up to date
    src = os.path.join(ROOT, "csrc", "gan_loss", "gan_loss.h")
    old = os.stat(src).st_mtime - 60
    os.utime(stamp, (old, old))  # as if gan_loss.h were edited after the build
    assert fake("-q", str(stamp), check=False).returncode == 1
    n = len(_lines(fake))
    fake("setup", online=True)
    assert _lines(fake)[n:] == ["pip install --no-build-isolation -e .[test]", "fastgan info"]
    assert os.stat(stamp).st_mtime > time.time() - 60


def test_an_old_python_is_refused_with_what_to_do(fake, tmp_path):
    _script(tmp_path / "bin" / "python3", 'exit 1\n')  # the version check fails
    r = fake("setup", check=False)
    assert r.returncode != 0
    assert "fastgan needs Python 3.10+" in r.stdout + r.stderr
    assert not fake.venv.exists()
