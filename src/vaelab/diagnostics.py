"""What an autoencoder's code and output are good for, beyond the reconstruction error:
denoising gain (PSNR) for the DAE, code sparsity for the sparse AE. Each family has a metrics
function (numbers for ``eval``) and a pictures function (files for the run directory); the
registry names them."""
from __future__ import annotations

from pathlib import Path

import torch

from .corruption import corrupt, parse_corruption
from .images import GRID_PADDING, grid_cell, save_grid
from .training.checkpoint import atomic_write

NEAR_ZERO = 1e-2  # |z_i| below this counts as an inactive code unit


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: 10 log10(peak^2 / MSE), [B]."""
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(peak ** 2 / mse.clamp_min(1e-12))


@torch.no_grad()
def _denoise(model, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed corrupted copy of x (seeded, so every evaluation sees the same one) and its
    denoised reconstruction."""
    with torch.random.fork_rng(devices=[] if x.device.type == "cpu" else None):
        torch.manual_seed(seed)
        xc = corrupt(x, parse_corruption(model.cfg.corruption))
    return xc, model.reconstruct(xc)


def denoising_metrics(model, x: torch.Tensor) -> dict:
    """Mean PSNR (dB) of the corrupted inputs and of their denoised reconstructions against
    the clean images, and the gain."""
    xc, den = _denoise(model, x)
    corrupted = psnr(xc.clamp(0, 1), x).mean().item()
    denoised = psnr(den, x).mean().item()
    return {"corruption": model.cfg.corruption, "psnr_corrupted": corrupted, "psnr_denoised": denoised,
            "psnr_gain": denoised - corrupted}


def denoising_pictures(model, x: torch.Tensor, run_dir: Path) -> list[Path]:
    """denoising.png: rows of corrupted, denoised and clean images (8 per row)."""
    xc, den = _denoise(model, x[:8])
    rows = torch.cat([xc.clamp(0, 1).cpu(), den.cpu(), x[:8].cpu()])
    return [save_grid(rows, Path(run_dir) / "denoising.png", nrow=8)]


@torch.no_grad()
def _codes(model, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    return torch.cat([model.codes(x[i:i + batch]) for i in range(0, len(x), batch)])


def sparsity_metrics(model, x: torch.Tensor) -> dict:
    """How sparse the codes are: the fraction of code values with |z_i| < 1e-2, the mean
    |z_i|, and the mean activation of each unit averaged over units."""
    z = _codes(model, x)
    return {"near_zero_fraction": (z.abs() < NEAR_ZERO).float().mean().item(),
            "mean_abs_code": z.abs().mean().item(), "mean_activation": z.mean().item()}


def sparsity_pictures(model, x: torch.Tensor, run_dir: Path) -> list[Path]:
    """codes_histogram.png: the distribution of code values over the split."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = _codes(model, x).flatten().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(z, bins=100, log=True)
    frac = float((abs(z) < NEAR_ZERO).mean())
    ax.set(xlabel="code value z_i", ylabel="count (log)",
           title=f"code values: {100 * frac:.1f}% with |z| < {NEAR_ZERO:g}")
    fig.tight_layout()
    path = Path(run_dir) / "codes_histogram.png"
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return [path]



# --------------------------------------------------------------------------------------------
# the GAN: watching the game
# --------------------------------------------------------------------------------------------

PROGRESS_DIR = "progress"  # per-epoch sample grids of a GAN run
FIXED_NOISE_SEED = 4321    # the fixed noise batch drawn each epoch (its own generator)


@torch.no_grad()
def gan_epoch_pictures(model, run_dir: Path, epoch: int, n: int = 64) -> Path:
    """progress/epoch-NNNN.png: G(z) for the same fixed noise batch every epoch, drawn from a
    private generator so the training RNG (and exact resume) is untouched."""
    z = model.prior(n, torch.Generator().manual_seed(FIXED_NOISE_SEED))
    was = model.training
    model.eval()
    x = model.decode_mean(z).cpu()
    model.train(was)
    folder = Path(run_dir) / PROGRESS_DIR
    folder.mkdir(exist_ok=True)
    return save_grid(x, folder / f"epoch-{epoch:04d}.png", nrow=8)


def progress_strip(run_dir: Path, shape: tuple[int, ...], rows: int = 10) -> Path | None:
    """progress.png: the first row of the fixed-noise grid at up to ``rows`` epochs spread
    over the run, earliest at the top, so the run's progress reads downwards."""
    import numpy as np
    from PIL import Image

    files = sorted((Path(run_dir) / PROGRESS_DIR).glob("epoch-*.png"))
    if not files:
        return None
    n = min(rows, len(files))
    pick = sorted({files[round(i * (len(files) - 1) / max(1, n - 1))] for i in range(n)})
    height = grid_cell(shape[1:]) + 2 * GRID_PADDING  # the first row of a grid with its borders
    img = Image.fromarray(np.concatenate([np.asarray(Image.open(f))[:height] for f in pick]))
    path = Path(run_dir) / "progress.png"
    atomic_write(path, lambda p: img.save(p, format="PNG"))
    return path


def game_curves(history: list[dict], path: Path) -> Path:
    """game.png: mean D(x) on data and D(G(z)) on samples per epoch (the equilibrium
    p_g = p_data has both at 1/2), and both players' losses (D's is log 4 there)."""
    import math

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
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return Path(path)


def gan_pictures(model, x: torch.Tensor, run_dir: Path) -> list[Path]:
    """progress.png and game.png for a GAN run."""
    import json
    out = [p for p in [progress_strip(run_dir, model.cfg.shape)] if p]
    hist = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
    if hist:
        out.append(game_curves(hist, Path(run_dir) / "game.png"))
    return out
