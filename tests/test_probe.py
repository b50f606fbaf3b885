"""Codes as features: the balanced labelled subset, the linear probe on frozen codes, and
fine-tuning the encoder against a randomly initialised baseline."""
import hashlib
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import vaelab
from vaelab.api import split_inputs
from vaelab.errors import VaelabError
from vaelab.probe import MIN_STEPS, balanced_subset, finetune, linear_probe

TINY = dict(data="digits", hidden=(32,), latent_dim=8, epochs=2, batch_size=64, nll_samples=0, progress=False)
N_TRAIN, N_TEST = 1317, 360  # digits: 1437 official train images less 1/12 for validation; 360 test


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("probe")
    return {m: vaelab.train(vaelab.make_config(model=m, **TINY, out=str(root / m)), log=lambda s: None)
            for m in ("vae", "ae")}


def _files(run_dir):
    """Every file of a run directory and a hash of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir())}


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- balanced_subset ----------------------------------------------------------------------

def _labels():
    # 10 classes of 20 examples each, shuffled so class members are not contiguous
    return torch.arange(200)[torch.randperm(200, generator=torch.Generator().manual_seed(5))] % 10


def test_balanced_subset_counts_per_class():
    y = _labels()
    idx = balanced_subset(y, 25, 10)
    assert idx.dtype == torch.int64 and len(idx) == 25 and len(set(idx.tolist())) == 25
    assert torch.equal(idx, idx.sort().values)
    counts = torch.bincount(y[idx], minlength=10).tolist()
    assert counts == [3] * 5 + [2] * 5  # the remainder goes to the first classes
    assert torch.bincount(y[balanced_subset(y, 200, 10)]).tolist() == [20] * 10
    assert torch.equal(balanced_subset(y, None, 10), torch.arange(200))  # all


def test_balanced_subset_is_deterministic_with_the_seed():
    y = _labels()
    a = balanced_subset(y, 30, 10, seed=1)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, balanced_subset(y, 30, 10, seed=1))
    assert not torch.equal(a, balanced_subset(y, 30, 10, seed=2))


@pytest.mark.parametrize("n, match", [(9, "--labels must be at least 10"), (201, "--labels must be at most 200"),
                                      (-3, "--labels must be at least 10"), (10.5, "--labels must be a whole"),
                                      (True, "--labels must be a whole")])
def test_balanced_subset_rejects_bad_counts(n, match):
    with pytest.raises(VaelabError, match=match):
        balanced_subset(_labels(), n, 10)


def test_balanced_subset_names_the_class_that_is_short():
    y = torch.tensor([c for c in range(10) if c != 3 for _ in range(5)] + [3])  # class 3: one example
    with pytest.raises(VaelabError, match="--labels 20 asks for 2 images of class 3.*only 1"):
        balanced_subset(y, 20, 10)


# --- linear probe -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vae", "ae"])
def test_probe_with_all_labels_is_well_above_chance(runs, name):
    res = linear_probe(runs[name], None)
    assert json.loads(json.dumps(res)) == res
    assert res["task"] == "probe" and res["model"] == name and res["latent_dim"] == 8
    assert res["labels"] == N_TRAIN and res["n_test"] == N_TEST
    # Measured on these 2-epoch runs: 0.47 (VAE) and 0.52 (AE); chance is 0.1.
    assert 0.3 < res["accuracy"] <= 1


def test_probe_uses_frozen_codes_and_writes_nothing(runs):
    model = vaelab.load(runs["vae"], device="cpu")
    before, files = _weights(model), _files(runs["vae"])
    res = linear_probe(runs["vae"], 50, model=model)
    assert 0.1 < res["accuracy"] <= 1 and res["labels"] == 50
    assert _same(before, _weights(model)) and not model.training
    assert _files(runs["vae"]) == files


@pytest.mark.parametrize("name", ["vae", "ae"])
def test_probe_matches_an_independent_logistic_regression(runs, name):
    run = runs[name]
    res = linear_probe(run, 100, seed=3)
    model = vaelab.load(run, device="cpu")
    x_tr, y_tr = split_inputs(run, "train")
    x_te, y_te = split_inputs(run, "test")
    idx = balanced_subset(y_tr, 100, 10, seed=3)
    with torch.no_grad():
        f_tr, f_te = model.codes(x_tr[idx]).numpy(), model.codes(x_te).numpy()  # all at once, not batched
    if name == "vae":
        assert np.allclose(f_tr, model.encode(x_tr[idx]).mu.detach().numpy())  # the posterior mean
    scaler = StandardScaler().fit(f_tr)
    clf = LogisticRegression(max_iter=1000).fit(scaler.transform(f_tr), y_tr[idx].numpy())
    expected = float((clf.predict(scaler.transform(f_te)) == y_te.numpy()).mean())
    # Batched and unbatched codes may differ in the last float bit: allow one test image.
    assert res["accuracy"] == pytest.approx(expected, abs=1.01 / N_TEST)
    assert res["labels"] == 100


# --- fine-tuning --------------------------------------------------------------------------

def test_finetune_reports_both_accuracies_is_deterministic_and_touches_nothing(runs):
    run = runs["vae"]
    model = vaelab.load(run, device="cpu")
    before, files, rng = _weights(model), _files(run), torch.random.get_rng_state()
    a = finetune(run, 50, epochs=1, model=model)
    assert json.loads(json.dumps(a)) == a
    assert a["task"] == "finetune" and a["labels"] == 50 and a["n_test"] == N_TEST
    assert 0.1 < a["accuracy"] <= 1 and 0.1 < a["baseline_accuracy"] <= 1
    assert a["steps"] >= MIN_STEPS and a["epochs"] == a["steps"]  # 50 labels: one batch an epoch
    assert _same(before, _weights(model)) and not model.training  # the encoder was copied
    assert _files(run) == files
    assert torch.equal(rng, torch.random.get_rng_state())  # the caller's RNG is left alone
    assert finetune(run, 50, epochs=1) == a  # identical seeds, identical results


def test_finetune_on_an_autoencoder(runs):
    res = finetune(runs["ae"], 20, epochs=1, seed=1)
    assert res["labels"] == 20 and 0.1 < res["accuracy"] <= 1 and 0.1 < res["baseline_accuracy"] <= 1


@pytest.mark.parametrize("task", [linear_probe, finetune])
@pytest.mark.parametrize("labels, match", [(5, "--labels must be at least 10"),
                                           (N_TRAIN + 1, f"--labels must be at most {N_TRAIN}")])
def test_bad_labels_are_one_clear_sentence(runs, task, labels, match):
    with pytest.raises(VaelabError, match=match):
        task(runs["vae"], labels)


@pytest.mark.parametrize("kw, flag", [({"epochs": 0}, "--epochs"), ({"lr": -1.0}, "--lr"),
                                      ({"batch_size": 0}, "--batch-size")])
def test_finetune_rejects_a_bad_schedule(runs, kw, flag):
    with pytest.raises(VaelabError, match=flag):
        finetune(runs["vae"], 50, **kw)
