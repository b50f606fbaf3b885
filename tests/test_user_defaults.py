"""What a new user expects without reading the docs: a run finds its data again wherever it was
found, colour images get a likelihood made for their levels, the console's figures are on
eval's scale, and the posterior's moments go by torch.distributions' names."""
import dataclasses
import gzip
import json
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import vaelab
from vaelab.api import evaluate, load, split_inputs
from vaelab.cli import main
from vaelab.data import DataSpec
from vaelab.distributions import Bernoulli, DiagonalGaussian, Gaussian
from vaelab.errors import VaelabError
from vaelab.evaluation.samples import sample_metrics
from vaelab.models.vae import VAEConfig

TINY = ["--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--batch-size", "8", "--nll-samples", "0",
        "--no-progress", "--device", "cpu"]


# ------------------------------------------------------------ a run finds its data again

def _idx(path, magic_dims: tuple, data: np.ndarray) -> None:
    magic, *dims = magic_dims
    path.write_bytes(gzip.compress(struct.pack(">I" + "I" * len(dims), magic, *dims) + data.tobytes()))


def _fake_mnist(root, seed: int, n_train: int = 40, n_test: int = 12):
    """An MNIST-shaped dataset of random pixels in ``root/mnist/``: its 4 IDX files, small."""
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for images, labels, n in (("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", n_train),
                              ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", n_test)):
        _idx(folder / images, (0x803, n, 28, 28), rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(folder / labels, (0x801, n), rng.integers(0, 10, n, dtype=np.uint8))
    return root


@pytest.fixture
def new_shell(tmp_path, monkeypatch):
    """A shell elsewhere, with no $VAELAB_DATA, ./data or user data folder: only what a run
    recorded can say where its data is."""
    def enter():
        monkeypatch.delenv("VAELAB_DATA", raising=False)
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / "elsewhere")
    return enter


@pytest.fixture
def mnist_run(tmp_path, monkeypatch):
    """A tiny run on an MNIST-shaped dataset found through $VAELAB_DATA (no --data-dir)."""
    root = _fake_mnist(tmp_path / "root", seed=1)
    monkeypatch.setenv("VAELAB_DATA", str(root))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--val-size", "8", "--out", str(run), *TINY]) == 0
    return run, root


def test_a_later_command_reads_the_data_where_training_found_it(mnist_run, new_shell, tmp_path, capsys):
    run, root = mnist_run
    doc = json.loads((run / "config.json").read_text())
    assert doc["run"]["data"]["data_dir"] is None and doc["data_source"] == str(root / "mnist")
    expected = split_inputs(run, "test")[0]
    new_shell()
    # before: "cannot find the mnist dataset", as reconstruct and probe said
    x, y = split_inputs(run, "test")
    assert torch.equal(x, expected) and len(y) == 12
    assert main(["reconstruct", str(run), "-o", str(tmp_path / "rec.png")]) == 0
    # the samples' scores read the test split too (a model from vaelab.load knows where)
    model = load(run)
    model.data_spec = dataclasses.replace(model.data_spec, num_classes=0)  # no Fréchet classifier to train
    assert sample_metrics(model, 4)["parzen_n_test"] == 12
    capsys.readouterr()


def test_where_training_found_it_comes_before_the_environment_and_after_data_dir(mnist_run, new_shell,
                                                                                 tmp_path, monkeypatch):
    run, root = mnist_run
    ours = split_inputs(run, "test")[0]
    other = _fake_mnist(tmp_path / "other", seed=2)
    new_shell()
    monkeypatch.setenv("VAELAB_DATA", str(other))  # another MNIST in today's environment
    assert torch.equal(split_inputs(run, "test")[0], ours)
    theirs = split_inputs(run, "test", data_dir=str(other))[0]  # an explicit --data-dir wins
    assert not torch.equal(theirs, ours) and theirs.shape == ours.shape
    # moved away: the usual places are searched, and a sentence says where training read it
    (root / "mnist").rename(tmp_path / "gone")
    assert torch.equal(split_inputs(run, "test")[0], theirs)
    monkeypatch.delenv("VAELAB_DATA")
    with pytest.raises(VaelabError, match=r"cannot find the mnist dataset.*training read it from .*root/mnist, "
                                          r"which no longer holds it\.$"):
        split_inputs(run, "test")


def test_resume_in_a_new_shell_finds_the_data_where_training_did(mnist_run, new_shell, capsys):
    run, _ = mnist_run
    new_shell()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()


def test_a_relative_data_path_is_found_from_another_folder(tmp_path, monkeypatch, new_shell, capsys):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "a.npy", np.random.default_rng(3).integers(0, 256, (40, 6, 6)).astype(np.uint8))
    assert main(["train", "--data", "array", "--data-path", "a.npy", "--out", "run", *TINY]) == 0
    expected = split_inputs("run", "test")[0]
    new_shell()
    assert torch.equal(split_inputs(tmp_path / "run", "test")[0], expected)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_source"] == str(tmp_path / "a.npy")
    capsys.readouterr()


# ------------------------------------------------------------ a likelihood made for the data

def _colour_folder(root, n=24):
    rng = np.random.default_rng(5)
    root.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def _model_of(run) -> dict:
    return json.loads((run / "config.json").read_text())["run"]["model"]


def test_colour_photos_default_to_a_likelihood_of_their_levels(tmp_path, capsys):
    photos = _colour_folder(tmp_path / "photos")
    assert main(["train", "--data", "image-folder", "--data-path", str(photos), "--out", str(tmp_path / "a"),
                 "--workers", "1", *TINY]) == 0
    err = capsys.readouterr().err
    m = _model_of(tmp_path / "a")
    # before: bernoulli on dynamically binarized colour photos, and nothing said
    assert (m["likelihood"], m["binarize"]) == ("logistic", "none")
    line = next(s for s in err.splitlines() if s.startswith("likelihood"))
    assert line == ("likelihood logistic, discretized on the 256 levels, on the intensities as they are "
                    "(--binarize none): the images are in colour (3 channels, 256 levels); --likelihood and "
                    "--binarize choose others.")
    # CIFAR-10-shaped arrays alike: decided by the data, not by its name
    np.save(tmp_path / "c.npy", np.random.default_rng(6).integers(0, 256, (40, 8, 8, 3)).astype(np.uint8))
    assert main(["train", "--data", "array", "--data-path", str(tmp_path / "c.npy"), "--out", str(tmp_path / "c"),
                 *TINY]) == 0
    assert (_model_of(tmp_path / "c")["likelihood"], _model_of(tmp_path / "c")["binarize"]) == ("logistic", "none")
    assert load(tmp_path / "c").cfg.likelihood == "logistic"
    capsys.readouterr()


@pytest.mark.parametrize("flags, expect, says", [
    (["--likelihood", "bernoulli"], ("bernoulli", "dynamic"), "--binarize dynamic: --likelihood bernoulli takes "
                                                               "binary pixels."),
    (["--binarize", "dynamic"], ("bernoulli", "dynamic"), "--binarize dynamic asks for binary pixels"),
    (["--likelihood", "gaussian"], ("gaussian", "none"), "--binarize none: --likelihood gaussian models the grey "
                                                         "levels."),
    (["--likelihood", "bernoulli", "--binarize", "none"], ("bernoulli", "none"), None),
])
def test_a_likelihood_or_binarization_given_wins(tmp_path, capsys, flags, expect, says):
    np.save(tmp_path / "c.npy", np.random.default_rng(6).integers(0, 256, (40, 8, 8, 3)).astype(np.uint8))
    assert main(["train", "--data", "array", "--data-path", str(tmp_path / "c.npy"), "--out", str(tmp_path / "r"),
                 *flags, *TINY]) == 0
    m = _model_of(tmp_path / "r")
    assert (m["likelihood"], m["binarize"]) == expect
    err = capsys.readouterr().err
    if says is None:  # nothing was left to choose: nothing is said
        assert not any(s.startswith(("likelihood", "--binarize")) for s in err.splitlines())
    else:
        assert says in err


def test_single_channel_images_keep_the_lecture_default(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "r"), *TINY]) == 0
    assert (_model_of(tmp_path / "r")["likelihood"], _model_of(tmp_path / "r")["binarize"]) == ("bernoulli", "dynamic")
    assert ("likelihood bernoulli on pixels binarized afresh at each use (--binarize dynamic): the images are "
            "single-channel (1 channel, 17 levels)") in capsys.readouterr().err


def test_models_without_a_likelihood_keep_colour_unbinarized():
    from vaelab.training.trainer import settle_for_data
    cfg = vaelab.make_config(model="ae", data="digits").model
    assert cfg.binarize == "auto"  # unset, told apart from any value given
    colour, grey = DataSpec("c", (3, 8, 8), 256, 0), DataSpec("g", (1, 8, 8), 256, 0)
    assert settle_for_data(cfg, colour)[0].binarize == "none"
    assert settle_for_data(cfg, grey)[0].binarize == "dynamic"
    given = vaelab.make_config(model="ae", data="digits", binarize="static").model
    assert settle_for_data(given, colour) == (dataclasses.replace(given, shape=(3, 8, 8)), None)


def test_a_config_left_to_the_data_settles_by_its_own_shape_and_round_trips():
    # a model built by hand (no trainer) decides from its config's shape and levels, as training would
    assert vaelab.models.get_model("vae")(VAEConfig(shape=(3, 4, 4), latent_dim=2, hidden=(4,))).cfg.likelihood \
        == "logistic"
    assert vaelab.models.get_model("vae")(VAEConfig(shape=(1, 4, 4), latent_dim=2, hidden=(4,))).cfg.binarize \
        == "dynamic"
    # an older run's config.json holds the old defaults as values: read back unchanged
    from vaelab.run import RunConfig
    run = vaelab.make_config(data="digits", likelihood="bernoulli", binarize="dynamic")
    again = RunConfig.from_dict(json.loads(json.dumps(run.to_dict())), "config.json")
    assert (again.model.likelihood, again.model.binarize) == ("bernoulli", "dynamic")
    # and "auto" round-trips as itself until the data settles it
    auto = vaelab.make_config(data="digits")
    assert RunConfig.from_dict(json.loads(json.dumps(auto.to_dict())), "x").model.likelihood == "auto"


# ------------------------------------------------------------ one scale on the console and in eval

def test_the_console_and_eval_report_the_validation_elbo_on_one_scale(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--data", "digits", "--likelihood", "gaussian", "--binarize", "none", "--hidden", "16",
                 "--latent-dim", "2", "--epochs", "2", "--batch-size", "64", "--nll-samples", "0", "--no-progress",
                 "--device", "cpu", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    printed = float(err.split("epoch 2/2:")[1].split("val elbo ")[1].split()[0])
    assert printed == pytest.approx(last["val"], abs=1e-3)
    res = evaluate(run, "val", k=1, checkpoint="last", save=False, sample_metrics=False)
    offset = 64 * math.log(17)  # D log(levels): what eval adds for the dequantization
    # before: the console's ELBO was the density's, `offset` (181 nats) above eval's; what is
    # left is the one-sample noise of the two ELBO estimates (different draws of z)
    assert last["val"] == pytest.approx(res["elbo"], abs=0.05 * offset)
    assert last["train_elbo"] == pytest.approx(-last["train_loss"], abs=1e-6)  # beta = 1: one scale for both


def test_a_discrete_likelihood_needs_no_shift():
    model = vaelab.models.get_model("vae")(VAEConfig(shape=(1, 4, 4), latent_dim=2, hidden=(4,)))
    assert model.data_scale() == {}
    deq = vaelab.models.get_model("vae")(VAEConfig(shape=(1, 4, 4), levels=17, latent_dim=2, hidden=(4,),
                                                   likelihood="gaussian", binarize="none"))
    assert deq.data_scale()["elbo"] == pytest.approx(-16 * math.log(17))
    assert deq.data_scale()["loss"] == pytest.approx(16 * math.log(17))


# ------------------------------------------------------------ torch.distributions' names

def test_the_posterior_has_torch_distributions_moments():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g,
                                                                                   dtype=torch.float64)
    q = DiagonalGaussian(mu, logvar)
    ref = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    for name in ("mean", "stddev", "variance", "loc", "scale"):
        torch.testing.assert_close(getattr(q, name), getattr(ref, name), rtol=1e-12, atol=0)
    torch.testing.assert_close(q.mu, q.mean, rtol=0, atol=0)  # the old name stays
    torch.testing.assert_close(q.std, ref.stddev, rtol=1e-12, atol=0)
    z = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.entropy(), ref.entropy().sum(-1), rtol=1e-12, atol=1e-12)
    std_normal = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(q.kl_to_standard_normal(),
                               torch.distributions.kl_divergence(ref, std_normal).sum(-1), rtol=1e-12, atol=1e-12)
    assert q.rsample().shape == (5, 3) and q.rsample(7).shape == (7, 5, 3)


def test_the_likelihoods_have_torch_distributions_moments():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64)
    b, ref = Bernoulli(logits, 3), torch.distributions.Bernoulli(logits=logits)
    for name in ("mean", "variance", "probs"):
        torch.testing.assert_close(getattr(b, name), getattr(ref, name), rtol=1e-12, atol=1e-15)
    loc, log_scale = torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64), torch.randn(1, 3, 3, generator=g,
                                                                                            dtype=torch.float64)
    n, ref = Gaussian(loc, log_scale, 3), torch.distributions.Normal(loc, torch.exp(log_scale))
    for name in ("mean", "stddev", "variance"):
        torch.testing.assert_close(getattr(n, name), getattr(ref, name), rtol=1e-12, atol=0)


def test_the_api_encoder_returns_the_names(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "r"), *TINY]) == 0
    capsys.readouterr()
    model = load(tmp_path / "r")
    q = model.encode(split_inputs(tmp_path / "r", "test")[0][:4])
    assert q.mean.shape == q.stddev.shape == q.variance.shape == (4, 2)
