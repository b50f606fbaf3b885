"""Issue 12, items 2 and 5: every stage after training reads the data the run trained on (an
image folder named by --data-path inside a --data-dir that holds other images), and the maths
audit's fixes: a dequantized Gaussian VAE's images mapped back to the data's scale before mse,
Parzen and Fréchet; bits/dim for a Bernoulli on data that is binary already. (IS-NLL chunks
counted in decoder outputs: test_maths.py.)"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.api import evaluate, load, split_inputs
from vaelab.cli import main
from vaelab.data import run_dataset
from vaelab.data.transforms import from_dequantized_scale, to_dequantized_scale, to_unit
from vaelab.evaluation.parzen import parzen_evaluate
from vaelab.evaluation.samples import sample_metrics

TINY = ["--epochs", "1", "--no-progress", "--nll-samples", "2", "--batch-size", "8"]


# ------------------------------------------------------------------ item 2: --data-path is kept

def _image_folder_in_a_busy_data_dir(root):
    """D/photos/test/{a,b}/*.png (8x8 RGB, 20 per class) and, outside it, D/other-run/curves.png
    (40x40), the image a run must never read."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / "photos" / "test" / c).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "photos" / "test" / c / f"{i}.png")
    (root / "other-run").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "other-run" / "curves.png")
    return root / "photos" / "test"


def test_every_stage_after_training_reads_the_data_path(tmp_path, capsys):
    d = tmp_path / "D"
    photos = _image_folder_in_a_busy_data_dir(d)
    run = tmp_path / "run"
    # the command: before the fix, the evaluation at the end of training read all of D
    assert main(["train", "--data", "image-folder", "--data-dir", str(d), "--data-path", str(photos),
                 "--arch", "conv", "--channels", "4,4", "--latent-dim", "2", "--likelihood", "gaussian",
                 "--binarize", "none", "--workers", "0", "--out", str(run), *TINY]) == 0, capsys.readouterr().err
    assert json.loads((run / "eval-test.json").read_text())["n"] == 4  # a tenth of the 40 images
    capsys.readouterr()
    # the run's own --data-dir, given again, is no new place for the folder: every stage reads photos/
    for extra in ([], ["--data-dir", str(d)]):
        assert main(["eval", str(run), "-k", "2", "--no-sample-metrics", *extra]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["n"] == 4
    for task in (["probe"], ["finetune", "--epochs", "1"]):
        assert main([*task, str(run), "--data-dir", str(d)]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["n_test"] == 4
    # the sample scores read the same test split (the Parzen window's: the Fréchet classifier, which
    # would train for seconds on the same split, is left out by calling the data unlabelled)
    model = load(run)
    model.data_spec = dataclasses.replace(model.data_spec, num_classes=0)
    assert sample_metrics(model, 4, data_dir=str(d))["parzen_n_test"] == 4
    # a --data-dir that is a new place still relocates the folder (the README's moved data)
    photos.rename(tmp_path / "moved")
    assert main(["eval", str(run), "-k", "2", "--no-sample-metrics", "--data-dir", str(tmp_path / "moved")]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4


# -------------------------------------------- item 5a: a dequantized model's scale is mapped back

def test_the_dequantized_scale_maps_are_inverse_and_centre_the_bins():
    for levels in (2, 17, 256):
        k = torch.arange(levels, dtype=torch.float64)
        x = k / (levels - 1)
        torch.testing.assert_close(to_dequantized_scale(x, levels), (k + 0.5) / levels, rtol=0, atol=1e-15)
        torch.testing.assert_close(from_dequantized_scale(to_dequantized_scale(x, levels), levels), x,
                                   rtol=0, atol=1e-15)
        # the map is affine, so it takes the mean of (k + u) / L over u ~ U(0, 1) (a midpoint grid
        # has the exact mean 1/2) to k / (L - 1): what a model's mean stands for, on the data's scale
        u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
        mapped = from_dequantized_scale((k[:, None] + u) / levels, levels).mean(1)
        torch.testing.assert_close(mapped, x, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory):
    """A Gaussian VAE on dequantized 8x8 grey images (256 levels, unlabelled) and its test images."""
    tmp = tmp_path_factory.mktemp("deq")
    x = np.random.default_rng(1).integers(0, 256, (60, 8, 8)).astype(np.uint8)
    np.save(tmp / "a.npy", x)
    run = tmp / "run"
    assert main(["train", "--data", "array", "--data-path", str(tmp / "a.npy"), "--hidden", "8", "--latent-dim", "2",
                 "--likelihood", "gaussian", "--binarize", "none", "--out", str(run), *TINY]) == 0
    return run, split_inputs(run, "test")[0]


def test_mse_compares_a_dequantized_reconstruction_on_the_data_scale(gaussian_run):
    run, x = gaussian_run
    model = load(run)
    seen = []

    def perfect(xb):  # the exact images on the model's own scale, whatever the input
        seen.append(xb)
        return to_dequantized_scale(x, 256)
    model.reconstruct = perfect
    res = evaluate(run, k=1, batch_size=len(x), model=model, sample_metrics=False, save=False)
    # before the fix: mean(((k + 1/2) / 256 - k / 255)^2), about 1e-6
    assert res["mse"] < 1e-12
    # the model reconstructed its input on its own scale, the centres of the test images' bins
    torch.testing.assert_close(seen[0], to_dequantized_scale(x, 256))


def test_parzen_sees_dequantized_samples_on_the_data_scale(gaussian_run):
    run, x = gaussian_run
    model = load(run)
    model.sample = lambda n: to_dequantized_scale(x, 256)[:n]  # the test images, on the model's scale
    res = sample_metrics(model, len(x))
    ds = run_dataset(model.run_config.data)
    ref = parzen_evaluate(x, to_unit(ds.val.x, 256), x)  # the test images themselves as samples
    assert res["parzen_sigma"] == ref["parzen_sigma"]
    assert res["parzen_ll"] == pytest.approx(ref["parzen_ll"], rel=1e-9, abs=0)


# ------------------------------------------- item 5c: bits/dim for a Bernoulli on binary data

def test_bits_per_dim_of_a_bernoulli_on_binarized_mnist_without_binarizing(tmp_path, capsys):
    folder = tmp_path / "binarized-mnist"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for split, n in (("train", 24), ("valid", 8), ("test", 8)):
        rows = rng.integers(0, 2, (n, 784))
        (folder / f"binarized_mnist_{split}.amat").write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    run = tmp_path / "run"
    assert main(["train", "--data", "binarized-mnist", "--data-dir", str(tmp_path), "--hidden", "8",
                 "--latent-dim", "2", "--binarize", "none", "--out", str(run), *TINY]) == 0, capsys.readouterr().err
    res = json.loads((run / "eval-test.json").read_text())
    assert res["n"] == 8 and res["bpd"] is not None
    assert res["bpd"] == pytest.approx(res["nll"] / (784 * math.log(2)), rel=1e-12)
