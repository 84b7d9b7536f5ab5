"""The `fastgan train` / `fastgan sample` command line, end to end: artifacts, resume, bad arguments
(one line, exit 2), a SIGKILL at any moment leaves a loadable checkpoint, SIGTERM stops cleanly,
and a 2-process gloo DDP run under torchrun."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastgan import cli
from fastgan.train import GANTrainer
from fastgan.train import checkpoint as ckpt
from fastgan.train.data import make_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
RING = ["--data", "ring8", "--width", "16", "--batch-size", "32", "--no-progress", "--threads", "1"]
DIGITS = ["--data", "digits", "--image-size", "16", "--width", "4", "--batch-size", "16", "--no-progress",
          "--threads", "1"]


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_then_sample(tmp_path, capsys):
    out = str(tmp_path / "run")
    rc, o, e = run_cli(["train", *DIGITS, "--steps", "6", "--out", out, "--sample-every", "3",
                        "--checkpoint-every", "3", "--ema-decay", "0.9", "--log-every", "2"], capsys)
    assert rc == 0, e
    assert "done: step 6" in o and "fd=" in o
    for f in ("samples.png", "curves.png", "metrics.jsonl", "config.json", "checkpoints/ckpt-00000006.pt"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["model"] == "dcgan" and cfg["image_size"] == 16 and cfg["trainer"]["ema_decay"] == 0.9
    assert (cfg["trainer"]["lr_g"], cfg["trainer"]["lr_d"]) == (2e-4, 2e-4)
    png = str(tmp_path / "s.png")
    rc, o, e = run_cli(["sample", "--checkpoint", out, "--n", "9", "--out", png, "--save-tensor",
                        str(tmp_path / "s.pt")], capsys)
    assert rc == 0, e
    from PIL import Image
    assert Image.open(png).size == (3 * 18 + 2, 3 * 18 + 2)  # 3x3 grid of 16 px with 2 px padding
    x = torch.load(tmp_path / "s.pt")
    assert x.shape == (9, 1, 16, 16) and x.abs().max() <= 1 and x.std() > 0
    # the sample command rebuilt the EMA generator: same as the trainer's own
    t = GANTrainer(*__import__("fastgan.models", fromlist=["build"]).build(
        "dcgan", {"z_dim": 100, "channels": 1, "image_size": 16, "width": 4},
        {"channels": 1, "image_size": 16, "width": 4}), z_dim=100, ema_decay=0.9)
    t.load_checkpoint(os.path.join(out, "checkpoints", "ckpt-00000006.pt"))
    z = torch.randn(9, 100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t.sample(9, z=z), x)


def test_resume_and_existing_out(tmp_path, capsys):
    out = str(tmp_path / "run")
    rc, o, e = run_cli(["train", *RING, "--steps", "10", "--out", out, "--checkpoint-every", "5"], capsys)
    assert rc == 0, e
    rc, o, e = run_cli(["train", *RING, "--steps", "20", "--out", out], capsys)
    assert rc == 2 and "already holds checkpoints" in e and "--resume" in e
    # a corrupt newest checkpoint: --resume falls back to the previous one, with a warning
    newest = ckpt.path_for(os.path.join(out, "checkpoints"), 10)
    open(newest, "wb").write(b"garbage")
    with pytest.warns(RuntimeWarning, match="ckpt-00000010"):
        rc, o, e = run_cli(["train", *RING, "--steps", "12", "--out", out, "--resume"], capsys)
    assert rc == 0, e
    assert "resumed from" in o and "ckpt-00000005.pt (step 5)" in o and "done: step 12" in o
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "d_loss" in r] == sorted({r["step"] for r in rows if "d_loss" in r})


@pytest.mark.parametrize("argv,msg", [
    (["train", "--data", "no/such/place"], "--data: no such dataset"),
    (["train", "--data", "ring8", "--model", "dcgan"], "--model dcgan needs images"),
    (["train", "--data", "digits", "--model", "mlp"], "--model mlp needs 2-D points"),
    (["train", "--image-size", "48"], "--image-size must be one of"),
    (["train", "--data", "ring8", "--steps", "-3"], "'steps'"),
    (["train", "--data", "ring8", "--loss", "nope"], "argument --loss: invalid choice"),
    (["train", "--data", "ring8", "--ema-decay", "2"], "'ema_decay'"),
    (["train", "--data", "ring8", "--batch-size", "100000", "--steps", "1"], "'batch_size'"),
    (["train", "--data", "ring8", "--device", "cuda:99"], "--device"),
    (["train", "--data", "ring8", "--device", "tpu!"], "--device"),
    (["train", "--data", "ring8", "--r1-gamma", "1", "--gp-weight", "1"], "or WGAN-GP ('gp_weight'), not both"),
    (["train", "--data", "ring8", "--r2-gamma", "1", "--gp-weight", "1"], "or WGAN-GP ('gp_weight'), not both"),
    (["train", "--data", "ring8", "--r2-gamma", "-1"], "argument 'r2_gamma' must be a non-negative number"),
    (["train", "--model", "vae", "--r2-gamma", "1"], "the VAE objective does not apply R2; drop --r2-gamma"),
    (["train", "--model", "stargan", "--r2-gamma", "1"], "the StarGAN objective does not apply R2; drop --r2-gamma"),
    (["train", "--data", "ring8", "--pack", "0"], "--pack must be a positive integer, got 0"),
    (["train", "--data", "ring8", "--pack", "3"], "--batch-size (100) must be a multiple of --pack (3)"),
    (["train", "--model", "cdcgan", "--pack", "2"], "--pack applies to --model dcgan and mlp"),
    (["train", "--model", "infogan", "--recipe", "r3gan"], "--recipe r3gan trains --model mlp or dcgan"),
    (["train", "--model", "cyclegan", "--recipe", "r3gan"], "drop it for cyclegan"),
    (["train", "--model", "cdcgan", "--lr-decay"], "--lr-decay applies to --model dcgan and mlp"),
    (["train", "--model", "stargan", "--lr-decay"], "--lr-decay applies to --model dcgan and mlp"),
    (["train", "--steps", "ten"], "argument --steps: invalid int value"),
    (["sample", "--checkpoint", "missing.pt"], "no such checkpoint"),
    (["sample"], "--checkpoint"),
])
def test_bad_arguments_one_line(argv, msg, tmp_path, monkeypatch):
    """Each user error exits 2 with one line on stderr, no traceback."""
    monkeypatch.chdir(tmp_path)
    p = subprocess.run([sys.executable, "-m", "fastgan", *argv], cwd=tmp_path, env=ENV, capture_output=True,
                       text=True, timeout=300) if argv == ["sample"] else None
    if p is not None:  # one real subprocess: `python -m fastgan` works and the exit status is real
        rc, err = p.returncode, p.stderr
    else:
        import io
        import contextlib
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            try:
                rc = cli.main(argv)
            except SystemExit as ex:
                rc = ex.code
        err = buf.getvalue()
    assert rc == 2, err
    assert msg in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_learning_rates_per_player(tmp_path, capsys):
    """--lr sets both players' rates (also over a model's own defaults), --lr-g / --lr-d one each."""
    for extra, want in ((["--lr", "5e-4"], (5e-4, 5e-4)), (["--lr-d", "1e-4"], (2e-4, 1e-4)),
                        (["--lr", "5e-4", "--lr-g", "3e-3"], (3e-3, 5e-4)),
                        (["--model", "infogan", "--lr", "5e-4"], (5e-4, 5e-4))):
        out = str(tmp_path / f"run{len(os.listdir(tmp_path))}")
        rc, o, e = run_cli(["train", *DIGITS, "--steps", "1", "--out", out, "--quiet", "--width", "8", *extra], capsys)
        assert rc == 0, e
        cfg = json.load(open(os.path.join(out, "config.json")))["trainer"]
        assert (cfg["lr_g"], cfg["lr_d"]) == want, extra


def test_r1_and_r2_together(tmp_path, capsys):
    """--r2-gamma: R2 beside R1 (the R3GAN setting), both lazy with --r1-every, both logged."""
    out = str(tmp_path / "run")
    rc, o, e = run_cli(["train", *RING, "--steps", "4", "--out", out, "--quiet", "--r1-gamma", "0.5",
                        "--r2-gamma", "0.5", "--r1-every", "2"], capsys)
    assert rc == 0, e
    cfg = json.load(open(os.path.join(out, "config.json")))["trainer"]
    assert (cfg["r1_gamma"], cfg["r2_gamma"], cfg["r1_every"]) == (0.5, 0.5, 2)
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl")) if '"d_loss"' in line]
    assert rows and all("r1" in r and "r2" in r for r in rows) and any(r["r2"] > 0 for r in rows)


def test_recipe_r3gan(tmp_path, capsys):
    """--recipe r3gan: rpgan, R1 = R2 at the model's gamma, Adam (0, 0.99), the rates decayed over the
    second half; explicit flags win."""
    from fastgan.cli import R3GAN_GAMMA
    for argv, model, extra, pen in ((RING, "mlp", [], None), (DIGITS, "dcgan", [], None),
                                    (RING, "mlp", ["--r2-gamma", "0.3"], (R3GAN_GAMMA["mlp"], 0.3, 0.0)),
                                    (RING, "mlp", ["--gp-weight", "2"], (0.0, 0.0, 2.0))):
        out = str(tmp_path / f"run{len(extra)}{model}{pen}")
        rc, o, e = run_cli(["train", *argv, "--steps", "2", "--out", out, "--quiet", "--recipe", "r3gan", *extra],
                           capsys)
        assert rc == 0, e
        cfg = json.load(open(os.path.join(out, "config.json")))["trainer"]
        g = R3GAN_GAMMA[model]
        assert (cfg["loss"], cfg["betas"], cfg["decay"]) == ("rpgan", [0.0, 0.99], [1, 2])
        assert (cfg["r1_gamma"], cfg["r2_gamma"], cfg["gp_weight"]) == (pen or (g, g, 0.0))
    # a run of one step has nothing to decay; a negative one is refused in one line
    rc, o, e = run_cli(["train", *RING, "--steps", "1", "--out", str(tmp_path / "one"), "--quiet", "--lr-decay"],
                       capsys)
    assert rc == 0, e
    rc, o, e = run_cli(["train", *RING, "--steps", "-3", "--out", str(tmp_path / "neg"), "--recipe", "r3gan"], capsys)
    assert rc == 2 and "'steps'" in e and "Traceback" not in e


def test_stacked_digits(tmp_path, capsys):
    """--data stacked-digits: a 3-channel DCGAN, scored by modes covered and KL from uniform on 26,000
    samples (the evaluation PacGAN and VEEGAN use for StackedMNIST)."""
    out = str(tmp_path / "run")
    rc, o, e = run_cli(["train", "--data", "stacked-digits", *DIGITS[2:], "--steps", "2", "--sample-every", "2",
                        "--out", out, "--quiet"], capsys)
    assert rc == 0, e
    assert "done: step 2" in o and "modes=" in o and "modes_total=1000" in o and "kl=" in o
    ev = [json.loads(line)["eval"] for line in open(os.path.join(out, "metrics.jsonl")) if '"eval"' in line]
    assert ev and 1 <= ev[-1]["modes"] <= 1000 and ev[-1]["kl"] > 0.5  # two steps in: far from uniform
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert (cfg["image_size"], cfg["data"]) == (16, "stacked-digits")
    ck = torch.load(os.path.join(out, "checkpoints", "ckpt-00000002.pt"), weights_only=False)
    assert ck["models"]["generator"]["channels"] == 3


def test_pack(tmp_path, capsys):
    """--pack 2: D takes two samples side by side (twice the inputs), and training runs."""
    for argv, key, want in ((RING, "in_dim", 4), (DIGITS, "channels", 2)):
        out = str(tmp_path / f"run{key}")
        rc, o, e = run_cli(["train", *argv, "--steps", "2", "--out", out, "--quiet", "--pack", "2"], capsys)
        assert rc == 0, e
        ck = torch.load(os.path.join(out, "checkpoints", "ckpt-00000002.pt"), weights_only=False)
        assert ck["config"]["pack"] == 2 and ck["models"]["discriminator"][key] == want


def test_corrupt_checkpoint_for_sample(tmp_path, capsys):
    bad = tmp_path / "c.pt"
    bad.write_bytes(b"\x00" * 100)
    rc, o, e = run_cli(["sample", "--checkpoint", str(bad)], capsys)
    assert rc == 2 and "c.pt" in e and "not a readable" in e


def _spawn(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "fastgan", "train", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pred, proc, timeout=240):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    """A run writing a checkpoint every step is SIGKILLed at random moments (often mid-write);
    each time, the newest checkpoint loads and `--resume` continues from it."""
    out = str(tmp_path / "run")
    cdir = os.path.join(out, "checkpoints")
    rng = random.Random(0)
    last = 0
    for i in range(3):
        p = _spawn([*RING, "--steps", "100000", "--out", out, "--checkpoint-every", "1", "--sample-every", "100000",
                    "--log-every", "1000"] + (["--resume"] if i else []), tmp_path)
        _wait_for(lambda: any(s > last + 2 for s, _ in ckpt.list_checkpoints(cdir)), p)
        time.sleep(rng.uniform(0, 0.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        steps = [s for s, _ in ckpt.list_checkpoints(cdir)]
        assert 1 <= len(steps) <= 4  # pruned to 3 (+1 renamed before pruning)
        ck = ckpt.read(ckpt.path_for(cdir, steps[-1]))
        assert ck["step"] == steps[-1] > last
        last = steps[-1]


def test_sigterm_finishes_the_step_and_checkpoints(tmp_path):
    out = str(tmp_path / "run")
    cdir = os.path.join(out, "checkpoints")
    p = _spawn([*RING, "--steps", "100000", "--out", out, "--checkpoint-every", "20", "--sample-every", "100000"],
               tmp_path)
    _wait_for(lambda: ckpt.list_checkpoints(cdir), p)
    p.send_signal(signal.SIGTERM)
    o, e = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, e
    assert "SIGTERM received" in o and "stopped by SIGTERM" in o and "Traceback" not in e
    step = int(o.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert ckpt.list_checkpoints(cdir)[-1][0] == step
    assert ckpt.read(ckpt.path_for(cdir, step))["step"] == step


def test_data_sharding():
    """Each process takes its own part of every global batch; together they cover it."""
    x = torch.arange(40.0)[:, None]
    cpu = torch.device("cpu")
    a = make_batches(x, 4, device=cpu, seed=3, rank=0, world=2)
    b = make_batches(x, 4, device=cpu, seed=3, rank=1, world=2)
    one = make_batches(x, 8, device=cpu, seed=3)
    for _ in range(7):
        ba, bb, bo = next(a), next(b), next(one)
        assert not set(ba.flatten().tolist()) & set(bb.flatten().tolist())
        assert sorted(ba.flatten().tolist() + bb.flatten().tolist()) == sorted(bo.flatten().tolist())


DDP_SCRIPT = r'''
import os, sys, torch
torch.set_num_threads(1)
from fastgan import models
from fastgan.data import load_dataset
from fastgan.train import GANTrainer
out = sys.argv[1]
torch.manual_seed(0)
t = GANTrainer(models.MLPGenerator(2, 2, 16, 2), models.MLPDiscriminator(2, 16, 2), z_dim=2, r1_gamma=0.1,
               ema_decay=0.9)
t.fit(load_dataset("ring8"), 6, 16, out_dir=out + "/mlp", log_every=2, sample_every=3, checkpoint_every=3,
      progress=False)
torch.manual_seed(0)
u = GANTrainer(models.DCGANGenerator(8, 1, 16, 4), models.DCGANDiscriminator(1, 16, 4), z_dim=8, loss="wgan",
               gp_weight=10.0, d_steps=2)
u.fit(load_dataset("digits", 16), 4, 8, out_dir=out + "/dcgan", sample_every=100, checkpoint_every=2,
      progress=False)
torch.save({"g": t.generator.state_dict(), "d": t.discriminator.state_dict(), "ug": u.generator.state_dict(),
            "ud": u.discriminator.state_dict(), "world": t.world, "rng": torch.get_rng_state()},
           f"{out}/rank{t.rank}.pt")
'''


def test_ddp_two_processes_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    port = str(29500 + random.Random(os.getpid()).randrange(2000))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                        str(script), str(tmp_path)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == 2
    for k in ("g", "d", "ug", "ud"):  # DDP kept the replicas' weights identical
        for name in r0[k]:  # (BN running stats: rank 0's are broadcast at each forward, then updated locally)
            if "running_" not in name:
                assert torch.equal(r0[k][name], r1[k][name]), (k, name)
    assert any("running_" in n for n in r0["ug"])
    assert not torch.equal(r0["rng"], r1["rng"])  # each process draws its own noise
    # rank 0 alone logged and checkpointed
    rows = [json.loads(line) for line in open(tmp_path / "mlp" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 6]
    ck = ckpt.read(ckpt.path_for(str(tmp_path / "mlp" / "checkpoints"), 6))
    assert ck["world"] == 2 and len(ck["rng"]) == 2
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "dcgan" / "checkpoints"))] == [2, 4]


def test_train_quiet_prints_only_the_summary(tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--data", "ring8", "--width", "16", "--batch-size", "32", "--threads", "1", "--steps", "4",
            "--log-every", "1", "--sample-every", "4", "--out", out]
    rc, o, e = run_cli([*argv, "--quiet"], capsys)
    assert rc == 0, e
    assert e == "" and o.startswith("fastgan: done: step 4") and o.count("\n") == 2
    rc, o, e = run_cli([*argv[:-1], out + "2"], capsys)                  # not quiet, stderr not a terminal
    assert rc == 0 and o.startswith("fastgan: training mlp on ring8")
    assert [ln.split()[1] for ln in e.splitlines()] == ["1/4", "2/4", "3/4", "4/4"] and "\r" not in e


VARIANTS_DDP_SCRIPT = r'''
import sys, torch
torch.set_num_threads(1)
from fastgan import models
from fastgan.data import load_dataset, load_domains
from fastgan.objectives import AAE, VAE, Conditional, CycleGAN, InfoGAN, ProGAN, QHead, StarGAN
from fastgan.train import GANTrainer
out, ds = sys.argv[1], load_dataset("digits", 16)
builds = {
    "cdcgan": lambda: (models.ConditionalDCGANGenerator(8, 1, 16, 4, 10), models.ProjectionDCGANDiscriminator(1, 16, 4, 10),
                       8, {}, Conditional(10)),
    "infogan": lambda: (models.DCGANGenerator(8 + 12, 1, 16, 4), models.DCGANDiscriminator(1, 16, 4), 20, {},
                        InfoGAN(QHead(4 * 2 * 16, 10, 2, hidden=8))),
    "aae": lambda: (models.DCGANGenerator(4, 1, 16, 4), models.MLPDiscriminator(4, 8, 2), 4, {"r1_gamma": 1.0},
                    AAE(models.ConvEncoder(4, 1, 16, 4), prior="ring")),
    "vae": lambda: (models.DCGANGenerator(4, 1, 16, 4), None, 4, {}, VAE(models.ConvEncoder(8, 1, 16, 4))),
    "cyclegan": lambda: (models.ResnetGenerator(3, 3, 4, 1), models.PatchDiscriminator(3, 4, 1), 1, {"loss": "lsgan"},
                         CycleGAN(models.ResnetGenerator(3, 3, 4, 1), models.PatchDiscriminator(3, 4, 1),
                                  classifier_steps=20)),
    "stargan": lambda: (models.StarGenerator(3, 3, 4, 1), models.StarDiscriminator(3, 3, 16, 4), 1,
                        {"loss": "wgan", "gp_weight": 10.0, "d_steps": 2}, StarGAN(classifier_steps=20)),
    "progan": lambda: (models.ProGenerator(8, 1, 16, 4), models.ProDiscriminator(1, 16, 4), 8,
                       {"loss": "wgan", "gp_weight": 10.0}, ProGAN(1)),  # 3 steps: 4x4, fading 8x8, 8x8
    # ADA: p moves at step 4 from the all-reduced signs of both processes' real logits
    "ada": lambda: (models.DCGANGenerator(8, 1, 16, 4), models.DCGANDiscriminator(1, 16, 4), 8,
                    {"augment": "ada", "ada_kimg": 0.001, "r1_gamma": 0.5}, None),
}
data = {"cyclegan": load_domains("digits:digits-m", 16), "stargan": load_domains("digits:digits-m:digits-inv", 16)}
res = {}
for name, build in builds.items():
    torch.manual_seed(0)
    G, D, z, kw, obj = build()
    t = GANTrainer(G, D, z_dim=z, objective=obj, ema_decay=0.9, **kw)
    t.fit(data.get(name, ds), 4 if name == "ada" else 3, 8, out_dir=f"{out}/{name}", sample_every=3,
          checkpoint_every=3, log_every=1, progress=False)
    res[name] = {k: m.state_dict() for k, m in t.nets.items()}
    res[name + "/world"] = t.world
    res[name + "/p"] = None if t.augment is None else (t.augment.p, t.augment.last_r)
torch.save(res, f"{out}/variants{t.rank}.pt")
'''


def test_ddp_two_processes_every_objective(tmp_path):
    """cdcgan, InfoGAN, the AAE, the VAE, CycleGAN, StarGAN and ProGAN (whose levels not grown yet get zero
    gradients, so DDP needs no unused-parameter search), and a DCGAN with ADA, under torchrun (2 gloo
    processes): every network the objective adds is DDP-wrapped (identical weights on both ranks), ADA's p
    is the same on both, rank 0 checkpoints the run."""
    script = tmp_path / "ddp_variants.py"
    script.write_text(VARIANTS_DDP_SCRIPT)
    port = str(29500 + random.Random(os.getpid() + 1).randrange(2000))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                        str(script), str(tmp_path)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"variants{r}.pt") for r in (0, 1))
    nets = {"cdcgan": {"generator", "discriminator"}, "infogan": {"generator", "discriminator", "q"},
            "aae": {"generator", "discriminator", "encoder"}, "vae": {"generator", "encoder"},
            "cyclegan": {"generator", "discriminator", "g_ba", "d_a"}, "stargan": {"generator", "discriminator"},
            "progan": {"generator", "discriminator"}, "ada": {"generator", "discriminator"}}
    for name, want in nets.items():
        assert r0[name + "/world"] == 2 and set(r0[name]) == want, name
        for net in want:
            for k, v in r0[name][net].items():
                if "running_" not in k and "num_batches" not in k:
                    assert torch.equal(v, r1[name][net][k]), (name, net, k)
        assert r0[name + "/p"] == r1[name + "/p"], name  # ADA: one p (and one statistic) on every process
        ck = ckpt.read(ckpt.path_for(str(tmp_path / name / "checkpoints"), 3))
        assert ck["world"] == 2 and set(ck["nets"]) == want - {"generator", "discriminator"}, name
