"""The importance-weighted autoencoder (Burda et al. 2016): the VAE's networks trained on a
tighter bound.

    L_k(x) = E_{z_1..z_k ~ q(z|x)} log (1/k) sum_i p(x, z_i) / q(z_i|x)

L_1 is the ELBO; L_k rises towards log p(x) as k grows. Only the objective differs from the
VAE: the networks, the likelihoods and everything evaluation asks of the model are the VAE's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import opt
from ..errors import VaelabError
from ..losses import iwae_bound
from ..registry import register
from .base import StepInfo, Update
from .vae import LatentGaussianConfig, LatentGaussianModel


@dataclass(frozen=True)
class IWAEConfig(LatentGaussianConfig):
    k: int = opt(5, "importance samples of the training bound (k = 1 is the ELBO)")

    def check(self) -> None:
        super().check()
        if self.k < 1:
            raise VaelabError(f"--k must be at least 1 (importance samples), got {self.k}.")


@register("iwae")
class IWAE(LatentGaussianModel):
    """The VAE's networks trained on the k-sample importance-weighted bound (Burda et al. 2016)."""
    config_cls = IWAEConfig

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log w_i = log p(x, z_i) - log q(z_i|x) for k draws z_i ~ q(z|x): [k, B]."""
        return self.log_weights(x, self.cfg.k)

    def objective(self, x: torch.Tensor):
        bound = iwae_bound(self(x))  # [B]
        loss = -bound.mean()
        return loss, {"loss": loss, "bound": bound.mean()}

    def step(self, x: torch.Tensor, info: StepInfo):
        loss, metrics = info.compile(self.objective)(x)
        yield Update("model", loss, metrics)
