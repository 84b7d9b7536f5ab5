"""`fastgan selftest`: every op, on every backend present, against its float64 reference.

The first thing to run on a new machine or GPU: for each backend (cpu; cuda when a GPU and the CUDA
kernels are there; simt, the CUDA kernels on the emulator, when fastgan was built with FASTGAN_SIMT=1)
and each dtype, a sweep of shapes and layouts through the forward and the backward of every op, each
output compared with the pure-PyTorch reference (fastgan.ops.reference) computed in float64. Prints
one row per (op, backend, dtype) and, on CUDA (and the emulator), which conv-transpose path each
DCGAN layer chose. Exit status 1 if any comparison fails.
"""
import math
import time

import torch

import fastgan
from fastgan.ops import reference as R
from fastgan.ops.bias_act import ref_kind
from fastgan.ops.gan_loss import KINDS, RELATIVISTIC

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Allowed |got - want| <= atol + rtol * |want|, by dtype (the reference is computed in float64 from the
# same, already rounded, inputs).
TOL = {torch.float64: (1e-9, 1e-9), torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3),
       torch.bfloat16: (3e-2, 3e-2)}


class Check:
    """Accumulates comparisons of one (op, backend, dtype) row."""

    def __init__(self, dtype):
        self.atol, self.rtol = TOL[dtype]
        self.cases = 0
        self.max_err = 0.0
        self.worst = 0.0  # max over elements of |err| / (atol + rtol |want|): <= 1 passes
        self.where = ""

    def close(self, got, want, what, scale=1.0, tol=None):
        """scale > 1 loosens the bound for sums of many rounded terms (gradients of reductions);
        tol=(atol, rtol) replaces the dtype's (e.g. fp32 for a loss accumulated in fp32)."""
        atol, rtol = tol or (self.atol, self.rtol)
        got, want = got.detach().double().cpu(), want.detach().double().cpu()
        if got.shape != want.shape:
            self.worst, self.where = math.inf, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
            return
        if got.numel() == 0:
            return
        err = (got - want).abs()
        bound = (atol + rtol * want.abs()) * scale
        ratio = (err / bound).nan_to_num(nan=math.inf).max().item()
        self.max_err = max(self.max_err, err.nan_to_num(nan=math.inf).max().item())
        if ratio > self.worst:
            self.worst, self.where = ratio, what

    @property
    def ok(self):
        return self.worst <= 1.0


def _randn(shape, dtype, device, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def _grads(y, inputs, gy):
    return torch.autograd.grad(y, inputs, gy, allow_unused=True)


# ---- the sweeps, one per op family ----------------------------------------------------------------------
def sweep_bias_act(c, device, dtype, quick=False):
    shapes = [((3, 6, 5, 7), None), ((2, 16, 4, 4), torch.channels_last), ((2, 5, 3, 3), torch.channels_last),
              ((37,), None), ((0, 4, 3, 3), None)]
    for shape, fmt in shapes[:3] if quick else shapes:
        for act, clamp in (("lrelu", None), ("tanh", 0.9), ("gelu", None), ("linear", 0.8))[:2 if quick else 4]:
            x = _randn(shape, dtype, device, seed=1)
            if fmt is not None:
                x = x.contiguous(memory_format=fmt)
            x.requires_grad_(True)
            dim = 1 if len(shape) > 1 else 0
            b = _randn((shape[dim],), dtype, device, seed=2).requires_grad_(True)
            y = fastgan.ops.bias_act(x, b, act=act, gain=1.3, clamp=clamp, dim=dim)
            gy = _randn(shape, dtype, device, seed=3)
            gx, gb = _grads(y, (x, b), gy)
            xr, br = x.detach().double().cpu().requires_grad_(), b.detach().double().cpu().requires_grad_()
            yr = R.bias_act(xr, br, act=act, gain=1.3, clamp=clamp, dim=dim)
            gxr, gbr = _grads(yr, (xr, br), gy.double().cpu())
            # elements within rounding of a clamp boundary may take either side in low precision
            keep = ((yr.abs() - (clamp if clamp is not None else 1e9)).abs() > 0.05).detach()
            what = f"{shape} {act}"
            c.close(y.cpu().double() * keep, yr * keep, what + " y")
            if ref_kind(act, -1.0 if clamp is None else clamp) != "y" or dtype != torch.bfloat16:
                c.close(gx.cpu().double() * keep, gxr * keep, what + " grad x", scale=4)
            if clamp is None:
                c.close(gb, gbr, what + " grad b", scale=max(1, x.numel() // max(1, shape[dim])) ** 0.5 * 4)
            c.cases += 1


def sweep_batch_norm_act(c, device, dtype, quick=False):
    shapes = (((4, 5, 6, 7), None), ((4, 16, 3, 3), torch.channels_last), ((64, 3, 4, 4), None))
    for shape, fmt in shapes[:2] if quick else shapes:
        for training in (True, False):
            C = shape[1]
            x = (_randn(shape, dtype, device, scale=2, seed=4) + 0.5)
            if fmt is not None:
                x = x.contiguous(memory_format=fmt)
            x.requires_grad_(True)
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            w = (torch.rand(C, dtype=acc) + 0.5).to(device).requires_grad_(True)
            b = torch.randn(C, dtype=acc).to(device).requires_grad_(True)
            rm, rv = torch.randn(C, dtype=acc).to(device), (torch.rand(C, dtype=acc) + 0.5).to(device)
            rmr, rvr = rm.double().cpu(), rv.double().cpu()
            y = fastgan.ops.batch_norm_act(x, w, b, rm, rv, training=training, act="lrelu", alpha=0.2)
            gy = _randn(shape, dtype, device, seed=5)
            gx, gw, gb = _grads(y, (x, w, b), gy)
            xr = x.detach().double().cpu().requires_grad_()
            wr, br = w.detach().double().cpu().requires_grad_(), b.detach().double().cpu().requires_grad_()
            yr = R.batch_norm_act(xr, wr, br, rmr, rvr, training=training, act="lrelu", alpha=0.2)
            gxr, gwr, gbr = _grads(yr, (xr, wr, br), gy.double().cpu())
            what = f"{shape} {'train' if training else 'eval'}"
            n = x.numel() // C
            c.close(y, yr, what + " y", scale=4)
            c.close(gx, gxr, what + " grad x", scale=8)
            c.close(gw, gwr, what + " grad weight", scale=4 * n ** 0.5)
            c.close(gb, gbr, what + " grad bias", scale=4 * n ** 0.5)
            c.close(rm, rmr, what + " running_mean", scale=4)
            c.close(rv, rvr, what + " running_var", scale=4)
            c.cases += 1
            # the class-conditional op: the same statistics, an affine per class (K = 3)
            K = 3
            lab = (torch.arange(shape[0]) % K).to(device)
            wk = (torch.rand(K, C, dtype=acc) + 0.5).to(device).requires_grad_(True)
            bk = torch.randn(K, C, dtype=acc).to(device).requires_grad_(True)
            rmr2, rvr2 = rmr.clone(), rvr.clone()
            rm, rv = rmr.clone().to(device=device, dtype=acc), rvr.clone().to(device=device, dtype=acc)
            y = fastgan.ops.class_batch_norm_act(x, lab, wk, bk, rm, rv, training=training, act="lrelu", alpha=0.2)
            gx, gw, gb = _grads(y, (x, wk, bk), gy)
            wr, br = wk.detach().double().cpu().requires_grad_(), bk.detach().double().cpu().requires_grad_()
            yr = R.class_batch_norm_act(xr, lab.cpu(), wr, br, rmr2, rvr2, training=training, act="lrelu", alpha=0.2)
            gxr, gwr, gbr = _grads(yr, (xr, wr, br), gy.double().cpu())
            what = f"class {shape} {'train' if training else 'eval'}"
            c.close(y, yr, what + " y", scale=4)
            c.close(gx, gxr, what + " grad x", scale=8)
            c.close(gw, gwr, what + " grad weight", scale=4 * n ** 0.5)
            c.close(gb, gbr, what + " grad bias", scale=4 * n ** 0.5)
            c.close(rm, rmr2, what + " running_mean", scale=4)
            c.cases += 1


def sweep_instance_norm_act(c, device, dtype, quick=False):
    """InstanceNorm + ReLU / LeakyReLU: CycleGAN-like planes, NCHW and channels_last, both modes."""
    shapes = (((2, 6, 9, 8), None), ((3, 16, 5, 5), torch.channels_last), ((1, 32, 16, 16), None))
    for shape, fmt in shapes[:2] if quick else shapes:
        for use_input_stats, act in ((True, "relu"), (True, "lrelu"), (False, "lrelu")):
            C = shape[1]
            x = _randn(shape, dtype, device, scale=2, seed=6) + 0.5
            if fmt is not None:
                x = x.contiguous(memory_format=fmt)
            x.requires_grad_(True)
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            w = (torch.rand(C, dtype=acc) + 0.5).to(device).requires_grad_(True)
            b = torch.randn(C, dtype=acc).to(device).requires_grad_(True)
            rm, rv = torch.randn(C, dtype=acc).to(device), (torch.rand(C, dtype=acc) + 0.5).to(device)
            rmr, rvr = rm.double().cpu(), rv.double().cpu()
            kw = dict(use_input_stats=use_input_stats, act=act, alpha=0.2)
            y = fastgan.ops.instance_norm_act(x, w, b, rm, rv, **kw)
            gy = _randn(shape, dtype, device, seed=7)
            gx, gw, gb = _grads(y, (x, w, b), gy)
            xr = x.detach().double().cpu().requires_grad_()
            wr, br = w.detach().double().cpu().requires_grad_(), b.detach().double().cpu().requires_grad_()
            yr = R.instance_norm_act(xr, wr, br, rmr, rvr, **kw)
            gxr, gwr, gbr = _grads(yr, (xr, wr, br), gy.double().cpu())
            what = f"{shape} {act} {'input' if use_input_stats else 'running'} stats"
            n = x.numel() // C
            c.close(y, yr, what + " y", scale=4)
            c.close(gx, gxr, what + " grad x", scale=8)
            c.close(gw, gwr, what + " grad weight", scale=4 * n ** 0.5)
            c.close(gb, gbr, what + " grad bias", scale=4 * n ** 0.5)
            c.close(rm, rmr, what + " running_mean", scale=4)
            c.close(rv, rvr, what + " running_var", scale=4)
            c.cases += 1


# The DCGAN-64 generator's transposed convolutions (batch 2); the emulator runs them 4x narrower.
DCGAN_LAYERS = [(100, 512, 1, 1, 0, "relu"), (512, 256, 4, 2, 1, "relu"), (256, 128, 8, 2, 1, "relu"),
                (128, 64, 16, 2, 1, "relu"), (64, 3, 32, 2, 1, "tanh")]


def dcgan_layers(narrow):
    if not narrow:
        return DCGAN_LAYERS
    return [(cin // 4 if i else 24, max(cout // 4, 3), h, s, p, act)
            for i, (cin, cout, h, s, p, act) in enumerate(DCGAN_LAYERS)]


def sweep_conv_transpose(c, device, dtype, quick=False, narrow=False):
    layers = dcgan_layers(narrow or quick) + [(8, 5, 5, 3, 1, "gelu")]
    for i, (cin, cout, h, s, p, act) in enumerate(layers):
        x = _randn((2, cin, h, h + (i == len(layers) - 1)), dtype, device, seed=6)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        w = (_randn((cin, cout, 4, 4), dtype, device, seed=7) / math.sqrt(cin)).requires_grad_(True)
        b = _randn((cout,), dtype, device, seed=8).requires_grad_(True)
        y = fastgan.ops.conv_transpose2d_act(x, w, b, s, p, act=act)
        gy = _randn(tuple(y.shape), dtype, device, seed=9)
        got = _grads(y, (x, w, b), gy)
        xr, wr, br = (t.detach().double().cpu().requires_grad_() for t in (x, w, b))
        yr = R.conv_transpose2d_act(xr, wr, br, s, p, act=act)
        want = _grads(yr, (xr, wr, br), gy.double().cpu())
        # the outputs sum cin * taps products: scale the bound with the magnitude they reach
        mag = max(1.0, yr.abs().max().item())
        what = f"{cin}->{cout} {h}x{h}"
        c.close(y, yr, what + " y", scale=4 * mag)
        if act != "relu":  # relu's mask flips where rounding crosses zero; its gradient is checked
            c.close(got[0], want[0], what + " grad x", scale=8 * mag)  # in the op tests instead
        c.cases += 1


def sweep_gan_loss(c, device, dtype, quick=False, large=True):
    sizes = [1, 513, 5000] + ([300_000] if large else [])
    for n in sizes:
        for kind in KINDS:
            real = _randn((n,), dtype, device, scale=3, seed=10).requires_grad_(True)
            nf = n if kind == "rpgan" else n // 2 + 1  # rpgan pairs them one to one
            fake = _randn((nf,), dtype, device, scale=3, seed=11).requires_grad_(True)
            d = fastgan.ops.d_loss(real, fake, kind)
            g = fastgan.ops.g_loss(fake, kind, real_logits=real if kind in RELATIVISTIC else None)
            gr, gf = _grads(d + g, (real, fake), None)
            rr, ff = real.detach().double().cpu().requires_grad_(), fake.detach().double().cpu().requires_grad_()
            dr = R.d_loss(rr, ff, kind)
            gg = R.g_loss(ff, kind, real_logits=rr if kind in RELATIVISTIC else None)
            grr, gfr = _grads(dr + gg, (rr, ff), None)
            what = f"n={n} {kind}"
            acc_tol = TOL[torch.float64 if dtype == torch.float64 else torch.float32]  # losses accumulate in fp32
            c.close(d, dr, what + " D loss", scale=4, tol=acc_tol)
            c.close(g, gg, what + " G loss", scale=4, tol=acc_tol)
            c.close(gr, grr, what + " grad real", scale=4)
            c.close(gf, gfr, what + " grad fake", scale=4)
            c.cases += 1


def sweep_penalty(c, device, dtype, quick=False):
    for shape in ((3, 1), (6, 3, 8, 8), (2, 5000)):
        for center in (None, 1.0):
            gin = _randn(shape, dtype, device, scale=0.3, seed=12).requires_grad_(True)
            pen = fastgan.ops.grad_norm_penalty(gin, 2.5, center=center)
            (gg,) = _grads(pen, (gin,), None)
            gr = gin.detach().double().cpu().requires_grad_()
            want = R.grad_norm_penalty(gr, 2.5, center=center)
            (ggr,) = _grads(want, (gr,), None)
            what = f"{shape} {'R1' if center is None else 'WGAN-GP'}"
            c.close(pen, want, what + " penalty", scale=4,
                    tol=TOL[torch.float64 if dtype == torch.float64 else torch.float32])
            c.close(gg, ggr, what + " grad", scale=4)
            c.cases += 1


def sweep_diff_augment(c, device, dtype, quick=False):
    shapes = ((1, 3, 1, 1), (5, 3, 16, 16), (3, 4, 9, 7)) + (() if quick else ((64, 3, 32, 32),))
    for k, shape in enumerate(shapes):
        for cl in (False, True):
            x = _randn(shape, dtype, device, scale=0.5, seed=13 + k)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            params, hw = fastgan.ops.diff_augment_params(x, p=0.9, generator=torch.Generator().manual_seed(k))
            y = fastgan.ops.diff_augment_apply(x, params.to(x.device), hw)
            gy = _randn(shape, dtype, device, seed=14 + k)
            (gx,) = _grads(y, (x,), gy)
            xr = x.detach().double().cpu().requires_grad_()
            want = R.diff_augment_apply(xr, params, hw)
            (gxr,) = _grads(want, (xr,), gy.double().cpu())
            what = f"{shape}{' channels_last' if cl else ''}"
            c.close(y, want, what + " y", scale=4)
            c.close(gx, gxr, what + " grad x", scale=4)
            c.cases += 1


OPS = {"bias_act": sweep_bias_act, "batch_norm_act": sweep_batch_norm_act, "instance_norm_act": sweep_instance_norm_act,
       "conv_transpose2d_act": sweep_conv_transpose, "gan_loss": sweep_gan_loss,
       "grad_penalty": sweep_penalty, "diff_augment": sweep_diff_augment}


# ---- backends ---------------------------------------------------------------------------------------------
def backends_present():
    out = ["cpu"]
    info = fastgan.info()
    if info["cuda_compiled"] and torch.cuda.is_available():
        out.append("cuda")
    if info["simt"] is not None:
        out.append("simt")
    return out


def _context(backend):
    """The kernels of `backend`, never the measured eager fallback (fastgan.ops._choose)."""
    from fastgan.ops import _choose
    if backend == "simt":
        from fastgan import simt
        return simt.backend()
    return _choose.pinned()


def conv_paths(backend):
    """[(key, path, t_aten, t_fused, note)] of the conv-transpose launcher of this backend."""
    if backend == "simt":
        from fastgan import simt
        return list(simt._simt.conv_transpose_paths())
    return [e for e in fastgan._C.conv_transpose_paths() if e[0].startswith(backend)]


def run(backends=None, ops=None, dtypes=DTYPES, log=print, quick=False):
    """Runs the sweeps; returns the rows [{op, backend, dtype, cases, max_err, worst, where, seconds, ok}].
    quick: fewer shapes (every kernel still runs; e.g. for compute-sanitizer, which is slow)."""
    backends = backends or backends_present()
    rows = []
    for backend in backends:
        device = "cuda" if backend == "cuda" else "cpu"
        for op, sweep in OPS.items():
            if ops and op not in ops:
                continue
            for dtype in dtypes:
                c = Check(dtype)
                t0 = time.perf_counter()
                err = None
                try:
                    with _context(backend):
                        if op == "conv_transpose2d_act":
                            sweep(c, device, dtype, quick=quick, narrow=backend == "simt")
                        elif op == "gan_loss":
                            sweep(c, device, dtype, quick=quick, large=backend != "cpu")
                        else:
                            sweep(c, device, dtype, quick=quick)
                    if device == "cuda":
                        torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001  (a crash of one sweep is a failed row, not the end)
                    err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                row = dict(op=op, backend=backend, dtype=str(dtype).replace("torch.", ""), cases=c.cases,
                           max_err=c.max_err, worst=c.worst, where=err or c.where,
                           seconds=time.perf_counter() - t0, ok=err is None and c.ok)
                rows.append(row)
                log(format_row(row))
    return rows


HEADER = f"{'op':22s} {'backend':7s} {'dtype':9s} {'cases':>5s} {'max error':>10s} {'err/tol':>8s} {'time':>7s}  result"


def format_row(r):
    return (f"{r['op']:22s} {r['backend']:7s} {r['dtype']:9s} {r['cases']:5d} {r['max_err']:10.2e} "
            f"{r['worst']:8.3f} {r['seconds']:6.1f}s  {'pass' if r['ok'] else 'FAIL: ' + r['where']}")


def main(backends=None, ops=None, json_path=None, quick=False, dtypes=None) -> int:
    present = backends_present()
    if backends:
        missing = [b for b in backends if b not in present]
        if missing:
            print(f"fastgan selftest: backend(s) not available here: {', '.join(missing)} "
                  f"(present: {', '.join(present)})")
            return 2
    info = fastgan.info()
    print(f"fastgan {info['fastgan']}, torch {info['torch_running']}, backends: {', '.join(backends or present)}"
          + (f", GPU: {', '.join(info['devices'])}" if info["devices"] else ""))
    print(HEADER)
    t0 = time.perf_counter()
    names = {str(d).replace("torch.", ""): d for d in DTYPES}
    bad = [d for d in dtypes or () if d not in names]
    if bad:
        print(f"fastgan selftest: unknown dtype(s) {', '.join(bad)} (choose from {', '.join(names)})")
        return 2
    rows = run(backends or present, ops, dtypes=[names[d] for d in dtypes] if dtypes else DTYPES, quick=quick)
    paths = {}
    for backend in backends or present:
        if backend in ("cuda", "simt") and (not ops or "conv_transpose2d_act" in ops):
            print(f"\nconv_transpose2d_act paths chosen on {backend} (DCGAN generator layers and one odd shape):")
            paths[backend] = conv_paths(backend)
            for key, path, ta, tf, note in paths[backend]:
                timing = f" (aten {ta * 1e3:.3f} ms, fused {tf * 1e3:.3f} ms)" if ta or tf else ""
                print(f"  {key}: {path}{timing} {note}".rstrip())
    failed = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} passed in {time.perf_counter() - t0:.1f} s"
          + ("" if not failed else f"; FAILED: {', '.join(r['op'] + '/' + r['backend'] + '/' + r['dtype'] for r in failed)}"))
    if json_path:
        import json
        with open(json_path, "w") as f:
            json.dump({"rows": rows, "info": info, "conv_paths": paths}, f, indent=2, default=str)
    return 1 if failed else 0
