"""The data layer: the IDX reader on files written here in exact IDX format, dataset location,
splits, and the real MNIST / Fashion-MNIST files (through the conftest fixtures)."""
import gzip
import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch

from vaelab.data import (DataSpec, Split, dataset_names, default_data_dirs, list_datasets,
                         load_dataset, locate_dataset, read_idx)
from vaelab.data import datasets as datasets_mod
from vaelab.errors import VaelabError

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TYPE_BYTES = {">u1": 0x08, ">i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


# --- helpers: IDX written by hand, independently of the reader ------------------------------

def idx_bytes(arr: np.ndarray, dtype: str = ">u1") -> bytes:
    """The exact IDX encoding of arr: 0, 0, type byte, ndim, big-endian sizes, big-endian data."""
    header = bytes([0, 0, TYPE_BYTES[dtype], arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
    return header + arr.astype(dtype).tobytes()


def fake_idx_dataset(root, name="mnist", n_train=50, n_test=20, seed=0, label_offset=0):
    """Write <root>/<name>/ with the 4 official files, gzipped, holding random 28x28 images in
    which pixels (0, 0) and (0, 1) encode the image's index, so splits can be traced back."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0], x[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
        y = ((rng.integers(0, 10, size=n) + label_offset) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(idx_bytes(arr)))
        arrays[prefix] = (x, y)
    return folder, arrays


def image_indices(split: Split) -> np.ndarray:
    """Recover the original train indices from the pixels fake_idx_dataset set."""
    x = split.x.numpy().astype(np.int64)
    return x[:, 0, 0, 0] + 256 * x[:, 0, 0, 1]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data root of this machine leaks in: empty cwd, XDG folder, no system folders."""
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(datasets_mod, "SYSTEM_DIRS", {})
    return tmp_path


# --- IDX reader -------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("dtype,shape", [(">u1", (5, 4, 3)), (">u1", (7,)), (">i2", (3, 4)),
                                         (">i4", (2, 3)), (">f4", (4,)), (">f8", (2, 2, 2, 2))])
def test_read_idx_round_trip(tmp_path, gz, dtype, shape):
    rng = np.random.default_rng(1)
    if dtype[1] == "f":
        arr = rng.normal(size=shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    data = idx_bytes(arr, dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.shape == shape
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_read_idx_known_bytes(tmp_path):
    # Hand-written bytes: int16 values 1 and -2 in big-endian, a 1-D shape of 2.
    path = tmp_path / "two.idx"
    path.write_bytes(b"\x00\x00\x0b\x01" b"\x00\x00\x00\x02" b"\x00\x01" b"\xff\xfe")
    assert read_idx(path).tolist() == [1, -2]


def _idx_file(tmp_path, name, data, gz):
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("data,words", [
    (b"\x01\x02" + GOOD[2:], ["not an IDX file", "0x01020803"]),   # bad magic
    (b"\x00\x00\x07" + GOOD[3:], ["not an IDX file"]),             # unknown type byte
    (GOOD[:-5], ["truncated", "(2, 3, 4)"]),                       # payload cut short
    (GOOD[:10], ["truncated"]),                                    # sizes cut short
    (GOOD[:2], ["not an IDX file"]),                               # not even a magic number
    (GOOD + b"\x00", ["trailing"]),                                # more data than declared
], ids=["magic", "type", "payload", "sizes", "tiny", "trailing"])
def test_read_idx_bad_file_names_it(tmp_path, gz, data, words):
    path = _idx_file(tmp_path, "bad-idx3-ubyte.gz", data, gz)
    with pytest.raises(VaelabError) as err:
        read_idx(path)
    assert str(path) in str(err.value)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("cut", [11, 0.5, -4], ids=["header", "middle", "crc"])
def test_read_idx_truncated_gzip(tmp_path, cut):
    raw = gzip.compress(bytes(range(256)) * 20)  # never decompressed far enough to matter
    n = int(len(raw) * cut) if isinstance(cut, float) else cut if cut > 0 else len(raw) + cut
    path = _idx_file(tmp_path, "cut.gz", raw[:n], gz=False)
    with pytest.raises(VaelabError, match="gzip") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_corrupt_gzip(tmp_path):
    raw = bytearray(gzip.compress(bytes(range(256)) * 50))
    raw[20:30] = b"\xff" * 10  # garbage inside the deflate stream
    path = _idx_file(tmp_path, "corrupt.gz", bytes(raw), gz=False)
    with pytest.raises(VaelabError, match="gzip") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_missing_file_and_folder(tmp_path):
    with pytest.raises(VaelabError, match="does not exist") as err:
        read_idx(tmp_path / "nope.gz")
    assert "nope.gz" in str(err.value)
    with pytest.raises(VaelabError, match="folder"):
        read_idx(tmp_path)


def test_read_idx_expected_magic(tmp_path):
    path = _idx_file(tmp_path, "labels.gz", idx_bytes(np.zeros(3, np.uint8)), gz=True)
    assert read_idx(path, expected_magic=0x801).shape == (3,)
    with pytest.raises(VaelabError, match="expected magic 0x00000803.*found 0x00000801") as err:
        read_idx(path, expected_magic=0x803)
    assert str(path) in str(err.value)


# --- names, specs -----------------------------------------------------------------------------

def test_dataset_names():
    assert dataset_names() == ["array", "binarized-mnist", "cifar10", "digits", "fashion-mnist", "frey-face",
                               "image-folder", "lfw", "mnist", "olivetti"]


def test_unknown_dataset_lists_the_known_ones(isolated):
    with pytest.raises(VaelabError) as err:
        load_dataset("cifar-11")
    msg = str(err.value)
    assert "'cifar-11'" in msg
    assert all(n in msg for n in dataset_names())
    with pytest.raises(VaelabError, match="cifar-11"):
        locate_dataset("cifar-11")


def test_dataspec_dict_round_trip():
    spec = DataSpec("mnist", (1, 28, 28), 256, 10)
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["shape"] == [1, 28, 28]
    assert DataSpec.from_dict(d) == spec
    with pytest.raises(VaelabError, match="levels"):
        DataSpec.from_dict({"name": "x", "shape": [1, 2, 2], "num_classes": 3})


# --- digits -----------------------------------------------------------------------------------

def test_digits_shapes_levels_and_splits():
    ds = load_dataset("digits")
    assert ds.spec == DataSpec("digits", (1, 8, 8), 17, 10)
    assert ds.source == "scikit-learn (bundled)"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1437 - 120, 120, 360)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8) and split.x.is_contiguous()
        assert len(split.x) == len(split.y)
    all_x = torch.cat([ds.train.x, ds.val.x, ds.test.x])
    assert int(all_x.max()) == 16 and int(all_x.min()) == 0
    assert set(torch.cat([ds.train.y, ds.test.y]).tolist()) == set(range(10))


def test_digits_test_set_is_fixed_and_loads_are_deterministic():
    a = load_dataset("digits", split_seed=0)
    b = load_dataset("digits", split_seed=0)
    c = load_dataset("digits", split_seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    # The test set depends on nothing the user sets; the validation split does.
    assert torch.equal(a.test.x, c.test.x) and torch.equal(a.test.y, c.test.y)
    assert not torch.equal(a.val.x, c.val.x)
    # The test images are those of a fixed permutation of sklearn's 1797 (seed 0, last 360).
    from sklearn.datasets import load_digits
    sk = load_digits()
    test_idx = np.sort(np.random.default_rng(0).permutation(1797)[-360:])
    np.testing.assert_array_equal(a.test.x.numpy().reshape(-1, 8, 8), sk.images[test_idx])
    np.testing.assert_array_equal(a.test.y.numpy(), sk.target[test_idx])


# --- validation split -------------------------------------------------------------------------

def test_val_split_sizes_disjoint_and_ordered(isolated):
    fake_idx_dataset(isolated / "root", n_train=60, n_test=10)
    ds = load_dataset("mnist", isolated / "root", val_size=13, split_seed=3)
    train, val = image_indices(ds.train), image_indices(ds.val)
    assert (len(train), len(val)) == (47, 13)
    assert not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(60))
    assert list(train) == sorted(train)  # train keeps the original order
    assert list(image_indices(ds.test)) == list(range(10))  # test untouched, in order


def test_val_split_default_size_and_zero(isolated):
    _, arrays = fake_idx_dataset(isolated / "root", n_train=60, n_test=10)
    ds = load_dataset("mnist", isolated / "root")
    assert (len(ds.train), len(ds.val)) == (55, 5)  # 60 / 12
    ds = load_dataset("mnist", isolated / "root", val_size=0)
    assert len(ds.val) == 0 and ds.val.x.shape == (0, 1, 28, 28)
    # With no validation split, train is the official train set, exactly.
    np.testing.assert_array_equal(ds.train.x.numpy()[:, 0], arrays["train"][0])
    np.testing.assert_array_equal(ds.train.y.numpy(), arrays["train"][1])


def test_val_split_depends_on_split_seed_only(isolated):
    fake_idx_dataset(isolated / "root", n_train=60, n_test=10)
    val = lambda seed: list(image_indices(load_dataset("mnist", isolated / "root", val_size=10,
                                                       split_seed=seed).val))
    assert val(5) == val(5)
    assert val(5) != val(6)


@pytest.mark.parametrize("bad", [-1, 1437, 5000, 2.5, "10", True])
def test_bad_val_size(bad):
    with pytest.raises(VaelabError, match="--val-size"):
        load_dataset("digits", val_size=bad)


def test_bad_split_seed():
    with pytest.raises(VaelabError, match="split seed"):
        load_dataset("digits", split_seed=-1)


def test_returned_tensors_do_not_alias_the_cache(isolated):
    fake_idx_dataset(isolated / "root", n_train=24, n_test=12)
    ds = load_dataset("mnist", isolated / "root", val_size=0)
    before = ds.test.x.clone()
    ds.test.x.zero_()
    ds.train.x.zero_()
    again = load_dataset("mnist", isolated / "root", val_size=0)
    assert torch.equal(again.test.x, before) and int(again.train.x.max()) > 0


def test_cache_notices_a_replaced_file(isolated):
    folder, _ = fake_idx_dataset(isolated / "root", n_train=24, n_test=12, seed=0)
    first = load_dataset("mnist", isolated / "root", val_size=0)
    fake_idx_dataset(isolated / "root", n_train=24, n_test=12, seed=0, label_offset=1)
    for f in FILES:  # same sizes: only the mtime can tell them apart
        os.utime(folder / f, ns=(1, 10**18 + 7))
    second = load_dataset("mnist", isolated / "root", val_size=0)
    assert torch.equal(second.train.y, (first.train.y + 1) % 10)


# --- loader checks ----------------------------------------------------------------------------

def test_loader_rejects_count_mismatch(isolated):
    folder, _ = fake_idx_dataset(isolated / "root", n_train=24, n_test=12)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(11, np.uint8))))
    with pytest.raises(VaelabError, match="counts must agree") as err:
        load_dataset("mnist", isolated / "root")
    assert str(labels) in str(err.value)


def test_loader_rejects_swapped_files(isolated):
    folder, _ = fake_idx_dataset(isolated / "root", n_train=24, n_test=12)
    images, labels = folder / FILES[0], folder / FILES[1]
    data = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(data)
    with pytest.raises(VaelabError, match="expected magic 0x00000803") as err:
        load_dataset("mnist", isolated / "root")
    assert str(images) in str(err.value)


def test_loader_rejects_wrong_image_size(isolated):
    folder, _ = fake_idx_dataset(isolated / "root", n_train=24, n_test=12)
    images = folder / FILES[2]
    images.write_bytes(gzip.compress(idx_bytes(np.zeros((12, 32, 32), np.uint8))))
    with pytest.raises(VaelabError, match="32x32") as err:
        load_dataset("mnist", isolated / "root")
    assert str(images) in str(err.value)


# --- locating ---------------------------------------------------------------------------------

def test_default_data_dirs_order(isolated, monkeypatch):
    assert default_data_dirs() == [isolated / "data", isolated / "xdg" / "vaelab"]
    monkeypatch.setenv("VAELAB_DATA", str(isolated / "env"))
    assert default_data_dirs() == [isolated / "env", isolated / "data",
                                   isolated / "xdg" / "vaelab"]
    assert default_data_dirs(isolated / "flag") == [isolated / "flag"]
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(isolated / "home"))
    assert default_data_dirs()[-1] == isolated / "home" / ".local" / "share" / "vaelab"


def test_locate_via_data_dir(isolated):
    folder, _ = fake_idx_dataset(isolated / "root")
    assert locate_dataset("mnist", isolated / "root") == folder
    assert locate_dataset("mnist", str(isolated / "root")) == folder
    assert locate_dataset("fashion-mnist", isolated / "root") is None
    assert locate_dataset("digits", isolated / "root") is None
    ds = load_dataset("mnist", isolated / "root")
    assert ds.source == str(folder)
    assert ds.spec == DataSpec("mnist", (1, 28, 28), 256, 10)


def test_locate_via_env_and_standard_places(isolated, monkeypatch):
    assert locate_dataset("mnist") is None
    env_folder, _ = fake_idx_dataset(isolated / "env")
    monkeypatch.setenv("VAELAB_DATA", str(isolated / "env"))
    assert locate_dataset("mnist") == env_folder
    # ./data and the XDG folder are found too, after $VAELAB_DATA.
    cwd_folder, _ = fake_idx_dataset(isolated / "data", name="fashion-mnist")
    assert locate_dataset("fashion-mnist") == cwd_folder
    xdg_folder, _ = fake_idx_dataset(isolated / "xdg" / "vaelab", name="fashion-mnist")
    (cwd_folder / FILES[3]).unlink()  # an incomplete folder does not count
    assert locate_dataset("fashion-mnist") == xdg_folder


def test_explicit_data_dir_is_searched_alone(isolated, monkeypatch):
    fake_idx_dataset(isolated / "env")
    fake_idx_dataset(isolated / "data")
    monkeypatch.setenv("VAELAB_DATA", str(isolated / "env"))
    (isolated / "empty").mkdir()
    assert locate_dataset("mnist", isolated / "empty") is None
    with pytest.raises(VaelabError) as err:
        load_dataset("mnist", isolated / "empty")
    msg = str(err.value)
    assert str(isolated / "empty" / "mnist") in msg
    assert str(isolated / "env") not in msg and str(isolated / "data") not in msg
    assert "--data-dir" in msg and "--download" in msg


def test_system_folder_searched_last_and_not_with_data_dir(isolated, monkeypatch):
    system = isolated / "usr-share-datasets"
    system_folder, _ = fake_idx_dataset(system, name="fashion-mnist")
    monkeypatch.setattr(datasets_mod, "SYSTEM_DIRS", {"fashion-mnist": [system_folder]})
    assert locate_dataset("fashion-mnist") == system_folder
    assert locate_dataset("mnist") is None
    assert locate_dataset("fashion-mnist", isolated / "elsewhere") is None
    user_folder, _ = fake_idx_dataset(isolated / "data", name="fashion-mnist")
    assert locate_dataset("fashion-mnist") == user_folder


def test_not_found_message_lists_places_and_hints(isolated, monkeypatch):
    monkeypatch.setenv("VAELAB_DATA", str(isolated / "env"))
    partial, _ = fake_idx_dataset(isolated / "data")
    (partial / FILES[1]).unlink()
    with pytest.raises(VaelabError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    for place in (isolated / "env" / "mnist", partial, isolated / "xdg" / "vaelab" / "mnist"):
        assert str(place) in msg
    assert f"lacks {FILES[1]}" in msg
    # --data-dir pointing into the dataset's own folder gets a hint.
    with pytest.raises(VaelabError, match="folder above"):
        load_dataset("mnist", partial)


def test_list_datasets(isolated):
    folder, _ = fake_idx_dataset(isolated / "root")
    rows = {r["name"]: r for r in list_datasets(isolated / "root")}
    assert list(rows) == dataset_names()
    assert rows["mnist"]["found"] and rows["mnist"]["where"] == str(folder)
    assert not rows["fashion-mnist"]["found"] and rows["fashion-mnist"]["where"] is None
    assert rows["digits"]["found"] and rows["digits"]["where"] == "scikit-learn (bundled)"
    assert all(r["description"] for r in rows.values())
    json.dumps(list(rows.values()))


# --- the real files ---------------------------------------------------------------------------

def test_real_mnist(mnist_dir):
    ds = load_dataset("mnist", mnist_dir)
    assert ds.source == str(mnist_dir / "mnist")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55000, 5000, 10000)
    assert ds.train.x.shape == (55000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.train.x.dtype == torch.uint8 and int(ds.train.x.max()) == 255
    assert sorted(ds.test.y.unique().tolist()) == list(range(10))
    # The first official training label is a 5 (it stays first: train keeps its order, and
    # with split seed 0 image 0 is not held out for validation).
    assert int(load_dataset("mnist", mnist_dir, val_size=0).train.y[0]) == 5
    assert int(ds.train.y[0]) == 5
    assert ds.spec.levels == 256 and ds.spec.num_classes == 10


def test_real_fashion_mnist(fashion_dir):
    path = fashion_dir / "fashion-mnist" / FILES[0]
    with gzip.open(path, "rb") as f:  # Debian's copy: only the decompressed md5 is known
        assert hashlib.md5(f.read()).hexdigest() == "f4a8712d7a061bf5bd6d2ca38dc4d50a"
    ds = load_dataset("fashion-mnist", fashion_dir, val_size=0)
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert sorted(ds.train.y.unique().tolist()) == list(range(10))
    assert torch.bincount(ds.test.y).tolist() == [1000] * 10
    np.testing.assert_array_equal(ds.train.x.numpy()[:, 0], read_idx(path))
