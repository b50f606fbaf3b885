"""Sample-quality metrics: the Parzen-window log-likelihood against a direct numpy/scipy
computation, the Fréchet distance against scipy.linalg.sqrtm and closed forms, and the cached
feature classifier's contract (shapes, accuracy on digits, determinism, cache hits and misses).
Every random quantity has a fixed seed."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.special import logsumexp

from vaelab.data import load_dataset
from vaelab.data.transforms import to_unit
from vaelab.errors import VaelabError
from vaelab.evaluation import frechet
from vaelab.evaluation.frechet import (FEATURES, FeatureNet, accuracy, feature_classifier, feature_stats,
                                     frechet_distance, frechet_from_images, train_feature_net)
from vaelab.evaluation.parzen import DEFAULT_SIGMAS, parzen_evaluate, parzen_log_likelihood, parzen_log_likelihoods
from vaelab.io import read_metadata


def parzen_ref(samples: np.ndarray, x: np.ndarray, sigma: float) -> np.ndarray:
    """log (1/N) sum_i N(x; s_i, sigma^2 I) from explicit differences, float64 numpy."""
    d2 = ((x[:, None, :] - samples[None, :, :]) ** 2).sum(-1)                      # [M, N]
    n, d = samples.shape
    return logsumexp(-d2 / (2 * sigma ** 2), axis=1) - math.log(n) - d * math.log(sigma * math.sqrt(2 * math.pi))


# ---------------------------------------------------------------------------------- Parzen

def test_parzen_matches_scipy_logsumexp():
    rng = np.random.default_rng(0)
    s, x = rng.standard_normal((50, 5)), rng.standard_normal((7, 5))
    both = parzen_log_likelihoods(torch.tensor(s), torch.tensor(x), [0.3, 1.7])
    assert both.dtype == torch.float64 and both.shape == (2, 7)
    for row, sigma in zip(both, (0.3, 1.7)):
        np.testing.assert_allclose(row.numpy(), parzen_ref(s, x, sigma), rtol=1e-8)
        # the grid version is the single-sigma version, sigma by sigma
        np.testing.assert_allclose(row.numpy(), parzen_log_likelihood(s, x, sigma).numpy(), rtol=1e-12)


def test_parzen_blocks_and_image_shapes_do_not_change_the_result():
    g = torch.Generator().manual_seed(1)
    s, x = torch.rand(37, 1, 2, 3, generator=g), torch.rand(11, 1, 2, 3, generator=g)
    whole = parzen_log_likelihoods(s.flatten(1), x.flatten(1), DEFAULT_SIGMAS, batch_size=1000)
    blocked = parzen_log_likelihoods(s, x, DEFAULT_SIGMAS, batch_size=3, sample_chunk=5)
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)


def test_parzen_chooses_sigma_on_validation_and_scores_test():
    rng = np.random.default_rng(2)
    scale, d = 0.3, 4
    samples, val, test = (scale * rng.standard_normal((n, d)) for n in (2000, 300, 500))
    out = parzen_evaluate(torch.tensor(samples), torch.tensor(val), torch.tensor(test))
    val_means = [parzen_ref(samples, val, s).mean() for s in DEFAULT_SIGMAS]
    assert out["parzen_sigma"] == DEFAULT_SIGMAS[int(np.argmax(val_means))]
    ll = parzen_ref(samples, test, out["parzen_sigma"])
    assert out["parzen_ll"] == pytest.approx(ll.mean(), rel=1e-10)
    assert out["parzen_se"] == pytest.approx(ll.std() / math.sqrt(len(ll)), rel=1e-8)
    assert (out["parzen_samples"], out["parzen_n_test"]) == (2000, 500)
    # sanity: the chosen window is near the data's own scale, and the estimate is below the true
    # entropy bound only by a modest margin (true mean log-density of N(0, 0.3^2 I_4))
    assert 0.1 <= out["parzen_sigma"] <= 0.3
    true_ll = -d * (0.5 + math.log(scale * math.sqrt(2 * math.pi)))
    assert true_ll - 1.0 < out["parzen_ll"] < true_ll + 0.2


# --------------------------------------------------------------------------------- Fréchet

def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d) + 1e-3 * np.eye(d)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, cov = feature_stats(torch.randn(500, 16, generator=torch.Generator().manual_seed(3)))
    assert mu.dtype == cov.dtype == torch.float64
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-6


@pytest.mark.parametrize("seed,d", [(0, 2), (1, 3), (2, 7), (3, 12), (4, 20)])
def test_frechet_distance_matches_scipy_sqrtm(seed, d):
    rng = np.random.default_rng(seed)
    m1, m2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _spd(rng, d), _spd(rng, d)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8, abs=1e-9)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(5)
    m1, m2, a, b = rng.standard_normal(6), rng.standard_normal(6), rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    exact = ((m1 - m2) ** 2).sum() + ((a - b) ** 2).sum()
    assert frechet_distance(m1, np.diag(a ** 2), m2, np.diag(b ** 2)) == pytest.approx(exact, rel=1e-10)
    # from 40,000 draws each, the empirical statistics land close to the closed form
    f1 = m1 + a * rng.standard_normal((40_000, 6))
    f2 = m2 + b * rng.standard_normal((40_000, 6))
    assert frechet_distance(*feature_stats(f1), *feature_stats(f2)) == pytest.approx(exact, rel=0.02)


# ---------------------------------------------------------------------------- classifier

@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (1, 28, 20), (3, 32, 32), (3, 64, 64), (1, 4, 4), (5,)])
def test_feature_net_shapes(shape):
    net = FeatureNet(shape, 10)
    x = torch.rand(3, *shape)
    assert net(x).shape == (3, 10)
    f = net.features(x)
    assert f.shape == (3, FEATURES) and torch.isfinite(f).all()
    convolutional = len(shape) == 3 and min(shape[1:]) >= 8
    assert any(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == convolutional


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", None)
    unit = lambda s: (to_unit(s.x, ds.spec.levels), s.y)  # noqa: E731
    return ds.spec, unit(ds.train), unit(ds.val), unit(ds.test)


@pytest.fixture(scope="module")
def digits_net(digits):
    spec, (x, y), _, _ = digits
    torch.set_num_threads(1)
    return train_feature_net(x, y, spec.shape, spec.num_classes, epochs=20, seed=0)


def test_feature_net_learns_digits(digits, digits_net):
    spec, _, _, (xt, yt) = digits
    assert not digits_net.training
    assert accuracy(digits_net, xt, yt) >= 0.9


def test_training_is_deterministic_given_the_seed(digits):
    spec, (x, y), _, _ = digits
    a, b, c = (train_feature_net(x[:300], y[:300], spec.shape, 10, epochs=2, seed=s) for s in (7, 7, 8))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_frechet_from_images_separates_real_from_noise(digits, digits_net):
    _, (x, _), (xv, _), (xt, _) = digits
    assert abs(frechet_from_images(digits_net, xt, xt)) < 1e-6
    real = frechet_from_images(digits_net, x[:360], xt, batch_size=100)
    noise_images = torch.rand(360, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    noise = frechet_from_images(digits_net, noise_images, xt)
    assert 0 < real < noise / 10


def test_feature_classifier_trains_once_and_caches(digits, tmp_path, monkeypatch):
    spec, (x, y), _, (xt, yt) = digits
    x, y = x[:400], y[:400]
    calls = []
    real_train = frechet.train_feature_net

    def quick_train(*args, **kwargs):  # the cache logic, not the recipe, is under test: keep it short
        calls.append(1)
        return real_train(*args, **{**kwargs, "epochs": 3})

    monkeypatch.setattr(frechet, "train_feature_net", quick_train)
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path))
    lines = []
    net = feature_classifier("digits", x, y, spec.shape, 10, log=lines.append, x_test=xt, y_test=yt)
    files = list((tmp_path / "classifiers").glob("digits-v*.safetensors"))
    assert len(calls) == 1 and len(files) == 1 and not net.training
    md = read_metadata(files[0])
    assert md["name"] == "digits" and md["shape"] == list(spec.shape) and md["num_classes"] == 10
    assert md["recipe"] == frechet.RECIPE_VERSION and md["accuracy"] == net.accuracy and 0 < net.accuracy <= 1

    # a second call loads the file: no training, the same weights, the same accuracy
    monkeypatch.setattr(frechet, "train_feature_net", lambda *a, **k: pytest.fail("trained again"))
    again = feature_classifier("digits", x, y, spec.shape, 10, cache_dir=tmp_path / "classifiers")
    assert again.accuracy == net.accuracy
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k

    # changed data: another key, another file, a new training
    monkeypatch.setattr(frechet, "train_feature_net", quick_train)
    x2 = x.clone()
    x2[0, 0, 0, 0] = 1 - x2[0, 0, 0, 0]
    feature_classifier("digits", x2, y, spec.shape, 10)
    assert len(calls) == 2 and len(list((tmp_path / "classifiers").iterdir())) == 2

    # a corrupt file is retrained and replaced, not an error
    files[0].write_bytes(b"not a safetensors file")
    feature_classifier("digits", x, y, spec.shape, 10, log=lines.append)
    assert len(calls) == 3 and read_metadata(files[0])["name"] == "digits"
    assert any("retraining" in line for line in lines)


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call", [
    lambda: parzen_log_likelihood(torch.zeros(0, 3), torch.zeros(2, 3), 0.1),
    lambda: parzen_log_likelihood(torch.zeros(4, 3), torch.zeros(2, 5), 0.1),
    lambda: parzen_log_likelihood(torch.zeros(4, 3), torch.zeros(2, 3), 0.0),
    lambda: parzen_log_likelihoods(torch.zeros(4, 3), torch.zeros(2, 3), [0.1, -1.0]),
    lambda: parzen_log_likelihood(torch.zeros(3), torch.zeros(2, 3), 0.1),
    lambda: parzen_log_likelihood(torch.full((4, 3), float("nan")), torch.zeros(2, 3), 0.1),
    lambda: parzen_evaluate(torch.zeros(4, 3), torch.zeros(0, 3), torch.zeros(2, 3)),
    lambda: parzen_evaluate(torch.zeros(4, 3), torch.zeros(2, 3), torch.zeros(2, 3), sigmas=[]),
    lambda: frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)),
    lambda: frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)),
    lambda: feature_stats(torch.zeros(1, 5)),
    lambda: FeatureNet((1, 8, 8), 1),
    lambda: train_feature_net(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4), (1, 8, 8), 10),
    lambda: train_feature_net(torch.zeros(4, 1, 8, 8), torch.zeros(4), (1, 28, 28), 10),
    lambda: train_feature_net(torch.full((4, 1, 8, 8), 255.0), torch.zeros(4), (1, 8, 8), 10),
    lambda: train_feature_net(torch.zeros(4, 1, 8, 8), torch.full((4,), 10), (1, 8, 8), 10),
    lambda: train_feature_net(torch.zeros(4, 1, 8, 8), torch.zeros(3), (1, 8, 8), 10),
    lambda: train_feature_net(torch.zeros(4, 1, 8, 8), torch.zeros(4), (1, 8, 8), 10, epochs=0),
    lambda: frechet_from_images(FeatureNet((1, 8, 8), 10), torch.rand(4, 1, 8, 8), torch.rand(4, 1, 28, 28)),
])
def test_bad_input_is_one_clear_error(call):
    with pytest.raises(VaelabError) as e:
        call()
    msg = str(e.value)
    assert msg.endswith(".") and "\n" not in msg


# --------------------------------------------------------------------------------------------
# a run's samples scored end to end (vaelab.evaluation.samples)
# --------------------------------------------------------------------------------------------

class _Replay(torch.nn.Module):
    """A stand-in generator whose samples are given images, drawn at random: scoring the
    training images themselves must beat scoring noise on both scales."""

    def __init__(self, images, run_config, data_spec):
        super().__init__()
        self.images = images
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.run_config, self.data_spec = run_config, data_spec

    def sample(self, n):
        return self.images[torch.randint(len(self.images), (n,))]


def test_sample_metrics_rank_data_above_noise(tmp_path):
    import vaelab
    from vaelab.data import load_dataset
    from vaelab.data.transforms import to_unit
    from vaelab.evaluation.samples import sample_metrics

    run = vaelab.train(vaelab.make_config(data="digits", model="gan", hidden=(8,), latent_dim=2, epochs=1,
                                          progress=False, out=str(tmp_path / "g")), log=lambda m: None)
    model = vaelab.load(run)
    ds = load_dataset("digits", None)
    train = to_unit(ds.train.x, ds.spec.levels)
    data = sample_metrics(_Replay(train, model.run_config, model.data_spec), 2000)
    noise = sample_metrics(_Replay(torch.rand_like(train), model.run_config, model.data_spec), 2000)
    assert data["parzen_ll"] > noise["parzen_ll"] + 10 * (data["parzen_se"] + noise["parzen_se"])
    assert data["frechet"] < noise["frechet"] / 10
    assert data["frechet_classifier_accuracy"] > 0.9
    assert data["parzen_samples"] == 2000 and data["parzen_n_test"] == len(ds.test) and data["samples_per_s"] > 0
    # the same seed draws the same samples: the scores repeat exactly
    again = sample_metrics(_Replay(train, model.run_config, model.data_spec), 2000)
    assert {k: v for k, v in again.items() if k != "samples_per_s"} == \
        {k: v for k, v in data.items() if k != "samples_per_s"}
