"""The `vaelab` command end to end on digits, and every bad input's one sentence."""
import contextlib
import dataclasses
import gzip
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

import vaelab
from vaelab.api import split_inputs
from vaelab.cli import main
from vaelab.images import label_margins
from vaelab.models import MODELS
from vaelab.models.base import ENCODE, LIKELIHOOD, SAMPLE

TINY = ["--data", "digits", "--hidden", "32", "--latent-dim", "2", "--epochs", "2", "--batch-size", "64",
        "--nll-samples", "10", "--no-progress", "--no-report"]  # the page: test_report.py and the per-model test


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A VAE run, what `vaelab train` printed on stdout, and its eval-test.json as it was then
    (later tests evaluate the run again)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", *TINY, "--out", str(out)]) == 0
    return out, printed.getvalue(), (out / "eval-test.json").read_text()


@pytest.fixture(scope="module")
def run_dir(trained):
    return trained[0]


def fails(capsys, argv, *needles):
    """The command exits 2 with one line on stderr holding every needle, and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_train_prints_eval_json(trained):
    _, stdout, saved = trained
    res = json.loads(stdout)  # stdout holds the JSON and nothing else (the log goes to stderr)
    assert res == json.loads(saved)
    assert res["k"] == 10 and res["n"] == 360 and res["split"] == "test" and res["checkpoint"] == "best"
    assert res["nll"] > 0 and res["bpd"] == pytest.approx(res["nll"] / (64 * math.log(2)), rel=1e-12)


def test_eval_prints_json(run_dir, capsys):
    assert main(["eval", str(run_dir), "--nll-samples", "30"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["k"] == 30 and res["n"] == 360 and res["nll"] > 0 and res["split"] == "test"
    # what it printed is what it saved, under a name that says how (training's eval-test.json stays)
    assert res == json.loads((run_dir / "eval-test-best-k30-prior-n10000-seed0.json").read_text())
    assert main(["eval", str(run_dir), "-k", "5", "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 120
    assert (run_dir / "eval-val-best-k5-prior-n10000-seed0.json").is_file()


@pytest.mark.parametrize("cmd,args,size,labels", [
    ("sample", ["-n", "16", "--nrow", "4"], (4 * 34 + 2, 4 * 34 + 2), {}),
    ("reconstruct", ["-n", "8", "--nrow", "8"], (8 * 34 + 2, 2 * 34 + 2), {"row_labels": ["input", "reconstruction"]}),
    ("interpolate", ["--pairs", "3", "--steps", "5"], (5 * 34 + 2, 3 * 34 + 2),
     {"col_labels": ["0", "0.25", "0.5", "0.75", "1"]}),
    ("manifold", ["-n", "6"], (6 * 34 + 2, 6 * 34 + 2), {}),
])
def test_picture_commands(run_dir, tmp_path, capsys, cmd, args, size, labels):
    out = tmp_path / f"{cmd}.png"
    assert main([cmd, str(run_dir), *args, "-o", str(out)]) == 0
    # 8x8 digits are drawn 4x, 2 px apart; rows of inputs and reconstructions are labelled on the
    # left, an interpolation's steps above
    n = (size[0] // 34) * (size[1] // 34)
    left, top = label_margins(n, (8, 8), size[0] // 34, **labels) if labels else (0, 0)
    with Image.open(out) as im:
        assert im.size == (size[0] + left, size[1] + top)
    assert (left > 0) == ("row_labels" in labels) and (top > 0) == ("col_labels" in labels)


# flags that switch on what a model's defaults leave off (a penalty, another corruption, k > 1),
# given to every model whose config has the field
EXERCISE = {"l1": "0.01", "corruption": "gaussian:0.2", "k": "2"}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_registered_model_trains_evaluates_and_draws(model, tmp_path, capsys):
    cls = MODELS[model]
    encodes, samples, likelihood = (c in cls.capabilities for c in (ENCODE, SAMPLE, LIKELIHOOD))
    fields = {f.name for f in dataclasses.fields(cls.config_cls)}
    extra = [a for name, v in EXERCISE.items() if name in fields for a in ("--" + name, v)]
    out = tmp_path / model
    assert main(["train", "--model", model, *TINY, "--epochs", "1", "--report", *extra, "--out", str(out)]) == 0
    res = json.loads((out / "eval-test.json").read_text())
    assert res["n"] == 360 and ("mse" in res) == encodes
    if encodes:
        assert 0 < res["mse"] < 1
    assert (out / "reconstructions.png").is_file() == encodes
    assert (out / "interpolation.png").is_file()
    assert (out / "samples.png").is_file() == samples
    page = (out / "report.html").read_text()  # every model's run gets its page, every figure captioned
    assert page.count("<figure>") == page.count("<figcaption>") >= 2
    # a GAN's samples are scored when it is trained; every sampler's by `vaelab eval`
    assert ("parzen_ll" in res) == (samples and not likelihood)
    capsys.readouterr()
    assert main(["eval", str(out), "-k", "3", "--samples", "500"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert ("nll" in res) == likelihood
    assert ("parzen_ll" in res) == ("frechet" in res) == samples
    if samples:
        assert res["parzen_samples"] == 500 and res["parzen_n_test"] == 360 and res["frechet"] > 0
        assert main(["eval", str(out), "-k", "3", "--no-sample-metrics"]) == 0
        assert "parzen_ll" not in json.loads(capsys.readouterr().out)


def test_linear_autoencoder_is_compared_with_pca(tmp_path, capsys):
    out = tmp_path / "lin"
    assert main(["train", "--model", "ae", "--arch", "linear", "--binarize", "none", "--latent-dim", "4",
                 "--epochs", "3", "--batch-size", "64", "--lr", "0.01", "--no-progress", "--out", str(out)]) == 0
    pca = json.loads((out / "eval-test.json").read_text())["pca"]
    assert pca["d"] == 4 and len(pca["angles_deg"]) == 4
    assert pca["mse_ratio"] >= 0.95  # PCA is the optimum of the L2 loss over linear maps (on train)
    # the same figures computed here, independently: PCA by numpy's SVD of the centred training
    # images, angles by scipy, the autoencoder's error from its reconstructions
    model = vaelab.load(out, device="cpu")  # the checkpoint eval-test.json scores
    x_train = split_inputs(out, "train")[0].double().flatten(1).numpy()
    x_test = split_inputs(out, "test")[0]
    mean = x_train.mean(0)
    v = np.linalg.svd(x_train - mean, full_matrices=False)[2][:4].T         # [64, 4]: top-4 directions
    w = model.decoder.net[0].weight.detach().double().numpy()                # [64, 4]: the decoder's columns
    angles = np.sort(np.degrees(scipy.linalg.subspace_angles(w, v)))
    # float64 on both sides: they agree to far below a degree (after 3 epochs the subspaces are
    # still far apart: measured 46 to 87 degrees, which the old bound 0 <= angle <= 90 never read)
    np.testing.assert_allclose(pca["angles_deg"], angles, rtol=0, atol=1e-6)
    assert pca["max_angle_deg"] == pytest.approx(angles.max(), abs=1e-6)
    xt = x_test.double().flatten(1).numpy()
    pca_mse = np.mean(((xt - mean) @ v @ v.T + mean - xt) ** 2)
    with torch.no_grad():
        ae_mse = torch.mean((model.reconstruct(x_test).double() - x_test.double()) ** 2).item()
    assert pca["pca_mse"] == pytest.approx(pca_mse, rel=1e-9)
    assert pca["ae_mse"] == pytest.approx(ae_mse, rel=1e-6)  # float32 reconstructions, summed in float64
    assert pca["mse_ratio"] == pytest.approx(ae_mse / pca_mse, rel=1e-6)


def test_probe_and_finetune_print_json(run_dir, capsys):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from vaelab.evaluation.probe import balanced_subset, linear_probe
    model = vaelab.load(run_dir, device="cpu")
    (x_tr, y_tr), (x_te, y_te) = split_inputs(run_dir, "train"), split_inputs(run_dir, "test")
    for labels in ("50", "all"):
        assert main(["probe", str(run_dir), "--labels", labels]) == 0
        res = json.loads(capsys.readouterr().out)
        n = len(y_tr) if labels == "all" else int(labels)
        assert res["task"] == "probe" and res["labels"] == n and res["n_test"] == 360
        # the accuracy printed is a logistic regression on the frozen codes of the labelled
        # images, recomputed here (sklearn's pipeline on the codes of the whole split at once)
        idx = balanced_subset(y_tr, None if labels == "all" else n, 10, seed=0)
        with torch.no_grad():
            f_tr, f_te = model.codes(x_tr[idx]).numpy(), model.codes(x_te).numpy()
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(f_tr, y_tr[idx].numpy())
        expected = float((clf.predict(f_te) == y_te.numpy()).mean())
        assert res["accuracy"] == pytest.approx(expected, abs=1.01 / 360)  # batched codes: one image's rounding
        # kept in the run directory under a name that says how it was measured
        assert json.loads((run_dir / f"probe-labels{'-all' if labels == 'all' else labels}-seed0.json").read_text()) \
            == res
    assert main(["finetune", str(run_dir), "--labels", "100", "--epochs", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    # a fifth of the labels held out to choose the epochs (early stopping), then all of them
    assert res["labels"] == 100 and res["n_val"] == 20 and res["n_test"] == 360
    assert res["probe_accuracy"] == linear_probe(run_dir, 100)["accuracy"]  # where fine-tuning starts
    # what it printed is what fine-tuning computes with these settings (deterministic, and
    # checked against its own references in test_probe.py)
    assert res == vaelab.finetune(run_dir, 100, epochs=1)
    fails(capsys, ["probe", str(run_dir), "--labels", "3"], "--labels")
    fails(capsys, ["finetune", str(run_dir), "--labels", "100000"], "--labels")
    fails(capsys, ["probe", str(run_dir), "--labels", "many"], "--labels")


def test_config_files(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text('data = "digits"\nlatent-dim = 3\n[train]\nepochs = 1\nbatch_size = 64\nnll_samples = 0\n'
                    'progress = false\nhidden = [16]\n')
    assert main(["train", "--config", str(toml), "--out", str(tmp_path / "t")]) == 0
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())["run"]
    assert cfg["model"]["latent_dim"] == 3 and cfg["model"]["hidden"] == [16] and cfg["train"]["epochs"] == 1
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"data": "digits", "epochs": 1, "nll_samples": 0, "hidden": "8", "progress": False}))
    # a flag beats the file
    assert main(["train", "--config", str(js), "--latent-dim", "5", "--out", str(tmp_path / "j")]) == 0
    assert json.loads((tmp_path / "j" / "config.json").read_text())["run"]["model"]["latent_dim"] == 5


def test_train_help_shows_the_chosen_models_flags_in_groups_with_typed_metavars(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--model", "gan", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    groups = re.findall(r"^(\S[^\n]*):$", out, re.M)  # argparse's group headings
    assert groups[:4] == ["options", "data", "training", "--model gan"] and "run" in groups
    gan_part = out[out.index("\n--model gan:"):out.index("\nrun:")]
    for flag, metavar in (("--k", "INT"), ("--d-lr", "FLOAT"), ("--optimizer", "{adam,sgd}"),
                          ("--hidden", "INT,INT,..."), ("--binarize", "{none,static,dynamic}")):
        assert re.search(rf"^  {flag} {re.escape(metavar)}\s", gan_part, re.M), (flag, metavar)
    for flag, metavar in (("--epochs", "INT"), ("--lr", "FLOAT"), ("--data-dir", "DIR")):
        assert re.search(rf"^  {flag} {re.escape(metavar)}\s", out, re.M), (flag, metavar)
    assert not re.search(r"--[a-z0-9-]+ V\b", out)  # argparse's placeholder of an untyped value
    # another model's flags are parsed (to be refused by name) but not shown
    for other in ("--likelihood", "--corruption", "--l1", "--beta "):
        assert other not in out, other


def test_a_flag_of_another_model_is_refused_naming_the_model(capsys, tmp_path):
    out = tmp_path / "never"
    err = fails(capsys, ["train", "--model", "vae", "--k", "5", "--out", str(out)], "--k", "--model vae")
    assert "does not apply" in err
    fails(capsys, ["train", "--model", "gan", "--likelihood", "gaussian", "--out", str(out)],
          "--likelihood", "--model gan")
    assert not out.exists()


def test_train_help_shows_the_chosen_models_own_default_of_a_run_wide_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--model", "gan", "--help"])
    out = capsys.readouterr().out
    lr_help = out[out.index("  --lr FLOAT"):out.index("  --lr-schedule")]
    assert "[default: 0.0002]" in " ".join(lr_help.split())


def test_a_typo_in_a_choice_is_refused_before_any_data_is_read(capsys, tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    # mnist is not in this folder: reading it would fail, naming mnist's files
    fails(capsys, ["train", "--data", "mnist", "--data-dir", str(empty), "--out", str(tmp_path / "x")], "mnist")
    err = fails(capsys, ["train", "--data", "mnist", "--data-dir", str(empty), "--activation", "relu6",
                         "--out", str(tmp_path / "x")], "--activation", "relu6")
    assert "mnist" not in err and "idx" not in err
    assert not (tmp_path / "x").exists()


def test_datasets_lists_where(capsys, tmp_path):
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "mnist" in out and "fashion-mnist" in out


def _idx_gz(path: Path, data: bytes):
    with gzip.open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def broken_mnist(tmp_path):
    """A data root whose mnist folder holds well-formed labels but a broken images file."""
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for name, n in (("train-labels-idx1-ubyte.gz", 60000), ("t10k-labels-idx1-ubyte.gz", 10000)):
        _idx_gz(d / name, struct.pack(">IIB", 0x801, n, 0)[:8] + bytes(n))
    _idx_gz(d / "t10k-images-idx3-ubyte.gz", struct.pack(">IIII", 0x803, 10000, 28, 28) + bytes(10000 * 784))
    return d


def test_bad_inputs(capsys, tmp_path, run_dir, broken_mnist):
    out = tmp_path / "never"
    fails(capsys, ["train", "--data", "cifar100", "--out", str(out)], "cifar100", "digits")
    fails(capsys, ["train", "--bogus", "1", "--out", str(out)], "--bogus")
    fails(capsys, ["train", "--hidden", "200,x", "--out", str(out)], "--hidden", "200,x")
    fails(capsys, ["train", "--binarize", "maybe", "--out", str(out)], "--binarize", "dynamic")
    fails(capsys, ["train", "--epochs", "0", "--out", str(out)], "--epochs")
    fails(capsys, ["train", "--batch-size", "5000", "--out", str(out)], "--batch-size")
    fails(capsys, ["train", "--likelihood", "bernoulli", "--gaussian-std", "0.1", "--out", str(out)],
          "--gaussian-std")
    fails(capsys, ["train", "--lr", "nan", "--out", str(out)], "--lr", "finite")
    fails(capsys, ["train", "--grad-clip", "-1", "--out", str(out)], "--grad-clip", "positive")
    fails(capsys, ["train", "--lr-final", "0", "--out", str(out)], "--lr-final", "positive")
    fails(capsys, ["train", "--arch", "conv", "--channels", ",", "--out", str(out)], "--channels")
    fails(capsys, ["train", "--device", "meta", "--out", str(out)], "--device")
    fails(capsys, ["train", "--threads", "0", "--out", str(out)], "--threads")
    fails(capsys, ["train", "--config", str(tmp_path / "nope.toml")], "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 1\nlatnet_dim = 3\n")
    fails(capsys, ["train", "--config", str(bad), "--out", str(out)], "latnet_dim", "bad.toml")
    bad.write_text("epochs = [1\n")
    fails(capsys, ["train", "--config", str(bad), "--out", str(out)], "bad.toml", "TOML")
    # missing data: the folder is searched alone when given
    fails(capsys, ["train", "--data", "fashion-mnist", "--data-dir", str(tmp_path / "empty"), "--out", str(out)],
          "fashion-mnist")
    # a missing file and a corrupt one
    root = str(broken_mnist.parent)
    fails(capsys, ["train", "--data", "mnist", "--data-dir", root, "--out", str(out)],
          "train-images-idx3-ubyte.gz")
    (broken_mnist / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 0x801, 1, 1, 1)))
    fails(capsys, ["train", "--data", "mnist", "--data-dir", root, "--out", str(out)],
          "train-images-idx3-ubyte.gz")
    full = gzip.compress(struct.pack(">IIII", 0x803, 60000, 28, 28) + bytes(60000 * 784))
    (broken_mnist / "train-images-idx3-ubyte.gz").write_bytes(full[: len(full) // 2])
    fails(capsys, ["train", "--data", "mnist", "--data-dir", root, "--out", str(out)],
          "train-images-idx3-ubyte.gz")
    assert not out.exists()  # nothing was written for any of these
    # runs and checkpoints
    fails(capsys, ["eval", str(tmp_path / "norun")], "norun")
    fails(capsys, ["eval", str(tmp_path)], "config.json")
    fails(capsys, ["sample", str(run_dir), "-o", str(tmp_path / "x.jpg")], "x.jpg", ".png")
    fails(capsys, ["eval", str(run_dir), "--nll-samples", "0"], "--nll-samples")
    fails(capsys, ["train", "--resume", str(run_dir), "--latent-dim", "3"], "--latent-dim")
    fails(capsys, ["train", "--resume", str(run_dir), "--epochs", "abc"], "--epochs", "abc")
    fails(capsys, ["reconstruct", str(run_dir), "-n", "0"], "-n")
    fails(capsys, ["sample", str(run_dir), "--nrow", "-3"], "--nrow")
    fails(capsys, ["manifold", str(run_dir), "-n", "3", "--checkpoint", "newest"], "--checkpoint")


def test_overwrite_replaces_every_result_and_files_are_readable(capsys, tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert (out / "eval-test.json").exists() and (out / "samples.png").exists()
    assert (out / "config.json").stat().st_mode & 0o044  # not private to the owner
    args = [a if a != "10" else "0" for a in TINY]  # --nll-samples 0: no new eval
    assert main(["train", *args, "--out", str(out), "--overwrite"]) == 0
    assert not (out / "eval-test.json").exists()  # the old run's result is not passed off as the new one
    capsys.readouterr()
    assert main(["eval", str(out), "-k", "3", "--checkpoint", "last"]) == 0
    assert (out / "eval-test-last-k3-prior-n10000-seed0.json").exists() and not (out / "eval-test.json").exists()
    res = json.loads(capsys.readouterr().out)
    assert res["checkpoint"] == "last" and res["k"] == 3
    assert res == json.loads((out / "eval-test-last-k3-prior-n10000-seed0.json").read_text())


def test_unreadable_checkpoint_leaves_nothing(capsys, tmp_path, run_dir):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "eval-test.json").unlink()
    (broken / "best.safetensors").write_bytes(b"\x00garbage, not a safetensors file")
    fails(capsys, ["eval", str(broken)], "best.safetensors")
    assert not (broken / "eval-test.json").exists()
    assert not list(broken.glob(".*tmp"))
    (broken / "config.json").write_text("{not json")
    fails(capsys, ["eval", str(broken)], "config.json")


def test_checkpoint_that_does_not_fit_the_architecture(capsys, tmp_path, run_dir):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    doc = json.loads((other / "config.json").read_text())
    doc["run"]["model"]["hidden"] = [48]  # the weights on disk were trained with --hidden 32
    (other / "config.json").write_text(json.dumps(doc))
    fails(capsys, ["sample", str(other), "-o", str(tmp_path / "s.png")], "best.safetensors", "does not fit")
    assert not (tmp_path / "s.png").exists()
    doc["run"]["model"]["hidden"] = [32]
    doc["run"]["model"]["shape"] = doc["data_spec"]["shape"] = [1, 28, 28]  # claims MNIST-sized images
    (other / "config.json").write_text(json.dumps(doc))
    fails(capsys, ["eval", str(other)], "best.safetensors")


def test_console_script_runs_in_a_subprocess(tmp_path):
    exe = Path(sys.executable).parent / "vaelab"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vaelab.cli"]
    r = subprocess.run([*cmd, "train", "--data", "nope"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
