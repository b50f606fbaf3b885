"""``pixelcnn``: for a model whose latent is a GRID of codebook indices (the VQ-VAE): a PixelCNN
over the grid (:class:`vaelab.nets.PixelCNN`), sampled cell by cell -> ``decode_grid``."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import VaelabError
from ..models.base import GRID
from ..nets import PixelCNN
from ..registry import register_sampler
from .base import BaseSampler, device_of, of_all


class GridPrior(nn.Module):
    """A PixelCNN over a model's grids of codebook indices."""

    def __init__(self, num_codes: int, grid, channels: int, blocks: int, kernel: int):
        super().__init__()
        self.grid = tuple(grid)
        self.net = PixelCNN(num_codes, channels, blocks, kernel)

    def loss(self, c: torch.Tensor, done: float = 1.0) -> torch.Tensor:
        """Cross-entropy of index grids c [B, h, w], nats per cell."""
        return nn.functional.cross_entropy(self.net.logits(c), c)

    def sample(self, n: int) -> torch.Tensor:
        return self.net.sample(n, self.grid)


@register_sampler("pixelcnn")
class PixelCNNSampler(BaseSampler):
    title = "PixelCNN over the code grid"
    caption = ("a PixelCNN over the grids of codebook indices of the training images, sampled cell by cell, "
               "each grid decoded by the model's decoder")
    order = 3
    recipe = {"channels": 32, "blocks": 2, "kernel": 3, "epochs": 10, "batch_size": 128, "lr": 3e-3}

    def check(self, model_cls, where) -> None:
        if model_cls.latent != GRID:
            raise VaelabError(f"--sampler pixelcnn fits grids of codebook indices, but the codes of a "
                              f"{model_cls.name} are vectors: use --sampler gmm:K or two-stage.")

    def fit(self, model, x, train):
        dev = device_of(model)
        c = of_all(model.code_grid, x, dev)  # [N, h, w]
        settings = {"num_codes": model.num_codes, "grid": list(c.shape[1:]), **self.recipe}
        stage = self.build(settings).to(dev)
        return stage, settings, f"{train(stage, lambda epoch: c, self.recipe):.4g} nats a cell"

    def build(self, settings):
        return GridPrior(settings["num_codes"], settings["grid"], settings["channels"], settings["blocks"],
                         settings["kernel"])
