"""Posteriors and likelihoods as small distribution objects.

Every ``log_prob`` sums over the event dimensions (the last ``event_ndim`` dims) and keeps any
leading sample/batch dims, so the same object serves a batch ``[B, ...]`` and importance
samples ``[K, B, ...]``. All values are in nats.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def _sum_event(t: torch.Tensor, event_ndim: int) -> torch.Tensor:
    return t.sum(dim=tuple(range(-event_ndim, 0))) if event_ndim else t


class DiagonalGaussian:
    """N(mu, diag(exp(logvar))) over vectors: the VAE posterior q(z|x) and the prior."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu, self.logvar = mu, logvar  # [B, D]

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, n: int | None = None) -> torch.Tensor:
        """Reparameterised sample mu + sigma * eps: [B, D], or [n, B, D] when n is given."""
        shape = self.mu.shape if n is None else (n, *self.mu.shape)
        eps = torch.randn(shape, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.std * eps

    sample = rsample

    def mode(self) -> torch.Tensor:
        return self.mu

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu, sigma^2) summed over the last dim: z [..., B, D] -> [..., B]."""
        return -0.5 * ((z - self.mu) ** 2 * torch.exp(-self.logvar) + self.logvar + LOG_2PI).sum(-1)

    def kl_to_standard_normal(self) -> torch.Tensor:
        """Closed-form KL(q || N(0, I)) per example: [B]."""
        return 0.5 * (self.mu ** 2 + torch.exp(self.logvar) - 1.0 - self.logvar).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z ** 2 + LOG_2PI).sum(-1)


class Bernoulli:
    """Independent Bernoulli pixels parameterised by logits; x may be binary or in [0, 1]."""

    def __init__(self, logits: torch.Tensor, event_ndim: int):
        self.logits, self.event_ndim = logits, event_ndim

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # -BCE with logits is log-sum-exp stable: x*l - softplus(l).
        lp = -F.binary_cross_entropy_with_logits(self.logits, x.expand_as(self.logits), reduction="none")
        return _sum_event(lp, self.event_ndim)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def sample(self) -> torch.Tensor:
        return torch.bernoulli(self.mean)


class Gaussian:
    """Independent Gaussian pixels with mean ``loc`` and log standard deviation ``log_scale``
    (a tensor broadcastable to loc: a fixed constant or a learned parameter)."""

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, event_ndim: int):
        self.loc, self.log_scale, self.event_ndim = loc, log_scale, event_ndim

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lp = -0.5 * ((x - self.loc) * torch.exp(-self.log_scale)) ** 2 - self.log_scale - 0.5 * LOG_2PI
        return _sum_event(lp, self.event_ndim)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def sample(self) -> torch.Tensor:
        return self.loc + torch.exp(self.log_scale) * torch.randn_like(self.loc)
