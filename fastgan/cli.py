"""The `fastgan` command line: train (a GAN, with samples, curves, checkpoints), sample (images
from a checkpoint), info (build facts), bench (op ratio tables), selftest (every op on every backend
against its float64 reference)."""
import argparse
import json
import os
import sys


def _cmd_info(args) -> int:
    import fastgan
    facts = fastgan.info()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    for k, v in facts.items():
        if k != "ops":
            print(f"{k:20s} {v}")
    print("ops:")
    for name, kernels in facts["ops"].items():
        print(f"  {name:28s} cpu={'yes' if kernels['cpu'] else 'no':3s} cuda={'yes' if kernels['cuda'] else 'no':3s} "
              f"simt={'yes' if kernels['simt'] else 'no'}")
    return 0


def _cmd_bench(args) -> int:
    from fastgan import bench
    return bench.main(quick=args.quick, device=args.device, json_path=args.json,
                      families=args.only.split(",") if args.only else None, md_path=args.markdown)


def _cmd_selftest(args) -> int:
    from fastgan import selftest
    return selftest.main(backends=args.backend.split(",") if args.backend else None,
                         ops=args.op.split(",") if args.op else None, json_path=args.json, quick=args.quick,
                         dtypes=args.dtype.split(",") if args.dtype else None)


CONDITIONAL = ("cmlp", "cdcgan")  # models trained with fastgan.objectives.Conditional
AUTOENCODERS = ("aae", "vae")  # an encoder beside the DCGAN generator (the decoder)
INFO_CODES = (10, 2)  # InfoGAN on digits: one 10-way categorical code, two continuous ones
AUGMENTED = ("dcgan", "cdcgan", "progan")  # the image GANs whose step is the plain GAN's (D judges images)
TRANSLATION = ("cyclegan", "stargan")  # image-to-image models: --data A:B[:C...] (unpaired domains)
STAR_DOMAINS = "digits:digits-m:digits-inv:digits-thick"  # StarGAN's default: the four digit domains
STAR_IDENTITY = 5.0  # StarGAN's identity loss on the CLI (docs/stargan.md: without it, translations lose the digit)
# --recipe r3gan's gamma (R1 and R2) per model (docs/training.md, "The r3gan recipe"): mlp measured
# on ring8 (0.01 and 0.1 with the recipe; 1 failed without the decay); dcgan R3GAN's CIFAR-10 start
# value (32 px images in [-1, 1])
R3GAN_GAMMA = {"mlp": 0.01, "dcgan": 0.05}


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _default_out(data: str, model: str, resume: bool) -> str:
    """runs/<data>-<model>[-k]: a fresh folder, or with --resume the newest existing one."""
    name = "+".join(os.path.basename(os.path.normpath(p)) or "data" for p in data.split(":"))
    base = os.path.join("runs", f"{name}-{model}")
    cands = [base] + [f"{base}-{k}" for k in range(2, 1000)]
    existing = [c for c in cands if os.path.exists(c)]
    if resume:
        return existing[-1] if existing else base
    return next(c for c in cands if not os.path.exists(c) or not os.listdir(c))


def _pick_size(native: int, wanted) -> int:
    from fastgan.models import IMAGE_SIZES
    if wanted is not None:
        if wanted not in IMAGE_SIZES:
            raise CLIError(f"--image-size must be one of {', '.join(map(str, IMAGE_SIZES))} for the image models, "
                           f"got {wanted}")
        return wanted
    return next((s for s in IMAGE_SIZES if s >= native), IMAGE_SIZES[-1]) if native > 8 else 32


def _cmd_train(args) -> int:
    import torch
    from fastgan import data as fdata
    from fastgan import models

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except (RuntimeError, TypeError):
            raise CLIError(f"--device: not a device: {args.device!r}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CLIError(f"--device {args.device}: no CUDA device is available here")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CLIError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) here")
    translation = args.model in TRANSLATION
    args.data = args.data or {"cyclegan": "digits:digits-m", "stargan": STAR_DOMAINS}.get(args.model, "digits")
    if (":" in args.data) != translation:
        if args.model == "stargan":
            raise CLIError(f"--model stargan translates between several image domains: pass --data A:B[:C...] "
                           f"(e.g. {STAR_DOMAINS})")
        if translation:
            raise CLIError(f"--model {args.model} translates between two image domains: pass --data A:B "
                           "(e.g. digits:digits-m)")
        raise CLIError(f"--data {args.data} names several domains (A:B), which only translation models train on "
                       f"(--model {', '.join(TRANSLATION)})")
    # data: the image size is only known once the data is (for digits: 8x8 -> 32x32; translation: 16x16)
    try:
        if args.data in ("ring8", "grid25"):
            ds = fdata.load_dataset(args.data)
        elif translation:
            digits = all(p in fdata.DIGIT_DOMAINS for p in args.data.split(":"))
            ds = fdata.load_domains(args.data, args.image_size or (16 if digits else None))
        else:
            probe = args.image_size
            if probe is None and args.data in fdata.DIGIT_DOMAINS + ("stacked-digits",):
                probe = 32
            ds = fdata.load_dataset(args.data, probe)
    except (FileNotFoundError, fdata.DatasetError, ValueError, TypeError) as e:
        raise CLIError(f"--data: {e}") from None
    if args.identity is not None and (not translation or args.identity < 0):
        raise CLIError(f"--identity must be >= 0, got {args.identity}" if translation else
                       "--identity is the translation models' identity loss (--model cyclegan or stargan); drop it")
    if args.pack < 1:
        raise CLIError(f"--pack must be a positive integer, got {args.pack}")
    model = args.model or ("mlp" if ds.kind == "points" else "dcgan")
    if args.recipe is not None and model not in R3GAN_GAMMA:
        raise CLIError(f"--recipe {args.recipe} trains --model {' or '.join(R3GAN_GAMMA)} (the plain GAN's step); "
                       f"drop it for {model}")
    if args.lr_decay and model not in R3GAN_GAMMA:
        raise CLIError(f"--lr-decay applies to --model dcgan and mlp (the plain GAN's step); drop it for {model}")
    for flag, v in (("--augment-policy", args.augment_policy), ("--augment-p", args.augment_p),
                    ("--ada-target", args.ada_target)):
        if v is not None and args.augment is None:
            raise CLIError(f"{flag} sets up --augment; add --augment diffaug or ada, or drop {flag}")
    if args.augment_p is not None and args.augment != "diffaug":
        raise CLIError("--augment-p is --augment diffaug's fixed probability (ada tunes its own); drop it")
    if args.ada_target is not None and args.augment != "ada":
        raise CLIError("--ada-target applies to --augment ada; drop it")
    if args.augment is not None and model not in AUGMENTED:
        raise CLIError(f"--augment applies to the image GANs whose D judges images ({', '.join(AUGMENTED)}); drop "
                       f"it for {model}")
    if translation:
        return _train_translation(args, ds)
    if args.pack > 1 and model not in ("dcgan", "mlp"):
        raise CLIError(f"--pack applies to --model dcgan and mlp (the plain GAN's discriminator); drop it for {model}")
    classes = None
    if model in CONDITIONAL:
        if ds.y is None or ds.num_classes is None or ds.num_classes < 2:
            raise CLIError(f"--model {model} is class-conditional and needs labelled data (digits, ring8, grid25, "
                           f"labelled arrays or class folders); --data {args.data} has no labels")
        classes = ds.num_classes
    torch.manual_seed(args.seed)  # the initial weights follow --seed too
    if args.prior is not None and model != "aae":
        raise CLIError(f"--prior is the adversarial autoencoder's latent prior; --model {model} has none "
                       "(use --model aae, or drop --prior)")
    image = model in ("dcgan", "cdcgan", "infogan", "aae", "vae", "progan")
    steps = _steps(args, image)
    if image:
        if ds.kind != "image":
            raise CLIError(f"--model {model} needs images, but --data {args.data} holds {ds.x.shape[1]}-D points "
                           "(use --model mlp)")
        size = _pick_size(ds.x.shape[-1], args.image_size)
        if ds.x.shape[-1] != size:
            ds.x = fdata.datasets._resize(ds.x, size)
        # InfoGAN: 62 noise + the codes, as the paper; the autoencoders: an 8-d code
        z_dim = args.z_dim or {"infogan": 62, "aae": 8, "vae": 8, "progan": 128}.get(model, 100)
        if model == "infogan":
            z_dim += sum(INFO_CODES)
        width = args.width or (16 if model == "progan" else 32 if size <= 32 else 64)
        if model == "cdcgan":
            G = models.ConditionalDCGANGenerator(z_dim, ds.x.shape[1], size, width, classes)
            D = models.ProjectionDCGANDiscriminator(ds.x.shape[1], size, width, classes)
        elif model in AUTOENCODERS:  # the decoder is the DCGAN generator; D (AAE) judges codes
            G = models.DCGANGenerator(z_dim, ds.x.shape[1], size, width)
            encoder = models.ConvEncoder(z_dim * (2 if model == "vae" else 1), ds.x.shape[1], size, width)
            D = models.MLPDiscriminator(z_dim) if model == "aae" else None
        elif model == "progan":  # grown from 4x4 to `size`
            G = models.ProGenerator(z_dim, ds.x.shape[1], size, width)
            D = models.ProDiscriminator(ds.x.shape[1], size, width)
        else:  # with --pack m, D takes m images side by side (m times the channels)
            G = models.DCGANGenerator(z_dim, ds.x.shape[1], size, width)
            D = models.DCGANDiscriminator(ds.x.shape[1] * args.pack, size, width)
    else:
        if ds.kind != "points":
            raise CLIError(f"--model {model} needs 2-D points (ring8, grid25, an (N, D) array); --data {args.data} "
                           "holds images (use --model dcgan)")
        z_dim = args.z_dim or 2
        width = args.width or 128
        if model == "cmlp":
            G = models.ConditionalMLPGenerator(z_dim, ds.x.shape[1], classes, width)
            D = models.ProjectionMLPDiscriminator(ds.x.shape[1], classes, width)
        else:
            G = models.MLPGenerator(z_dim, ds.x.shape[1], width)
            D = models.MLPDiscriminator(ds.x.shape[1] * args.pack, width)
    objective = None
    if args.lr_decay or args.recipe:  # over the second half (no decay in a run shorter than 2 steps)
        from fastgan.objectives import GAN
        objective = GAN(decay=_decay(steps))
    if model in CONDITIONAL:
        from fastgan.objectives import Conditional
        objective = Conditional(classes)
    elif model == "infogan":  # a DCGAN whose input ends with the codes, and Q on D's 4x4 features
        from fastgan.objectives import InfoGAN, QHead
        from fastgan.models.dcgan import _widths
        objective = InfoGAN(QHead(_widths(size, width)[0] * 16, INFO_CODES[0], INFO_CODES[1]))
    elif model == "aae":
        from fastgan.objectives import AAE
        objective = AAE(encoder, prior=args.prior or "gaussian")
    elif model == "vae":
        from fastgan.objectives import VAE
        objective = VAE(encoder)
    elif model == "progan":  # the steps in 2 * levels + 1 phases: 4x4, then per level a fade-in and a stabilisation
        from fastgan.objectives import ProGAN
        objective = ProGAN(max(1, steps // (2 * G.levels + 1)))
        if args.gp_weight is None:
            args.gp_weight = 10.0  # the paper's WGAN-GP
    # R1: the MLP GANs (0.1) and the AAE's latent game (1.0, on the prior draws: steadier code matching);
    # an explicit --gp-weight replaces the recipe's R1 + R2
    r1 = args.r1_gamma if args.r1_gamma is not None else (
        0.0 if args.gp_weight else R3GAN_GAMMA[model] if args.recipe else 1.0 if model == "aae" else 0.0 if image
        else 0.1)
    if args.recipe and args.r2_gamma is None and not args.gp_weight:
        args.r2_gamma = r1  # R3GAN: the same gamma on both sides
    # EMA: images, and the conditional MLP (whose raw generator swings between evaluations)
    ema = args.ema_decay if args.ema_decay is not None else (0.99 if image or model == "cmlp" else 0.0)
    ema = ema or None
    lr = args.lr or (1e-3 if model == "progan" else 2e-4 if image else 1e-3)
    # InfoGAN: the paper's rates (G 1e-3, D and Q 2e-4); measured on digits at 2,000 steps, code/class
    # agreement 60% over 3 seeds against 31% with 2e-4 for both (docs/infogan.md)
    lr_g = args.lr_g or (lr if args.lr or model != "infogan" else 1e-3)
    lr_d = args.lr_d or lr
    batch = args.batch_size or (64 if image else 100)
    if batch % args.pack:
        raise CLIError(f"--batch-size ({batch}) must be a multiple of --pack ({args.pack})")
    loss = args.loss or ("rpgan" if args.recipe else "wgan" if model == "progan" else "ns")
    betas = (0.0, 0.99) if model == "progan" or args.recipe else (0.5, 0.999)  # ProGAN's and R3GAN's Adam
    tr = _trainer(args, G, D, z_dim, loss, lr_g, lr_d, r1, ema, objective, betas)
    if model == "progan" and steps < objective.total_steps() and tr.is_main and not args.quiet:
        print(f"fastgan: note: {steps} steps end before the {size}x{size} level is grown (--steps >= "
              f"{2 * G.levels + 1} for progan); samples are shown upsampled", flush=True)
    return _fit(args, tr, ds, model, steps, batch, width, getattr(G, "config", {}).get("image_size"))


def _decay(steps: int):
    """The rates' linear decay to 0 over the second half of `steps` (None below 2 steps: nothing to decay;
    a negative --steps is then refused by the trainer)."""
    return (steps // 2, steps) if steps >= 2 else None


def _steps(args, image: bool) -> int:
    return args.steps if args.steps is not None else (2000 if image else 3000)


def _trainer(args, G, D, z_dim, loss, lr_g, lr_d, r1, ema, objective, betas=(0.5, 0.999)):
    from fastgan.train import GANTrainer
    try:
        return GANTrainer(G, D, z_dim=z_dim, loss=loss, d_steps=1 if args.d_steps is None else args.d_steps,
                          lr_g=lr_g, lr_d=lr_d, betas=betas, r1_gamma=r1, r1_every=args.r1_every,
                          r2_gamma=args.r2_gamma or 0.0, gp_weight=0.0 if args.gp_weight is None else args.gp_weight,
                          ema_decay=ema, amp=args.amp, device=args.device, seed=args.seed,
                          compile=args.compile, objective=objective, pack=args.pack, augment=args.augment,
                          augment_policy=args.augment_policy or "color,translation,cutout",
                          augment_p=1.0 if args.augment_p is None else args.augment_p,
                          ada_target=0.6 if args.ada_target is None else args.ada_target)
    except (ValueError, TypeError) as e:
        msg = str(e).replace("GANTrainer: argument ", "argument ")
        for arg, flag in (("r2_gamma", "--r2-gamma"), ("pack", "--pack"), ("augment", "--augment")):
            msg = msg.replace(f"drop '{arg}'", f"drop {flag}")
        for arg, flag in (("policy", "--augment-policy"), ("augment_p", "--augment-p"), ("ada_target", "--ada-target")):
            msg = msg.replace(f"argument '{arg}'", flag)
        raise CLIError(msg) from None


def _train_translation(args, ds) -> int:
    """Translation models on unpaired domains, sized to the images, the rates decayed linearly over
    the second half. CycleGAN: ResNet generators and PatchGAN discriminators, LSGAN, lam 10, identity
    0.5, pools of 50. StarGAN: one generator for all domains, WGAN-GP (10), 5 D updates per G update,
    lr 1e-4, a batch of 4 per domain, and an identity loss of STAR_IDENTITY (not the paper's: see
    docs/stargan.md)."""
    import torch
    from fastgan import models
    size = ds.domains[0].x.shape[-1]
    if size % 4 or size < 16:
        raise CLIError(f"--image-size must be a multiple of 4 and at least 16 for --model {args.model}, got {size}")
    torch.manual_seed(args.seed)
    c = ds.channels
    width = args.width or (16 if size <= 32 else 32 if size <= 64 else 64)
    blocks = 4 if size <= 32 else 6 if size <= 128 else 9  # the papers: 6 at 128 px, 9 at 256 (CycleGAN)
    steps = _steps(args, True)
    ema = args.ema_decay or None  # off unless asked
    if args.model == "cyclegan":
        from fastgan.objectives import CycleGAN
        if len(ds.domains) != 2:
            raise CLIError(f"CycleGAN translates between two domains; --data {args.data} names "
                           f"{len(ds.domains)} (--model stargan takes more)")
        layers = models.patch_layers(size)
        G, F = models.ResnetGenerator(c, c, width, blocks), models.ResnetGenerator(c, c, width, blocks)
        D_B, D_A = models.PatchDiscriminator(c, width, layers), models.PatchDiscriminator(c, width, layers)
        objective = CycleGAN(F, D_A, decay=_decay(steps),
                             identity=0.5 if args.identity is None else args.identity)
        lr = args.lr or 2e-4
        tr = _trainer(args, G, D_B, 1, args.loss or "lsgan", args.lr_g or lr, args.lr_d or lr,
                      args.r1_gamma or 0.0, ema, objective)
        return _fit(args, tr, ds, args.model, steps, args.batch_size or 8, width, size)
    from fastgan.objectives import StarGAN
    k = len(ds.domains)
    G = models.StarGenerator(c, k, width, blocks)
    D = models.StarDiscriminator(c, k, size, width)
    objective = StarGAN(decay=_decay(steps), names=ds.names,
                        identity=STAR_IDENTITY if args.identity is None else args.identity)
    lr = args.lr or 1e-4
    if args.gp_weight is None:
        args.gp_weight = 10.0
    if args.d_steps is None:
        args.d_steps = 5
    tr = _trainer(args, G, D, 1, args.loss or "wgan", args.lr_g or lr, args.lr_d or lr,
                  args.r1_gamma or 0.0, ema, objective)
    return _fit(args, tr, ds, args.model, steps, args.batch_size or 4, width, size)


def _fit(args, tr, ds, model, steps, batch, width, image_size) -> int:
    """Run (or resume) the training in --out: config.json, progress, the final summary."""
    from fastgan.train import CheckpointError, NonFiniteLossError
    from fastgan.train import checkpoint as ckpt
    out = args.out or _default_out(args.data, model, args.resume)
    main = tr.is_main
    say = main and not args.quiet  # --quiet: the final summary (and errors) only
    cdir = os.path.join(out, "checkpoints")
    if args.resume:
        path = tr.load_latest(out)
        if path is None:
            if say:
                print(f"fastgan: --resume: no readable checkpoint under {cdir}; starting from step 0", flush=True)
        elif say:
            print(f"fastgan: resumed from {path} (step {tr.step})", flush=True)
    elif ckpt.list_checkpoints(cdir):
        raise CLIError(f"--out {out} already holds checkpoints: pass --resume to continue that run, "
                       "or choose another --out")
    if main:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"data": args.data, "model": model, "steps": steps, "batch_size": batch,
                       "width": width, "image_size": image_size,
                       "trainer": tr.config, "processes": tr.world}, f, indent=2)
    if say:
        what = (f"{' : '.join(f'{n} ({len(d)} samples)' for n, d in zip(ds.names, ds.domains))}, "
                f"{'x'.join(map(str, ds.domains[0].x.shape[1:]))}" if hasattr(ds, "domains") else
                f"{ds.name or args.data} ({len(ds)} samples, {'x'.join(map(str, ds.x.shape[1:]))})")
        print(f"fastgan: training {model} on {what} on {tr.device}"
              f"{f' x {tr.world} processes' if tr.world > 1 else ''} for {steps} steps, batch {batch}, "
              f"loss {tr.loss}; writing to {out}/", flush=True)
    try:
        tr.fit(ds, steps, batch, out_dir=out, log_every=args.log_every, sample_every=args.sample_every,
               checkpoint_every=args.checkpoint_every, progress=not (args.no_progress or args.quiet))
    except NonFiniteLossError as e:
        sys.stderr.write(f"fastgan: error: {e}\n")
        return 1
    except (ValueError, TypeError, CheckpointError) as e:
        raise CLIError(str(e)) from None
    if tr.interrupted:
        import signal
        if main:
            print(f"fastgan: stopped by {signal.Signals(tr.interrupted).name} at step {tr.step}; checkpoint in "
                  f"{cdir}/; continue with: fastgan train --resume --out {out} ...", flush=True)
        return 128 + int(tr.interrupted)
    if main:
        last = [r for r in tr.history if "eval" in r]
        summary = ""
        if last:
            summary = "  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in last[-1]["eval"].items()
                                       if isinstance(v, (int, float)))  # tables stay in metrics.jsonl
        print(f"fastgan: done: step {tr.step}{summary}\n  samples {out}/samples.png  curves {out}/curves.png  "
              f"metrics {out}/metrics.jsonl  checkpoints {cdir}/", flush=True)
    return 0


def _load_source(source: str, size: int, channels: int):
    """--source: an image file, a folder of images or a dataset name -> (N, channels, size, size) in [-1, 1]."""
    import numpy as np
    import torch
    from fastgan import data as fdata
    from fastgan.data.datasets import IMAGE_EXTS, _resize
    if os.path.isfile(source) and source.lower().endswith(IMAGE_EXTS):
        from PIL import Image
        try:
            im = Image.open(source).convert("RGB" if channels == 3 else "L")
        except OSError as e:
            raise CLIError(f"--source {source}: not a readable image ({e})") from None
        a = np.asarray(im, dtype=np.float32) / 127.5 - 1
        x = torch.from_numpy(a.reshape(a.shape[0], a.shape[1], -1)).permute(2, 0, 1)[None]
    else:
        try:
            ds = fdata.load_dataset(source, size)
        except (FileNotFoundError, fdata.DatasetError, ValueError, TypeError) as e:
            raise CLIError(f"--source: {e}") from None
        if ds.kind != "image":
            raise CLIError(f"--source {source}: holds points, not images")
        x = ds.x
    if x.shape[1] != channels:  # grayscale <-> RGB, as the domains were matched in training
        x = x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
    return _resize(x.float(), size)


def _sample_translation(args, ck, G, path) -> int:
    """fastgan sample on a CycleGAN checkpoint: translate --source (A -> B, or B -> A with --reverse);
    the PNG's rows alternate sources and their translations, 8 per row."""
    import torch
    from fastgan import models
    from fastgan.train.report import save_image_grid
    cfg = ck.get("config") or {}
    kind = cfg.get("objective")
    if kind not in ("cyclegan", "stargan"):
        flag = "--source" if args.source is not None else "--domain"
        raise CLIError(f"{flag}: {path} holds no translation model ({kind or 'gan'}); drop {flag}")
    if args.source is None:
        raise CLIError(f"{path} holds a translation model ({kind}): pass --source IMAGE, FOLDER or a dataset name "
                       "(e.g. --source digits)")
    if args.n is not None and args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    if args.domain is not None and kind != "stargan":
        raise CLIError(f"--domain: {path} holds a two-domain model ({kind}); use --reverse for B -> A")
    if kind == "stargan":
        return _sample_star(args, ck, G, path, cfg)
    net = G
    if args.reverse:
        conf = cfg.get("g_ba") or dict(G.config, in_channels=G.config["out_channels"],
                                       out_channels=G.config["in_channels"])  # F mirrors G
        net = models.ResnetGenerator(**conf)
        net.load_state_dict(ck["nets"]["g_ba"])
        net.eval()
    size = _image_size_of(path)  # the generator is convolutional; sources are resized to the trained size
    x = _load_source(args.source, size, net.config["in_channels"])[:args.n or 16]
    with torch.no_grad():
        y = torch.cat([net(x[i:i + 256]) for i in range(0, len(x), 256)])
    rows = []
    for i in range(0, len(x), 8):  # a short last pair of rows is padded with black
        pad = x.new_full((max(0, i + 8 - len(x)),) + tuple(x.shape[1:]), -1.0)
        rows += [x[i:i + 8], pad, y[i:i + 8], pad]
    d = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(d, exist_ok=True)
    save_image_grid(torch.cat(rows), args.out, nrow=8)
    if args.save_tensor:
        torch.save(y, args.save_tensor)
    print(f"fastgan: {len(x)} translations ({'B -> A' if args.reverse else 'A -> B'}) of {args.source} from {path} "
          f"(step {ck['step']}) -> {args.out} (rows: sources, translations)")
    return 0


def _sample_star(args, ck, G, path, cfg) -> int:
    """fastgan sample on a StarGAN checkpoint: --source into --domain (a name or an index), one row of
    8 sources then their translations; or, without --domain, into every domain: per row a source and
    its translations in domain order."""
    import torch
    from fastgan.train.report import save_image_grid
    if args.reverse:
        raise CLIError("--reverse: StarGAN translates into any domain; pick it with --domain")
    names = cfg.get("domains") or [str(i) for i in range(G.num_domains)]
    dom = None
    if args.domain is not None:
        if args.domain in names:
            dom = names.index(args.domain)
        elif args.domain.isdigit() and int(args.domain) < G.num_domains:
            dom = int(args.domain)
        else:
            raise CLIError(f"--domain must be one of {', '.join(names)} (or 0..{G.num_domains - 1}), "
                           f"got {args.domain!r}")
    x = _load_source(args.source, _image_size_of(path), G.config["channels"])[:args.n or (16 if dom is not None else 8)]
    targets = [dom] if dom is not None else list(range(G.num_domains))
    with torch.no_grad():
        ys = [torch.cat([G(x[i:i + 256], torch.full((len(x[i:i + 256]),), c)) for i in range(0, len(x), 256)])
              for c in targets]
    if dom is not None:
        rows, y = [], ys[0]
        for i in range(0, len(x), 8):
            pad = x.new_full((max(0, i + 8 - len(x)),) + tuple(x.shape[1:]), -1.0)
            rows += [x[i:i + 8], pad, y[i:i + 8], pad]
        grid, nrow, what = torch.cat(rows), 8, f"into {names[dom]} (rows: sources, translations)"
    else:
        y = torch.stack(ys, 1)  # (n, K, C, H, W)
        grid = torch.cat([x[:, None], y], 1).flatten(0, 1)
        nrow, what = len(targets) + 1, f"(per row: the source, then {', '.join(names)})"
    d = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(d, exist_ok=True)
    save_image_grid(grid, args.out, nrow=nrow)
    if args.save_tensor:
        torch.save(y, args.save_tensor)
    print(f"fastgan: {len(x)} translations of {args.source} {what} from {path} (step {ck['step']}) -> {args.out}")
    return 0


def _image_size_of(path: str) -> int:
    """The image size of a run, from the config.json beside its checkpoints."""
    run = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    try:
        with open(os.path.join(run, "config.json")) as f:
            return int(json.load(f)["image_size"])
    except (OSError, KeyError, ValueError, TypeError):
        raise CLIError(f"--checkpoint {path}: cannot tell the image size (no config.json beside its checkpoints/)") from None


def _cmd_sample(args) -> int:
    import torch
    from fastgan import models
    from fastgan.train import CheckpointError
    from fastgan.train import checkpoint as ckpt
    from fastgan.train.report import save_samples

    path = args.checkpoint
    if os.path.isdir(path):  # a run folder or its checkpoints/ folder: the newest readable one
        d = path if ckpt.list_checkpoints(path) else os.path.join(path, "checkpoints")
        path, _ = ckpt.latest_good(d)
        if path is None:
            raise CLIError(f"--checkpoint {args.checkpoint}: no readable checkpoint in that folder")
    try:
        ck = ckpt.read(path)
    except (FileNotFoundError, CheckpointError) as e:
        raise CLIError(f"--checkpoint: {e}") from None
    meta = ck.get("models")
    if not meta:
        raise CLIError(f"--checkpoint {path}: it does not record a fastgan.models architecture (a custom model); "
                       "sample with GANTrainer.sample in Python")
    if "generator_class" in meta:
        G = models.build_generator(meta["generator_class"], meta["generator"])
    else:  # checkpoints written before the generator's class was recorded
        G, _ = models.build(meta["kind"], meta["generator"], meta["discriminator"])
    state = ck["ema"] if (ck.get("ema") is not None and not args.no_ema) else ck["generator"]
    G.load_state_dict(state)
    G.eval()
    if (ck.get("config") or {}).get("objective") in ("cyclegan", "stargan") or args.source is not None \
            or args.domain is not None:
        return _sample_translation(args, ck, G, path)
    classes = getattr(G, "num_classes", None)
    cfg = ck.get("config") or {}
    labelled = classes or (cfg["categories"] if cfg.get("objective") == "infogan" else None)
    if args.n is None:  # a full grid: 8 per class (or code), one row each
        args.n = 8 * labelled if labelled and args.klass is None else 64
    if args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    # every class in turn: one row per class (the last rows short when --n is not a multiple)
    cols = -(-args.n // labelled) if labelled and args.klass is None else None
    g = torch.Generator().manual_seed(args.seed)
    z = torch.randn(args.n, ck["config"]["z_dim"], generator=g)
    if args.klass is not None and classes is not None and not 0 <= args.klass < classes:
        raise CLIError(f"--class must be in [0, {classes}) for this model, got {args.klass}")
    if args.sweep is not None and cfg.get("objective") != "infogan":
        raise CLIError(f"--sweep: {path} holds no InfoGAN (only InfoGAN has continuous codes); drop --sweep")
    if cfg.get("objective") == "infogan" and args.sweep is not None:  # categories x a continuous code
        from fastgan.objectives.infogan import code_sweep
        try:
            inp = code_sweep(cfg["z_dim"], cfg["categories"], cfg["continuous"], args.sweep, steps=8, seed=args.seed)
        except ValueError as e:
            raise CLIError(f"--sweep: {e}") from None
        with torch.no_grad():
            x = G(inp)
        from fastgan.train.report import save_image_grid
        d = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(d, exist_ok=True)
        save_image_grid(x, args.out, nrow=8)
        print(f"fastgan: {x.shape[0]} samples (rows: the {cfg['categories']} categorical codes; columns: continuous "
              f"code {args.sweep} from -1 to 1) from {path} (step {ck['step']}) -> {args.out}")
        return 0
    if cfg.get("objective") == "infogan":  # --class picks the categorical code
        from fastgan.objectives.infogan import code_input
        classes = cfg["categories"]
        if args.klass is not None and not 0 <= args.klass < classes:
            raise CLIError(f"--class must be in [0, {classes}) for this model (its categorical code), got {args.klass}")
        cat = torch.full((args.n,), args.klass) if args.klass is not None else torch.arange(args.n) // cols
        z = code_input(z, classes, cfg["continuous"], cat)[0]
        classes = None
    elif cfg.get("objective") == "aae":  # decode draws of the prior the codes were matched to
        from fastgan.objectives.aae import prior_from_normal
        z = prior_from_normal(cfg["prior"], z)
    if args.klass is not None and classes is None and cfg.get("objective") != "infogan":
        raise CLIError(f"--class: {path} holds an unconditional model ({meta['kind'] or cfg.get('objective', 'gan')}); drop --class")
    inputs = [z]
    if classes is not None:  # one class, or every class in turn
        y = torch.full((args.n,), args.klass) if args.klass is not None else torch.arange(args.n) // cols
        inputs.append(y)
    with torch.no_grad():
        x = torch.cat([G(*(t[i:i + 500] for t in inputs)) for i in range(0, args.n, 500)])
    size = G.config.get("image_size") if hasattr(G, "config") else None
    if x.dim() == 4 and size and x.shape[-1] < size:  # a ProGAN stopped before its last level: shown at full size
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="nearest")
    d = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(d, exist_ok=True)
    save_samples(x, args.out, title=f"{os.path.basename(path)}", nrow=cols)
    if args.save_tensor:
        torch.save(x, args.save_tensor)
    which = f" of class {args.klass}" if args.klass is not None else ""
    print(f"fastgan: {args.n} samples{which} from {path} (step {ck['step']}) -> {args.out}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, exit 2
        sys.stderr.write(f"fastgan: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastgan", description="Fast GAN training in PyTorch")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)
    pi = sub.add_parser("info", help="what was built and what is available")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pb = sub.add_parser("bench", help="time fastgan's ops against eager PyTorch and torch.compile")
    pb.add_argument("--quick", action="store_true", help="a short run")
    pb.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    pb.add_argument("--json", default=None, help="also write the results to this JSON file")
    pb.add_argument("--markdown", default=None, help="also write a markdown table to this file")
    pb.add_argument("--only", default=None, help="comma-separated op families (default: all)")

    pst = sub.add_parser("selftest", help="every op on every backend (cpu, cuda, simt) against its float64 reference",
                         description="Every op on every backend present (cpu; cuda; simt: the CUDA kernels on "
                         "the emulator) against its float64 reference. Exit status 1 if any fails.")
    pst.add_argument("--backend", default=None, help="comma-separated: cpu, cuda, simt (default: all present)")
    pst.add_argument("--op", default=None, help="comma-separated op families (default: all): " + ", ".join(
        ("bias_act", "batch_norm_act", "conv_transpose2d_act", "gan_loss", "grad_penalty")))
    pst.add_argument("--json", default=None, help="also write the rows to this JSON file")
    pst.add_argument("--quick", action="store_true", help="fewer shapes (every kernel still runs once)")
    pst.add_argument("--dtype", default=None, help="comma-separated: float32, float16, bfloat16, float64 "
                     "(default: all)")

    pt = sub.add_parser("train", help="train a GAN; writes samples, curves, metrics and checkpoints",
                        description="Train a GAN (default: a DCGAN on the bundled digits, on the best device).")
    pt.add_argument("--data", default=None, help="digits | digits-m | digits-inv | digits-thick | stacked-digits (1,000 modes: "
                    "three digits as RGB) | ring8 | grid25 | PATH (image folder, MNIST IDX, CIFAR batches, .npy/.npz); translation models: A:B[:C...], "
                    "several of those (default: digits; cyclegan: digits:digits-m; stargan: the four digit domains)")
    pt.add_argument("--model", choices=("dcgan", "cdcgan", "infogan", "aae", "vae", "progan", "mlp", "cmlp",
                                        "cyclegan", "stargan"),
                    default=None,
                    help="dcgan for images, mlp for 2-D points; cdcgan / cmlp: their class-conditional versions "
                    "(the digit / the mode as label); infogan: a DCGAN with a 10-way categorical and 2 "
                    "continuous codes; aae: an adversarial autoencoder (--prior); vae: the variational "
                    "autoencoder baseline; progan: progressive growing from 4x4 (WGAN-GP + drift); cyclegan: unpaired "
                    "translation between --data A:B; stargan: one generator for every domain of --data A:B:C... "
                    "(default: dcgan or mlp, from the data)")
    pt.add_argument("--prior", choices=("gaussian", "mixture10", "ring"), default=None,
                    help="aae: the latent prior the codes are matched to (default: gaussian)")
    pt.add_argument("--loss", default=None, choices=("ns", "minimax", "hinge", "wgan", "lsgan", "rals", "rpgan"),
                    help="(default: ns; cyclegan: lsgan; stargan: wgan)")
    pt.add_argument("--steps", type=int, default=None, help="train until this step (default: 2000 images, 3000 mlp)")
    pt.add_argument("--batch-size", type=int, default=None, help="per process (default: 64 dcgan, 100 mlp; "
                    "cyclegan 8; stargan 4 per domain)")
    pt.add_argument("--image-size", type=int, default=None,
                    help="16, 32, 64 or 128 (default: 32 for digits and stacked-digits); translation models: any multiple of 4 from 16 "
                    "(default: 16 for the digit domains)")
    pt.add_argument("--width", type=int, default=None, help="model width (default: 32 up to 32 px, else 64; mlp 128; "
                    "translation models 16 up to 32 px, 32 up to 64, else 64)")
    pt.add_argument("--z-dim", type=int, default=None,
                    help="noise / code size (default: 100 dcgan, 62 + codes infogan, 8 aae and vae, 2 mlp)")
    pt.add_argument("--lr", type=float, default=None,
                    help="Adam learning rate of both players (default: 2e-4 images, 1e-3 mlp; infogan: G 1e-3, D 2e-4; "
                    "stargan 1e-4)")
    pt.add_argument("--lr-g", type=float, default=None, help="the generator's learning rate (default: --lr's)")
    pt.add_argument("--lr-d", type=float, default=None, help="the discriminator's learning rate (default: --lr's)")
    pt.add_argument("--out", default=None, help="run folder (default: runs/<data>-<model>[-k])")
    pt.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in --out")
    pt.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="mixed precision")
    pt.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--checkpoint-every", type=int, default=500)
    pt.add_argument("--sample-every", type=int, default=250, help="samples, metric and curves every K steps")
    pt.add_argument("--log-every", type=int, default=25)
    pt.add_argument("--r1-gamma", type=float, default=None, help="R1 penalty weight (default: 0.1 mlp, 1 aae, off dcgan)")
    pt.add_argument("--r2-gamma", type=float, default=None,
                    help="R2 penalty weight: R1's zero-centred penalty on the fakes (default off; R3GAN: equal to R1's)")
    pt.add_argument("--lr-decay", action="store_true",
                    help="dcgan, mlp: both rates decay linearly to 0 over the second half of --steps")
    pt.add_argument("--recipe", choices=("r3gan",), default=None,
                    help="r3gan: R3GAN's objective (Huang et al. 2025) for dcgan and mlp: --loss rpgan, R1 and R2 with "
                    "one gamma (%s), Adam betas (0, 0.99), --lr-decay; an explicit --loss, --r1-gamma, --r2-gamma or "
                    "--gp-weight overrides its value"
                    % ", ".join(f"{g:g} {m}" for m, g in R3GAN_GAMMA.items()))
    pt.add_argument("--augment", choices=("diffaug", "ada"), default=None,
                    help="augment what D sees, reals and fakes alike (dcgan, cdcgan, progan): diffaug: DiffAugment "
                    "(each transform of --augment-policy applied with probability --augment-p); ada: the probability "
                    "tuned toward --ada-target from the sign of D's real logits (small datasets)")
    pt.add_argument("--augment-policy", default=None, help="with --augment: some of color, translation, cutout, "
                    "comma-separated (default: all three)")
    pt.add_argument("--augment-p", type=float, default=None, help="--augment diffaug: the probability (default 1)")
    pt.add_argument("--ada-target", type=float, default=None, help="--augment ada: the target of E[sign D(x)] "
                    "(default 0.6, ADA's)")
    pt.add_argument("--pack", type=int, default=1,
                    help="PacGAN: D judges M samples at once, concatenated (dcgan, mlp; the batch size a multiple of M)")
    pt.add_argument("--r1-every", type=int, default=1, help="lazy R1 and R2: every K steps, scaled by K")
    pt.add_argument("--gp-weight", type=float, default=None, help="WGAN-GP weight (0: off; default: off, stargan 10)")
    pt.add_argument("--identity", type=float, default=None,
                    help="translation models' identity loss: cyclegan, its weight relative to the cycle loss's "
                    "(default 0.5); stargan, the weight of |G(x, its own domain) - x| (default %g; the paper: 0)"
                    % STAR_IDENTITY)
    pt.add_argument("--d-steps", type=int, default=None,
                    help="discriminator updates per generator update (default: 1, stargan 5)")
    pt.add_argument("--ema-decay", type=float, default=None,
                    help="EMA of the generator for samples (default: 0.99 dcgan, cdcgan, cmlp; off mlp; 0: off)")
    pt.add_argument("--compile", action="store_true", help="torch.compile both networks")
    pt.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    pt.add_argument("--no-progress", action="store_true",
                    help="no progress (a bar on a terminal, one line per --log-every steps otherwise)")
    pt.add_argument("--quiet", action="store_true", help="print only the final summary")

    ps = sub.add_parser("sample", help="draw samples from a checkpoint into a PNG")
    ps.add_argument("--checkpoint", required=True, help="a checkpoint file, or a run folder (newest checkpoint)")
    ps.add_argument("--n", type=int, default=None,
                    help="how many samples (default 64; models with classes or codes: 8 per class, a row each)")
    ps.add_argument("--out", default="samples.png", help="the PNG to write")
    ps.add_argument("--seed", type=int, default=0)
    ps.add_argument("--class", dest="klass", type=int, default=None,
                    help="conditional models: samples of this class only (default: every class, one row each)")
    ps.add_argument("--sweep", type=int, default=None,
                    help="InfoGAN: a grid whose rows are the categorical codes and whose columns sweep this "
                    "continuous code (0 or 1) from -1 to 1")
    ps.add_argument("--source", default=None, help="translation models: an image, a folder of images or a dataset "
                    "name (e.g. digits) to translate")
    ps.add_argument("--reverse", action="store_true", help="cyclegan: translate B -> A (default A -> B)")
    ps.add_argument("--domain", default=None, help="stargan: the target domain, by name (e.g. digits-inv) or index "
                    "(default: every domain, a column each)")
    ps.add_argument("--no-ema", action="store_true", help="use the raw generator even if an EMA was kept")
    ps.add_argument("--save-tensor", default=None, help="also torch.save the samples to this file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "info":
        return _cmd_info(args)
    if args.cmd == "bench":
        return _cmd_bench(args)
    if args.cmd == "selftest":
        return _cmd_selftest(args)
    if args.cmd in ("train", "sample"):
        try:
            return _cmd_train(args) if args.cmd == "train" else _cmd_sample(args)
        except CLIError as e:
            sys.stderr.write(f"fastgan {args.cmd}: error: {e}\n")
            return 2
        except KeyboardInterrupt:
            sys.stderr.write("fastgan: interrupted\n")
            return 130
    build_parser().print_help()
    return 0
