"""The conditional VAE: its NLL -log p(x|y) against an exact value, sampling by class from the
command line (for M2 too), and the class-conditional quality eval reports."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import vaelab
from vaelab.cli import main
from vaelab.data import run_dataset
from vaelab.data.transforms import to_unit
from vaelab.evaluation.frechet import feature_classifier, frechet_from_images
from vaelab.evaluation.likelihood import evaluate_likelihood, log_likelihood_is
from vaelab.evaluation.samples import class_metrics
from vaelab.models.cvae import CVAE, CVAEConfig
from vaelab.run import DataConfig
from vaelab.training.trainer import train as train_loop

GRID = torch.linspace(-12, 12, 24001, dtype=torch.float64)  # z, step 1e-3


def _tiny() -> CVAE:
    torch.manual_seed(0)
    cfg = CVAEConfig(shape=(1, 2, 2), hidden=(8,), latent_dim=1, num_classes=3, likelihood="bernoulli")
    return CVAE(cfg).double().eval()


@torch.no_grad()
def exact_log_px_given_y(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log integral p(x|y,z) N(z) dz on a fine grid over the 1-D z: [B]."""
    dz = (GRID[1] - GRID[0]).item()
    log_pz = -0.5 * (GRID ** 2 + math.log(2 * math.pi))
    out = []
    for xi, yi in zip(x, y):
        lik = model.decode_y(GRID[:, None], F.one_hot(yi, 3).double().expand(len(GRID), -1))  # batch [G]
        out.append(torch.logsumexp(lik.log_prob(xi) + log_pz, 0) + math.log(dz))
    return torch.stack(out)


def test_is_nll_is_of_x_given_its_label_and_matches_the_exact_value():
    model = _tiny()
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(6, 1, 2, 2, generator=g, dtype=torch.float64) < 0.5).double()
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    exact = exact_log_px_given_y(model, x, y)
    torch.manual_seed(2)
    estimate, mean_log_w = log_likelihood_is(model, x, 20000, y=y)
    assert torch.allclose(estimate, exact, atol=0.02), (estimate, exact)
    assert (mean_log_w <= exact + 1e-9).all()
    # another label is another likelihood: the figure reads the labels it is given
    assert not torch.allclose(exact, exact_log_px_given_y(model, x, (y + 1) % 3), atol=0.05)
    res = evaluate_likelihood(model, x, 20000, compile=False, precision="fp32", y=y)
    assert abs(res["nll"] + exact.mean().item()) < 0.02
    with pytest.raises(vaelab.VaelabError, match="given their labels"):
        evaluate_likelihood(model, x, 10)


@pytest.mark.parametrize("lead", [(), (4,), (3, 4)])
def test_the_posterior_is_the_mlp_of_the_image_and_its_class_vector(lead):
    """q(z|x,y) computes the image's part of its first layer once per image: it must be the same
    net as the plain mlp of [x, y], for one class vector an image or several (M2 pairs each image
    with every class), one-hot or probabilities."""
    torch.manual_seed(0)
    cfg = CVAEConfig(shape=(1, 3, 3), hidden=(7, 5), latent_dim=2, num_classes=4)
    post = CVAE(cfg).double().encoder
    x = torch.rand(6, 1, 3, 3, dtype=torch.float64)
    y = torch.softmax(torch.randn(6, *lead, 4, dtype=torch.float64), -1)
    flat = x.flatten(1).view(6, *([1] * len(lead)), 9).expand(6, *lead, 9)
    mu, logvar = post.net(torch.cat([flat, y], -1)).chunk(2, -1)
    q = post(x, y)
    assert q.mu.shape == (6, *lead, 2)
    assert torch.allclose(q.mu, mu, atol=1e-12) and torch.allclose(q.logvar, logvar, atol=1e-12)


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cvae") / "run"
    cfg = vaelab.make_config(model="cvae", data="digits", hidden=(32,), latent_dim=4, batch_size=64, epochs=2,
                             nll_samples=0, progress=False, device="cpu", report=False, out=str(out))
    return train_loop(cfg, log=lambda m: None)


def test_sample_class_draws_the_chosen_class(cvae_run, tmp_path, capsys):
    from vaelab.images import save_grid
    assert main(["sample", str(cvae_run), "--class", "3", "-n", "6", "-o", str(tmp_path / "c3.png")]) == 0
    assert main(["sample", str(cvae_run), "--per-class", "-n", "2", "-o", str(tmp_path / "rows.png")]) == 0
    model = vaelab.load(cvae_run, device="cpu")
    torch.manual_seed(0)  # sample's --seed
    a = model.sample_class(torch.full((6,), 3))
    torch.manual_seed(0)
    b = model.decode_mean(torch.cat([torch.randn(6, 4), F.one_hot(torch.full((6,), 3), 10).float()], -1))
    assert torch.equal(a, b)  # z ~ N(0, I) beside the one-hot class 3
    save_grid(a, tmp_path / "want-c3.png")
    assert (tmp_path / "c3.png").read_bytes() == (tmp_path / "want-c3.png").read_bytes()
    # --per-class: a row for each class, the same z down each column
    torch.manual_seed(0)
    z = torch.randn(2, 4)
    rows = model.decode_mean(torch.cat([z.repeat(10, 1), F.one_hot(torch.arange(10).repeat_interleave(2), 10).float()],
                                       -1))
    save_grid(rows, tmp_path / "want-rows.png", nrow=2, row_labels=[f"class {c}" for c in range(10)])
    assert (tmp_path / "rows.png").read_bytes() == (tmp_path / "want-rows.png").read_bytes()


@pytest.mark.parametrize("flags, said", [
    (["--class", "10"], "--class must be one of the run's classes, 0 to 9, got 10."),
    (["--class", "1", "--per-class"], "--class and --per-class are two ways"),
    (["--class", "1", "--sampler", "gmm:2"], "--sampler gmm:2 does not apply"),
    (["--per-class", "--nrow", "4"], "--nrow does not apply with --per-class"),
])
def test_sample_by_class_refusals(cvae_run, flags, said, capsys):
    assert main(["sample", str(cvae_run), *flags]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err and err.count("\n") == 1


def test_sample_by_class_needs_a_model_of_labels(tmp_path, capsys):
    cfg = vaelab.make_config(model="vae", data="digits", hidden=(8,), latent_dim=2, epochs=1, nll_samples=0,
                             progress=False, report=False, out=str(tmp_path / "vae"))
    run = train_loop(cfg, log=lambda m: None)
    assert main(["sample", str(run), "--per-class"]) == 2
    assert "needs a model that samples a chosen class (cvae, m2)" in capsys.readouterr().err


def test_cvae_refuses_hidden_labels(tmp_path, capsys):
    assert main(["train", "--model", "cvae", "--data", "digits", "--labels", "50", "--out", str(tmp_path / "r")]) == 2
    assert "learns from labelled images only" in capsys.readouterr().err
    assert not (tmp_path / "r" / "config.json").exists()


class _Drawer(torch.nn.Module):
    """A stand-in for a model of labels that draws real test images: of the class asked for, or
    (``shift``) of the next one."""

    def __init__(self, x, y, shift=0):
        super().__init__()
        self.x, self.y, self.shift = x, y, shift
        self.w = torch.nn.Parameter(torch.zeros(1))

    def sample_class(self, classes):
        c = int(classes[0] + self.shift) % 10
        pool = self.x[self.y == c]
        return pool[torch.randint(len(pool), (len(classes),))]


def test_class_accuracy_is_the_share_the_classifier_gives_the_class_asked_for():
    ds = run_dataset(DataConfig(data="digits"))
    x_tr, x_te = to_unit(ds.train.x, ds.spec.levels), to_unit(ds.test.x, ds.spec.levels)
    net = feature_classifier("digits", x_tr, ds.train.y, tuple(ds.spec.shape), 10)
    good = class_metrics(_Drawer(x_te, ds.test.y), net, x_te, ds.test.y, 400, 0, 10)
    assert set(good["class_accuracy"]["per_class"]) == {str(c) for c in range(10)}
    # real images of class c: the classifier's own accuracy on that class (it is ~97% on digits)
    assert good["class_accuracy"]["overall"] > 0.9
    c3 = x_te[ds.test.y == 3]
    assert good["frechet_per_class"]["3"] < frechet_from_images(net, c3, x_te[ds.test.y == 5][:len(c3)])
    bad = class_metrics(_Drawer(x_te, ds.test.y, shift=1), net, x_te, ds.test.y, 400, 0, 10)
    assert bad["class_accuracy"]["overall"] < 0.1
    # each class's figure against a direct count of the classifier's answers on the same draws
    from vaelab.evaluation.samples import _OfClass, draw_samples
    for c in (0, 7):
        x, _ = draw_samples(_OfClass(_Drawer(x_te, ds.test.y), c), 40, 0 + 1 + c)
        with torch.no_grad():
            want = (net(x).argmax(-1) == c).double().mean().item()
        assert good["class_accuracy"]["per_class"][str(c)] == pytest.approx(want)


def test_eval_of_a_cvae_reports_class_accuracy(cvae_run):
    res = vaelab.evaluate(cvae_run, k=2, samples=200, save=False)
    assert set(res["class_accuracy"]) == {"overall", "per_class"} and len(res["frechet_per_class"]) == 10
    acc = res["class_accuracy"]
    assert acc["overall"] == pytest.approx(sum(acc["per_class"].values()) / 10) and res["samples_per_class"] == 20
    assert res["nll"] > 0
    json.dumps(res)


def test_a_conditional_nll_is_never_compared_with_an_nll_of_x(cvae_run):
    from vaelab.report.metrics import measurements
    res = vaelab.evaluate(cvae_run, k=2, sample_metrics=False)
    assert res["nll_of"] == "x given its label"
    (m,) = [m for m in measurements(cvae_run) if "nll" in m.values]
    assert m.how["nll_of"] == "x given its label"  # a column of its own in compare (metrics.HOW)
