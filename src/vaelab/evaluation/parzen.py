"""Gaussian Parzen-window log-likelihood of a sampler: the protocol of Goodfellow et al. 2014
("Generative Adversarial Nets", Table 1; code: goodfeli/adversarial, ``parzen_ll.py``).

A Gaussian kernel density with bandwidth sigma is centred on N generated samples s_i; a data
point x of dimension D gets

    log p(x) = logsumexp_i( -||x - s_i||^2 / (2 sigma^2) ) - log N - D log(sigma sqrt(2 pi)).

Sigma is the value of a grid with the best mean log-likelihood on a validation set; the score is
the mean log-likelihood of the test set (nats per example, higher is better) with its standard
error std / sqrt(M) (population std, as in the original code). The paper used 10,000 samples,
1,000 validation images and the grid ``logspace(-1, 0, 10)``, which is :data:`DEFAULT_SIGMAS`.
The estimate is known to be poor in high dimensions (Theis et al. 2016): it compares models
only under one fixed protocol.

The squared distances come from one matmul per block, ||x||^2 + ||s||^2 - 2 x.s (float64,
clamped at 0); they do not depend on sigma, so a whole grid is scored in one pass. Blocks of
x rows and of samples bound the memory to about :data:`CHUNK_ELEMENTS` distances at a time.

Under torchrun the samples may be shared among the ranks (``ranks_share``): each rank sums the
kernels of its own samples for every test point, and the ranks' log-sums are merged by a
logsumexp over the ranks, so every rank gets the one-process figures to float rounding.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .. import distributed
from ..errors import VaelabError

DEFAULT_SIGMAS = tuple(float(s) for s in np.logspace(-1, 0, 10))  # parzen_ll.py's default grid
CHUNK_ELEMENTS = 1 << 22  # distances per block: [rows of x, samples], 32 MB in float64


def _rows(a, name: str) -> torch.Tensor:
    """Any [N, ...] array -> float64 [N, D] (flattened), or a VaelabError."""
    a = torch.as_tensor(a)
    if a.dim() < 2 or a.shape[0] == 0 or a[0].numel() == 0:
        raise VaelabError(f"the Parzen {name} must be a non-empty batch [N, ...]; got shape {tuple(a.shape)}.")
    a = a.reshape(a.shape[0], -1).to(torch.float64)
    if not torch.isfinite(a).all():
        raise VaelabError(f"the Parzen {name} contain NaN or infinite values.")
    return a


def _sigmas(sigmas) -> torch.Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if s.numel() == 0 or not (torch.isfinite(s) & (s > 0)).all():
        raise VaelabError(f"Parzen sigmas must be positive finite numbers, got {s.tolist()}.")
    return s


def parzen_log_likelihoods(samples, x, sigmas: Sequence[float], batch_size: int = 100,
                           sample_chunk: int | None = None, ranks_share: bool = False) -> torch.Tensor:
    """log p(x) under the Parzen window on ``samples`` for every sigma of a grid.

    Args:
        samples: generated samples [N, ...] (flattened to [N, D]).
        x: points to score [M, ...], flattened to [M, D] on the samples' scale.
        sigmas: kernel bandwidths [S], all positive.
        batch_size: rows of x per block.
        sample_chunk: samples per block (default: as many as keep a block at CHUNK_ELEMENTS).
        ranks_share: ``samples`` are this rank's part of them (under torchrun); the kernels of
            all the ranks' samples are summed, and every rank returns the same values.
    Returns:
        float64 [S, M] log-likelihoods in nats, on the samples' device.
    """
    s, sig = _rows(samples, "samples"), _sigmas(sigmas)
    x = _rows(x, "points").to(s.device)
    if x.shape[1] != s.shape[1]:
        raise VaelabError(f"the Parzen samples have {s.shape[1]} dimensions but the data has {x.shape[1]}.")
    n, d = s.shape
    bx = max(1, int(batch_size))
    bs = max(1, int(sample_chunk) if sample_chunk else CHUNK_ELEMENTS // bx)
    sig = sig.to(s.device)
    scale = (-0.5 / sig ** 2)[:, None, None]                                  # [S, 1, 1]
    ss = (s * s).sum(1)                                                       # [N]
    out = []
    for i in range(0, x.shape[0], bx):
        xb = x[i:i + bx]
        xx = (xb * xb).sum(1, keepdim=True)                                   # [b, 1]
        lse = torch.full((len(sig), xb.shape[0]), -math.inf, dtype=torch.float64, device=s.device)
        for j in range(0, n, bs):
            d2 = (xx + ss[j:j + bs] - 2 * xb @ s[j:j + bs].T).clamp_min_(0)  # [b, bs]
            # one distance block serves every sigma; the running logsumexp merges sample blocks
            lse = torch.logaddexp(lse, torch.logsumexp(scale * d2, dim=2))    # [S, b]
        out.append(lse)
    out = torch.cat(out, dim=1)                                               # [S, M]
    if ranks_share and distributed.active():  # this rank's log-sums merged with the others', and the counts
        parts = distributed.gather([(n, out.cpu())])
        n, out = sum(k for k, _ in parts), torch.logsumexp(torch.stack([o for _, o in parts]), 0).to(s.device)
    norm = math.log(n) + d * torch.log(sig * math.sqrt(2 * math.pi))         # [S]
    return out - norm[:, None]


def parzen_log_likelihood(samples, x, sigma: float, batch_size: int = 100,
                          sample_chunk: int | None = None, ranks_share: bool = False) -> torch.Tensor:
    """log (1/N) sum_i N(x; s_i, sigma^2 I) for every row of x: float64 [M]. See
    :func:`parzen_log_likelihoods` for the arguments."""
    return parzen_log_likelihoods(samples, x, [sigma], batch_size, sample_chunk, ranks_share)[0]


def parzen_evaluate(samples, x_val, x_test, sigmas: Sequence[float] | None = None,
                    batch_size: int = 100, ranks_share: bool = False) -> dict:
    """Goodfellow et al.'s protocol: choose sigma on ``x_val``, score ``x_test``.

    Args:
        samples: generated samples [N, ...] (the paper: 10,000).
        x_val: validation data [M_val, ...] choosing sigma (the paper: 1,000 images).
        x_test: test data [M, ...], on the same scale as the samples.
        sigmas: the grid (default :data:`DEFAULT_SIGMAS`, ``logspace(-1, 0, 10)``).
        ranks_share: ``samples`` are this rank's part of them (under torchrun).
    Returns:
        ``parzen_ll`` (mean test log-likelihood, nats), ``parzen_se`` (its standard error),
        ``parzen_sigma`` (the chosen sigma), ``parzen_samples`` (N), ``parzen_n_test`` (M).
    """
    grid = _sigmas(DEFAULT_SIGMAS if sigmas is None else sigmas)
    val = parzen_log_likelihoods(samples, x_val, grid, batch_size, ranks_share=ranks_share).mean(1)  # [S]
    sigma = float(grid[int(val.argmax())])
    ll = parzen_log_likelihood(samples, x_test, sigma, batch_size, ranks_share=ranks_share)         # [M]
    n = int(torch.as_tensor(samples).shape[0])
    return {"parzen_ll": float(ll.mean()),
            "parzen_se": float(ll.std(unbiased=False)) / math.sqrt(ll.numel()),
            "parzen_sigma": sigma,
            "parzen_samples": sum(distributed.gather([n])) if ranks_share else n,
            "parzen_n_test": int(ll.numel())}
