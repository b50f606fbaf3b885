"""8-bit likelihoods: the discretized logistic (and its mixture) against closed forms in
float64, normalisation over the 256 bins, sampling, and the VAE that uses them end to end."""
import math

import numpy as np
import pytest
import torch
from scipy.special import expit, logsumexp

import vaelab
from vaelab.distributed import block_seed
from vaelab.distributions import DiscretizedLogistic
from vaelab.evaluation.likelihood import NLL_BLOCK
from vaelab.models.vae import VAE, VAEConfig

L = 256
BINS = torch.arange(L, dtype=torch.float32) / (L - 1)


def _masses(loc, log_scale, levels=L):
    """float64 masses of every bin for scalar loc / log_scale: CDF differences with the tails
    (above loc as differences of the survival function, which keeps them exact in the tail)."""
    c = np.arange(levels) / (levels - 1)
    h = 0.5 / (levels - 1)
    s = math.exp(max(log_scale, DiscretizedLogistic.MIN_LOG_SCALE))
    upper = np.where(c > 1 - h, np.inf, (c + h - loc) / s)
    lower = np.where(c < h, -np.inf, (c - h - loc) / s)
    return np.where(c > loc, expit(-lower) - expit(-upper), expit(upper) - expit(lower))


@pytest.mark.parametrize("loc, log_scale", [(0.5, -3.0), (0.0, -5.0), (1.0, -2.0), (0.37, -7.0), (-0.4, 0.5),
                                            (1.3, -1.0), (0.2, -9.0), (0.8, 3.0)])
def test_logistic_masses_match_the_cdf_and_sum_to_one(loc, log_scale):
    d = DiscretizedLogistic(torch.full((L,), loc), torch.full((L,), log_scale), 0, L)
    lp = d.log_prob(BINS).double()
    want = _masses(loc, log_scale)
    assert torch.logsumexp(lp, 0).exp().item() == pytest.approx(1.0, abs=1e-5)
    big = want > 1e-30  # where float64 itself still resolves the mass
    np.testing.assert_allclose(lp.numpy()[big], np.log(want[big]), rtol=1e-4, atol=1e-4)
    assert torch.isfinite(lp).all()  # even where the mass underflows float64's difference


def test_sharp_logistic_keeps_its_bin_exactly():
    # at the smallest scale (log s = -7, the floor) the bin holding loc has mass
    # sigma(h/s) - sigma(-h/s) = tanh(h / 2s), and every other bin a finite log-mass (not
    # -inf from 1 - 1 in float32), falling off symmetrically
    loc, h, s = 100 / 255, 0.5 / 255, math.exp(-7)
    d = DiscretizedLogistic(torch.full((L,), loc), torch.full((L,), -9.0), 0, L)  # clamped to -7
    lp = d.log_prob(BINS)
    assert lp[100].item() == pytest.approx(math.log(math.tanh(h / (2 * s))), rel=1e-5)
    assert torch.isfinite(lp).all() and lp[99].item() == pytest.approx(lp[101].item(), rel=1e-4)
    assert lp[255] < -200


def test_mixture_is_the_weighted_sum_of_component_masses():
    rng = np.random.default_rng(0)
    m = 4
    loc, log_scale, w = rng.uniform(-0.1, 1.1, m), rng.uniform(-6, 0, m), rng.normal(size=m)
    d = DiscretizedLogistic(*(torch.tensor(v, dtype=torch.float32).view(1, m, 1).expand(L, m, 1)
                              for v in (loc, log_scale)), 1, L,
                            torch.tensor(w, dtype=torch.float32).view(1, m, 1).expand(L, m, 1))
    lp = d.log_prob(BINS.view(L, 1)).double().numpy()
    logw = w - logsumexp(w)
    comp = np.stack([_masses(loc[i], log_scale[i]) for i in range(m)])  # [m, L]
    want = logsumexp(logw[:, None] + np.log(np.maximum(comp, 1e-300)), axis=0)
    np.testing.assert_allclose(lp, want, rtol=1e-4, atol=1e-4)
    assert np.exp(logsumexp(lp)) == pytest.approx(1.0, abs=1e-5)


def test_event_dims_sum_and_leading_dims_pass_through():
    loc, ls = torch.rand(2, 3, 3, 4, 4), torch.rand(2, 3, 3, 4, 4) - 3
    x = torch.randint(0, L, (3, 3, 4, 4)) / (L - 1)
    d = DiscretizedLogistic(loc, ls, 3, L)
    lp = d.log_prob(x)
    assert lp.shape == (2, 3)
    per = DiscretizedLogistic(loc, ls, 0, L).log_prob(x)
    torch.testing.assert_close(lp, per.sum((-1, -2, -3)))


def test_samples_land_on_bins_with_the_right_frequencies():
    torch.manual_seed(0)
    n = 200_000
    d = DiscretizedLogistic(torch.full((n,), 0.3), torch.full((n,), -3.0), 0, L)
    s = d.sample()
    k = (s * (L - 1)).round()
    assert torch.equal(k / (L - 1), s)  # on the bins
    freq = torch.bincount(k.long(), minlength=L).double() / n
    p = torch.from_numpy(_masses(0.3, -3.0))
    assert (freq - p).abs().max() < 5 * math.sqrt(p.max() / n)
    # a mixture samples its components in proportion to their weights
    m = DiscretizedLogistic(torch.tensor([0.1, 0.9]).view(1, 2).expand(n, 2), torch.full((n, 2), -6.0), 0, L,
                            torch.log(torch.tensor([0.25, 0.75])).view(1, 2).expand(n, 2))
    # (event_ndim 0 puts the component dim last)
    assert (m.sample() > 0.5).double().mean().item() == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("likelihood", ["logistic", "logistic-mixture"])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_vae_with_a_discretized_likelihood(likelihood, arch):
    cfg = VAEConfig(shape=(3, 8, 8), arch=arch, likelihood=likelihood, mixtures=3, hidden=(16,),
                    channels=(4, 4, 8, 8), latent_dim=4)
    model = VAE(cfg)
    x = torch.randint(0, L, (5, 3, 8, 8)) / (L - 1)
    lw = model.log_weights(x, 6)
    assert lw.shape == (6, 5) and torch.isfinite(lw).all()
    s = model.sample(4)
    assert s.shape == (4, 3, 8, 8) and (s >= 0).all() and (s <= 1).all()
    # the decoder's distribution normalises over the bins of every sub-pixel, a mixture too: the
    # same parameters with event_ndim 0 (a mixture's component dim then goes last) score each
    # sub-pixel alone, and summed over the image they give the model's own log-probability
    z = torch.randn(1, 4)
    p = model.decode(z)
    assert (p.logit_weights is None) == (likelihood == "logistic")
    params = [p.loc, p.log_scale] + ([] if p.logit_weights is None else [p.logit_weights])
    if p.logit_weights is not None:
        params = [t.movedim(-1 - p.event_ndim, -1) for t in params]  # [1, M, 3, 8, 8] -> [1, 3, 8, 8, M]
    per_pixel = DiscretizedLogistic(params[0], params[1], 0, L, *params[2:])
    x1 = x[:1]
    torch.testing.assert_close(per_pixel.log_prob(x1).sum((-3, -2, -1)), p.log_prob(x1))
    grid = BINS.view(L, 1, 1, 1, 1).expand(L, 1, 3, 8, 8)
    total = torch.logsumexp(per_pixel.log_prob(grid), 0).exp()  # [1, 3, 8, 8]
    torch.testing.assert_close(total, torch.ones_like(total), atol=1e-4, rtol=0)


def _log_mass(p: DiscretizedLogistic, x: torch.Tensor) -> torch.Tensor:
    """log P(x) summed over the image, in float64 from CDF differences (as :func:`_masses`, the
    survival side above loc), independently of the library's log-space form: [...]."""
    levels, d = p.levels, -1 - p.event_ndim
    c = x.double().unsqueeze(d).numpy() if p.logit_weights is not None else x.double().numpy()
    loc, s = p.loc.double().numpy(), np.exp(np.maximum(p.log_scale.double().numpy(), p.MIN_LOG_SCALE))
    h = 0.5 / (levels - 1)
    upper = np.where(c > 1 - h, np.inf, (c + h - loc) / s)
    lower = np.where(c < h, -np.inf, (c - h - loc) / s)
    mass = np.where(c > loc, expit(-lower) - expit(-upper), expit(upper) - expit(lower))
    if p.logit_weights is not None:  # the mixture of the components' masses
        w = torch.softmax(p.logit_weights.double(), d).numpy()
        mass = (w * mass).sum(d)
    return torch.from_numpy(np.log(mass)).sum((-3, -2, -1))


def test_discretized_run_reports_bits_per_dim(tmp_path):
    run = vaelab.train(vaelab.make_config(data="digits", likelihood="logistic-mixture", mixtures=2, binarize="none",
                                          hidden=(32,), latent_dim=2, epochs=2, batch_size=64, nll_samples=5,
                                          progress=False, out=str(tmp_path / "r")), log=lambda m: None)
    res = vaelab.evaluate(run, k=5, sample_metrics=False, device="cpu", seed=3)
    # the same estimate recomputed here from the same draws (evaluate seeds the importance samples
    # of each block of NLL_BLOCK images with block_seed, then the block's z ~ q(z|x) draws from the
    # RNG): log-weights in float64 from
    # torch's normals and the bins' masses, logsumexp minus log K, and bits/dim from its definition
    model = vaelab.load(run, device="cpu")
    x = vaelab.api.split_inputs(run)[0]
    levels = model.data_spec.levels
    assert levels == 17 and ((x * (levels - 1)).round() == x * (levels - 1)).all()  # on the data's bins
    log_px = []
    with torch.no_grad():
        for b, xb in enumerate(x.split(NLL_BLOCK)):
            torch.manual_seed(block_seed(3, b))
            q = model.encode(xb)
            z = q.mu + q.std * torch.randn(5, *q.mu.shape)  # [K, B, 2]
            p = model.decode(z)
            assert p.levels == levels
            normal = lambda m, sd: torch.distributions.Normal(m.double(), sd.double())  # noqa: E731
            lw = (_log_mass(p, xb) + normal(torch.zeros(()), torch.ones(())).log_prob(z.double()).sum(-1)
                  - normal(q.mu, q.std).log_prob(z.double()).sum(-1))  # [K, B]
            log_px.append(torch.logsumexp(lw, 0) - math.log(5))
    nll = -torch.cat(log_px).mean().item()
    assert res["nll"] == pytest.approx(nll, rel=1e-5) and res["nll"] > 0  # float32 log-weights in vaelab
    assert res["bpd"] == pytest.approx(nll / (64 * math.log(2)), rel=1e-5)
    # a discrete likelihood on 17 levels: the code length is a positive number of bits/dim
    assert 0 < res["bpd"] < 20
    with pytest.raises(vaelab.VaelabError, match="--binarize none"):  # binarized pixels are not grey levels
        vaelab.make_config(data="digits", likelihood="logistic", binarize="dynamic")
    # left unset, --binarize follows the likelihood of grey levels
    assert vaelab.make_config(data="digits", likelihood="logistic").model.settled()[0].binarize == "none"
