"""The `vaelab` command end to end on digits, and every bad input's one sentence."""
import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vaelab.cli import main

TINY = ["--data", "digits", "--hidden", "32", "--latent-dim", "2", "--epochs", "2", "--batch-size", "64",
        "--nll-samples", "10", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def fails(capsys, argv, *needles):
    """The command exits 2 with one line on stderr holding every needle, and no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_train_prints_eval_json(run_dir, capsys):
    assert (run_dir / "eval-test.json").is_file()


def test_eval_prints_json(run_dir, capsys):
    assert main(["eval", str(run_dir), "--nll-samples", "30"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["k"] == 30 and res["n"] == 360 and res["nll"] > 0 and res["split"] == "test"
    assert main(["eval", str(run_dir), "-k", "5", "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 120
    assert (run_dir / "eval-val.json").is_file()


@pytest.mark.parametrize("cmd,args,size", [
    ("sample", ["-n", "16", "--nrow", "4"], (4 * 34 + 2, 4 * 34 + 2)),
    ("reconstruct", ["-n", "8", "--nrow", "8"], (8 * 34 + 2, 2 * 34 + 2)),
    ("interpolate", ["--pairs", "3", "--steps", "5"], (5 * 34 + 2, 3 * 34 + 2)),
    ("manifold", ["-n", "6"], (6 * 34 + 2, 6 * 34 + 2)),
])
def test_picture_commands(run_dir, tmp_path, capsys, cmd, args, size):
    out = tmp_path / f"{cmd}.png"
    assert main([cmd, str(run_dir), *args, "-o", str(out)]) == 0
    assert Image.open(out).size == size  # 8x8 digits are drawn 4x, 2 px apart


@pytest.mark.parametrize("model", ["vae", "ae", "sparse-ae", "dae", "gan"])
def test_every_registered_model_trains_evaluates_and_draws(model, tmp_path, capsys):
    from vaelab.registry import MODELS
    assert set(MODELS) == {"vae", "ae", "sparse-ae", "dae", "gan"}  # a new model joins this list
    entry = MODELS[model]
    out = tmp_path / model
    extra = {"sparse-ae": ["--l1", "0.01"], "dae": ["--corruption", "gaussian:0.2"],
             "gan": ["--k", "2"]}.get(model, [])
    assert main(["train", "--model", model, *TINY, "--epochs", "1", *extra, "--out", str(out)]) == 0
    res = json.loads((out / "eval-test.json").read_text())
    assert res["n"] == 360 and ("mse" in res) == entry.can_reconstruct
    if entry.can_reconstruct:
        assert 0 < res["mse"] < 1
    assert (out / "reconstructions.png").is_file() == entry.can_reconstruct
    assert (out / "interpolation.png").is_file()
    assert (out / "samples.png").is_file() == entry.can_sample
    # a GAN's samples are scored when it is trained; every sampler's by `vaelab eval`
    assert ("parzen_ll" in res) == (entry.can_sample and not entry.has_likelihood)
    capsys.readouterr()
    assert main(["eval", str(out), "-k", "3", "--samples", "500"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert ("nll" in res) == entry.has_likelihood
    assert ("parzen_ll" in res) == ("frechet" in res) == entry.can_sample
    if entry.can_sample:
        assert res["parzen_samples"] == 500 and res["parzen_n_test"] == 360 and res["frechet"] > 0
        assert main(["eval", str(out), "-k", "3", "--no-sample-metrics"]) == 0
        assert "parzen_ll" not in json.loads(capsys.readouterr().out)


def test_linear_autoencoder_is_compared_with_pca(tmp_path, capsys):
    out = tmp_path / "lin"
    assert main(["train", "--model", "ae", "--arch", "linear", "--binarize", "none", "--latent-dim", "4",
                 "--epochs", "3", "--batch-size", "64", "--lr", "0.01", "--no-progress", "--out", str(out)]) == 0
    pca = json.loads((out / "eval-test.json").read_text())["pca"]
    assert pca["d"] == 4 and len(pca["angles_deg"]) == 4 and 0 <= pca["max_angle_deg"] <= 90
    assert pca["mse_ratio"] >= 0.95  # PCA is the optimum of the L2 loss over linear maps (on train)


def test_probe_and_finetune_print_json(run_dir, capsys):
    assert main(["probe", str(run_dir), "--labels", "50"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "probe" and res["labels"] == 50 and res["n_test"] == 360 and 0 <= res["accuracy"] <= 1
    assert main(["finetune", str(run_dir), "--labels", "all", "--epochs", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"accuracy", "baseline_accuracy", "labels", "n_test"} <= res.keys()
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
    assert main(["eval", str(out), "-k", "3", "--checkpoint", "last"]) == 0
    assert (out / "eval-test-last.json").exists() and not (out / "eval-test.json").exists()


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
