"""The VampPrior (Tomczak & Welling 2018): its log-density against an explicit mixture built with
torch.distributions, the KL term and the importance weights against the same densities, prior
draws against the mixture's moments, and the pseudo-inputs learning."""
import contextlib
import math

import torch
from torch import distributions as td

from test_models import _step
from vaelab.models import MODELS
from vaelab.models.vamp import VampConfig

KC, D, B = 7, 3, 4


def _model(**over):
    cfg = VampConfig(shape=(1, 4, 4), hidden=(8,), latent_dim=D, components=KC, **over)
    torch.manual_seed(0)
    model = MODELS["vamp"](cfg).eval()
    with torch.no_grad():  # pseudo-inputs spread over [0, 1] (and a few outside, clipped by the hardtanh)
        model.pseudo_params.uniform_(-0.2, 1.2)
        model.origin_image.uniform_(0, 1)  # an origin that is neither 0 nor a pseudo-input
    return model


def _x():
    return torch.bernoulli(torch.full((B, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(1))


def _origin(model) -> torch.Tensor:
    """mu(x0): the encoder's mean at the origin image, where the codes are measured from, [D]."""
    return model.encoder(model.origin_image[None]).chunk(2, -1)[0][0]


def _q(model, x):
    """The posterior's (mu(x) - mu(x0), logvar(x)) from the raw encoder."""
    mu, logvar = model.encoder(x).chunk(2, -1)
    return mu - _origin(model), logvar


def _mixture(model) -> td.MixtureSameFamily:
    """p(z) = (1/K) sum_k N(z; mu(u_k) - mu(x0), sigma^2(u_k)), u_k the pseudo-inputs clipped to [0, 1]."""
    mu, logvar = _q(model, model.pseudo_params.clamp(0, 1))  # [K, D] each
    comp = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
    return td.MixtureSameFamily(td.Categorical(logits=torch.zeros(KC)), comp)


def test_prior_log_density_is_the_explicit_mixture():
    model = _model()
    z = 2 * torch.randn(5, B, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model.prior_log_prob(z)
        want = _mixture(model).log_prob(z)
        # and a brute-force loop over the components
        loop = torch.stack([td.Independent(td.Normal(*_mu_std(model, k)), 1).log_prob(z) for k in range(KC)])
    assert got.shape == (5, B)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, torch.logsumexp(loop, 0) - math.log(KC))


def test_prior_log_density_keeps_its_precision_at_sharp_components():
    # |mu| ~ 3, s ~ 0.007 and z about s from a component's mean: the expanded quadratic form
    # subtracts terms ~1e5 to leave ~1; the float64 mixture of torch.distributions is the reference
    model = _model()
    with torch.no_grad():
        model.encoder.net[-1].bias[:D] += 3.0
        model.encoder.net[-1].bias[D:] = -10.0
        mu, logvar = _q(model, model.pseudo_params.clamp(0, 1))
        z = mu[:5] + torch.exp(0.5 * logvar[:5]) * torch.randn(5, D, generator=torch.Generator().manual_seed(4))
        got = model.prior_log_prob(z)
        comp = td.Independent(td.Normal(mu.double(), torch.exp(0.5 * logvar.double())), 1)
        want = td.MixtureSameFamily(td.Categorical(logits=torch.zeros(KC, dtype=torch.float64)), comp).log_prob(z.double())
    assert (want > 0).all()  # densities above 1: sharp components, the hard case
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-4)


def _mu_std(model, k):
    mu, logvar = _q(model, model.pseudo_params[k:k + 1].clamp(0, 1))
    return mu[0], torch.exp(0.5 * logvar[0])


def test_log_weights_and_kl_use_the_mixture():
    model, x = _model(), _x()
    with torch.no_grad():
        torch.manual_seed(5)
        lw = model.log_weights(x, 3)
        torch.manual_seed(5)
        eps = torch.randn(3, B, D)
        mu, logvar = _q(model, x)
        q = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1)
        z = mu + torch.exp(0.5 * logvar) * eps
        rec = td.Independent(td.Bernoulli(logits=model.decoder(z)), 3).log_prob(x)
        prior = _mixture(model).log_prob(z)
        torch.testing.assert_close(lw, rec + prior - q.log_prob(z))
        torch.testing.assert_close(model.kl(x, model.encode(x), z[0]), q.log_prob(z[0]) - prior[0])


def test_the_training_step_reports_the_sampled_kl_to_the_mixture():
    # the VAE's objective with the KL term log q(z|x) - log p(z) at the z the decoder saw
    model, x = _model(), _x()
    model.train()
    torch.manual_seed(3)
    with torch.no_grad():
        mu, logvar = _q(model, x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(B, D)
        rec = td.Independent(td.Bernoulli(logits=model.decoder(z)), 3).log_prob(x)
        kl = td.Independent(td.Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z) - _mixture(model).log_prob(z)
    torch.manual_seed(3)
    _, m = _step(MODELS["vamp"], model, x)
    torch.testing.assert_close(m["kl"], kl.mean())
    torch.testing.assert_close(m["elbo"], (rec - kl).mean())


def test_prior_draws_have_the_mixtures_moments():
    model, n = _model(), 40_000
    z = model.prior(n, torch.Generator().manual_seed(0))
    with torch.no_grad():
        mix = _mixture(model)
        mean, var = mix.mean, mix.variance
    se = torch.sqrt(var / n)
    assert ((z.mean(0) - mean).abs() < 5 * se).all(), (z.mean(0), mean, se)
    assert ((z.var(0) / var - 1).abs() < 0.05).all()
    # a mixture, not N(0, I): the test could tell them apart
    assert ((mean.abs() > 10 * se) | ((var - 1).abs() > 0.2)).any()


def test_the_pseudo_params_learn():
    model, x = _model(), _x()
    model.train()
    before = model.pseudo_params.detach().clone()
    _step(MODELS["vamp"], model, x)
    assert not torch.equal(before, model.pseudo_params.detach())
    assert not model.normal_prior


def test_the_codes_are_centred_so_a_shift_of_the_encoder_changes_nothing():
    # The VampPrior moves with the encoder: shifting every code by one vector leaves the ELBO as
    # it was, so nothing held the codes near 0 and a tanh decoder's first units saturated.
    # Measured from mu(x0), a shift of the encoder's mean output is no change of the model.
    model, x = _model(), _x()
    with torch.no_grad():
        before = model.encode(x)
        torch.manual_seed(5)
        lw = model.log_weights(x, 3)
        model.encoder.net[-1].bias[:D] += torch.tensor([2.0, -3.0, 0.5])
        after = model.encode(x)
        torch.manual_seed(5)
        torch.testing.assert_close(model.log_weights(x, 3), lw)
    torch.testing.assert_close(after.mu, before.mu)
    # and the origin image's code is 0
    torch.testing.assert_close(model.encode(model.origin_image[None]).mu[0], torch.zeros(D), atol=1e-6, rtol=0)


def test_init_from_data_cycles_the_images_inside_the_hardtanh_and_sets_the_origin():
    model = _model()
    x = torch.rand(3, 1, 4, 4)
    x[0] = 0.0
    x[1] = 1.0
    model.init_from_data(x)
    want = 0.01 + 0.98 * x[torch.arange(KC) % 3]
    torch.testing.assert_close(model.pseudo_params.detach(), want)
    torch.testing.assert_close(model.origin_image, x.mean(0))
    grey = _model(pseudo_init="grey")
    before = grey.pseudo_params.detach().clone()
    grey.init_from_data(x)  # the origin only
    assert torch.equal(grey.pseudo_params.detach(), before)
    torch.testing.assert_close(grey.origin_image, x.mean(0))
    assert model.data_init == grey.data_init == KC


def _digits_run(tmp_path, **over):
    import vaelab
    from vaelab.training.trainer import train
    cfg = dict(model="vamp", data="digits", batch_size=100, nll_samples=0, progress=False, device="cpu",
               hidden=(200, 200), activation="tanh", latent_dim=20, epochs=1)
    return train(vaelab.make_config(**{**cfg, **over}, out=str(tmp_path / "r")), log=lambda m: None)


def test_a_fresh_run_starts_the_pseudo_inputs_and_the_origin_at_seeded_training_images(tmp_path, monkeypatch):
    import vaelab
    from vaelab.data.datasets import load_dataset
    from vaelab.models.vamp import VampPrior
    seen = []
    real = VampPrior.init_from_data
    monkeypatch.setattr(VampPrior, "init_from_data", lambda self, x: (seen.append(x.clone()), real(self, x)))
    run = _digits_run(tmp_path, components=50, ema=0.999)  # the weight average copies what the hook set
    assert len(seen) == 1 and seen[0].shape == (50, 1, 8, 8)
    train = load_dataset("digits").train.x.float() / 16  # the bundled digits have 17 levels
    rows = {tuple(r.flatten().tolist()) for r in train}
    assert all(tuple(r.flatten().tolist()) in rows for r in seen[0])  # training images, as pixels in [0, 1]
    assert len({tuple(r.flatten().tolist()) for r in seen[0]}) > 40  # drawn, not one repeated
    model = vaelab.load(run, "last", device="cpu")  # the averaged weights, under --ema
    torch.testing.assert_close(model.origin_image, seen[0].mean(0))  # a buffer: training leaves it
    from vaelab.training.trainer import train as train_loop
    train_loop(vaelab.make_config(model="vamp", data="digits", epochs=2), resume=run, log=lambda m: None)
    assert len(seen) == 1  # not on --resume


def test_vamp_leaves_the_independent_pixel_plateau_on_digits(tmp_path):
    # Measured before the centring and the data start: train KL 0.08 nats and loss 27.1 after
    # 20 epochs (the codes unused); after: 1.5 and 25.6
    import json
    run = _digits_run(tmp_path, epochs=20)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["train_kl"] > 0.5, last


def test_a_checkpoint_of_the_uncentred_vamp_is_refused(tmp_path):
    # its codes lived in other coordinates: read into this model it would score wrongly
    import pytest
    from safetensors.torch import save_file
    from vaelab.errors import VaelabError
    from vaelab.io import load_weights
    model = _model()
    old = {("pseudo_inputs" if k == "pseudo_params" else k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(old, str(tmp_path / "model.safetensors"))  # even with an origin image beside it
    with pytest.raises(VaelabError, match="does not fit the model.*pseudo_inputs"):
        load_weights(model, tmp_path / "model.safetensors")


# ---- the importance-sampled NLL computes the mixture once per evaluation ----

def _pseudo_passes(model):
    """A list that counts the encoder's passes over the pseudo-inputs (with the origin image: K + 1
    rows), which every other pass here differs from in its number of rows."""
    passes = []
    model.encoder.register_forward_hook(lambda m, inp, out: passes.append(1) if len(inp[0]) == KC + 1 else None)
    return passes


def _eval_nll(model, x, **kw):
    from vaelab.evaluation.likelihood import evaluate_likelihood
    return evaluate_likelihood(model, x, 50, precision="fp32", compile=False, seed=0, **kw)


def _images(n, seed=2):
    return torch.bernoulli(torch.full((n, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(seed))


def test_the_nll_encodes_the_pseudo_inputs_once_per_evaluation(monkeypatch):
    from vaelab.evaluation import likelihood
    # 10 samples a chunk of 100 images, 20 of 50: K = 50 in 5, 5 and 3 chunks over the 3 blocks
    monkeypatch.setattr(likelihood, "CHUNK_ELEMENTS", 16 * 100 * 10)
    model, x = _model(), _images(250)
    passes = _pseudo_passes(model)
    with torch.no_grad():
        _eval_nll(model, x)
        assert len(passes) == 1  # was a pass per block and per chunk: (1 + 5) + (1 + 5) + (1 + 3) = 16
        likelihood.log_likelihood_is(model, x[:100], 50)
        assert len(passes) == 2  # one for the call's 5 chunks
        model.encode(x[:3])
        assert len(passes) == 3  # outside an evaluation the mixture follows the weights, as in training
    assert model._fixed is None


def test_the_nll_with_the_mixture_computed_once_is_the_nll_computed_per_chunk(monkeypatch):
    # the same seed, the same threads, one run: the figure to the last bit, and the ELBO and KL
    from vaelab.evaluation import likelihood
    from vaelab.models.vamp import VampPrior
    monkeypatch.setattr(likelihood, "CHUNK_ELEMENTS", 16 * 100 * 10)
    model, x = _model(), _images(250)
    with torch.no_grad():
        once = _eval_nll(model, x)
        torch.manual_seed(5)
        direct = likelihood.log_likelihood_is(model, x[:100], 50)
        monkeypatch.setattr(VampPrior, "fixed_prior", lambda self: contextlib.nullcontext())  # as it was
        passes = _pseudo_passes(model)
        per_chunk = _eval_nll(model, x)
        assert len(passes) == 16  # the old way, recomputed for every block and chunk
        torch.manual_seed(5)
        again = likelihood.log_likelihood_is(model, x[:100], 50)
    assert once == per_chunk, (once, per_chunk)
    assert all(torch.equal(a, b) for a, b in zip(direct, again))
