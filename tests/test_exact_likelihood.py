"""The importance-sampled NLL against an exact likelihood, and the dequantized bound against
the exact discrete likelihood it bounds.

A VAE with a one-dimensional latent on 2x2 images has log p(x) = log integral p(x|z) N(z; 0, 1) dz,
which a fine grid over z computes to far better than the tolerance used here; the estimator
under test is the one `vaelab eval` runs (the model's own encoder as the proposal)."""
import math

import pytest
import torch

from vaelab.evaluation.likelihood import log_likelihood_is
from vaelab.models.vae import VAE, VAEConfig

GRID = torch.linspace(-12, 12, 24001, dtype=torch.float64)  # z, step 1e-3


def _model(likelihood: str, **kw) -> VAE:
    torch.manual_seed(0)
    cfg = VAEConfig(shape=(1, 2, 2), hidden=(8,), latent_dim=1, likelihood=likelihood, **kw)
    model = VAE(cfg).double().eval()
    if hasattr(model, "log_scale"):  # a learned per-pixel std, away from its initial 1
        with torch.no_grad():
            model.log_scale.copy_(torch.tensor([[[-0.5, -1.0], [-1.5, -0.7]]]))
    return model


@torch.no_grad()
def exact_log_px(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log sum_z p(x|z) N(z) dz on the grid: [B]."""
    z = GRID[:, None, None]                      # [G, 1, 1]
    log_pxz = model.decode(z).log_prob(x)        # [G, B]
    log_pz = -0.5 * (GRID ** 2 + math.log(2 * math.pi))
    dz = (GRID[1] - GRID[0]).item()
    return torch.logsumexp(log_pxz + log_pz[:, None], 0) + math.log(dz)


@pytest.mark.parametrize("likelihood,data", [
    ("bernoulli", "binary"), ("gaussian", "unit"), ("logistic", "levels"), ("logistic-mixture", "levels")])
def test_is_nll_matches_the_exact_likelihood(likelihood, data):
    model = _model(likelihood, **({"mixtures": 3} if likelihood == "logistic-mixture" else {}))
    g = torch.Generator().manual_seed(1)
    u = torch.rand(6, 1, 2, 2, generator=g, dtype=torch.float64)
    x = {"binary": (u < 0.5).double(), "unit": u, "levels": (u * 255).round() / 255}[data]
    exact = exact_log_px(model, x)
    torch.manual_seed(2)
    estimate, elbo = log_likelihood_is(model, x, 50000)
    assert torch.allclose(estimate, exact, atol=0.05), (estimate, exact)
    assert (elbo <= exact + 1e-9).all()  # the mean log-weight is a lower bound


def test_dequantized_gaussian_bound_is_above_the_exact_discrete_nll():
    """-log P(k) <= E_u[-log p((k + u) / L)] + D log L (Theis et al. 2016), with P(k) the mass
    the same Gaussian model gives the bin [k / L, (k + 1) / L) of each pixel, both exact. Few
    levels, so the bins are wide against the model's scale and the gap is far above the Monte
    Carlo error of the expectation over u."""
    levels = 4
    model = _model("gaussian")
    g = torch.Generator().manual_seed(3)
    k = torch.randint(0, levels, (4, 1, 2, 2), generator=g).double()
    with torch.no_grad():  # exact discrete: integral over z of the product of each pixel's bin mass
        p = model.decode(GRID[:, None, None])
        normal = torch.distributions.Normal(p.mean, p.scale if hasattr(p, "scale") else p.log_scale.exp())
        mass = (normal.cdf((k + 1) / levels) - normal.cdf(k / levels)).clamp_min(1e-300)  # [G, B, 1, 2, 2]
        log_pz = -0.5 * (GRID ** 2 + math.log(2 * math.pi))
        dz = (GRID[1] - GRID[0]).item()
        exact_discrete = torch.logsumexp(mass.log().flatten(2).sum(-1) + log_pz[:, None], 0) + math.log(dz)
    draws = [exact_log_px(model, (k + torch.rand(k.shape, generator=g, dtype=torch.float64)) / levels)
             for _ in range(400)]
    dequantized_bound = torch.stack(draws).mean(0) - 4 * math.log(levels)  # log-density + ... <= log P
    assert (dequantized_bound <= exact_discrete).all()
    gap = exact_discrete - dequantized_bound
    assert (gap > 0.01).all() and (gap < 5).all(), gap  # a strict bound, and not a vacuous one
