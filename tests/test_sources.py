"""The file-format datasets as the rest of vaelab sees them: found in the data directory (or
at --data-path), split into train / validation / test, trained on end to end; and the
options that belong to one reader refused everywhere else."""
import json

import numpy as np
import pytest
import scipy.io
import torch

import vaelab
from conftest import require_real
from test_cifar import CLASSES, official_members, write_tarball
from vaelab.cli import main
from vaelab.data import list_datasets, load_dataset


def test_cifar10_is_found_in_its_folder_and_keeps_the_official_test_split(tmp_path):
    write_tarball((tmp_path / "cifar10").mkdir() or tmp_path / "cifar10" / "cifar-10-python.tar.gz",
                  official_members())
    ds = load_dataset("cifar10", tmp_path, val_size=4)
    assert ds.spec.shape == (3, 32, 32) and ds.spec.levels == 256 and ds.spec.num_classes == len(CLASSES)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 10)
    assert ds.source.endswith("cifar-10-python.tar.gz")
    assert {r["name"]: r["found"] for r in list_datasets(tmp_path)}["cifar10"]


def test_binarized_mnist_keeps_its_validation_file(tmp_path):
    folder = tmp_path / "binarized-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("valid", 3), ("test", 4)):
        rows = rng.integers(0, 2, (n, 784))
        (folder / f"binarized_mnist_{split}.amat").write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    ds = load_dataset("binarized-mnist", tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (7, 3, 4)
    assert ds.spec.levels == 2 and ds.spec.shape == (1, 28, 28) and ds.spec.num_classes == 0


def test_frey_face_preset_holds_out_a_fixed_test_set(tmp_path):
    folder = tmp_path / "frey-face"
    folder.mkdir()
    ff = np.random.default_rng(1).integers(0, 256, (560, 50)).astype(np.uint8)
    scipy.io.savemat(folder / "frey_rawface.mat", {"ff": ff})
    a = load_dataset("frey-face", tmp_path, split_seed=0)
    b = load_dataset("frey-face", tmp_path, split_seed=5)
    assert a.spec.shape == (1, 28, 20) and (len(a.train) + len(a.val), len(a.test)) == (45, 5)
    assert torch.equal(a.test.x, b.test.x)  # the test set does not move with --split-seed
    assert not torch.equal(a.val.x, b.val.x)
    # each column of ff is one 28x20 image stored row-major
    col = ff[:, int(np.flatnonzero([np.array_equal(ff[:, j].reshape(28, 20), a.test.x[0, 0].numpy())
                                    for j in range(50)])[0])]
    assert np.array_equal(a.test.x[0, 0].numpy().reshape(-1), col)


def test_array_dataset_needs_its_path_and_takes_its_options(tmp_path, capsys):
    x = np.random.default_rng(2).integers(0, 256, (30, 8 * 6 * 3)).astype(np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(30) % 3)
    ds = load_dataset("array", data_path=str(tmp_path / "a.npz"), key="images", label_key="labels", shape=(8, 6, 3),
                      layout="hwc", test_size=6, val_size=4)
    assert ds.spec.shape == (3, 8, 6) and ds.spec.num_classes == 3
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 4, 6)
    # end to end: a conv VAE with a discretized logistic on the colour array
    out = tmp_path / "run"
    assert main(["train", "--data", "array", "--data-path", str(tmp_path / "a.npz"), "--key", "images",
                 "--label-key", "labels", "--shape", "8,6,3", "--test-size", "6", "--arch", "conv",
                 "--likelihood", "logistic", "--binarize", "none", "--hidden", "16", "--channels", "4,4,8,8",
                 "--latent-dim", "3", "--epochs", "1", "--batch-size", "8", "--nll-samples", "4", "--no-progress",
                 "--out", str(out)]) == 0
    res = json.loads((out / "eval-test.json").read_text())
    assert res["n"] == 6 and res["bpd"] > 0
    assert main(["eval", str(out), "-k", "2", "--samples", "50"]) == 0  # the run finds its data again
    capsys.readouterr()


@pytest.mark.parametrize("args, needle", [
    (["--data", "mnist", "--key", "x"], "--key applies to --data array"),
    (["--data", "digits", "--image-size", "32"], "--image-size applies to --data image-folder or lfw"),
    (["--data", "array"], "--data-path"),
    (["--data", "mnist", "--data-path", "/tmp"], "--data-path applies"),
    (["--data", "mnist", "--test-size", "10"], "official test split"),
    (["--data", "lfw", "--image-size", "0"], "--image-size must be at least 1"),
    (["--data", "array", "--data-path", "/no/such.npy"], "/no/such.npy does not exist"),
    (["--data", "cifar10", "--data-dir", "/no/where"], "cannot find the cifar10 dataset"),
])
def test_data_flags_bad_input(args, needle, tmp_path, capsys):
    assert main(["train", *args, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_real_lfw_through_the_data_directory(tmp_path, monkeypatch):
    root = require_real("lfw3d_90.tgz")
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path))
    ds = load_dataset("lfw", root, image_size=16, min_faces_per_person=20, workers=0)
    assert ds.spec.shape == (3, 16, 16) and ds.spec.num_classes == 62
    assert len(ds.train) + len(ds.val) + len(ds.test) == 3023 and len(ds.test) == 302
    assert ds.source.endswith("lfw3d_90.tgz")


def test_real_cifar_images_through_array():
    root = require_real("cifar10_batch1_first4000.npz")
    ds = load_dataset("array", data_path=str(root / "cifar10_batch1_first4000.npz"), key="data",
                      label_key="labels", shape=(32, 32, 3), layout="chw")
    assert ds.spec.shape == (3, 32, 32) and ds.spec.num_classes == 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 4000 and len(ds.test) == 400
    assert ds.train.x.dtype == torch.uint8
    vaelab.make_config(data="array", data_path="x.npz", shape="32,32,3", layout="chw")  # the flags' spelling


@pytest.mark.parametrize("flags, needle", [
    (dict(model="vae", likelihood="gaussian", mixtures=3, binarize="none"), "--mixtures applies with"),
    (dict(model="vae", likelihood="logistic", gaussian_std=0.1, binarize="none"),
     "--gaussian-std applies to --likelihood gaussian"),
    (dict(data="binarized-mnist", val_size=100), "its own validation file"),
    (dict(data="cifar10", download=True), "--download fetches mnist"),
])
def test_options_that_nothing_would_read_are_errors(flags, needle):
    with pytest.raises(vaelab.VaelabError, match=needle):
        vaelab.make_config(**flags)


def test_preset_reads_the_file_named_by_data_path(tmp_path):
    ff = np.random.default_rng(3).integers(0, 256, (560, 20)).astype(np.uint8)
    scipy.io.savemat(tmp_path / "my_frey.mat", {"ff": ff})
    ds = load_dataset("frey-face", data_path=str(tmp_path / "my_frey.mat"))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 20 and ds.source.endswith("my_frey.mat")


def test_resume_takes_a_moved_data_path_and_workers_but_not_other_levels(tmp_path, capsys):
    x = np.random.default_rng(4).integers(0, 256, (40, 6, 6)).astype(np.uint8)
    np.save(tmp_path / "a.npy", x)
    out = tmp_path / "run"
    common = ["--epochs", "1", "--no-progress"]
    assert main(["train", "--data", "array", "--data-path", str(tmp_path / "a.npy"), "--hidden", "8",
                 "--latent-dim", "2", "--likelihood", "logistic", "--binarize", "none", "--batch-size", "8",
                 "--nll-samples", "2", "--out", str(out), *common]) == 0
    (tmp_path / "moved").mkdir()
    (tmp_path / "a.npy").rename(tmp_path / "moved" / "a.npy")
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress", "--workers", "1",
                 "--data-path", str(tmp_path / "moved" / "a.npy")]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "-k", "2", "--no-sample-metrics", "--data-dir", str(tmp_path / "moved" / "a.npy")]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 4
    np.save(tmp_path / "binary.npy", (x > 127).astype(np.uint8))  # the same shape, 2 levels
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress",
                 "--data-path", str(tmp_path / "binary.npy")]) == 2
    assert "pixel levels" in capsys.readouterr().err
