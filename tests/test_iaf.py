"""The inverse autoregressive flow (Kingma et al. 2016): the MADE's autoregressive property and
the flow's log-determinant against autograd's Jacobian, log q(z_T|x) and the importance weights
against an independent change of variables, and the evaluation path that hands the model only
q0's mean and log-variance."""
import pytest
import torch
from torch import distributions as td
from torch.autograd.functional import jacobian

from test_vae2layer import with_the_same_draws
from vaelab.data import Batch
from vaelab.distributions import DiagonalGaussian
from vaelab.evaluation.likelihood import _chunk, evaluate_likelihood
from vaelab.models import MODELS
from vaelab.models.iaf import IAFConfig
from vaelab.models.vae import VAEConfig
from vaelab.nets import MADE

D, C, B = 4, 3, 2


def _model(**over):
    cfg = IAFConfig(shape=(1, 4, 4), hidden=(8,), latent_dim=D, flow_hidden=(9, 7), context_dim=C, **over)
    torch.manual_seed(0)
    model = MODELS["iaf"](cfg).double().eval()
    with torch.no_grad():  # steps far from the identity, so the test has something to see
        for p in model.steps.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return model


def _x():
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((B, 1, 4, 4), 0.5, dtype=torch.float64), generator=g)


def test_made_is_autoregressive_and_sees_every_earlier_input():
    torch.manual_seed(0)
    made = MADE(5, (11, 6), "tanh", n_out=2, context_dim=C).double()
    z, h = torch.randn(5, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    jac = jacobian(lambda v: made(v, h), z)  # [2, 5 outputs, 5 inputs]
    for o in range(2):
        assert torch.equal(jac[o].triu(), torch.zeros(5, 5))  # output d: no z_j with j >= d
        assert (jac[o].tril(-1).abs() > 0).sum() == 10  # and every z_j with j < d
    # the context reaches every output, the first included
    assert (jacobian(lambda c: made(z, c), h).abs().sum(-1) > 0).all()
    # without a context, the first output is a constant
    plain = MADE(5, (11,), "tanh", n_out=2).double()
    jac = jacobian(lambda v: plain(v), z)
    assert torch.equal(jac.triu(), torch.zeros(2, 5, 5, dtype=torch.float64)) and (jac.tril(-1).abs() > 0).sum() == 20
    # one dimension: the output sees the context only
    one = MADE(1, (4,), "tanh", context_dim=C).double()
    assert torch.equal(jacobian(lambda v: one(v, h), z[:1]), torch.zeros(1, 1, 1, dtype=torch.float64))


def test_log_det_is_autograds_jacobian():
    model = _model()
    with torch.no_grad():
        h = torch.randn(B, C, dtype=torch.float64)
        z0 = torch.randn(3, B, D, dtype=torch.float64)
        _, log_det = model.flow(z0, h)
    for i in range(3):
        for b in range(B):
            jac = jacobian(lambda v: model.flow(v, h[b])[0], z0[i, b])  # [D, D]
            torch.testing.assert_close(log_det[i, b], torch.linalg.slogdet(jac).logabsdet)
    # the order is reversed between the two steps: the whole flow is triangular neither way
    assert jac.triu(1).abs().sum() > 0 and jac.tril(-1).abs().sum() > 0
    # the first step alone: lower triangular, with sigma on the diagonal
    step = model.steps[0]
    jac = jacobian(lambda v: step(v, h[0])[0], z0[0, 0])
    assert torch.equal(jac.triu(1), torch.zeros(D, D, dtype=torch.float64))
    sigma = torch.sigmoid(step.made(z0[0, 0], h[0])[1])
    torch.testing.assert_close(torch.diagonal(jac), sigma.detach())


@pytest.mark.parametrize("given", [False, True])
def test_log_weights_by_an_independent_change_of_variables(given):
    # given: a q0 handed in (as evaluation does), here another one than the encoder's
    model, x = _model(), _x()
    with torch.no_grad():
        mu, logvar, h = model.encoder(x).split([D, D, C], -1)
        if given:
            mu, logvar = mu + 1.0, logvar - 0.5
    torch.manual_seed(4)
    with torch.no_grad():
        got = model.log_weights(x, 3, DiagonalGaussian(mu, logvar) if given else None)
    torch.manual_seed(4)
    eps = torch.randn(3, B, D, dtype=torch.float64)
    with torch.no_grad():
        q0 = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
        z0 = mu + torch.exp(0.5 * logvar) * eps
        z = model.flow(z0, h)[0]
        logdet = torch.stack([torch.stack([torch.linalg.slogdet(jacobian(lambda v: model.flow(v, h[b])[0], z0[i, b]))
                                           .logabsdet for b in range(B)]) for i in range(3)])
        rec = td.Independent(td.Bernoulli(logits=model.decoder(z)), 3).log_prob(x)
        prior = td.Independent(td.Normal(torch.zeros(D, dtype=torch.float64), 1.0), 1).log_prob(z)
    torch.testing.assert_close(got, rec + prior - (q0.log_prob(z0) - logdet))


def test_elbo_validation_kl_and_the_k1_bound_agree():
    model, x = _model(), _x()
    lw, val, t, kl = with_the_same_draws(7, lambda: model.log_weights(x, 1)[0], lambda: model.validation(Batch(x)),
                                         lambda: model.elbo_terms(x), lambda: model.kl(x, model.encode(x)))
    torch.testing.assert_close(val, lw)
    torch.testing.assert_close(t.elbo, lw)
    torch.testing.assert_close(t.kl, kl)


def test_evaluation_hands_only_q0_and_gets_the_same_weights():
    # evaluation rebuilds q0 from its mean and log-variance; the flow's context is recomputed
    model, x = _model(), _x()
    with torch.no_grad():
        q = model.encode(x)
        torch.manual_seed(2)
        lse, total = _chunk(model, x, q.mu, q.logvar, 5)
        torch.manual_seed(2)
        lw = model.log_weights(x, 5)
    torch.testing.assert_close(lse, torch.logsumexp(lw, 0))
    torch.testing.assert_close(total, lw.sum(0))
    res = evaluate_likelihood(model, x, k=10)
    assert res["nll"] <= -res["elbo"] + 1e-9


def test_codes_are_the_flow_of_the_posterior_mean():
    model, x = _model(), _x()
    with torch.no_grad():
        mu, _, h = model.encoder(x).split([D, D, C], -1)
        torch.testing.assert_close(model.codes(x), model.flow(mu, h)[0])
        torch.testing.assert_close(model.reconstruct(x), torch.sigmoid(model.decoder(model.flow(mu, h)[0])))


def test_no_steps_is_the_diagonal_gaussian():
    model = _model(flow_steps=0)
    x = _x()
    torch.manual_seed(1)
    with torch.no_grad():
        lw = model.log_weights(x, 4)
        torch.manual_seed(1)
        mu, logvar, _ = model.encoder(x).split([D, D, C], -1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(4, B, D, dtype=torch.float64)
        q = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
        rec = td.Independent(td.Bernoulli(logits=model.decoder(z)), 3).log_prob(x)
        prior = td.Independent(td.Normal(torch.zeros(D, dtype=torch.float64), 1.0), 1).log_prob(z)
    torch.testing.assert_close(lw, rec + prior - q.log_prob(z))


def test_it_starts_from_the_vaes_weights_of_the_seed():
    # the same seed gives the VAE's decoder and the VAE's mu, log sigma^2 rows of the encoder,
    # so the flow's gain is measured from the same start
    torch.manual_seed(0)
    iaf = MODELS["iaf"](IAFConfig(shape=(1, 4, 4), hidden=(8,), latent_dim=D, context_dim=C))
    torch.manual_seed(0)
    vae = MODELS["vae"](VAEConfig(shape=(1, 4, 4), hidden=(8,), latent_dim=D))
    a, b = iaf.state_dict(), vae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b if k.startswith("decoder"))
    assert torch.equal(a["encoder.net.2.weight"][:2 * D], b["encoder.net.2.weight"])
    assert a["encoder.net.2.weight"].shape == (2 * D + C, 8)
