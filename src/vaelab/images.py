"""Pictures: image grids, reconstructions, interpolations, the AEVB manifold, training curves."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import VaelabError
from .io import atomic_write


GRID_PADDING = 2


def grid_scale(hw: tuple[int, int]) -> int:
    """Pixel repetition of a grid cell: small images are enlarged so 8x8 digits stay visible."""
    return max(1, 32 // max(hw))


def grid_cell(hw: tuple[int, int]) -> int:
    """Height in pixels of one image in a grid."""
    return hw[0] * grid_scale(hw)


def grid_size(n: int, hw: tuple[int, int], nrow: int | None = None, padding: int = GRID_PADDING,
              scale: int | None = None) -> tuple[int, int]:
    """(height, width) in pixels of the :func:`grid` of ``n`` images of ``hw`` pixels."""
    nrow = nrow or math.ceil(math.sqrt(n))
    scale = grid_scale(hw) if scale is None else scale
    return (math.ceil(n / nrow) * (hw[0] * scale + padding) + padding,
            nrow * (hw[1] * scale + padding) + padding)


def check_grid(what: str, n: int, hw: tuple[int, int], nrow: int | None = None) -> None:
    """Refuse, before anything is drawn, a grid picture larger than Pillow reads without its
    decompression-bomb warning (``Image.MAX_IMAGE_PIXELS``, 89,478,485 pixels)."""
    h, w = grid_size(n, hw, nrow)
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    if h * w > limit:
        raise VaelabError(f"{what} makes a picture of {w:,}x{h:,} pixels, more than the {limit:,} that "
                          f"Pillow reads without a decompression-bomb warning.")


def grid(images: torch.Tensor, nrow: int | None = None, padding: int = GRID_PADDING,
         scale: int | None = None) -> np.ndarray:
    """[N, C, H, W] in [0, 1] -> uint8 array [rows*(H+p)+p, nrow*(W+p)+p, C] on a grey
    background; small images are enlarged by pixel repetition (:func:`grid_scale`)."""
    x = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if scale is None:
        scale = grid_scale((h, w))
    h2, w2 = h * scale, w * scale
    out = np.full((*grid_size(n, (h, w), nrow, padding, scale), c), 128, np.uint8)
    arr = (x.numpy() * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)  # [N, H, W, C]
    arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = padding + r * (h2 + padding), padding + col * (w2 + padding)
        out[y0:y0 + h2, x0:x0 + w2] = arr[i]
    return out


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Write a grid of images to a PNG (atomically)."""
    arr = grid(images, nrow)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    path = Path(path)
    atomic_write(path, lambda p: img.save(p, format="PNG"))
    return path


def rows_interleaved(top: torch.Tensor, bottom: torch.Tensor, nrow: int) -> torch.Tensor:
    """Stack groups of ``nrow`` so each row of ``top`` sits above the same row of ``bottom``."""
    out = []
    for i in range(0, top.shape[0], nrow):
        out += [top[i:i + nrow], bottom[i:i + nrow]]
    return torch.cat(out)


def interpolation_codes(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Linear interpolation between code pairs: z0, z1 [P, D] -> [P * steps, D], row-major by pair."""
    t = torch.linspace(0, 1, steps, device=z0.device).view(1, steps, 1)
    return ((1 - t) * z0[:, None] + t * z1[:, None]).reshape(-1, z0.shape[-1])


def manifold_codes(n: int) -> torch.Tensor:
    """The AEVB paper's Figure 4 grid: linearly spaced coordinates of the unit square mapped
    through the inverse Gaussian CDF, so equal areas carry equal prior mass: [n*n, 2]."""
    u = torch.linspace(0.5 / n, 1 - 0.5 / n, n)
    normal = torch.distributions.Normal(0.0, 1.0)
    zs = normal.icdf(u)
    zy, zx = torch.meshgrid(zs.flip(0), zs, indexing="ij")  # top row = largest z2
    return torch.stack([zx.reshape(-1), zy.reshape(-1)], dim=1)


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Per-epoch training loss and validation score."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, [h["train_loss"] for h in history])
    ax[0].set(xlabel="epoch", ylabel="training loss (nats/example)", title="training")
    val = [(h["epoch"], h["val"]) for h in history if h.get("val") is not None]
    if val:
        ax[1].plot(*zip(*val), color="C1")
    ax[1].set(xlabel="epoch", ylabel=f"validation {history[0].get('val_name', 'score') if history else ''}",
              title="validation")
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib figure as a PNG (written atomically), then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:  # closed here, whether or not Pillow reads it whole
        return np.asarray(im)


def progress_strip(files: list[Path], shape: tuple[int, ...], run_dir: Path, rows: int = 10) -> Path | None:
    """progress.png: the first row of the grids ``files`` (one per epoch, in order) at up to
    ``rows`` epochs spread over the run, earliest at the top, so the run's progress reads downwards."""
    if not files:
        return None
    n = min(rows, len(files))
    pick = sorted({files[round(i * (len(files) - 1) / max(1, n - 1))] for i in range(n)})
    height = grid_cell(shape[1:]) + 2 * GRID_PADDING  # the first row of a grid with its borders
    img = Image.fromarray(np.concatenate([_read_png(f)[:height] for f in pick]))
    path = Path(run_dir) / "progress.png"
    atomic_write(path, lambda p: img.save(p, format="PNG"))
    return path


def plot_game(history: list[dict], path: Path) -> Path:
    """game.png: mean D(x) on data and D(G(z)) on samples per epoch (the equilibrium
    p_g = p_data has both at 1/2), and both players' losses (D's is log 4 there)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(ep, [h.get("train_d_real") for h in history], label="D(x), data")
    ax[0].plot(ep, [h.get("train_d_fake") for h in history], label="D(G(z)), samples")
    if any(h.get("val") is not None for h in history):
        ax[0].plot(ep, [h.get("val") for h in history], label="D(x), held-out data", ls=":")
    ax[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    ax[0].set(xlabel="epoch", ylabel="mean D", ylim=(0, 1), title="the discriminator's view")
    ax[0].legend(fontsize=8)
    ax[1].plot(ep, [h.get("train_d_loss") for h in history], label="D loss")
    ax[1].plot(ep, [h.get("train_g_loss") for h in history], label="G loss")
    ax[1].axhline(math.log(4), color="grey", lw=0.8, ls="--")
    ax[1].set(xlabel="epoch", ylabel="nats", title="losses (dashed: log 4)")
    ax[1].legend(fontsize=8)
    return save_figure(fig, path)
