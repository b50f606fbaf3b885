"""The two-stochastic-layer model (Burda et al. 2016): its importance weight against the same
five densities written with torch.distributions, its k = 1 bound against its ELBO, its prior
draws against the two-step ancestral sample, and the paper's net behind --preset iwae."""
import dataclasses

import torch
from torch import distributions as td

import vaelab
from vaelab.data import Batch
from vaelab.evaluation.likelihood import evaluate_likelihood
from vaelab.models import MODELS
from vaelab.models.vae2layer import TwoLayerVAEConfig

K, B, D1, D2 = 3, 4, 3, 2


def _model(**over):
    cfg = TwoLayerVAEConfig(shape=(1, 4, 4), hidden=(8,), latent_dim=D1, top_hidden=(5,), top_latent_dim=D2, **over)
    torch.manual_seed(0)
    return MODELS["vae-2layer"](cfg).eval()


def _x():
    return torch.bernoulli(torch.full((B, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(1))


def _normal(params):
    mu, logvar = params.chunk(2, -1)
    return td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)


def test_log_weights_are_the_five_densities():
    model, x = _model(), _x()
    torch.manual_seed(5)
    with torch.no_grad():
        got = model.log_weights(x, K)
        # the same draws: eps1 for z1 [K, B, D1], then eps2 for z2 [K, B, D2]
        torch.manual_seed(5)
        eps1, eps2 = torch.randn(K, B, D1), torch.randn(K, B, D2)
        q1 = _normal(model.encoder(x))
        z1 = q1.base_dist.loc + q1.base_dist.scale * eps1
        q2 = _normal(model.top_encoder(z1))
        z2 = q2.base_dist.loc + q2.base_dist.scale * eps2
        log_px = td.Independent(td.Bernoulli(logits=model.decoder(z1)), 3).log_prob(x)
        log_p1 = _normal(model.top_decoder(z2)).log_prob(z1)
        log_p2 = td.Independent(td.Normal(torch.zeros(D2), torch.ones(D2)), 1).log_prob(z2)
        want = log_px + log_p1 + log_p2 - q1.log_prob(z1) - q2.log_prob(z2)
    assert got.shape == (K, B)
    torch.testing.assert_close(got, want)


def with_the_same_draws(seed: int, *calls):
    """Each call's result with the global RNG seeded alike before it, under no_grad."""
    out = []
    for call in calls:
        torch.manual_seed(seed)
        with torch.no_grad():
            out.append(call())
    return out


def test_the_k1_bound_is_the_elbo_it_validates_and_evaluates():
    model, x = _model(), _x()
    lw, val, terms = with_the_same_draws(7, lambda: model.log_weights(x, 1)[0], lambda: model.validation(Batch(x)),
                                         lambda: model.elbo_terms(x))
    torch.testing.assert_close(val, lw)
    torch.testing.assert_close(terms.log_px - terms.kl, lw)
    # and not the one-layer VAE's closed-form KL to N(0, I) of q(z1|x)
    assert not torch.allclose(terms.kl, model.encode(x).kl_to_standard_normal().detach(), atol=1e-3)
    res = evaluate_likelihood(model, x, k=20)
    assert res["nll"] <= -res["elbo"] + 1e-5  # log-mean-exp of the same weights >= their mean


def test_the_k5_training_loss_is_the_iwae_bound_of_its_weights():
    model, x = _model(k=5), _x()
    model.train()
    torch.manual_seed(3)
    with torch.no_grad():
        lw = model.log_weights(x, 5)
    torch.manual_seed(3)
    loss, metrics = model.objective(x)
    want = torch.logsumexp(lw.double(), 0) - torch.log(torch.tensor(5.0, dtype=torch.float64))
    torch.testing.assert_close(loss.detach().double(), -want.mean(), rtol=1e-5, atol=1e-5)


def test_prior_draws_z2_then_z1_given_z2():
    model = _model()
    got = model.prior(6, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    z2, eps = torch.randn(6, D2, generator=g), torch.randn(6, D1, generator=g)
    with torch.no_grad():
        p1 = _normal(model.top_decoder(z2)).base_dist
    torch.testing.assert_close(got, p1.loc + p1.scale * eps)
    assert model.sample(6).shape == (6, 1, 4, 4)


def test_preset_iwae_is_the_papers_net():
    cfg = vaelab.make_config(model="vae-2layer", preset="iwae", data="digits").model
    model = MODELS["vae-2layer"](dataclasses.replace(cfg, shape=(1, 28, 28)))
    shapes = lambda net: [tuple(m.weight.shape[::-1]) for m in net.modules() if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert shapes(model.encoder) == [(784, 200), (200, 200), (200, 2 * 100)]
    assert shapes(model.top_encoder) == [(100, 100), (100, 100), (100, 2 * 50)]
    assert shapes(model.top_decoder) == [(50, 100), (100, 100), (100, 2 * 100)]
    assert shapes(model.decoder) == [(100, 200), (200, 200), (200, 784)]
    assert isinstance(model.encoder.net[1], torch.nn.Tanh) and cfg.likelihood == "bernoulli" and cfg.k == 1
