"""What an autoencoder's code and output are good for, beyond the reconstruction error:
denoising gain (PSNR) for the DAE, code sparsity for the sparse AE. Each family has a metrics
function (numbers for ``eval``) and a pictures function (files for the run directory); the
registry names them."""
from __future__ import annotations

from pathlib import Path

import torch

from .corruption import corrupt, parse_corruption
from .images import save_grid
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

