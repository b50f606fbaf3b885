"""Pictures: image grids (with their rows and columns labelled), reconstructions,
interpolations, the AEVB manifold, training curves; and :class:`Figure`, a picture that knows its
title and caption, as the models and the report pass them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import VaelabError
from .io import atomic_write
from .limits import pillow_pixels


GRID_PADDING = 2
LABEL_GAP = 6  # pixels between a label and the grid


@dataclass(frozen=True)
class Figure:
    """A picture a run holds, with what the report says of it: ``title`` (a few words) and
    ``caption`` (what it shows and how it was made)."""
    path: Path
    title: str
    caption: str


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
    limit = pillow_pixels()
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


def _font(cell: int):
    from PIL import ImageFont
    return ImageFont.load_default(size=max(11, min(16, cell // 2)))


def label_margins(n: int, hw: tuple[int, int], nrow: int | None = None, row_labels=None, col_labels=None,
                  title: str | None = None) -> tuple[int, int]:
    """(left, top) margins in pixels that :func:`save_grid` adds for its labels."""
    from PIL import ImageDraw
    font = _font(grid_cell(hw))
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    def width(t): return int(math.ceil(draw.textlength(str(t), font=font)))
    line = font.size + 4
    left = max((width(t) for t in row_labels), default=0) + LABEL_GAP if row_labels else 0
    top = (line if title else 0) + (line if col_labels else 0)
    return left, top


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, row_labels=None, col_labels=None,
              title: str | None = None) -> Path:
    """Write a grid of images to a PNG (atomically). ``row_labels``: a label for each row of the
    grid, written to its left (a shorter list repeats: ``["input", "reconstruction"]``);
    ``col_labels``: one above each column; ``title``: a line above all. Without them, the bare
    grid (:func:`grid`)."""
    arr = grid(images, nrow)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if row_labels or col_labels or title:
        img = _labelled(img, images.shape, nrow, row_labels, col_labels, title)
    path = Path(path)
    atomic_write(path, lambda p: img.save(p, format="PNG"))
    return path


def _labelled(img: Image.Image, shape, nrow: int | None, row_labels, col_labels, title) -> Image.Image:
    """``img``, the grid of ``shape`` [N, C, H, W], on a white canvas with its labels."""
    from PIL import ImageDraw
    n, hw = shape[0], tuple(shape[2:])
    nrow = nrow or math.ceil(math.sqrt(n))
    left, top = label_margins(n, hw, nrow, row_labels, col_labels, title)
    font = _font(grid_cell(hw))
    canvas = Image.new(img.mode, (img.width + left, img.height + top), 255 if img.mode == "L" else (255, 255, 255))
    canvas.paste(img, (left, top))
    draw = ImageDraw.Draw(canvas)
    ink = 0 if img.mode == "L" else (20, 20, 20)
    cell = grid_cell(hw) + GRID_PADDING
    cell_w = hw[1] * grid_scale(hw) + GRID_PADDING
    line = font.size + 4
    if title:
        draw.text((left + GRID_PADDING, 1), str(title), fill=ink, font=font)
    if col_labels:
        y = (line if title else 0) + 1
        for j, text in enumerate(col_labels[:nrow]):
            w = draw.textlength(str(text), font=font)
            draw.text((left + GRID_PADDING + j * cell_w + (cell_w - GRID_PADDING - w) / 2, y), str(text), fill=ink,
                      font=font)
    if row_labels:
        for r in range(math.ceil(n / nrow)):
            text = str(row_labels[r % len(row_labels)])
            y = top + GRID_PADDING + r * cell + (cell - GRID_PADDING - font.size) / 2
            draw.text((0, y), text, fill=ink, font=font)
    return canvas


def rows_interleaved(top: torch.Tensor, bottom: torch.Tensor, nrow: int) -> torch.Tensor:
    """Stack groups of ``nrow`` so each row of ``top`` sits above the same row of ``bottom``; a
    last group of fewer is padded with blank (zero) cells, so that every grid row is all of one
    kind and a row label stays true."""
    out = []
    for i in range(0, top.shape[0], nrow):
        a, b = top[i:i + nrow], bottom[i:i + nrow]
        if a.shape[0] < nrow:
            pad = a.new_zeros((nrow - a.shape[0], *a.shape[1:]))
            a, b = torch.cat([a, pad]), torch.cat([b, pad.to(b.dtype)])
        out += [a, b]
    return torch.cat(out)


def fraction_labels(steps: int, most: int = 11) -> list[str]:
    """Column labels t = i / (steps - 1) of an interpolation's ``steps`` columns, two decimals;
    past ``most`` columns only every k-th is labelled (the first and last always), so labels
    never run into each other."""
    every = max(1, -(-(steps - 1) // (most - 1)))
    return [f"{i / max(1, steps - 1):.2f}" if i % every == 0 or i == steps - 1 else "" for i in range(steps)]


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


# what the pictures decode, asked of any model (duck-typed: codes, decode_mean, prior, reconstruct)

@torch.no_grad()
def interpolate(model, x0: torch.Tensor, x1: torch.Tensor, steps: int = 10) -> torch.Tensor:
    """Decoded means along straight lines between the posterior means of x0[i] and x1[i]."""
    dev = next(model.parameters()).device
    z = interpolation_codes(model.codes(x0.to(dev)), model.codes(x1.to(dev)), steps)
    return model.decode_mean(z)


@torch.no_grad()
def interpolate_prior(model, pairs: int = 8, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """Generated images along straight lines between pairs of prior draws (a model with no
    encoder, such as the GAN): [pairs * steps, *shape]."""
    z = model.prior(2 * pairs, torch.Generator().manual_seed(seed))
    return model.decode_mean(interpolation_codes(z[:pairs], z[pairs:], steps))


@torch.no_grad()
def reconstruction_rows(model, x: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Rows of inputs, each above the same row of their reconstructions."""
    return rows_interleaved(x.cpu(), model.reconstruct(x.to(next(model.parameters()).device)).cpu(), nrow)


@torch.no_grad()
def manifold(model, n: int = 20) -> torch.Tensor:
    """Decoded means over the AEVB Figure 4 grid of a 2-D latent: [n*n, *shape]."""
    return model.decode_mean(manifold_codes(n).to(next(model.parameters()).device))


def plot_curves(history: list[dict], path: str | Path, loss_label: str = "training loss (nats/example)") -> Path:
    """Per-epoch training loss (``loss_label``: what it is, and its unit) and validation score;
    each epoch a marker too, so a one-epoch run shows its point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    mark = "o" if len(epochs) <= 30 else None
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(epochs, [h["train_loss"] for h in history], marker=mark)
    ax[0].set(xlabel="epoch", ylabel=loss_label, title="training")
    val = [(h["epoch"], h["val"]) for h in history if h.get("val") is not None]
    if val:
        ax[1].plot(*zip(*val), color="C1", marker=mark)
    ax[1].set(xlabel="epoch", ylabel=f"validation {history[0].get('val_name', 'score') if history else ''}",
              title="validation")
    return save_figure(fig, path)


def save_manifold(images: torch.Tensor, n: int, path: str | Path) -> Path:
    """manifold.png: the decoded :func:`manifold_codes` grid of ``n`` x ``n`` images with the
    values of z1 (columns) and z2 (rows) on its axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = grid(images, n)
    zs = manifold_codes(n)[:n, 0].tolist()  # the columns' z1, left to right; the rows' z2 are the same, flipped
    cell = (arr.shape[0] - GRID_PADDING) / n  # a cell with its padding: the ticks at the images' centres
    side = min(7.5, max(4.0, arr.shape[0] / 80))
    fig, ax = plt.subplots(figsize=(side + 0.8, side + 0.6))
    ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    every = max(1, n // 8)
    ticks = list(range(0, n, every))
    ax.set_xticks([GRID_PADDING / 2 + (i + 0.5) * cell - 0.5 for i in ticks], [f"{zs[i]:.2f}" for i in ticks])
    ax.set_yticks([GRID_PADDING / 2 + (i + 0.5) * cell - 0.5 for i in ticks], [f"{-zs[i]:.2f}" for i in ticks])
    ax.set(xlabel="z1", ylabel="z2")
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


def progress_strip(files: list[Path], shape: tuple[int, ...], path: Path, rows: int = 10,
                   epochs: list[int] | None = None) -> Path | None:
    """progress.png (``path``): the first row of the grids ``files`` (one per epoch, in order; ``epochs``:
    theirs, labelled on the left) at up to ``rows`` epochs spread over the run, earliest at the
    top, so the run's progress reads downwards."""
    if not files:
        return None
    n = min(rows, len(files))
    picked = sorted({round(i * (len(files) - 1) / max(1, n - 1)) for i in range(n)})
    height = grid_cell(shape[1:]) + 2 * GRID_PADDING  # the first row of a grid with its borders
    img = Image.fromarray(np.concatenate([_read_png(files[i])[:height] for i in picked]))
    if epochs is not None:
        from PIL import ImageDraw
        font = _font(grid_cell(shape[1:]))
        labels = [f"epoch {epochs[i]}" for i in picked]
        left = max(int(math.ceil(ImageDraw.Draw(img).textlength(t, font=font))) for t in labels) + LABEL_GAP
        canvas = Image.new(img.mode, (img.width + left, img.height), 255 if img.mode == "L" else (255, 255, 255))
        canvas.paste(img, (left, 0))
        draw = ImageDraw.Draw(canvas)
        for r, text in enumerate(labels):
            draw.text((0, r * height + (height - font.size) / 2), text, fill=0 if img.mode == "L" else (20, 20, 20),
                      font=font)
        img = canvas
    path = Path(path)
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
