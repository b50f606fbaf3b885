"""Training loop contracts: exact resume, the run directory, the Python API."""
import json

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.errors import VaelabError
from vaelab.io import LOCK
from vaelab.rundir import FORMAT_VERSION

TINY = dict(data="digits", hidden=(32,), latent_dim=2, batch_size=64, epochs=4, nll_samples=20,
            progress=False, lr=3e-3, report=False)


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact(tmp_path):
    full = vaelab.train(vaelab.make_config(**TINY, out=str(tmp_path / "full")), log=lambda m: None)
    half = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 2}, out=str(tmp_path / "half")), log=lambda m: None)
    cfg = vaelab.make_config(**TINY)  # only epochs is taken from it on resume
    vaelab.train(cfg, resume=half, log=lambda m: None)
    a, b = _lines(full), _lines(half)
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert ra["train_loss"] == rb["train_loss"] and ra["val"] == rb["val"]
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(half / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_takes_where_and_how_long_from_the_caller_and_the_rest_from_the_run(tmp_path):
    run = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 1, "nll_samples": 0}, out=str(tmp_path / "r")),
                       log=lambda m: None)
    other = vaelab.make_config(**{**TINY, "epochs": 2, "latent_dim": 5, "lr": 0.5}, threads=1, device="cpu")
    vaelab.train(other, resume=run, log=lambda m: None)
    cfg = json.loads((run / "config.json").read_text())["run"]
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["threads"] == 1 and cfg["train"]["device"] == "cpu"
    assert cfg["model"]["latent_dim"] == 2 and cfg["train"]["lr"] == TINY["lr"]  # the run's own


def test_resume_a_finished_run_needs_more_epochs(tmp_path):
    run = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 1}, out=str(tmp_path / "r")), log=lambda m: None)
    with pytest.raises(VaelabError, match="--epochs larger than 1"):
        vaelab.train(vaelab.make_config(**{**TINY, "epochs": 1}), resume=run, log=lambda m: None)


def test_run_directory_and_api(tmp_path):
    run = vaelab.train(vaelab.make_config(**TINY, out=str(tmp_path / "r")), log=lambda m: None)
    for name in ("config.json", "model.safetensors", "best.safetensors", "resume.safetensors", "metrics.jsonl",
                 "eval-test.json", "samples.png", "reconstructions.png", "interpolation.png", "manifold.png",
                 "curves.png"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.tmp")) and [p.name for p in run.glob(".*")] == [LOCK]  # no temporaries
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["format_version"] == FORMAT_VERSION == 2 and cfg["run"]["model"]["shape"] == [1, 8, 8]
    model = vaelab.load(run, device="cpu")
    x = torch.rand(5, 1, 8, 8).round()
    assert model.encode(x).mu.shape == (5, 2)
    assert model.decode(torch.zeros(3, 2)).mean.shape == (3, 1, 8, 8)
    assert model.sample(4).shape == (4, 1, 8, 8)
    assert model.reconstruct(x).shape == (5, 1, 8, 8)
    res = vaelab.evaluate(run, k=50)
    assert {"elbo", "nll", "bpd", "n", "k"} <= res.keys()
    assert res["n"] == 360 and res["k"] == 50 and res["nll"] > 0
    assert res["elbo"] <= -res["nll"] + 1e-6  # the IS estimate is at least the ELBO on the same samples
    assert res["bpd"] == pytest.approx(res["nll"] / (64 * 0.6931471805599453))
    assert json.loads((run / "eval-test-best-k50-prior-n10000-seed0.json").read_text())["nll"] == res["nll"]


def test_out_holding_a_run_is_not_overwritten_silently(tmp_path):
    out = str(tmp_path / "r")
    vaelab.train(vaelab.make_config(**{**TINY, "epochs": 1}, out=out), log=lambda m: None)
    before = (tmp_path / "r" / "model.safetensors").read_bytes()
    with pytest.raises(VaelabError, match="already holds a run"):
        vaelab.train(vaelab.make_config(**{**TINY, "epochs": 1}, out=out), log=lambda m: None)
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == before


def test_best_checkpoint_tracks_validation(tmp_path):
    run = vaelab.train(vaelab.make_config(**TINY, out=str(tmp_path / "r")), log=lambda m: None)
    hist = _lines(run)
    best_epoch = max(hist, key=lambda r: r["val"])["epoch"]
    from safetensors import safe_open
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["epoch"]) == best_epoch


def test_warmup_run(tmp_path):
    run = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 2, "warmup_epochs": 1.5, "beta": 2.0},
                                          out=str(tmp_path / "wu")), log=lambda m: None)
    assert len(_lines(run)) == 2


def test_gaussian_likelihood_is_scored_on_dequantized_pixels(tmp_path):
    # a density on grey levels: scored on (k + u) / levels with D log(levels) added, so its
    # NLL bounds the code length of the 17-level digits and bits/dim mean the same as for a
    # discrete likelihood
    import math

    from vaelab.data.transforms import dequantize_fixed
    from vaelab.evaluation.likelihood import evaluate_likelihood
    run = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 1, "likelihood": "gaussian", "binarize": "none"},
                                          out=str(tmp_path / "g")), log=lambda m: None)
    torch.manual_seed(0)  # the same importance samples for both estimates below
    res = vaelab.evaluate(run, k=10, sample_metrics=False, device="cpu")
    torch.manual_seed(0)
    model = vaelab.load(run, device="cpu")  # (building it draws from the RNG, as in evaluate)
    x = vaelab.api.split_inputs(run)[0]
    u = dequantize_fixed(x, 17)
    assert ((u * 17).floor() == (x * 16).round()).all()  # each value stays in its own bin
    density = evaluate_likelihood(model, u, 10, discrete=False)
    assert res["nll"] == pytest.approx(density["nll"] + 64 * math.log(17), rel=1e-6)
    assert res["bpd"] == pytest.approx(res["nll"] / (64 * math.log(2)))


def test_mnist_real_data_trains(mnist_dir, tmp_path):
    cfg = vaelab.make_config(data="mnist", data_dir=str(mnist_dir), preset="iwae", epochs=1, batch_size=250,
                             nll_samples=20, progress=False, out=str(tmp_path / "m"))
    run = vaelab.train(cfg, log=lambda m: None)
    res = json.loads((run / "eval-test.json").read_text())
    assert res["n"] == 10000
    # one epoch of the IWAE net: well below the ~543 nats of an untrained model, far from converged
    assert 100 < res["nll"] < 250


def test_time_budget_stops_training_and_drives_the_schedule(tmp_path):
    from vaelab.config import TrainConfig
    from vaelab.training.trainer import learning_rate
    run = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 50, "nll_samples": 0}, time_budget=1e-4,
                                          out=str(tmp_path / "tb")), log=lambda m: None)
    assert len(_lines(run)) == 1  # 6 ms of budget: the first epoch spends it
    t = TrainConfig(lr=1e-3, lr_final=1e-4, lr_schedule="exponential", epochs=100000, time_budget=10.0)
    assert learning_rate(t, 0, 0.0) == pytest.approx(1e-3)
    assert learning_rate(t, 5, 300.0) == pytest.approx(1e-3 * 0.1 ** 0.5)  # half the budget spent
    assert learning_rate(t, 9, 900.0) == pytest.approx(1e-4)


def test_learned_gaussian_std_has_a_floor():
    import math
    from vaelab.models.vae import VAE, VAEConfig
    m = VAE(VAEConfig(shape=(1, 4, 4), hidden=(8,), latent_dim=2, likelihood="gaussian"))
    with torch.no_grad():
        m.log_scale.fill_(-50.0)  # what a constant pixel would drive it towards
    p = m.decode(torch.zeros(3, 2))
    assert p.log_scale.min().item() == pytest.approx(math.log(1e-3))
    assert torch.isfinite(p.log_prob(torch.zeros(3, 1, 4, 4))).all()
