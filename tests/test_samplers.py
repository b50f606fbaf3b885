"""The samplers fitted after training (vaelab.samplers): what a spec may be, which model may have
which, the cache (reused, refitted when its checkpoint changes), the mixture's draws against the
mixture scikit-learn fitted, and `vaelab sample` / `vaelab eval` through them."""
import contextlib
import json
import math

import numpy as np
import pytest
import torch
from torch import distributions as td

import vaelab
from vaelab import samplers
from vaelab.cli import main
from vaelab.distributions import DiagonalGaussian
from vaelab.evaluation.probe import codes_of
from vaelab.io import save_weights
from vaelab.loading import split_inputs
from vaelab.registry import SAMPLERS, register_sampler
from vaelab.training.trainer import train as train_loop


def _run(path, **flags):
    """A tiny run on the digits: the training loop alone (its final evaluation is not needed here)."""
    cfg = vaelab.make_config(data="digits", hidden=(16,), latent_dim=2, epochs=1, batch_size=64, nll_samples=0,
                             progress=False, device="cpu", out=str(path), **flags)
    with contextlib.ExitStack() as hold:
        return train_loop(cfg, hold=hold, log=lambda m: None)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("samplers") / "vae", model="vae")


def _fails(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and err.endswith("."), err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("spec", ["gmm:0", "gmm:x", "foo", "gmm", "gmm:", "gmm:-3", "gmm:1001", "gmm:2.5",
                                  "prior:2", "two-stage:3", ""])
def test_a_bad_spec_is_one_sentence_and_exit_2(spec, vae_run, tmp_path, capsys):
    err = _fails(capsys, ["sample", str(vae_run), "--sampler", spec, "-o", str(tmp_path / "s.png")],
                 "--sampler must be prior, gmm:K (K a whole number from 1 to 1000), two-stage or pixelcnn")
    assert repr(spec) in err
    _fails(capsys, ["eval", str(vae_run), "--sampler", spec], "--sampler must be")
    assert not (tmp_path / "s.png").exists()


def test_a_sampler_the_model_cannot_have_is_refused(vae_run, tmp_path, capsys):
    _fails(capsys, ["sample", str(vae_run), "--sampler", "pixelcnn"], "codes of a vae are vectors", "gmm:K")
    _fails(capsys, ["eval", str(vae_run), "--sampler", "gmm:2", "--no-sample-metrics"], "--no-sample-metrics")
    gan = _run(tmp_path / "gan", model="gan")
    _fails(capsys, ["sample", str(gan), "--sampler", "two-stage"], "has no encoder")
    x = split_inputs(vae_run, "train")[0][:5]
    with pytest.raises(vaelab.VaelabError, match="codes of 5 training images: give K of at most 5"):
        samplers._fit(samplers.parse_sampler("gmm:6"), vaelab.load(vae_run, device="cpu"), x)


def test_gmm_is_cached_reused_and_refitted_when_its_checkpoint_changes(vae_run, monkeypatch):
    fits = []
    real_fit = samplers._fit
    monkeypatch.setattr(samplers, "_fit", lambda *a: fits.append(a[0]) or real_fit(*a))
    model = vaelab.load(vae_run, device="cpu")
    first = samplers.sampler_for(vae_run, model, "gmm:3")
    path = vae_run / "samplers" / "gmm-3-best.safetensors"
    assert len(fits) == 1 and path.is_file()
    again = samplers.sampler_for(vae_run, model, "gmm:3")  # read back, not fitted again
    assert len(fits) == 1
    a, b = first.stage.state_dict(), again.stage.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    samplers.sampler_for(vae_run, model, "gmm:4")  # another spec, another file
    assert len(fits) == 2 and (vae_run / "samplers" / "gmm-4-best.safetensors").is_file()
    # the checkpoint changes (a resumed run, say): the cached mixture is stale
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    save_weights(model, vae_run / "best.safetensors", {"epoch": 1})
    samplers.sampler_for(vae_run, vaelab.load(vae_run, device="cpu"), "gmm:3")
    assert len(fits) == 3
    samplers.sampler_for(vae_run, vaelab.load(vae_run, device="cpu"), "gmm:3")
    assert len(fits) == 3


def test_gmm_draws_follow_the_mixture_scikit_learn_fits(vae_run):
    from sklearn.mixture import GaussianMixture
    model = vaelab.load(vae_run, device="cpu")
    z = codes_of(model, split_inputs(vae_run, "train")[0]).double().numpy()
    gm = GaussianMixture(3, covariance_type="full", random_state=0).fit(z)
    stage = samplers.sampler_for(vae_run, model, "gmm:3").stage
    np.testing.assert_allclose(stage.means.numpy(), gm.means_, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    draws = stage.sample(200_000).double().numpy()
    mean = gm.weights_ @ gm.means_  # the mixture's moments, in closed form
    cov = sum(w * (c + np.outer(m, m)) for w, m, c in zip(gm.weights_, gm.means_, gm.covariances_)) - np.outer(mean, mean)
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.03)


class _Codes(torch.nn.Module):
    """A stand-in model whose codes are its inputs."""
    latent = "vector"

    def __init__(self, d: int):
        super().__init__()
        self.code_dim, self.unused = d, torch.nn.Parameter(torch.zeros(1))

    def codes(self, x):
        return x


def test_two_stage_learns_codes_far_from_a_standard_normal():
    # two narrow modes, far from 0 and of unequal scales: what the standardisation and a second VAE
    # are for (Dai & Wipf 2019: the first stage's aggregate posterior is not N(0, I))
    g = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, (2000, 1), generator=g) * 2 - 1
    z = torch.cat([3 * sign, torch.zeros(2000, 1)], 1) + 0.3 * torch.randn(2000, 2, generator=g)
    z = z * torch.tensor([10.0, 1.0]) + torch.tensor([5.0, -7.0])
    torch.manual_seed(0)
    stage, settings, _ = samplers._fit(samplers.parse_sampler("two-stage"), _Codes(2), z)
    torch.testing.assert_close(stage.mean, z.mean(0))
    torch.testing.assert_close(stage.std, z.std(0))
    s = (z - stage.mean) / stage.std
    torch.manual_seed(1)
    with torch.no_grad():
        bound = stage.loss(s)  # the negative ELBO, an upper bound on -log p, nats per code
    # the best single Gaussian on the standardised codes, in closed form: 1/2 log det(2 pi e Sigma)
    gaussian = 0.5 * torch.logdet(2 * torch.pi * torch.e * torch.cov(s.T.double())).item()
    assert bound < gaussian - 0.3, (bound, gaussian)  # only a second stage that uses its latent gets here
    torch.manual_seed(0)
    draws = stage.eval().sample(20_000)
    torch.testing.assert_close(draws.mean(0), z.mean(0), atol=0.15 * float(z.std(0).max()), rtol=0)
    torch.testing.assert_close(draws.std(0), z.std(0), rtol=0.25, atol=0)


def test_cli_samples_through_gmm_and_two_stage(vae_run, tmp_path, capsys):
    for spec, name in (("gmm:3", "gmm-3"), ("two-stage", "two-stage")):
        out = tmp_path / f"{name}.png"
        assert main(["sample", str(vae_run), "--sampler", spec, "-n", "16", "-o", str(out)]) == 0
        assert out.is_file() and (vae_run / "samplers" / f"{name}-best.safetensors").is_file()
    # prior: today's samples, bit for bit
    assert main(["sample", str(vae_run), "-n", "16", "-o", str(tmp_path / "default.png")]) == 0
    assert main(["sample", str(vae_run), "--sampler", "prior", "-n", "16", "-o", str(tmp_path / "prior.png")]) == 0
    model = vaelab.load(vae_run)
    torch.manual_seed(0)
    want = model.sample(16)
    from vaelab.images import save_grid
    save_grid(want, tmp_path / "want.png")
    assert (tmp_path / "prior.png").read_bytes() == (tmp_path / "default.png").read_bytes() == \
        (tmp_path / "want.png").read_bytes()
    assert (tmp_path / "gmm-3.png").read_bytes() != (tmp_path / "prior.png").read_bytes()


def test_eval_scores_a_fitted_sampler(vae_run, capsys):
    assert main(["eval", str(vae_run), "-k", "2", "--samples", "300", "--sampler", "gmm:3"]) == 0
    res = json.loads(capsys.readouterr().out)
    saved = json.loads((vae_run / "eval-test-best-k2-gmm-3-n300-seed0.json").read_text())
    assert res == saved and res["sampler"] == "gmm:3" and res["parzen_samples"] == 300 and res["frechet"] > 0
    assert "nll" in res


def test_an_autoencoder_samples_through_a_mixture_of_its_codes(tmp_path, capsys):
    ae = _run(tmp_path / "ae", model="ae")
    _fails(capsys, ["sample", str(ae)], "no prior to sample from", "--sampler gmm:K")
    assert main(["sample", str(ae), "--sampler", "gmm:2", "-n", "4", "-o", str(tmp_path / "ae.png")]) == 0
    assert (tmp_path / "ae.png").is_file()


# ---- the two-stage sampler is fitted to the aggregate posterior, not to the posterior's means ----

class _Posterior(_Codes):
    """A stand-in whose posterior q(z|x) = N(x, s^2 I) is wide: its codes (the means) are x."""

    def __init__(self, d: int, s: float):
        super().__init__(d)
        self.s = s

    def encode(self, x):
        return DiagonalGaussian(x, torch.full_like(x, 2 * math.log(self.s)))


def _fit_two_stage(model, x, monkeypatch, epochs=None):
    """The two-stage stage fitted to model's posterior at x (seeded), and the data of each epoch
    it was trained on, unstandardised: [epochs][N, D]."""
    seen = []
    real = samplers._train

    def spy(stage, data, recipe):
        if not callable(data):  # one tensor for every epoch, as it once was
            seen.extend([data] * recipe["epochs"])
            return real(stage, data, recipe)
        return real(stage, lambda e: seen.append(data(e)) or seen[-1], recipe)
    monkeypatch.setattr(samplers, "_train", spy)
    if epochs is not None:
        monkeypatch.setitem(samplers.TWO_STAGE, "epochs", epochs)  # the sampler's own recipe, restored after
    torch.manual_seed(0)
    stage = samplers._fit(samplers.parse_sampler("two-stage"), model, x)[0]
    return stage, [s * stage.std + stage.mean for s in seen]


def test_two_stage_is_fitted_to_draws_of_the_posterior_redrawn_each_epoch(monkeypatch):
    # means of spread (1, 2) and a posterior std of 2: Var_q[z] = Var[mu] + E[sigma^2] = (5, 8),
    # where the means alone have (1, 4): the prior fitted to them was too narrow
    mu = torch.randn(3000, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0])
    stage, seen = _fit_two_stage(_Posterior(2, 2.0), mu, monkeypatch)
    var_q = mu.var(0) + 4.0  # the law of total variance
    torch.testing.assert_close(stage.std ** 2, var_q, rtol=1e-5, atol=0)
    torch.testing.assert_close(stage.mean, mu.mean(0))
    # an independent reference: many draws of N(mu, 4) by torch.distributions
    torch.manual_seed(1)
    ref = td.Normal(mu, 2.0).sample((20,)).reshape(-1, 2)
    torch.testing.assert_close(stage.std ** 2, ref.var(0), rtol=0.03, atol=0)
    # what it was trained on: one fresh draw per image each epoch, mu + 2 eps
    assert len(seen) == samplers.TWO_STAGE["epochs"]
    for data in seen:
        eps = (data - mu) / 2
        assert abs(float(eps.mean())) < 0.05 and abs(float(eps.std()) - 1) < 0.03
    assert not torch.allclose(seen[0], seen[1])
    # and the fitted density has the aggregate posterior's spread
    torch.manual_seed(2)
    with torch.no_grad():
        draws = stage.eval().sample(20_000)
    torch.testing.assert_close(draws.var(0), var_q, rtol=0.15, atol=0)


def test_two_stage_keeps_the_codes_of_a_model_without_a_sigma(monkeypatch):
    # an autoencoder's q(z|x) is a point at its code: every epoch trains on the codes themselves
    z = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * 3 + 1
    stage, seen = _fit_two_stage(_Codes(3), z, monkeypatch, epochs=2)
    torch.testing.assert_close(stage.std, z.std(0))
    assert all(torch.allclose(data, z, atol=1e-5, rtol=0) for data in seen)


def test_two_stage_of_a_trained_vae_has_the_aggregate_posteriors_variance(vae_run, monkeypatch):
    model = vaelab.load(vae_run, device="cpu").eval()
    x = split_inputs(vae_run, "train")[0]
    stage, seen = _fit_two_stage(model, x, monkeypatch, epochs=2)
    with torch.no_grad():
        q = model.encoder(x).chunk(2, -1)  # mu, log sigma^2 from the raw encoder
        torch.manual_seed(3)
        ref = td.Normal(q[0], torch.exp(0.5 * q[1])).sample((50,)).reshape(-1, q[0].shape[1])
    torch.testing.assert_close(stage.std ** 2, ref.var(0), rtol=0.03, atol=0)
    assert (q[0].var(0) / ref.var(0) < 0.9).any()  # the means' variance alone is measurably less
    assert not torch.allclose(seen[0], seen[1])


def test_two_stage_draws_an_iafs_codes_through_its_flow(monkeypatch):
    from vaelab.models import MODELS
    from vaelab.models.iaf import IAFConfig
    torch.manual_seed(0)
    model = MODELS["iaf"](IAFConfig(shape=(1, 4, 4), hidden=(8,), latent_dim=2, flow_steps=2, context_dim=4,
                                    flow_hidden=(8,))).eval()
    x = torch.bernoulli(torch.full((2000, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(1))
    stage, seen = _fit_two_stage(model, x, monkeypatch, epochs=2)
    with torch.no_grad():
        torch.manual_seed(4)
        ref = model.posterior_sample(x, 20)[0].reshape(-1, 2)  # z_T ~ q(z_T|x)
    torch.testing.assert_close(stage.std ** 2, ref.var(0), rtol=0.05, atol=0)
    assert not torch.allclose(seen[0], seen[1])


# ---- the registry: a sampler is one class, registered by one line ----

def test_every_registered_sampler_has_a_name_a_title_and_a_caption():
    assert {"prior", "gmm", "two-stage", "pixelcnn"} <= set(SAMPLERS)
    for name, cls in SAMPLERS.items():
        assert cls.name == name and issubclass(cls, samplers.BaseSampler)
        assert all(isinstance(t, str) and t.strip() for t in (cls.title, cls.caption)), name
        spec = samplers.parse_sampler(name if cls.argument is None else f"{name}:{cls.example}")
        assert spec.sampler_class is cls and str(spec.sampler) == str(spec)
        assert "{" not in spec.title + spec.caption, name  # the argument filled in
        assert spec.caption[0].islower() and not spec.caption.endswith("."), name  # completes "samples drawn from"
    spec = samplers.parse_sampler("gmm:10")
    assert (str(spec), spec.slug, spec.title) == ("gmm:10", "gmm-10", "Gaussian mixture of 10 components")
    assert spec.caption.startswith("a Gaussian mixture of 10 full-covariance components fitted by EM to the codes "
                                   "of the training images")
    assert samplers.USAGE == samplers.usage() == \
        "prior, gmm:K (K a whole number from 1 to 1000), two-stage or pixelcnn"
    with pytest.raises(ValueError, match="two samplers"):
        register_sampler("gmm")(type("Again", (samplers.BaseSampler,), {}))


class _Shifted(torch.nn.Module):
    """The test sampler's stage: N(mean, (1/S)^2 I)."""

    def __init__(self, d: int, s: int):
        super().__init__()
        self.s = s
        self.register_buffer("mean", torch.zeros(d))

    def sample(self, n):
        return self.mean + torch.randn(n, len(self.mean)) / self.s


def test_a_sampler_registered_by_one_line_is_parsed_resolved_fitted_and_cached(vae_run, tmp_path, capsys):
    fits = []

    @register_sampler("test-mean")  # the one line
    class MeanSampler(samplers.base.VectorSampler):
        title, caption = "Mean code, S = {S}", "a Gaussian at the mean code, of standard deviation 1/{S}"
        argument, bounds, example = "S", (1, 9), 2

        def fit(self, model, x, train):
            fits.append(self)
            stage = self.build({"dim": model.code_dim})
            stage.mean.copy_(self.codes(model, x).mean(0))
            return stage, {"dim": model.code_dim}, "the mean code"

        def build(self, settings):
            return _Shifted(settings["dim"], self.arg)

    try:
        spec = samplers.parse_sampler("test-mean:3")
        assert (str(spec), spec.slug, spec.caption) == ("test-mean:3", "test-mean-3",
                                                        "a Gaussian at the mean code, of standard deviation 1/3")
        assert samplers.usage().endswith(", pixelcnn or test-mean:S (S a whole number from 1 to 9)")
        with pytest.raises(vaelab.VaelabError, match=r"got 'test-man:4' \(did you mean 'test-mean:4'\?\)"):
            samplers.parse_sampler("test-man:4")
        with pytest.raises(vaelab.VaelabError, match="from 1 to 9"):
            samplers.parse_sampler("test-mean:10")
        model = vaelab.load(vae_run, device="cpu")
        assert samplers.resolve_sampler("test-mean:3", type(model), vae_run) == spec
        from vaelab.models import MODELS
        with pytest.raises(vaelab.VaelabError, match="which has no encoder"):  # VectorSampler's check
            samplers.resolve_sampler("test-mean:3", MODELS["gan"], "RUN")
        drawer = samplers.sampler_for(vae_run, model, "test-mean:3")
        assert len(fits) == 1 and (vae_run / "samplers" / "test-mean-3-best.safetensors").is_file()
        again = samplers.sampler_for(vae_run, model, "test-mean:3")  # read back through build
        assert len(fits) == 1 and torch.equal(again.stage.mean, drawer.stage.mean)
        assert drawer.sample(5).shape == (5, *model.data_spec.shape)
        out = tmp_path / "mean.png"
        assert main(["sample", str(vae_run), "--sampler", "test-mean:3", "-n", "4", "-o", str(out)]) == 0
        assert out.is_file() and len(fits) == 1
        capsys.readouterr()
    finally:
        SAMPLERS.pop("test-mean", None)
    _fails(capsys, ["sample", str(vae_run), "--sampler", "test-mean:3"],
           "--sampler must be prior, gmm:K (K a whole number from 1 to 1000), two-stage or pixelcnn, got 'test-mean:3'")
