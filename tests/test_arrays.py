"""The array readers (.npy, .npz, .mat and the two MATLAB presets) and the binarized-MNIST .amat
reader, on small files written here in exactly the published formats, plus CIFAR-10 pixels."""
import numpy as np
import pytest
import scipy.io

from conftest import require_real
from vaelab.data.amat import read_amat, read_binarized_mnist
from vaelab.data.arrays import PRESETS, read_array, read_preset
from vaelab.errors import VaelabError


def test_npy_greyscale_and_rgb_images(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "g.npy", grey)
    raw = read_array(tmp_path / "g.npy")
    assert raw.x_train.shape == (5, 1, 4, 3) and raw.levels == 256 and raw.classes == []
    np.testing.assert_array_equal(raw.x_train[:, 0], grey)
    np.testing.assert_array_equal(raw.y_train, np.zeros(5, np.int64))

    rgb = np.random.default_rng(1).integers(0, 256, (6, 4, 5, 3)).astype(np.int32)
    np.save(tmp_path / "c.npy", rgb)
    raw = read_array(tmp_path / "c.npy")
    assert raw.x_train.shape == (6, 3, 4, 5) and raw.x_train.dtype == np.uint8
    np.testing.assert_array_equal(raw.x_train, rgb.transpose(0, 3, 1, 2))
    # channel-first images need --layout chw
    np.save(tmp_path / "chw.npy", rgb.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(read_array(tmp_path / "chw.npy", layout="chw").x_train,
                                  raw.x_train)
    with pytest.raises(VaelabError, match="chw"):
        read_array(tmp_path / "chw.npy")


def test_flat_npz_chw_with_labels(tmp_path):
    # CIFAR's python layout: a row is the R plane, then G, then B, each row-major.
    h, w = 2, 3
    rows = np.zeros((2, 3 * h * w), np.uint8)
    rows[1, 0 * h * w + 1 * w + 2] = 10  # image 1, red,   pixel (1, 2)
    rows[1, 1 * h * w + 0 * w + 1] = 20  # image 1, green, pixel (0, 1)
    rows[0, 2 * h * w + 1 * w + 0] = 30  # image 0, blue,  pixel (1, 0)
    np.savez(tmp_path / "d.npz", data=rows, labels=np.array([1, 0], np.uint8))
    raw = read_array(tmp_path / "d.npz", key="data", label_key="labels", shape=(h, w, 3),
                     layout="chw", classes=["cat", "dog"])
    x = raw.x_train
    assert x.shape == (2, 3, h, w) and x.sum() == 60
    assert x[1, 0, 1, 2] == 10 and x[1, 1, 0, 1] == 20 and x[0, 2, 1, 0] == 30
    np.testing.assert_array_equal(raw.y_train, [1, 0])
    assert raw.y_train.dtype == np.int64 and raw.classes == ["cat", "dog"]
    # the same rows read as interleaved channels land elsewhere: (i, j, c) at (i*W + j)*3 + c
    hwc = read_array(tmp_path / "d.npz", key="data", shape=(h, w, 3), layout="hwc").x_train
    assert hwc[1, 2, 0, 1] == 10  # flat index 5 = (0*W + 1)*3 + 2: pixel (0, 1), channel 2
    # without class names, labels get "0" .. max
    assert read_array(tmp_path / "d.npz", key="data", label_key="labels", shape=(h, w, 3),
                      layout="chw").classes == ["0", "1"]


def _frey_like(n):
    """560 x n uint8, each column a 28-tall, 20-wide image stored row-major (Roweis's ff)."""
    images = np.random.default_rng(2).integers(0, 256, (n, 28, 20), dtype=np.uint8)
    return images, images.reshape(n, 560).T.copy()


def test_frey_face_preset(tmp_path):
    images, ff = _frey_like(7)
    ff[0, 3] = 255  # image 3, pixel (0, 0)
    images[3, 0, 0] = 255
    ff[20 * 5 + 19, 4] = 1  # image 4, pixel (5, 19): row 5, last column
    images[4, 5, 19] = 1
    (tmp_path / "frey-face").mkdir()
    scipy.io.savemat(tmp_path / "frey-face" / "frey_rawface.mat", {"ff": ff})
    raw = read_preset("frey-face", tmp_path / "frey-face")
    assert raw.x_train.shape == (7, 1, 28, 20) and raw.levels == 256 and raw.classes == []
    np.testing.assert_array_equal(raw.x_train[:, 0], images)
    assert raw.source.endswith("frey_rawface.mat")


def test_olivetti_preset_is_column_major_with_people(tmp_path):
    n = 23
    images = np.random.default_rng(3).integers(0, 256, (n, 64, 64)).astype(np.float64)
    images[5, 2, 60] = 77  # image 5, row 2, column 60
    faces = np.stack([im.flatten(order="F") for im in images], axis=1)  # 4096 x n, MATLAB order
    assert faces[2 + 60 * 64, 5] == 77
    (tmp_path / "olivetti").mkdir()
    scipy.io.savemat(tmp_path / "olivetti" / "olivettifaces.mat", {"faces": faces})
    raw = read_preset("olivetti", tmp_path / "olivetti")
    assert raw.x_train.shape == (n, 1, 64, 64) and raw.x_train.dtype == np.uint8
    assert raw.x_train[5, 0, 2, 60] == 77
    np.testing.assert_array_equal(raw.x_train[:, 0], images.astype(np.uint8))
    np.testing.assert_array_equal(raw.y_train, np.arange(n) // 10)
    assert raw.classes == ["person 0", "person 1", "person 2"]
    # scikit-learn's reading of the same file agrees
    sk = faces.T.reshape(-1, 64, 64).transpose(0, 2, 1)
    np.testing.assert_array_equal(raw.x_train[:, 0], sk)


def test_preset_missing_file_names_the_path(tmp_path):
    with pytest.raises(VaelabError, match=r"olivettifaces\.mat.*'faces'") as e:
        read_preset("olivetti", tmp_path / "olivetti")
    assert str(tmp_path / "olivetti" / "olivettifaces.mat") in str(e.value)
    assert set(PRESETS) == {"frey-face", "olivetti"}


def test_mat_hwc_rows_and_1_based_label_vector(tmp_path):
    images = np.arange(4 * 6, dtype=np.uint8).reshape(4, 2, 3)
    scipy.io.savemat(tmp_path / "m.mat", {"X": images.reshape(4, 6), "y": np.array([[1, 2, 3, 1]])})
    raw = read_array(tmp_path / "m.mat", key="X", label_key="y", shape=(2, 3))
    np.testing.assert_array_equal(raw.x_train[:, 0], images)
    np.testing.assert_array_equal(raw.y_train, [1, 2, 3, 1])  # MATLAB's 1 x N vector, as is


def test_float_values(tmp_path):
    x = np.array([[[0.0, 0.5], [1.0, 0.25]]])
    np.save(tmp_path / "f.npy", x)
    raw = read_array(tmp_path / "f.npy")
    np.testing.assert_array_equal(raw.x_train[0, 0], [[0, 128], [255, 64]])
    assert raw.levels == 256
    np.save(tmp_path / "w.npy", np.array([[[0.0, 200.0], [255.0, 3.0]]]))  # whole numbers: kept
    np.testing.assert_array_equal(read_array(tmp_path / "w.npy").x_train[0, 0],
                                  [[0, 200], [255, 3]])
    np.save(tmp_path / "b.npy", np.array([[[0.0, 1.0], [1.0, 0.0]]]))  # 0/1 data: 2 levels
    raw = read_array(tmp_path / "b.npy")
    assert raw.levels == 2 and raw.x_train.max() == 1


@pytest.mark.parametrize("what, make, kwargs, pattern", [
    ("missing key", lambda p: np.savez(p / "a.npz", data=np.zeros((2, 4)), y=np.zeros(2)),
     dict(key="images"), r"a\.npz has no variable 'images' \(named by --key\).*'data', 'y'"),
    ("several arrays, no key", lambda p: np.savez(p / "a.npz", a=np.zeros((2, 4)), b=np.zeros(2)),
     {}, r"a\.npz holds 2 arrays \('a', 'b'\).*--key"),
    ("mat missing key", lambda p: scipy.io.savemat(p / "a.mat", {"ff": np.zeros((4, 2))}),
     dict(key="faces", shape=(2, 2)), r"a\.mat has no variable 'faces'.*'ff'\.$"),
    ("shape not dividing", lambda p: np.save(p / "a.npy", np.zeros((3, 10), np.uint8)),
     dict(shape=(3, 3)), r"--shape 3,3 does not fit .*a\.npy: a row holds 10 values, but 3,3 is 9"),
    ("flat without shape", lambda p: np.save(p / "a.npy", np.zeros((3, 10), np.uint8)),
     {}, r"a\.npy holds flat rows of 10 values: give --shape"),
    ("values above 255", lambda p: np.save(p / "a.npy", np.full((1, 2, 2), 300)),
     {}, r"a\.npy holds pixel values from 300 to 300"),
    ("negative values", lambda p: np.save(p / "a.npy", np.full((1, 2, 2), -0.5)),
     {}, r"a\.npy holds pixel values from -0\.5"),
    ("NaN", lambda p: np.save(p / "a.npy", np.full((1, 2, 2), np.nan)),
     {}, r"a\.npy holds NaN"),
    ("object array", lambda p: np.save(p / "a.npy", np.array([[1], ["x"]], dtype=object)),
     {}, r"a\.npy holds Python objects"),
    ("text named .npy", lambda p: (p / "a.npy").write_text("1 2 3\n"),
     {}, r"a\.npy is not a \.npy file"),
    ("text named .mat", lambda p: (p / "a.mat").write_text("1 2 3\n" * 40),
     {}, r"a\.mat is not a readable MATLAB \.mat file"),
    ("v7.3 mat", lambda p: (p / "a.mat").write_bytes(b"MATLAB 7.3 MAT-file, HDF5".ljust(512, b" ")),
     {}, r"a\.mat is a MATLAB v7\.3 .*-v7"),
    ("bad layout", lambda p: np.save(p / "a.npy", np.zeros((3, 4), np.uint8)),
     dict(shape=(2, 2), layout="planar"), r"--layout 'planar'"),
    ("bad shape", lambda p: np.save(p / "a.npy", np.zeros((3, 8), np.uint8)),
     dict(shape=(2, 2, 2)), r"--shape \(2, 2, 2\) is not an image shape"),
    ("wrong suffix", lambda p: (p / "a.csv").write_text("1\n"),
     {}, r"--data-path .*a\.csv is not an array file"),
    ("labels of the wrong length",
     lambda p: np.savez(p / "a.npz", x=np.zeros((3, 2, 2)), y=np.zeros(2)),
     dict(key="x", label_key="y"), r"a\.npz: the labels 'y' have shape \(2,\)"),
])
def test_bad_input_is_one_clear_sentence(tmp_path, what, make, kwargs, pattern):
    make(tmp_path)
    path = next(p for p in tmp_path.iterdir())
    with pytest.raises(VaelabError, match=pattern) as e:
        read_array(path, **kwargs)
    msg = str(e.value)
    assert msg.endswith(".") and "\n" not in msg, msg


def _write_amat(path, rows, fmt="{:d}"):
    path.write_text("".join(" ".join(fmt.format(v) for v in row) + "\n" for row in rows))


def test_amat_five_lines(tmp_path):
    rows = (np.random.default_rng(4).random((5, 784)) < 0.3).astype(np.uint8)
    folder = tmp_path / "binarized-mnist"
    folder.mkdir()
    _write_amat(folder / "binarized_mnist_train.amat", rows)
    _write_amat(folder / "binarized_mnist_valid.amat", rows[:2], "{:.1f}")  # "0.0 1.0" also read
    _write_amat(folder / "binarized_mnist_test.amat", rows[::-1][:3])
    raw = read_binarized_mnist(folder)
    assert raw.levels == 2 and raw.classes == [] and raw.x_train.dtype == np.uint8
    assert raw.x_train.shape == (5, 1, 28, 28) and raw.x_val.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(raw.x_train.reshape(5, 784), rows)
    np.testing.assert_array_equal(raw.x_train[1, 0, 3, 7], rows[1, 3 * 28 + 7])
    np.testing.assert_array_equal(raw.x_val.reshape(2, 784), rows[:2])
    np.testing.assert_array_equal(raw.x_test.reshape(3, 784), rows[::-1][:3])
    np.testing.assert_array_equal(raw.y_test, np.zeros(3, np.int64))
    # mixed spacing and formats go through the careful path, with the same result
    mixed = " ".join(f"{v}.0" if k % 2 else f"{v}" for k, v in enumerate(rows[1]))
    (tmp_path / "m.amat").write_text("\t".join(f"{v}" for v in rows[0]) + "  \r\n" + mixed + "\n\n")
    np.testing.assert_array_equal(read_amat(tmp_path / "m.amat"), rows[:2])


@pytest.mark.parametrize("bad_line, pattern", [
    (" ".join(["0"] * 100 + ["2"] + ["1"] * 683),
     r"line 3 holds the value 2 \(value 101\): expected only 0 or 1"),
    (" ".join(["1"] * 783), r"line 3 holds 783 values: expected 784"),
    ("", r"line 3 holds 0 values"),
])
def test_amat_rejects_bad_lines(tmp_path, bad_line, pattern):
    lines = [" ".join(["0"] * 784)] * 5
    lines[2] = bad_line
    path = tmp_path / "binarized_mnist_train.amat"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(VaelabError, match=pattern) as e:
        read_amat(path)
    assert str(path) in str(e.value)


def test_amat_missing_file_names_the_path(tmp_path):
    with pytest.raises(VaelabError, match=r"binarized_mnist_train\.amat does not exist"):
        read_binarized_mnist(tmp_path)


def test_cifar_pixels_through_array():
    root = require_real("cifar10_batch1_first4000.npz")
    path = root / "cifar10_batch1_first4000.npz"
    raw = read_array(path, key="data", label_key="labels", shape=(32, 32, 3), layout="chw")
    with np.load(path) as f:
        data, labels = f["data"], f["labels"]
    assert raw.x_train.shape == (4000, 3, 32, 32) and raw.levels == 256
    np.testing.assert_array_equal(raw.x_train, data.reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(raw.y_train, labels.astype(np.int64))
    assert raw.classes == [str(k) for k in range(10)]


# ---- a .mat file's declared size is checked before scipy reads it ---------------------------------

def _bound(monkeypatch, mb):
    import vaelab.limits
    monkeypatch.setattr(vaelab.limits, "memory_limit", lambda: mb * 2 ** 20)


def test_a_compressed_mat_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    """64 MB of zeros compress to 64 kB: the variable's header inside the zlib stream is read (its
    64 MB of elements, and the 64 MB its data's tag says scipy reads first), not the data."""
    path = tmp_path / "bomb.mat"
    scipy.io.savemat(path, {"x": np.zeros((64, 2 ** 20), np.uint8)}, do_compression=True)
    assert path.stat().st_size < 2 ** 20
    _bound(monkeypatch, 16)
    inflated = []
    monkeypatch.setattr(scipy.io, "loadmat", lambda *a, **k: inflated.append(1))
    with pytest.raises(VaelabError, match=r"bomb\.mat: the variables its headers declare would take 134\.2 MB"):
        read_array(path)
    assert not inflated


@pytest.mark.parametrize("fmt", ["4", "5"])
def test_a_mat_header_declaring_past_the_bound_is_refused_and_within_it_read(fmt, tmp_path, monkeypatch):
    path = tmp_path / "images.mat"
    x = (np.arange(20 * 28 * 28) % 256).astype(np.uint8).reshape(20, 28 * 28)
    scipy.io.savemat(path, {"x": x}, format=fmt)
    _bound(monkeypatch, 16)
    assert (read_array(path, shape=(28, 28)).x_train.reshape(x.shape) == x).all()  # within the bound: read as written
    raw = bytearray(path.read_bytes())
    if fmt == "4":  # rows x columns in the first variable's header: 2^16 x 2^15 bytes
        raw[4:12] = (2 ** 16).to_bytes(4, "little") + (2 ** 15).to_bytes(4, "little")
        path.write_bytes(bytes(raw))
        with pytest.raises(VaelabError, match=r"images\.mat is not a readable MATLAB \.mat file: its variable at "
                                              r"byte 0 declares 65,536 x 32,768 values, more than the file holds"):
            read_array(path)
        with open(path, "r+b") as f:  # and a file that holds them all, sparse
            f.truncate(20 + 2 + 2 ** 31)
    else:  # the tag of the first variable's data (after its flags, dimensions and name): 2 GB
        raw[180:184] = (2 ** 31).to_bytes(4, "little")
        path.write_bytes(bytes(raw))
    with pytest.raises(VaelabError, match=r"images\.mat: the variables its headers declare would take 2\.1 GB"):
        read_array(path)


def test_complex_and_sparse_mat_variables_are_refused_unread(tmp_path):
    """A complex or sparse variable is no image, and its size is not its header's (scipy returns
    complex128 for complex uint8, 16 times the bytes): it is listed apart and never read."""
    import scipy.sparse
    for name, value, what in [("complex", np.ones((4, 4), np.uint8) * (1 + 1j), "complex"),
                              ("sparse", scipy.sparse.csc_matrix(np.eye(4)), "a sparse matrix")]:
        path = tmp_path / f"{name}.mat"
        scipy.io.savemat(path, {"x": value}, do_compression=True)
        with pytest.raises(VaelabError, match=rf"{name}\.mat holds no array of numbers: its variables are 'x' "
                                              rf"\({what}\)\."):
            read_array(path)
        with pytest.raises(VaelabError, match=rf"its variable 'x' is {what}, not an array of numbers"):
            read_array(path, key="x")


def test_the_mat_header_walk_stops_where_scipy_refuses(tmp_path):
    """A v5 header over a 1 GB hole (tags of 0 bytes) and 64 MB of zeros read as v4 (headers of
    zeros): the walk stops at the first tag scipy refuses, in the fuzzer's time limit."""
    from fuzzing import run_case
    hole = tmp_path / "hole.mat"
    with open(hole, "wb") as f:
        f.write(b"MATLAB 5.0 MAT-file".ljust(116, b" ") + bytes(8) + b"\x00\x01IM")
        f.truncate(2 ** 30)
    zeros = tmp_path / "zeros.mat"
    with open(zeros, "wb") as f:
        f.truncate(2 ** 26)
    for path in (hole, zeros):
        out = run_case(lambda tmp, path=path: read_array(path))
        assert out.kind == "refused" and "is not a readable MATLAB .mat file" in out.detail, out
