"""beta-TCVAE (Chen, Li, Grosse & Duvenaud 2018, "Isolating Sources of Disentanglement in VAEs"):
the VAE's networks, with the ELBO's KL term split in three and each part weighed on its own.
With q(z) = 1/N sum_n q(z|x_n) the aggregate posterior of the N training images,

    E_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || prod_j q(z_j)) + sum_j KL(q(z_j) || p(z_j)),
                             index-code MI   total correlation (TC)     dimension-wise KL

    loss = -log p(x|z) + alpha [log q(z|x) - log q(z)] + beta [log q(z) - sum_j log q(z_j)]
                       + gamma [sum_j log q(z_j) - log p(z)],     one z ~ q(z|x) per example,

alpha = gamma = 1 and beta = 6 by default. log q(z) and log q(z_j) are estimated by the paper's
minibatch-weighted sampling (MWS) over the minibatch's M posteriors, as rtqichen/beta-tcvae does:

    log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N M),   log q(z_ij) likewise per dimension.

What holds exactly: the three terms telescope, MI + TC + dimKL = log q(z|x) - log p(z) for each
example whatever log q(z) is, so with alpha = beta = gamma = 1 the loss is the negative
one-sample Monte Carlo ELBO, whose expectation is the VAE's loss. The normalisation log(N M) is a
constant: no gradient sees it, and it shifts the logged terms. Even when the minibatch is the
whole data set (M = N, so logsumexp_j - log N is log q(z) exactly) MWS reads MI log N high,
dimKL D log N low and TC (D - 1) log N high: for an aggregate that factorises, TC reads
(D - 1) log N, not 0. The logged mi, tc and dimkl are the paper's estimates, offsets included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data.batch import Batch
from ..config import opt
from ..distributions import DiagonalGaussian, standard_normal_log_prob
from ..errors import VaelabError
from ..registry import register
from .base import StepInfo, Update
from .vae import LatentGaussianConfig, LatentGaussianModel, VAEOutput


@dataclass(frozen=True)
class BetaTCVAEConfig(LatentGaussianConfig):
    alpha: float = opt(1.0, "weight of the index-code mutual information I(x; z)")
    beta: float = opt(6.0, "weight of the total correlation KL(q(z) || prod_j q(z_j))")
    gamma: float = opt(1.0, "weight of the dimension-wise KL sum_j KL(q(z_j) || p(z_j))")

    def check(self) -> None:
        super().check()
        for name in ("alpha", "beta", "gamma"):
            if getattr(self, name) < 0:
                raise VaelabError(f"--{name} must be 0 or more, got {getattr(self, name)}.")


def mws_log_q(q: DiagonalGaussian, z: torch.Tensor, dataset_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch-weighted sampling estimates of log q(z_i) and sum_d log q(z_id) for the
    minibatch's codes z [M, D] under the aggregate of its posteriors q [M, D], N = dataset_size:
    two [M] tensors."""
    # log q(z_id | x_j) for every code i, posterior j and dimension d: [M, M, D]. A trailing
    # event dim of 1 makes log_prob's sum over the last dim a sum over nothing.
    per_dim = DiagonalGaussian(q.mu[None, :, :, None], q.logvar[None, :, :, None]).log_prob(z[:, None, :, None])
    log_nm = math.log(dataset_size * len(q.mu))  # N M, M the posteriors summed over
    log_qz = torch.logsumexp(per_dim.sum(-1), dim=1) - log_nm
    log_prod_qzj = (torch.logsumexp(per_dim, dim=1) - log_nm).sum(-1)
    return log_qz, log_prod_qzj


@dataclass
class TCTerms:
    log_px: torch.Tensor  # log p(x|z), [B]
    mi: torch.Tensor      # log q(z|x) - log q(z), [B]
    tc: torch.Tensor      # log q(z) - sum_j log q(z_j), [B]
    dimkl: torch.Tensor   # sum_j log q(z_j) - log p(z), [B]


def tc_decomposition(out: VAEOutput, x: torch.Tensor, dataset_size: int) -> TCTerms:
    """The three parts of log q(z|x) - log p(z) at the sampled z, and log p(x|z)."""
    log_qz, log_prod_qzj = mws_log_q(out.posterior, out.z, dataset_size)
    return TCTerms(out.likelihood.log_prob(x), out.posterior.log_prob(out.z) - log_qz, log_qz - log_prod_qzj,
                   log_prod_qzj - standard_normal_log_prob(out.z))


@register("btcvae")
class BetaTCVAE(LatentGaussianModel):
    """The VAE's networks trained with the KL's total correlation weighed beta (Chen et al. 2018)."""
    config_cls = BetaTCVAEConfig

    def forward(self, x: torch.Tensor) -> VAEOutput:
        return self.posterior_and_likelihood(x)

    def objective(self, x: torch.Tensor, dataset_size: int):
        out = self(x)
        t = tc_decomposition(out, x, dataset_size)
        c = self.cfg
        loss = (c.alpha * t.mi + c.beta * t.tc + c.gamma * t.dimkl - t.log_px).mean()
        elbo = (t.log_px - out.posterior.kl_to_standard_normal()).mean()  # closed-form KL, as the VAE logs it
        return loss, {"loss": loss, "elbo": elbo, "mi": t.mi.mean(), "tc": t.tc.mean(), "dimkl": t.dimkl.mean()}

    def step(self, batch: Batch, info: StepInfo):
        x = batch.x
        loss, metrics = info.compile(self.objective)(x, info.dataset_size)
        yield Update("model", loss, metrics)
