"""The terms WAE-MMD, InfoVAE and beta-TCVAE add to the autoencoder and the VAE, each against an
independent computation: the MMD U-statistic against a NumPy double loop, a closed form for one
sample set against itself and the Gaussian kernel's population MMD between two Gaussians; the
minibatch-weighted log q(z) against torch.distributions mixtures; a factorised aggregate's total
correlation; and each model's loss rebuilt from torch.distributions with the same random draws."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, MixtureSameFamily, Normal, kl_divergence

import vaelab
from vaelab.data import Batch
from vaelab.distributions import DiagonalGaussian
from vaelab.errors import VaelabError
from vaelab.losses import elbo, mmd
from vaelab.models import MODELS
from vaelab.models.btcvae import mws_log_q

SHAPE = (1, 4, 4)


def _model(name, **over):
    cls = MODELS[name]
    torch.manual_seed(0)
    return cls(dataclasses.replace(cls.config_cls(), shape=SHAPE, hidden=(8,), latent_dim=3, **over))


def _binary_batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, *SHAPE), 0.5), generator=g)


# ---- the MMD estimator --------------------------------------------------------------------

def _mmd_loop(x, y, kernel, scales):
    """MMD^2's U-statistic by explicit loops over the pairs (NumPy, float64)."""
    n, m, d = len(x), len(y), x.shape[1]
    total = 0.0
    for s in scales:
        c = 2 * d * s
        k = (lambda a, b: c / (c + np.sum((a - b) ** 2))) if kernel == "imq" else \
            (lambda a, b: np.exp(-np.sum((a - b) ** 2) / c))
        xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
        total += xx + yy - 2 * xy
    return total


@pytest.mark.parametrize("kernel,scales", [("imq", (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)), ("imq", (1.0,)),
                                           ("gaussian", (1.0,)), ("gaussian", (0.5, 3.0))])
def test_mmd_matches_a_double_loop(kernel, scales):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.7, 1.3, size=(5, 3))  # unequal sizes and laws
    got = mmd(torch.from_numpy(x), torch.from_numpy(y), kernel, scales).item()
    assert got == pytest.approx(_mmd_loop(x, y, kernel, scales), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("kernel", ["imq", "gaussian"])
def test_mmd_of_two_points_against_themselves_is_k_minus_one(kernel):
    # X = Y = {a, b}: (k(a,b) + k(b,a))/2 twice, minus 2/4 (k(a,a) + k(b,b) + 2 k(a,b)) = k(a,b) - 1,
    # below zero as an unbiased estimate of 0 may be. |a - b|^2 = 25, C = 2 d = 4.
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    k = 4 / (4 + 25) if kernel == "imq" else math.exp(-25 / 4)
    assert mmd(x, x.clone(), kernel).item() == pytest.approx(k - 1, rel=1e-12)


def test_mmd_is_unbiased_for_one_law_and_matches_the_gaussian_kernels_closed_form_for_two():
    # population MMD^2 with k = exp(-|x-y|^2/C) between N(0, I) and N(mu, I) in D dims:
    # 2 (1 + 4/C)^(-D/2) (1 - exp(-|mu|^2 / (C + 4))), since x - x' ~ N(0, 2I) and x - y ~ N(-mu, 2I)
    g = torch.Generator().manual_seed(0)
    d, n, reps, mu = 4, 40, 400, torch.tensor([0.6, 0.0, -0.3, 0.0], dtype=torch.float64)
    c = 2.0 * d
    expected = 2 * (1 + 4 / c) ** (-d / 2) * (1 - math.exp(-(mu ** 2).sum().item() / (c + 4)))
    draw = lambda: torch.randn(n, d, generator=g, dtype=torch.float64)  # noqa: E731
    for kernel in ("gaussian", "imq"):
        same = torch.stack([mmd(draw(), draw(), kernel) for _ in range(reps)])
        shifted = torch.stack([mmd(draw(), draw() + mu, kernel) for _ in range(reps)])
        se_same, se_shift = same.std() / reps ** 0.5, shifted.std() / reps ** 0.5
        assert abs(same.mean()) < 4 * se_same, kernel
        assert shifted.mean() > 8 * se_shift, kernel
        if kernel == "gaussian":
            assert abs(shifted.mean() - expected) < 4 * se_shift


# ---- WAE and InfoVAE: the loss rebuilt with the same draws ---------------------------------

def test_wae_loss_is_squared_error_plus_lambda_mmd_of_codes_and_prior_draws():
    model = _model("wae", lam=7.0).train()
    x = torch.rand(6, *SHAPE)
    torch.manual_seed(5)
    loss, metrics = model.objective(x)
    torch.manual_seed(5)
    prior = torch.randn(6, 3)  # the draw the objective makes once the deterministic codes are in
    with torch.no_grad():
        z = model.encoder(x)
        sse = ((model.decoder(z) - x) ** 2).flatten(1).sum(1).mean()
    ref = _mmd_loop(z.double().numpy(), prior.double().numpy(), "imq", (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))
    assert metrics["mmd"].item() == pytest.approx(ref, rel=1e-4, abs=1e-6)
    assert loss.item() == pytest.approx(sse.item() + 7.0 * ref, rel=1e-5)


def test_wae_samples_are_the_decoder_of_prior_draws():
    model = _model("wae").eval()
    torch.manual_seed(3)
    samples = model.sample(4)
    torch.manual_seed(3)
    assert torch.equal(samples, model.decoder(torch.randn(4, 3)).detach())


@pytest.mark.parametrize("alpha,lam", [(1.0, 1000.0), (0.25, 10.0)])
def test_infovae_loss_is_nll_plus_weighted_kl_and_mmd(alpha, lam):
    model = _model("infovae", alpha=alpha, lam=lam, kernel_scales=(0.5, 2.0)).train()
    x = _binary_batch()
    torch.manual_seed(5)
    loss, metrics = model.objective(x)
    torch.manual_seed(5)
    eps, prior = torch.randn(6, 3), torch.randn(6, 3)  # q's reparameterisation, then the prior's draws
    with torch.no_grad():
        mu, logvar = model.encoder(x).chunk(2, -1)
        q = Normal(mu, (0.5 * logvar).exp())
        z = mu + q.scale * eps
        nll = -Bernoulli(logits=model.decoder(z)).log_prob(x).flatten(1).sum(1)
        kl = kl_divergence(q, Normal(0.0, 1.0)).sum(1)
    ref = _mmd_loop(z.double().numpy(), prior.double().numpy(), "gaussian", (0.5, 2.0))
    assert metrics["mmd"].item() == pytest.approx(ref, rel=1e-4, abs=1e-6)
    expected = (nll + (1 - alpha) * kl).mean().item() + (alpha + lam - 1) * ref
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(5)
    with torch.no_grad():
        per_example = model.validation(Batch(x))
    torch.testing.assert_close(per_example, nll + (1 - alpha) * kl, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("over,flag", [(dict(model="infovae", alpha=1.5), "--alpha"),
                                       (dict(model="infovae", alpha=0.0, lam=0.5), "--lam"),
                                       (dict(model="wae", kernel_scales=()), "--kernel-scales"),
                                       (dict(model="wae", lam=-1.0), "--lam"),
                                       (dict(model="wae", code_activation="sigmoid"), "--code-activation"),
                                       (dict(model="infovae", batch_size=1), "--batch-size"),
                                       (dict(model="btcvae", beta=-1.0), "--beta")])
def test_bad_settings_are_refused_naming_the_flag(over, flag):
    with pytest.raises(VaelabError, match=flag):
        vaelab.make_config(data="digits", **over)


def test_kernel_scales_flag_takes_floats():
    cfg = vaelab.make_config(model="wae", data="digits", kernel_scales="0.5, 2")
    assert cfg.model.kernel_scales == (0.5, 2.0)
    with pytest.raises(VaelabError, match="positive numbers"):
        vaelab.make_config(model="wae", data="digits", kernel_scales="1,0")


# ---- beta-TCVAE: minibatch-weighted sampling ------------------------------------------------

def _mixture_log_q(mu, std, z, log_norm):
    """Reference: log(1/norm sum_j q(z_i | j)) and sum_d of the same per dimension, by loops
    over torch.distributions.Normal."""
    joint, marg = [], []
    for zi in z:
        lp = torch.stack([Normal(mu[j], std[j]).log_prob(zi) for j in range(len(mu))])  # [M, D]
        joint.append(torch.logsumexp(lp.sum(1), 0) - log_norm)
        marg.append((torch.logsumexp(lp, 0) - log_norm).sum())
    return torch.stack(joint), torch.stack(marg)


def test_mws_log_q_matches_a_loop_over_normal_densities():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    z = mu + torch.randn(5, 3, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()
    log_qz, log_prod = mws_log_q(DiagonalGaussian(mu, logvar), z, dataset_size=1000)
    ref_joint, ref_marg = _mixture_log_q(mu, (0.5 * logvar).exp(), z, math.log(1000 * 5))
    torch.testing.assert_close(log_qz, ref_joint, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_prod, ref_marg, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["grid", "diagonal"])
def test_total_correlation_of_a_factorised_aggregate_is_zero(layout):
    # 16 posteriors with a different std per dim. On a 4 x 4 grid of means the aggregate is the
    # product of its marginals, so its TC is 0 at every z; with the same means paired along the
    # diagonal it is not (the control). With the minibatch = the whole data set (M = N), MWS's
    # estimate is the exact TC plus its constant (D - 1) log N, checked against mixtures.
    a, b = torch.tensor([-2.0, -0.5, 0.3, 1.7]), torch.tensor([-1.0, 0.0, 1.5, 2.5])
    if layout == "grid":
        mu = torch.cartesian_prod(a, b)
    else:
        mu = torch.stack([a.repeat_interleave(4), b.repeat_interleave(4)], 1)
    mu, std = mu.double(), torch.tensor([0.6, 0.9], dtype=torch.float64).expand(16, 2)
    # 256 draws of the aggregate, 16 of each posterior (TC is an expectation under q(z))
    z = mu.repeat(16, 1) + std.repeat(16, 1) * torch.randn(256, 2, generator=torch.Generator().manual_seed(2),
                                                           dtype=torch.float64)
    log_qz, log_prod = mws_log_q(DiagonalGaussian(mu, 2 * std.log()), z, dataset_size=16)
    tc = log_qz - log_prod - math.log(16)  # (D - 1) log N, D = 2

    weights = Categorical(logits=torch.zeros(16, dtype=torch.float64))
    exact_joint = MixtureSameFamily(weights, Independent(Normal(mu, std), 1)).log_prob(z)
    exact_marg = sum(MixtureSameFamily(weights, Normal(mu[:, d], std[:, d])).log_prob(z[:, d]) for d in range(2))
    torch.testing.assert_close(tc, exact_joint - exact_marg, rtol=1e-10, atol=1e-10)
    if layout == "grid":
        torch.testing.assert_close(tc, torch.zeros(256, dtype=torch.float64), rtol=0, atol=1e-10)
    else:
        assert tc.mean() > 0.3  # a dependent aggregate: clearly not 0


def _btcvae_reference(model, x, dataset_size):
    """log p(x|z), log q(z|x), log p(z) and MWS's MI, TC, dimKL with the draw the model's
    forward makes (after torch.manual_seed(5)), all from torch.distributions and loops."""
    torch.manual_seed(5)
    eps = torch.randn(len(x), 3)
    with torch.no_grad():
        mu, logvar = model.encoder(x).chunk(2, -1)
        std = (0.5 * logvar).exp()
        z = mu + std * eps
        log_px = Bernoulli(logits=model.decoder(z)).log_prob(x).flatten(1).sum(1)
        log_qzx, log_pz = Normal(mu, std).log_prob(z).sum(1), Normal(0.0, 1.0).log_prob(z).sum(1)
        log_qz, log_prod = _mixture_log_q(mu, std, z, math.log(dataset_size * len(x)))
    return log_px, log_qzx, log_pz, log_qzx - log_qz, log_qz - log_prod, log_prod - log_pz, mu, logvar


def test_btcvae_with_unit_weights_is_the_monte_carlo_elbo_and_its_terms_sum_to_the_kl_sample():
    model = _model("btcvae", beta=1.0).train()
    x = _binary_batch()
    torch.manual_seed(5)
    loss, metrics = model.objective(x, 500)
    log_px, log_qzx, log_pz, mi, tc, dimkl, *_ = _btcvae_reference(model, x, 500)
    assert loss.item() == pytest.approx(-(log_px + log_pz - log_qzx).mean().item(), rel=1e-5)
    # the decomposition's exact identity, whatever the estimate of log q(z)
    torch.testing.assert_close(mi + tc + dimkl, log_qzx - log_pz, rtol=1e-5, atol=1e-5)
    for name, ref in (("mi", mi), ("tc", tc), ("dimkl", dimkl)):
        assert metrics[name].item() == pytest.approx(ref.mean().item(), rel=1e-4, abs=1e-4), name


def test_btcvae_weighs_each_term_by_its_own_coefficient():
    x = _binary_batch()
    model = _model("btcvae", alpha=2.0, beta=6.0, gamma=0.5).train()
    torch.manual_seed(5)
    loss, _ = model.objective(x, 500)
    log_px, _, _, mi, tc, dimkl, *_ = _btcvae_reference(model, x, 500)
    expected = (-log_px + 2.0 * mi + 6.0 * tc + 0.5 * dimkl).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_btcvae_with_unit_weights_is_the_vae_loss_in_expectation():
    # same draws for both: the per-draw difference is mean(log q(z|x) - log p(z) - KL), whose
    # expectation over z ~ q(z|x) is 0 (the closed-form KL is that expectation)
    model = _model("btcvae", beta=1.0).train()
    x = _binary_batch()
    diffs = []
    with torch.no_grad():
        for seed in range(300):
            torch.manual_seed(seed)
            loss, _ = model.objective(x, 500)
            torch.manual_seed(seed)
            diffs.append(loss - elbo(model(x), x).loss)
    diffs = torch.stack(diffs)
    assert diffs.std() > 0  # the two differ draw by draw ...
    assert abs(diffs.mean()) < 4 * diffs.std() / len(diffs) ** 0.5  # ... and agree on average
