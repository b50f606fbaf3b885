"""Objectives as pure functions of a model's outputs and the batch.

Reduction convention, once for the whole library: terms are summed over the data (and latent)
dimensions, giving one value per example in nats; a training loss is the mean over the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ELBOTerms:
    log_px: torch.Tensor  # E_q log p(x|z), one-sample estimate, [B]
    kl: torch.Tensor      # KL(q(z|x) || p(z)): closed form, or log q(z|x) - log p(z) at the same z, [B]
    elbo: torch.Tensor    # log_px - kl, [B]
    loss: torch.Tensor    # mean over the batch of -(log_px - beta * kl), scalar


def elbo_from_terms(log_px: torch.Tensor, kl: torch.Tensor, beta: float = 1.0) -> ELBOTerms:
    """The ELBO's terms from log p(x|z) and the KL term per example, [B] each."""
    return ELBOTerms(log_px, kl, log_px - kl, (beta * kl - log_px).mean())


def elbo(out, x: torch.Tensor, beta: float = 1.0, kl: torch.Tensor | None = None) -> ELBOTerms:
    """The evidence lower bound with a closed-form KL term.

    Args:
        out: a :class:`~vaelab.models.vae.VAEOutput` for the batch ``x``.
        x: the batch, [B, *shape].
        beta: weight of the KL term in the loss (beta-VAE, or the KL warm-up factor); the
            reported ``elbo`` always uses beta = 1.
        kl: the KL term per example, [B], where the prior is not N(0, I) (a one-sample
            estimate log q(z|x) - log p(z) at ``out.z``); default the closed form to N(0, I).
    """
    kl = out.posterior.kl_to_standard_normal() if kl is None else kl
    return elbo_from_terms(out.likelihood.log_prob(x), kl, beta)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w_k), stable."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def iwae_bound(log_w: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound (Burda et al. 2016) from log-weights [K, B]: [B]."""
    return log_mean_exp(log_w, 0)


def class_summed_bound(logits_y: torch.Tensor, elbo_y: torch.Tensor) -> torch.Tensor:
    """The semi-supervised VAE's bound on log p(x) for an unlabelled x (Kingma et al. 2014, M2,
    their Eq. 7), with y summed out exactly over the classes rather than sampled:

        U(x) = sum_y q(y|x) L(x, y) + H(q(y|x))  <=  log sum_y exp L(x, y)  <=  log p(x),

    with equality on the left where q(y|x) is proportional to exp L(x, y).

    Args:
        logits_y: q(y|x)'s logits, [B, C].
        elbo_y: L(x, y) for every class y, [B, C]: the labelled bound (log p(y) included) in
            nats, one column per class.

    Returns:
        U(x), [B], in nats (higher is better).
    """
    log_q = torch.log_softmax(logits_y, dim=-1)  # [B, C]
    q = log_q.exp()
    # a class q rules out (q = 0, log q = -inf) adds nothing: log q clamped, as torch's
    # Categorical.entropy does, so 0 * -inf is not NaN
    return (q * (elbo_y - log_q.clamp_min(torch.finfo(log_q.dtype).min))).sum(-1)


def reconstruction_error(recon: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example reconstruction loss summed over the data dims: [B].

    ``bce``: binary cross-entropy of x (in [0, 1]) under logits ``recon`` (the Bernoulli
    negative log-likelihood); ``l2``: squared error between ``recon`` and x.
    """
    if kind == "bce":
        err = torch.nn.functional.binary_cross_entropy_with_logits(recon, x, reduction="none")
    else:
        err = (recon - x) ** 2
    return err.flatten(1).sum(1)


def l1_penalty(z: torch.Tensor) -> torch.Tensor:
    """Omega(z) / lambda = sum_i |z_i| per example: [B]."""
    return z.abs().sum(-1)


def kl_sparsity(z: torch.Tensor, rho: float, eps: float = 1e-6) -> torch.Tensor:
    """sum_j KL(Bernoulli(rho) || Bernoulli(rho_hat_j)), rho_hat_j the batch-mean activation of
    unit j of sigmoid codes z [B, D] (Ng's sparse autoencoder penalty): a scalar."""
    rho_hat = z.mean(0).clamp(eps, 1 - eps)
    return (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()


# --------------------------------------------------------------------------------------------
# the GAN game (Goodfellow et al. 2014). D outputs logits a, D(x) = sigmoid(a), and
# log D = -softplus(-a), log(1 - D) = -softplus(a): exact and stable for any logit.
# --------------------------------------------------------------------------------------------

def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, *more_fakes: torch.Tensor) -> torch.Tensor:
    """The discriminator descends -(E log D(x) + E log(1 - D(G(z)))): ascending the value
    V(D, G) of Algorithm 1. At the equilibrium D = 1/2 it equals log 4. Each further batch of
    fakes adds its own term E log(1 - D(.)) (VAE-GAN's L_GAN has two: reconstructions and
    decoded prior draws)."""
    loss = nn.functional.softplus(-real_logits).mean() + nn.functional.softplus(fake_logits).mean()
    for more in more_fakes:
        loss = loss + nn.functional.softplus(more).mean()
    return loss


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """``minimax``: descend E log(1 - D(G(z))) as Algorithm 1 writes it (saturates when D
    rejects the samples). ``non-saturating``: ascend E log D(G(z)) instead, the paper's advice."""
    if kind == "minimax":
        return -nn.functional.softplus(fake_logits).mean()
    if kind == "non-saturating":
        return nn.functional.softplus(-fake_logits).mean()
    raise ValueError(f"unknown generator loss {kind!r}")


# --------------------------------------------------------------------------------------------
# maximum mean discrepancy between two sample sets (WAE-MMD, InfoVAE / MMD-VAE)
# --------------------------------------------------------------------------------------------

def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 for x [N, D], y [M, D]: [N, M]. |x|^2 + |y|^2 - 2 x.y, one matmul, never
    a [N, M, D] tensor; the rounding that can take it below zero is clamped. In float32 (or
    float64) even under autocast: the difference cancels, and bf16's 8 bits would not survive it."""
    x, y = (t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in (x, y))
    with torch.autocast(x.device.type, enabled=False):
        sq = (x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2 * x @ y.T
    return sq.clamp_min(0)


def imq_kernel(d2: torch.Tensor, c: float) -> torch.Tensor:
    """The inverse multiquadratic kernel C / (C + ||x - y||^2) (Tolstikhin et al. 2018)."""
    return c / (c + d2)


def gaussian_kernel(d2: torch.Tensor, c: float) -> torch.Tensor:
    """The Gaussian kernel exp(-||x - y||^2 / C), C = 2 h^2 for a bandwidth h."""
    return torch.exp(-d2 / c)


MMD_KERNELS = {"imq": imq_kernel, "gaussian": gaussian_kernel}


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "imq", scales=(1.0,), prior_var: float = 1.0) -> torch.Tensor:
    """The unbiased U-statistic of MMD^2 between samples x [N, D] and y [M, D] (N, M >= 2),
    summed over the kernel's scales s with C = 2 D prior_var s (the WAE paper's C = 2 d
    sigma_z^2 at s = 1, the expected ||y - y'||^2 of two draws of N(0, prior_var I)):

        1/(N(N-1)) sum_{i != j} k(x_i, x_j) + 1/(M(M-1)) sum_{i != j} k(y_i, y_j) - 2/(NM) sum_{i,j} k(x_i, y_j)

    (Algorithm 2 of Tolstikhin et al. 2018). Its expectation is the population MMD^2, zero
    when x and y come from one distribution, so a single estimate can be negative. A scalar.
    """
    n, m, d = len(x), len(y), x.shape[-1]
    k = MMD_KERNELS[kernel]
    dxx, dyy, dxy = squared_distances(x, x), squared_distances(y, y), squared_distances(x, y)
    total = x.new_zeros(())
    off_diagonal = lambda t: t.sum() - t.diagonal().sum()  # noqa: E731
    for s in scales:
        c = 2.0 * d * prior_var * s
        kxx, kyy = off_diagonal(k(dxx, c)), off_diagonal(k(dyy, c))
        total = total + kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * k(dxy, c).sum() / (n * m)
    return total
