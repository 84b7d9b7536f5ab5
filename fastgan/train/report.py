"""Pictures of a run: sample grids (PIL) and training curves (matplotlib, Agg backend)."""
import math
import os

import numpy as np
import torch


def _atomic_save(save, path: str):
    tmp = f"{path}.{os.getpid()}.tmp{os.path.splitext(path)[1]}"
    save(tmp)
    os.replace(tmp, path)


def save_image_grid(images: torch.Tensor, path: str, nrow=None, pad: int = 2):
    """(N, C, H, W) images in [-1, 1] -> one PNG grid."""
    from PIL import Image
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = \
            x[i].permute(1, 2, 0).numpy()
    img = Image.fromarray(grid[..., 0] if c == 1 else grid[..., :3])
    _atomic_save(lambda p: img.save(p, format="PNG"), path)


def save_points(points: torch.Tensor, path: str, modes=None, title: str = ""):
    """Scatter plot of 2-D samples (and the true modes) to a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    p = points.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.4, label="samples")
    if modes is not None:
        m = modes.cpu().numpy()
        ax.scatter(m[:, 0], m[:, 1], s=30, marker="x", c="red", label="modes")
        r = float(np.abs(m).max()) * 1.4 + 0.1
        ax.set_xlim(-r, r)
        ax.set_ylim(-r, r)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _atomic_save(lambda q: fig.savefig(q, format="png"), path)
    plt.close(fig)


def save_latent(codes: torch.Tensor, labels, prior: torch.Tensor, path: str, title: str = ""):
    """Dims 0 and 1 of latent codes, coloured by class (when labels are given), over prior samples
    in grey: how well an autoencoder's code distribution matches its prior."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c, p = codes.detach().float().cpu(), prior.detach().float().cpu()
    if c.shape[1] < 2:  # a 1-D code: plot it against zero
        c, p = (torch.cat([t, torch.zeros_like(t)], 1) for t in (c, p))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(p[:, 0], p[:, 1], s=2, c="0.75", label="prior")
    if labels is None:
        ax.scatter(c[:, 0], c[:, 1], s=3, c="tab:blue", label="codes")
    else:
        sc = ax.scatter(c[:, 0], c[:, 1], s=3, c=torch.as_tensor(labels).cpu().numpy(), cmap="tab10",
                        vmin=-0.5, vmax=9.5)
        fig.colorbar(sc, ax=ax, ticks=range(10), fraction=0.046, label="class")
    lim = float(torch.cat([c[:, :2], p[:, :2]]).abs().quantile(0.995)) * 1.1 + 1e-6
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect(1.0)
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("z_0")
    ax.set_ylabel("z_1")
    fig.tight_layout()
    _atomic_save(lambda q: fig.savefig(q, format="png"), path)
    plt.close(fig)


def save_samples(x: torch.Tensor, path: str, modes=None, title: str = "", nrow=None):
    if x.dim() == 4:
        save_image_grid(x, path, nrow)
    else:
        save_points(x, path, modes, title)


#: the loss curves plotted in the first panel, when logged: (key, label)
LOSS_CURVES = (("d_loss", "D loss"), ("g_loss", "G loss"), ("recon", "reconstruction"), ("kl", "KL"),
               ("info", "L_I (InfoGAN)"), ("cycle", "cycle L1"), ("rec", "round-trip L1"))


def plot_curves(history, path: str):
    """Losses, D(x) / D(G(z)) (when there is a D) and the sample metric against the step, one panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    logs = [r for r in history if "s_per_step" in r or "d_loss" in r]
    evals = [r for r in history if "eval" in r]
    metric = next((k for k in ("fd", "modes", "acc_ab", "domain_acc") if evals and k in evals[-1]["eval"]), None)
    has_d = any("d_real" in r for r in logs)
    n = 1 + has_d + bool(metric)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), dpi=100)
    axes = list(axes) if n > 1 else [axes]
    s = [r["step"] for r in logs]
    for key, label in LOSS_CURVES:
        if logs and key in logs[-1]:
            axes[0].plot(s, [r[key] for r in logs], label=label)
    axes[0].set_title("losses")
    if has_d:
        axes[1].plot(s, [r["d_real"] for r in logs], label="D(x)")
        axes[1].plot(s, [r["d_fake"] for r in logs], label="D(G(z))")
        axes[1].set_ylim(0, 1)
        axes[1].set_title("discriminator outputs (sigmoid)")
    if metric:
        keys = {"acc_ab": ("acc_ab", "acc_ba"), "domain_acc": ("domain_acc", "class_acc")}.get(metric, (metric,))
        for k in (k for k in keys if k in evals[-1]["eval"]):
            axes[-1].plot([r["step"] for r in evals], [r["eval"][k] for r in evals], marker="o",
                          label={"acc_ab": "A -> B", "acc_ba": "B -> A", "domain_acc": "in the target domain",
                                 "class_acc": "keeping their class"}.get(k))
        axes[-1].set_title({"fd": "Fréchet distance (classifier features)", "modes": "modes covered",
                            "acc_ab": "translations keeping their class (%)",
                            "domain_acc": "translations (%)"}[metric])
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_save(lambda q: fig.savefig(q, format="png"), path)
    plt.close(fig)
