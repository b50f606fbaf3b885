"""InfoVAE (Zhao, Song & Ermon 2019), whose MMD member is the MMD-VAE: the VAE's networks, with
the ELBO's KL term partly or wholly replaced by a divergence between the aggregate posterior
q(z) = E_x q(z|x) and the prior p(z) = N(0, I):

    loss = -E_q log p(x|z) + (1 - alpha) KL(q(z|x) || p(z)) + (alpha + lambda - 1) MMD(q(z), p(z)).

alpha = 0, lambda = 1 is the ELBO; alpha = 1 - beta, lambda = beta the beta-VAE. The MMD is the
unbiased U-statistic (:func:`vaelab.losses.mmd`) between the minibatch's codes z ~ q(z|x) and as
many draws of N(0, I), with the paper's Gaussian kernel exp(-||z - z'||^2 / C), C = 2 d s
(``--kernel imq`` for the WAE's). Defaults: the MMD-VAE, alpha = 1 (no KL term) and
lambda = 1000. Zhao's reference code (ShengjiaZhao/MMD-Variational-Autoencoder, mmd_vae.py)
weighs the MMD 1 against a per-pixel mean squared error, i.e. about 784 against a per-image sum:
the same order as lambda = 1000 against log p(x|z) summed over the pixels; its kernel is
exp(-||z - z'||^2 / d^2) (C = d^2, equal to ours at d = 2) and its MMD the biased V-statistic.

q(z|x) stays a Gaussian and p(x|z) a likelihood, so the ELBO and the importance-sampled NLL
still bound and estimate log p(x) under this decoder; with alpha = 1 nothing holds the
posterior's variance up, and those bounds loosen.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batch import Batch
from ..config import opt
from ..errors import VaelabError
from ..losses import MMD_KERNELS, elbo, mmd
from ..registry import register
from .base import StepInfo, Update
from .vae import LatentGaussianConfig, LatentGaussianModel, VAEOutput
from .wae import MMD_PART, check_kernel


@dataclass(frozen=True)
class InfoVAEConfig(LatentGaussianConfig):
    alpha: float = opt(1.0, "alpha: the KL term weighs 1 - alpha (1: the MMD-VAE, no KL term)")
    lam: float = opt(1000.0, "lambda: the MMD term weighs alpha + lambda - 1")
    kernel: str = opt("gaussian", "MMD kernel: Gaussian exp(-|x-y|^2/C) or inverse multiquadratic C/(C + |x-y|^2)",
                      tuple(MMD_KERNELS))
    kernel_scales: tuple[float, ...] = opt((1.0,), "scales s of the kernel, C = 2 * latent-dim * s, the MMDs summed")

    @property
    def kl_weight(self) -> float:
        return 1.0 - self.alpha

    @property
    def mmd_weight(self) -> float:
        return self.alpha + self.lam - 1.0

    def check(self) -> None:
        super().check()
        # a negative weight would maximise a divergence
        if self.kl_weight < 0:
            raise VaelabError(f"--alpha must be at most 1 (the KL term weighs 1 - alpha), got {self.alpha}.")
        if self.mmd_weight < 0:
            raise VaelabError(f"--alpha plus --lam must be at least 1 (the MMD term weighs alpha + lambda - 1), "
                              f"got {self.alpha} + {self.lam}.")
        check_kernel(self)


@register("infovae")
class InfoVAE(LatentGaussianModel):
    """The VAE's networks trained on the InfoVAE objective, KL weighed 1 - alpha, MMD alpha + lambda - 1."""
    config_cls = InfoVAEConfig
    # the MMD is a property of a minibatch, not of an example: validation ranks epochs by the rest
    val_name, higher_is_better = "example_loss", False
    drop_last = True  # the MMD of a one-code minibatch is undefined
    min_part, min_part_why = MMD_PART

    def forward(self, x: torch.Tensor) -> VAEOutput:
        return self.posterior_and_likelihood(x)

    def objective(self, x: torch.Tensor):
        out = self(x)
        t = elbo(out, x, beta=self.cfg.kl_weight)
        d = mmd(out.z, torch.randn_like(out.z), self.cfg.kernel, self.cfg.kernel_scales)
        loss = t.loss + self.cfg.mmd_weight * d
        return loss, {"loss": loss, "elbo": t.elbo.mean(), "kl": t.kl.mean(), "mmd": d}

    def step(self, batch: Batch, info: StepInfo):
        x = batch.x
        loss, metrics = info.compile(self.objective)(x)
        yield Update("model", loss, metrics)

    def validation(self, batch: Batch) -> torch.Tensor:
        """-log p(x|z) + (1 - alpha) KL per example, one z: the loss less its MMD term."""
        x = batch.x
        t = elbo(self(x), x)
        return self.cfg.kl_weight * t.kl - t.log_px
