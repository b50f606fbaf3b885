"""Objectives as pure functions of a model's outputs and the batch.

Reduction convention, once for the whole library: terms are summed over the data (and latent)
dimensions, giving one value per example in nats; a training loss is the mean over the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ELBOTerms:
    log_px: torch.Tensor  # E_q log p(x|z), one-sample estimate, [B]
    kl: torch.Tensor      # KL(q(z|x) || p(z)), closed form, [B]
    elbo: torch.Tensor    # log_px - kl, [B]
    loss: torch.Tensor    # mean over the batch of -(log_px - beta * kl), scalar


def elbo(out, x: torch.Tensor, beta: float = 1.0) -> ELBOTerms:
    """The evidence lower bound with a closed-form KL term.

    Args:
        out: a :class:`~vaelab.models.vae.VAEOutput` for the batch ``x``.
        x: the batch, [B, *shape].
        beta: weight of the KL term in the loss (beta-VAE, or the KL warm-up factor); the
            reported ``elbo`` always uses beta = 1.
    """
    log_px = out.likelihood.log_prob(x)
    kl = out.posterior.kl_to_standard_normal()
    return ELBOTerms(log_px, kl, log_px - kl, (beta * kl - log_px).mean())


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w_k), stable."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound (Burda et al. 2016) from log-weights [K, B]: [B]."""
    return log_mean_exp(log_w, 0)
