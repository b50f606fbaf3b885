"""The library's formulas against independent references (torch.distributions, scipy, closed
forms of a linear-Gaussian model). Shapes are small; every random quantity has a fixed seed
(conftest seeds torch with 0 before each test) and every Monte-Carlo tolerance is stated."""
from __future__ import annotations

import importlib
import math

import pytest
import torch
from scipy.special import logsumexp as scipy_logsumexp
from torch import distributions as td

import vaelab
from vaelab.data import Batch
from vaelab.config import TrainConfig
from vaelab.distributions import Bernoulli, DiagonalGaussian, Gaussian, standard_normal_log_prob
from vaelab.losses import elbo, iwae_bound, log_mean_exp
from vaelab.models.base import StepInfo
from vaelab.models.vae import VAE, VAEConfig
from vaelab.training.trainer import learning_rate

# The package re-exports the api function ``evaluate`` under the submodule's name, so
ev = importlib.import_module("vaelab.evaluation.likelihood")


def _close(a, b, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def _ref_diag(mu, logvar):
    return td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)


def _tiny_vae(likelihood="bernoulli", shape=(1, 2, 3), seed=0, **kw) -> VAE:
    torch.manual_seed(seed)
    cfg = VAEConfig(shape=shape, arch="mlp", hidden=(8,), latent_dim=2, likelihood=likelihood, **kw)
    return VAE(cfg).eval()


# --------------------------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------------------------

def test_kl_to_standard_normal_matches_torch():
    mu, logvar = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    ref = td.kl_divergence(_ref_diag(mu, logvar),
                           td.Independent(td.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1))
    got = DiagonalGaussian(mu, logvar).kl_to_standard_normal()
    assert got.shape == (5,)
    _close(got, ref, atol=1e-12, rtol=1e-12)
    # KL of the prior to itself is 0
    _close(DiagonalGaussian(torch.zeros(2, 3), torch.zeros(2, 3)).kl_to_standard_normal(), torch.zeros(2))


def test_diagonal_gaussian_log_prob_matches_torch_on_batch_and_samples():
    mu, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    q, ref = DiagonalGaussian(mu, logvar), _ref_diag(mu, logvar)
    z = torch.randn(4, 3, dtype=torch.float64)
    assert q.log_prob(z).shape == (4,)
    _close(q.log_prob(z), ref.log_prob(z), atol=1e-12, rtol=1e-12)
    zk = torch.randn(7, 4, 3, dtype=torch.float64)  # [K, B, D]
    assert q.log_prob(zk).shape == (7, 4)
    _close(q.log_prob(zk), ref.log_prob(zk), atol=1e-12, rtol=1e-12)


def test_rsample_moments_and_shapes():
    mu = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, math.log(4.0), math.log(0.01)]], dtype=torch.float64)
    q = DiagonalGaussian(mu, logvar)
    assert q.rsample().shape == (1, 3)
    n = 200_000
    z = q.rsample(n)
    assert z.shape == (n, 1, 3)
    std = torch.exp(0.5 * logvar)
    # sample mean within 5 standard errors, sample std within 1% (its s.e. is ~0.16%)
    assert ((z.mean(0) - mu).abs() <= 5 * std / math.sqrt(n)).all()
    _close(z.std(0), std, atol=0, rtol=0.01)


def test_rsample_is_reparameterised():
    mu = torch.randn(2, 3, requires_grad=True)
    logvar = torch.randn(2, 3, requires_grad=True)
    z = DiagonalGaussian(mu, logvar).rsample(5)  # [5, 2, 3]
    (z * 2.0).sum().backward()
    # z = mu + exp(logvar / 2) * eps: dz/dmu = 1, dz/dlogvar = (z - mu) / 2
    _close(mu.grad, torch.full((2, 3), 10.0))
    _close(logvar.grad, (2.0 * 0.5 * (z - mu)).detach().sum(0))
    assert logvar.grad.abs().sum() > 0


def test_standard_normal_log_prob_matches_torch():
    z = torch.randn(6, 4, 3, dtype=torch.float64)
    ref = td.Independent(td.Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    got = standard_normal_log_prob(z)
    assert got.shape == (6, 4)
    _close(got, ref.log_prob(z), atol=1e-12, rtol=1e-12)


def _bernoulli_ref(logits, x, event_ndim):
    lp = td.Bernoulli(logits=logits).log_prob(x.expand_as(logits))
    return lp.sum(dim=tuple(range(-event_ndim, 0)))


def test_bernoulli_log_prob_event3_matches_torch():
    logits = 3 * torch.randn(4, 2, 3, 5, dtype=torch.float64)
    x = torch.bernoulli(torch.full((4, 2, 3, 5), 0.5, dtype=torch.float64))
    got = Bernoulli(logits, 3).log_prob(x)
    assert got.shape == (4,)
    _close(got, _bernoulli_ref(logits, x, 3), atol=1e-10, rtol=1e-10)
    # and against the hand formula x*l - log(1 + e^l)
    _close(got, (x * logits - torch.log1p(torch.exp(logits))).sum((1, 2, 3)), atol=1e-10, rtol=1e-10)


def test_bernoulli_log_prob_with_leading_sample_dim():
    logits = torch.randn(6, 4, 1, 3, 3, dtype=torch.float64)  # [K, B, C, H, W]
    x = torch.bernoulli(torch.full((4, 1, 3, 3), 0.3, dtype=torch.float64))  # [B, C, H, W]
    got = Bernoulli(logits, 3).log_prob(x)
    assert got.shape == (6, 4)
    _close(got, _bernoulli_ref(logits, x, 3), atol=1e-10, rtol=1e-10)
    # each sample k is the same as the unbatched computation
    for k in range(6):
        _close(got[k], Bernoulli(logits[k], 3).log_prob(x), atol=1e-12, rtol=1e-12)


def test_bernoulli_log_prob_extreme_logits_finite():
    logits = torch.tensor([[[[50.0, -50.0, 50.0, -50.0]]]])
    x = torch.tensor([[[[1.0, 0.0, 0.0, 1.0]]]])
    got = Bernoulli(logits, 3).log_prob(x)
    assert torch.isfinite(got).all()
    # log sigmoid(50) ~ -2e-22, log sigmoid(-50) = -50: two right, two wrong by 50 nats each
    _close(got, torch.tensor([-100.0]), atol=1e-4, rtol=0)
    # a gradient through it is finite as well
    logits.requires_grad_(True)
    Bernoulli(logits, 3).log_prob(x).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_gaussian_log_prob_scalar_scale_matches_torch():
    loc = torch.randn(3, 1, 2, 4, dtype=torch.float64)
    x = torch.randn(3, 1, 2, 4, dtype=torch.float64)
    log_scale = torch.tensor(math.log(0.3), dtype=torch.float64)
    got = Gaussian(loc, log_scale, 3).log_prob(x)
    ref = td.Normal(loc, torch.exp(log_scale)).log_prob(x).sum((1, 2, 3))
    assert got.shape == (3,)
    _close(got, ref, atol=1e-10, rtol=1e-10)


def test_gaussian_log_prob_per_pixel_scale_with_samples():
    loc = torch.randn(5, 3, 2, 2, 3, dtype=torch.float64)  # [K, B, C, H, W]
    x = torch.randn(3, 2, 2, 3, dtype=torch.float64)
    log_scale = 0.5 * torch.randn(2, 2, 3, dtype=torch.float64)  # per pixel
    got = Gaussian(loc, log_scale, 3).log_prob(x)
    ref = td.Normal(loc, torch.exp(log_scale)).log_prob(x.expand_as(loc)).sum((-3, -2, -1))
    assert got.shape == (5, 3)
    _close(got, ref, atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_elbo_terms_on_real_vae_output(beta):
    model = _tiny_vae(shape=(1, 3, 3))
    x = torch.bernoulli(torch.full((5, 1, 3, 3), 0.5))
    out = model(x)
    t = elbo(out, x, beta=beta)
    ref_log_px = td.Bernoulli(logits=out.likelihood.logits).log_prob(x).sum((1, 2, 3))
    q = out.posterior
    ref_kl = td.kl_divergence(_ref_diag(q.mu, q.logvar),
                              td.Independent(td.Normal(torch.zeros_like(q.mu), torch.ones_like(q.mu)), 1))
    for v in (t.log_px, t.kl, t.elbo):
        assert v.shape == (5,)
    _close(t.log_px, ref_log_px)
    _close(t.kl, ref_kl)
    assert torch.equal(t.elbo, t.log_px - t.kl)
    assert t.loss.shape == ()
    _close(t.loss, (beta * ref_kl - ref_log_px).mean())
    # the reported elbo ignores beta
    _close(t.elbo, ref_log_px - ref_kl)


def test_log_mean_exp_and_iwae_bound_match_scipy():
    lw = 30 * torch.randn(7, 4, dtype=torch.float64) - 500  # large magnitudes: needs stability
    ref = torch.from_numpy(scipy_logsumexp(lw.numpy(), axis=0) - math.log(7))
    _close(iwae_bound(lw), ref, atol=1e-10, rtol=1e-12)
    _close(log_mean_exp(lw, 0), ref, atol=1e-10, rtol=1e-12)
    ref1 = torch.from_numpy(scipy_logsumexp(lw.numpy(), axis=1) - math.log(4))
    _close(log_mean_exp(lw, 1), ref1, atol=1e-10, rtol=1e-12)
    # K = 1: the bound is the log-weight itself
    _close(iwae_bound(lw[:1]), lw[0], atol=1e-12, rtol=0)


# --------------------------------------------------------------------------------------------
# evaluate.log_likelihood_is
# --------------------------------------------------------------------------------------------

def test_is_with_k1_is_unbiased_for_the_elbo():
    """E[log w] with one z ~ q equals E_q log p(x|z) - KL(q || p). The left side is the mean of
    R = 10000 independent K=1 estimates (x repeated along the batch); the right side is a
    20000-sample MC estimate of E_q log p(x|z) minus the closed-form KL from torch.distributions.
    Tolerance: 5 combined standard errors of the two MC means."""
    model = _tiny_vae(shape=(1, 2, 3))
    with torch.no_grad():  # move q away from the prior so that the KL term matters
        head = model.encoder.net[-1]
        head.bias[:2] += 1.0
        head.bias[2:] -= 1.0
    n_x, r = 3, 10_000
    x = torch.bernoulli(torch.full((n_x, 1, 2, 3), 0.5))
    xr = x.repeat(r, 1, 1, 1)  # [r * n_x, ...]: index i -> input i % n_x
    log_px, elbo_k1 = ev.log_likelihood_is(model, xr, 1)
    assert log_px.shape == elbo_k1.shape == (r * n_x,)
    _close(elbo_k1, log_px)  # with K = 1, logmeanexp and mean of one weight coincide
    est = log_px.view(r, n_x)
    with torch.no_grad():
        q = model.encode(x)
        z = q.rsample(20_000)
        rec = model.decode(z).log_prob(x)  # [N, n_x]
        kl = td.kl_divergence(_ref_diag(q.mu, q.logvar),
                              td.Independent(td.Normal(torch.zeros_like(q.mu), torch.ones_like(q.mu)), 1))
    ref = rec.mean(0) - kl
    se = torch.sqrt(est.var(0) / r + rec.var(0) / rec.shape[0])
    assert ((est.mean(0) - ref).abs() <= 5 * se).all(), (est.mean(0), ref, se)
    # the test has power: KL is not negligible against the tolerance
    assert (kl > 10 * se).all()


# A linear-Gaussian VAE: z ~ N(0, I_L), x | z ~ N(W z + b, s^2 I_D), so p(x) = N(b, W W^T + s^2 I).
# The exact posterior is N(A (x - b), s^2 M^-1) with M = W^T W + s^2 I and A = M^-1 W^T; W has
# orthogonal columns so that M (and the posterior covariance) is diagonal, hence representable
# by the diagonal-Gaussian encoder. With hidden=() both MLP nets are a single nn.Linear
# (nets.mlp adds no activation after the last layer), so these weights can be set by hand.
S = 0.5
W = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)  # [D=3, L=2]
B_DEC = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)


def _linear_gaussian_vae(mu_shift: float = 0.0, var_factor: float = 1.0) -> VAE:
    d, l = W.shape
    cfg = VAEConfig(shape=(1, 1, d), arch="mlp", hidden=(), latent_dim=l, likelihood="gaussian", gaussian_std=S)
    model = VAE(cfg).double().eval()
    dec, enc = model.decoder.net, model.encoder.net
    assert len(dec) == 1 and isinstance(dec[0], torch.nn.Linear), "hidden=() must give a linear decoder"
    assert len(enc) == 1 and isinstance(enc[0], torch.nn.Linear), "hidden=() must give a linear encoder"
    m = W.T @ W + S ** 2 * torch.eye(l, dtype=torch.float64)
    assert torch.equal(m, torch.diag(torch.diagonal(m)))
    a = torch.linalg.solve(m, W.T)  # [L, D]
    post_var = S ** 2 / torch.diagonal(m)
    with torch.no_grad():
        dec[0].weight.copy_(W)
        dec[0].bias.copy_(B_DEC)
        enc[0].weight.zero_()
        enc[0].weight[:l].copy_(a)
        enc[0].bias[:l].copy_(-a @ B_DEC + mu_shift)
        enc[0].bias[l:].copy_(torch.log(post_var * var_factor))
    return model


def _exact_log_px(x):
    cov = W @ W.T + S ** 2 * torch.eye(W.shape[0], dtype=torch.float64)
    return td.MultivariateNormal(B_DEC, covariance_matrix=cov).log_prob(x.flatten(1))


def _xs(n=4):
    return torch.randn(n, 1, 1, W.shape[0], dtype=torch.float64) * 1.5


def test_is_exact_on_linear_gaussian_with_true_posterior():
    model = _linear_gaussian_vae()
    x = _xs()
    ref = _exact_log_px(x)
    # every importance weight is p(x, z) / p(z | x) = p(x): K = 1 is already exact
    for k in (1, 7):
        log_px, el = ev.log_likelihood_is(model, x, k)
        _close(log_px, ref, atol=1e-9, rtol=0)
        _close(el.double(), ref, atol=1e-4, rtol=0)  # elbo is accumulated in float32 (see below)


def test_is_converges_on_linear_gaussian_with_imperfect_encoder():
    model = _linear_gaussian_vae(mu_shift=0.3, var_factor=2.0)
    x = _xs()
    ref = _exact_log_px(x)
    # K = 1 (mean of 200 independent draws): the gap is KL(q || p(z|x)) > 0, clearly visible
    lp1, _ = ev.log_likelihood_is(model, x.repeat(200, 1, 1, 1), 1)
    gap1 = ref - lp1.view(200, -1).mean(0)
    assert (gap1 > 0.2).all(), gap1
    # K = 20000: the IS estimate (a consistent estimator) is close to log p(x). Tolerance: the
    # log of a mean of K weights has s.e. ~ std(w) / (sqrt(K) mean(w)) (delta method); that ratio
    # is measured on an independent set of 20000 weights; allowed: 5 s.e. (about 0.05 nats here)
    k = 20_000
    lp, el = ev.log_likelihood_is(model, x, k)
    with torch.no_grad():
        w = torch.exp(model.log_weights(x, k) - ref)  # = w / p(x): mean 1
    tol = 5 * w.std(0) / w.mean(0) / math.sqrt(k)
    assert (tol < 0.1).all(), tol  # the check is tighter than the K=1 gap by an order of magnitude
    assert ((lp - ref).abs() < tol).all(), (lp - ref, tol)
    assert ((ref - el.double()) > 0.2).all()  # while the mean log-weight (ELBO) stays below


def test_is_jensen_and_monotone_in_k():
    model = _linear_gaussian_vae(mu_shift=0.3, var_factor=2.0)
    x = _xs(3)
    r = 1500
    xr = x.repeat(r, 1, 1, 1)
    means, ses = {}, {}
    for k in (1, 10, 100):
        lp, el = ev.log_likelihood_is(model, xr, k)
        # Jensen on the same samples: mean of log w <= log mean w, for every example
        assert (el.double() <= lp + 1e-5).all()
        if k > 1:
            assert (lp - el.double()).mean() > 0.01
        est = lp.view(r, -1)
        means[k], ses[k] = est.mean(0), est.std(0) / math.sqrt(r)
    # E[IS_K] is non-decreasing in K; with these sizes the increase is well above noise (4 s.e.)
    assert (means[10] - means[1] > 4 * torch.sqrt(ses[10] ** 2 + ses[1] ** 2)).all(), means
    assert (means[100] - means[10] > 4 * torch.sqrt(ses[100] ** 2 + ses[10] ** 2)).all(), means


class _Recorder:
    """Passes encode/log_weights (and decoder_params, what a chunk's size counts) through to a
    model and keeps every chunk of log-weights."""

    def __init__(self, model):
        self.model, self.chunks = model, []
        self.decoder_params = model.decoder_params

    def encode(self, x):
        return self.model.encode(x)

    def log_weights(self, x, k, q=None):
        lw = self.model.log_weights(x, k, q)
        self.chunks.append(lw.clone())
        return lw


@pytest.mark.parametrize("chunk_elements, sizes", [(1, [1] * 10), (3 * 6 * 5, [3, 3, 3, 1]), (1 << 23, [10])])
def test_is_chunking_is_exact(monkeypatch, chunk_elements, sizes):
    """Chunked draws use different random numbers than one big draw, so two chunk sizes cannot be
    compared sample for sample. Instead a recorder keeps exactly the log-weights that
    log_likelihood_is saw and the answer is recomputed from them in one go: logsumexp over all K
    minus log K, and the plain mean. This is exact whatever the chunk sizes are."""
    monkeypatch.setattr(ev, "CHUNK_ELEMENTS", chunk_elements)
    model = _tiny_vae(shape=(1, 2, 3)).double()
    x = torch.bernoulli(torch.full((5, 1, 2, 3), 0.5, dtype=torch.float64))  # 6 elements x 5 examples
    rec = _Recorder(model)
    log_px, el = ev.log_likelihood_is(rec, x, 10)
    assert [c.shape[0] for c in rec.chunks] == sizes
    allw = torch.cat(rec.chunks)  # [10, 5]
    ref = torch.from_numpy(scipy_logsumexp(allw.numpy(), axis=0) - math.log(10))
    _close(log_px, ref, atol=1e-12, rtol=0)
    _close(el.double(), allw.mean(0), atol=1e-4, rtol=1e-6)


class _OutputCounter(_Recorder):
    """A recorder that also counts what the decoder emits in each chunk."""

    def __init__(self, model):
        super().__init__(model)
        self.outputs = []
        model.decoder.register_forward_hook(lambda m, i, out: self.outputs.append(out.numel()))


@pytest.mark.parametrize("chunk_elements", [1, 3 * 2 * 48 * 15 + 7, 1 << 23])
def test_is_chunks_count_a_logistic_mixtures_decoder_outputs(monkeypatch, chunk_elements):
    """The budget is in decoder outputs: a mixture of 5 logistics emits 15 numbers per sub-pixel,
    so a chunk holds 15 times fewer samples than the data's size alone would allow."""
    monkeypatch.setattr(ev, "CHUNK_ELEMENTS", chunk_elements)
    model = _tiny_vae("logistic-mixture", shape=(3, 4, 4), mixtures=5, levels=256).double()
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0)).double() / 255
    rec = _OutputCounter(model)
    log_px, _ = ev.log_likelihood_is(rec, x, 10)
    per_draw = 2 * 48 * 15  # a batch of 2 images of 48 sub-pixels, 15 numbers each
    chunk = max(1, min(10, chunk_elements // per_draw))  # 1, 3, 10
    assert [c.shape[0] for c in rec.chunks] == [chunk] * (10 // chunk) + [10 % chunk] * (10 % chunk > 0)
    assert rec.outputs[0] == chunk * per_draw and (chunk == 1 or rec.outputs[0] <= chunk_elements)
    # whatever the chunks, the estimate is logsumexp over all K log-weights minus log K
    ref = torch.from_numpy(scipy_logsumexp(torch.cat(rec.chunks).numpy(), axis=0) - math.log(10))
    _close(log_px, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("chunk_elements", [1, 7, 1 << 23])
def test_is_chunking_exact_on_true_posterior(monkeypatch, chunk_elements):
    # with the exact posterior every weight equals p(x): any chunking must return log p(x)
    monkeypatch.setattr(ev, "CHUNK_ELEMENTS", chunk_elements)
    model, x = _linear_gaussian_vae(), _xs()
    log_px, _ = ev.log_likelihood_is(model, x, 9)
    _close(log_px, _exact_log_px(x), atol=1e-9, rtol=0)


def test_estimator_module_is_not_shadowed_by_the_api_function():
    # The estimators' module must stay reachable by its dotted name (monkeypatching
    # CHUNK_ELEMENTS relies on it) while vaelab.evaluate is the API function.
    import vaelab.evaluation.likelihood as mod
    assert mod is ev and hasattr(mod, "CHUNK_ELEMENTS") and callable(vaelab.evaluate)


def test_is_elbo_keeps_the_model_dtype():
    model, x = _linear_gaussian_vae(), _xs()
    log_px, el = ev.log_likelihood_is(model, x, 3)
    assert log_px.dtype == torch.float64
    assert el.dtype == log_px.dtype


def test_evaluate_likelihood_consistent_with_is_and_bpd():
    model, x = _linear_gaussian_vae(), _xs(5)
    res = ev.evaluate_likelihood(model, x, k=4, discrete=True)
    ref = _exact_log_px(x)
    assert res["n"] == 5 and res["k"] == 4
    assert res["nll"] == pytest.approx(-ref.mean().item(), abs=1e-6)
    assert res["bpd"] == pytest.approx(res["nll"] / (3 * math.log(2)), rel=1e-12)
    assert ev.evaluate_likelihood(model, x, k=2, discrete=False)["bpd"] is None


def test_bits_per_dim_hand_values():
    assert ev.bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0, rel=1e-12)
    # 100 nats over a 28x28 image: 100 / (784 * 0.693147...) = 100 / 543.4273... = 0.1840172...
    assert ev.bits_per_dim(100.0, 784) == pytest.approx(0.1840172, abs=1e-7)
    assert ev.bits_per_dim(0.0, 10) == 0.0


# --------------------------------------------------------------------------------------------
# training schedules
# --------------------------------------------------------------------------------------------

def test_learning_rate_constant():
    t = TrainConfig(lr=3e-3, epochs=5)
    assert [learning_rate(t, e) for e in range(5)] == [3e-3] * 5


def test_learning_rate_cosine():
    t = TrainConfig(lr=1e-2, lr_final=1e-4, lr_schedule="cosine", epochs=5)
    lrs = [learning_rate(t, e) for e in range(5)]
    assert lrs[0] == pytest.approx(1e-2, rel=1e-12)
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-9)
    assert lrs[2] == pytest.approx((1e-2 + 1e-4) / 2, rel=1e-12)  # half way: the mean
    # cos(pi/4) at a quarter of the way
    assert lrs[1] == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + math.sqrt(0.5)), rel=1e-12)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    # default final lr is lr / 10
    t2 = TrainConfig(lr=1e-2, lr_schedule="cosine", epochs=3)
    assert learning_rate(t2, 2) == pytest.approx(1e-3, rel=1e-9)


def test_learning_rate_exponential():
    t = TrainConfig(lr=1e-2, lr_final=1e-4, lr_schedule="exponential", epochs=5)
    lrs = [learning_rate(t, e) for e in range(5)]
    assert lrs[0] == pytest.approx(1e-2, rel=1e-12)
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-9)
    assert lrs[2] == pytest.approx(1e-3, rel=1e-9)  # geometric mean in the middle
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([10 ** -0.5] * 4, rel=1e-9)


def test_learning_rate_single_epoch_is_lr():
    for sched in ("constant", "cosine", "exponential"):
        assert learning_rate(TrainConfig(lr=2e-3, lr_schedule=sched, epochs=1), 0) == pytest.approx(2e-3)


def _kl_weight(beta: float, warmup_epochs: float):
    """The VAE's KL weight as a function of (step, steps per epoch): it reads it from the StepInfo."""
    model = _tiny_vae(beta=beta, warmup_epochs=warmup_epochs)
    return lambda step, spe: model.kl_weight(StepInfo(epoch=step // spe, step=step, steps_per_epoch=spe,
                                                      dataset_size=100 * spe))


def test_kl_weight_warmup():
    kl_weight = _kl_weight(beta=2.0, warmup_epochs=2.0)
    spe = 10
    assert kl_weight(0, spe) == 0.0
    assert kl_weight(5, spe) == pytest.approx(0.5)
    assert kl_weight(10, spe) == pytest.approx(1.0)
    assert kl_weight(20, spe) == pytest.approx(2.0)
    assert kl_weight(1000, spe) == pytest.approx(2.0)
    ws = [kl_weight(s, spe) for s in range(25)]
    assert all(a <= b for a, b in zip(ws, ws[1:]))
    # fractional warm-up and no warm-up
    assert _kl_weight(beta=1.0, warmup_epochs=0.5)(5, 10) == pytest.approx(1.0)
    assert _kl_weight(beta=0.7, warmup_epochs=0.0)(0, 10) == 0.7


def test_the_kl_warmup_weight_reaches_the_loss():
    """Mid-warm-up, the loss the VAE's step yields is mean(w KL - log p(x|z)) for the same draw of
    z, with w = beta * step / (warmup_epochs * steps_per_epoch) computed here from the StepInfo,
    not the loss of w = beta; past the warm-up it is the w = beta loss. References from
    torch.distributions, independent of vaelab.losses."""
    beta, warmup, spe = 2.0, 2.0, 10
    model = _tiny_vae(shape=(1, 3, 3), beta=beta, warmup_epochs=warmup).train()
    with torch.no_grad():  # move q away from the prior so that the KL term matters
        model.encoder.net[-1].bias[:2] += 1.0
    x = torch.bernoulli(torch.full((5, 1, 3, 3), 0.5), generator=torch.Generator().manual_seed(1))

    def step_loss(step):
        torch.manual_seed(3)  # the same z for every step below and for the reference
        (update,) = model.step(Batch(x), StepInfo(epoch=step // spe, step=step, steps_per_epoch=spe, dataset_size=50))
        assert update.optimizer == "model"
        return update.loss.item()

    torch.manual_seed(3)
    with torch.no_grad():
        out = model(x)
    log_px = td.Bernoulli(logits=out.likelihood.logits).log_prob(x).sum((1, 2, 3))
    q = out.posterior
    kl = td.kl_divergence(_ref_diag(q.mu, q.logvar),
                          td.Independent(td.Normal(torch.zeros_like(q.mu), torch.ones_like(q.mu)), 1))
    ref = lambda w: (w * kl - log_px).mean().item()  # noqa: E731
    assert kl.mean().item() > 0.5  # so the weight moves the loss by much more than the tolerance
    for step in (0, 7, 13):
        w = beta * step / (warmup * spe)  # 0, 0.7, 1.3
        assert step_loss(step) == pytest.approx(ref(w), rel=1e-5), step
        assert abs(step_loss(step) - ref(beta)) > 0.1
    for step in (warmup * spe, 1000):  # the warm-up is over: w = beta
        assert step_loss(int(step)) == pytest.approx(ref(beta), rel=1e-5)


def test_the_trainer_hands_the_vae_each_steps_place_in_the_run(tmp_path, monkeypatch):
    """Through the training loop: the KL weights of a 2-epoch run with --warmup-epochs 1.5 are
    beta * min(1, i / (1.5 * steps per epoch)) for steps i = 0, 1, ... counted over the run."""
    from vaelab.training.trainer import train as train_loop
    seen = []
    original = VAE.kl_weight
    monkeypatch.setattr(VAE, "kl_weight", lambda self, info: seen.append((info, original(self, info))) or seen[-1][1])
    train_loop(vaelab.make_config(data="digits", hidden=(8,), latent_dim=2, batch_size=256, epochs=2, beta=0.5,
                                  warmup_epochs=1.5, progress=False, out=str(tmp_path / "r")), log=lambda m: None)
    n_train = 1317  # digits: 1437 training images less 120 (1/12) held out for validation
    spe = 6  # 5 minibatches of 256 and a last, smaller one
    assert [(i.epoch, i.step, i.steps_per_epoch, i.dataset_size) for i, _ in seen] == \
        [(s // spe, s, spe, n_train) for s in range(2 * spe)]
    assert [w for _, w in seen] == pytest.approx([0.5 * min(1.0, s / (1.5 * spe)) for s in range(2 * spe)])
