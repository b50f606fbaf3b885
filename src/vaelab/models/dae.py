"""The denoising autoencoder (Vincent et al. 2008): the autoencoder trained to reconstruct the
clean x from a corrupted copy x~ ~ C(x~ | x), drawn afresh each time an image is used.

    L(x, g(f(x~)))

``--corruption gaussian:SIGMA | mask:P | salt-pepper:P``. Reported beside the reconstruction
error: the PSNR of a fixed corrupted copy of the split and of its denoised reconstruction.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import opt
from ..corruption import corrupt, parse_corruption
from ..data.batch import Batch
from ..images import Figure, save_grid
from ..registry import register
from ..rundir import PNG
from .ae import AE, AEConfig


@dataclass(frozen=True)
class DAEConfig(AEConfig):
    corruption: str = opt("mask:0.25", "gaussian:SIGMA, mask:P or salt-pepper:P, drawn afresh each use")

    def check(self) -> None:
        super().check()
        parse_corruption(self.corruption)


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: 10 log10(peak^2 / MSE), [B]."""
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(peak ** 2 / mse.clamp_min(1e-12))


@register("dae")
class DAE(AE):
    """The autoencoder trained to reconstruct clean images from corrupted ones (Vincent et al. 2008)."""
    config_cls = DAEConfig

    def corrupted(self, x: torch.Tensor) -> torch.Tensor:
        return corrupt(x, parse_corruption(self.cfg.corruption))

    @torch.no_grad()
    def _denoise(self, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed corrupted copy of x (seeded, so every evaluation sees the same one) and its
        denoised reconstruction."""
        with torch.random.fork_rng(devices=[] if x.device.type == "cpu" else None):
            torch.manual_seed(seed)
            xc = self.corrupted(x)
        return xc, self.reconstruct(xc)

    def metrics(self, batch: Batch) -> dict:
        """Mean PSNR (dB) of the corrupted inputs and of their denoised reconstructions against
        the clean images, and the gain."""
        x = batch.x
        xc, den = self._denoise(x)
        corrupted = psnr(xc.clamp(0, 1), x).mean().item()
        denoised = psnr(den, x).mean().item()
        return {"corruption": self.cfg.corruption, "psnr_corrupted": corrupted, "psnr_denoised": denoised,
                "psnr_gain": denoised - corrupted}

    def pictures(self, x: torch.Tensor, run_dir: Path) -> list[Figure]:
        """denoising.png: rows of corrupted, denoised and clean images (8 per row), labelled."""
        xc, den = self._denoise(x[:8])
        rows = torch.cat([xc.clamp(0, 1).cpu(), den.cpu(), x[:8].cpu()])
        path = save_grid(rows, Path(run_dir) / PNG.denoising, nrow=8, row_labels=["corrupted", "denoised", "clean"])
        return [Figure(path, "Denoising", f"The first {len(rows) // 3} test images corrupted by "
                       f"{self.cfg.corruption} (top row; one fixed draw, seed 0), the autoencoder's reconstruction "
                       "of each corrupted image (middle) and the clean image (bottom).")]
