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
    """N(mu, diag(exp(logvar))) over vectors: the VAE posterior q(z|x) and the prior.

    Its moments go by torch.distributions' names (``mean``, ``stddev``, ``variance``, and
    ``loc`` / ``scale`` as in ``Normal``), so code written for ``torch.distributions.Normal``
    reads it alike; ``mu`` and ``std`` stay as the short names the maths uses. Unlike
    ``Normal``, ``log_prob`` and ``entropy`` sum over the last dim (the code's dims).
    """

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        self.mu, self.logvar = mu, logvar  # [B, D]

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    loc = mean

    @property
    def stddev(self) -> torch.Tensor:
        return self.std

    scale = stddev

    @property
    def variance(self) -> torch.Tensor:
        return torch.exp(self.logvar)

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

    def entropy(self) -> torch.Tensor:
        """Differential entropy summed over the last dim: [B]."""
        return 0.5 * (self.logvar + 1.0 + LOG_2PI).sum(-1)

    def kl_to_standard_normal(self) -> torch.Tensor:
        """Closed-form KL(q || N(0, I)) per example: [B]."""
        return 0.5 * (self.mu ** 2 + torch.exp(self.logvar) - 1.0 - self.logvar).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dim."""
    return -0.5 * (z ** 2 + LOG_2PI).sum(-1)


def standard_normal(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws from N(0, I) of ``shape`` with ``like``'s dtype, on its device; a (CPU)
    ``generator`` draws them on the CPU, then they move."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    return torch.randn(shape, dtype=like.dtype, generator=generator).to(like.device)


class Bernoulli:
    """Independent Bernoulli pixels parameterised by logits; x may be binary or in [0, 1]."""

    def __init__(self, logits: torch.Tensor, event_ndim: int):
        self.logits, self.event_ndim = logits, event_ndim

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # x*l - softplus(l) = x log sigmoid(l) + (1 - x) log sigmoid(-l), stable for any logit;
        # 3 elementwise passes where binary_cross_entropy_with_logits takes about 6: 1.7x faster
        # on its own on [100, 100, 784], but only 1.5% of an NLL evaluation end to end (measured)
        return _sum_event(x * self.logits - F.softplus(self.logits), self.event_ndim)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    probs = mean  # torch.distributions.Bernoulli's name for it

    @property
    def variance(self) -> torch.Tensor:
        p = self.mean
        return p * (1 - p)

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

    @property
    def stddev(self) -> torch.Tensor:
        """The standard deviation, broadcast to loc's shape (a shared scale as well)."""
        return torch.exp(self.log_scale).expand_as(self.loc)

    @property
    def variance(self) -> torch.Tensor:
        return self.stddev ** 2

    def sample(self) -> torch.Tensor:
        return self.loc + torch.exp(self.log_scale) * torch.randn_like(self.loc)


class DiscretizedLogistic:
    """Pixels on ``levels`` bins: the mass of a logistic(loc, scale) over each bin of [0, 1]
    (Salimans et al. 2017; Kingma et al. 2016), so the likelihood is a probability and bits/dim
    a real discrete code length. Bin k is centred on c_k = k / (levels - 1) with half-width
    h = 1 / (2 (levels - 1)); the first and last bins take the tails:

        P(c_k) = sigma((c_k + h - loc) / s) - sigma((c_k - h - loc) / s),  sigma(-inf) = 0, sigma(inf) = 1.

    With a mixture (``logit_weights`` given, one more leading dim of M components before the
    image dims: loc etc. are [..., M, *image]), P is the mixture of the components' masses per
    sub-pixel. log sigma(a) - sigma(b) is computed as logsigmoid(a) + logsigmoid(-b) +
    log(1 - exp(b - a)): exact in float32 however sharp the logistic.
    """

    MIN_LOG_SCALE = -7.0

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, event_ndim: int, levels: int = 256,
                 logit_weights: torch.Tensor | None = None):
        self.loc, self.event_ndim, self.levels = loc, event_ndim, levels
        self.log_scale = log_scale.clamp(min=self.MIN_LOG_SCALE)
        self.logit_weights = logit_weights

    def _component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        h = 0.5 / (self.levels - 1)
        inv_s = torch.exp(-self.log_scale)
        a = (x + h - self.loc) * inv_s  # upper edge of the bin
        b = (x - h - self.loc) * inv_s  # lower edge
        mid = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(b - a))
        lowest, highest = x < h, x > 1 - h
        return torch.where(lowest, F.logsigmoid(a), torch.where(highest, F.logsigmoid(-b), mid))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., *image] on the bins k / (levels - 1) -> log P summed over the image, [...]."""
        if self.logit_weights is None:
            return _sum_event(self._component_log_prob(x), self.event_ndim)
        d = -1 - self.event_ndim  # the component dim
        lp = self._component_log_prob(x.unsqueeze(d)) + F.log_softmax(self.logit_weights, dim=d)
        return _sum_event(torch.logsumexp(lp, dim=d), self.event_ndim)

    @property
    def mean(self) -> torch.Tensor:
        """The centre of the distribution, clamped to [0, 1] (the mixture's weighted centre)."""
        if self.logit_weights is None:
            return self.loc.clamp(0, 1)
        d = -1 - self.event_ndim
        return (torch.softmax(self.logit_weights, dim=d) * self.loc.clamp(0, 1)).sum(d)

    def sample(self) -> torch.Tensor:
        """A draw on the bins: the logistic by inverse CDF, rounded to the nearest bin."""
        loc, log_scale = self.loc, self.log_scale
        if self.logit_weights is not None:
            d = -1 - self.event_ndim
            g = -torch.log(-torch.log(torch.rand_like(self.logit_weights).clamp(1e-10, 1 - 1e-10)))
            pick = F.one_hot((self.logit_weights + g).argmax(d), self.logit_weights.shape[d]).movedim(-1, d)
            loc, log_scale = (loc * pick).sum(d), (log_scale * pick).sum(d)
        u = torch.rand_like(loc).clamp(1e-5, 1 - 1e-5)
        x = loc + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
        return (x.clamp(0, 1) * (self.levels - 1)).round() / (self.levels - 1)
