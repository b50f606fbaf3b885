"""The CIFAR-10 reader on archives written here in the official python-version layout
(https://www.cs.toronto.edu/~kriz/cifar.html): pickles as Python 2's cPickle wrote them (and as
Python 3 writes them), the restricted unpickler against crafted pickles, and real CIFAR pixels."""
import builtins
import io
import os
import pickle
import pickletools
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from vaelab.data import cifar
from vaelab.data.cifar import check_md5, locate_cifar10, read_cifar10
from vaelab.errors import VaelabError

from conftest import require_real

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FOLDER = "cifar-10-batches-py"


# --- helpers: the official format, written independently of the reader ------------------------

class RawArray:
    """An array as its pickle describes it, so a test can make shape, dtype and bytes disagree."""

    def __init__(self, shape, code, raw, order="|"):
        self.shape, self.code, self.raw, self.order = shape, code, raw, order


def py2_pickle(obj) -> bytes:
    """The bytes Python 2's cPickle.dump(obj, f, 2) writes for a CIFAR batch: its str (bytes here)
    as SHORT_BINSTRING / BINSTRING, ints, lists, dicts, and a numpy array through
    numpy.core.multiarray._reconstruct plus a BUILD of (version, shape, dtype, fortran, bytes)."""
    out = [b"\x80\x02"]

    def w(o):
        if isinstance(o, np.ndarray):
            o = RawArray(o.shape, o.dtype.str[1:].encode(), o.tobytes(),
                         "|" if o.dtype.itemsize == 1 else "<")
        if isinstance(o, RawArray):
            out.append(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01")
            w(tuple(o.shape))
            out.append(b"cnumpy\ndtype\n")
            w(o.code)
            out.append(b"K\x00K\x01\x87R(K\x03")
            w(o.order.encode())
            out.append(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            w(o.raw)
            out.append(b"tb")
        elif isinstance(o, bool):
            out.append(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.append(b"K" + bytes([o]) if 0 <= o < 256 else
                       b"M" + struct.pack("<H", o) if 0 <= o < 65536 else b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            out.append(b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<i", len(o)) + o)
        elif isinstance(o, tuple):
            out.append(b"(")
            for v in o:
                w(v)
            out.append(b"t")
        elif isinstance(o, list):
            out.append(b"](")
            for v in o:
                w(v)
            out.append(b"e")
        elif isinstance(o, dict):
            out.append(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.append(b"u")
        else:
            raise TypeError(type(o))

    w(obj)
    return b"".join(out) + b"."


def py3_pickle(obj, protocol=2) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def batch(data, labels, name=b"training batch 1 of 5"):
    return {b"batch_label": name, b"labels": list(labels), b"data": data,
            b"filenames": [b"img_%06d.png" % i for i in range(len(labels))]}


def meta(classes=CLASSES):
    return {b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in classes],
            b"num_vis": 3072}


def images(n, seed):
    """n CIFAR rows where pixel (c, h, w) of image i holds ((c*1024 + h*32 + w) * 7 + seed + i) % 256."""
    return ((np.arange(3072)[None, :] * 7 + seed + np.arange(n)[:, None]) % 256).astype(np.uint8)


def official_members(dump=py2_pickle):
    """2 training batches of 10 images, a test batch of 10 and batches.meta, pickled by dump."""
    return {"data_batch_1": dump(batch(images(10, 0), [i % 10 for i in range(10)])),
            "data_batch_2": dump(batch(images(10, 100), [(3 * i) % 10 for i in range(10)],
                                       b"training batch 2 of 5")),
            "test_batch": dump(batch(images(10, 200), [9 - i for i in range(10)],
                                     b"testing batch 1 of 1")),
            "batches.meta": dump(meta())}


def write_tarball(path: Path, members: dict) -> Path:
    """A gzipped tar laid out like cifar-10-python.tar.gz: cifar-10-batches-py/<member>."""
    with tarfile.open(path, "w:gz") as tar:
        d = tarfile.TarInfo(FOLDER)
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        for name, data in {**members, "readme.html": b"<html></html>"}.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_folder(root: Path, members: dict) -> Path:
    folder = root / FOLDER
    folder.mkdir(parents=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def tarball(tmp_path):
    return write_tarball(tmp_path / "cifar-10-python.tar.gz", official_members())


# --- reading ------------------------------------------------------------------------------------

def test_tarball_pixels_labels_and_classes(tarball):
    raw = read_cifar10(tarball)
    assert raw.x_train.shape == (20, 3, 32, 32) and raw.x_train.dtype == np.uint8
    assert raw.x_test.shape == (10, 3, 32, 32)
    c, h, w = np.indices((3, 32, 32))
    for i in range(20):  # batch 2 follows batch 1
        want = ((c * 1024 + h * 32 + w) * 7 + (0 if i < 10 else 100) + i % 10) % 256
        np.testing.assert_array_equal(raw.x_train[i], want)
    np.testing.assert_array_equal(raw.x_test[3], ((c * 1024 + h * 32 + w) * 7 + 203) % 256)
    # the layout spelled out: red row 0 first, the green plane starts at 1024, row 1 at 32
    assert raw.x_train[0, 0, 0, 1] == 7 and raw.x_train[0, 1, 0, 0] == (1024 * 7) % 256
    assert raw.x_train[0, 0, 1, 0] == (32 * 7) % 256 and raw.x_train[0, 2, 31, 31] == (3071 * 7) % 256
    assert raw.y_train.dtype == np.int64
    assert raw.y_train.tolist() == [i % 10 for i in range(10)] + [(3 * i) % 10 for i in range(10)]
    assert raw.y_test.tolist() == [9 - i for i in range(10)]
    assert raw.classes == CLASSES and raw.levels == 256 and raw.source == str(tarball)
    assert raw.x_val is None and raw.y_val is None


def test_one_pixel_lands_at_its_channel_row_and_column(tmp_path):
    data = np.zeros((10, 3072), np.uint8)
    data[4, 1024 + 5 * 32 + 7] = 255  # image 4, green, row 5, column 7
    members = official_members()
    members["data_batch_1"] = py2_pickle(batch(data, [0] * 10))
    raw = read_cifar10(write_tarball(tmp_path / "c.tar.gz", members))
    assert raw.x_train[4, 1, 5, 7] == 255 and int(raw.x_train.sum()) > 255  # batch 2 is not zero
    assert int(raw.x_train[:10].sum()) == 255


def test_extracted_folder_and_dataset_folder_give_the_same_arrays(tmp_path, tarball):
    from_tar = read_cifar10(tarball)
    extracted = tmp_path / "x"
    with tarfile.open(tarball) as tar:
        for info in tar:
            if info.isfile():
                (extracted / info.name).parent.mkdir(parents=True, exist_ok=True)
                (extracted / info.name).write_bytes(tar.extractfile(info).read())
    for where in (extracted, extracted / FOLDER):
        raw = read_cifar10(where)
        for a, b in ((raw.x_train, from_tar.x_train), (raw.y_train, from_tar.y_train),
                     (raw.x_test, from_tar.x_test), (raw.y_test, from_tar.y_test)):
            np.testing.assert_array_equal(a, b)
        assert raw.classes == CLASSES and raw.source == str(extracted / FOLDER)
    # a dataset folder: the tarball is preferred (its md5 can be checked), else the folder
    assert locate_cifar10(extracted) == extracted / FOLDER
    (extracted / "cifar-10-python.tar.gz").write_bytes(tarball.read_bytes())
    assert locate_cifar10(extracted) == extracted / "cifar-10-python.tar.gz"
    assert read_cifar10(extracted).source == str(extracted / "cifar-10-python.tar.gz")
    assert locate_cifar10(tmp_path / "nothing-here") is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(VaelabError, match="holds neither cifar-10-python.tar.gz nor"):
        read_cifar10(tmp_path / "empty")


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_python3_pickles_under_both_numpy_module_names(tmp_path, tarball, protocol):
    # Python 3 at protocol 2 writes bytes through _codecs.encode; numpy 2 names
    # numpy._core.multiarray, numpy 1 numpy.core.multiarray: each spelling must load.
    want = read_cifar10(tarball)
    members = official_members(lambda o: py3_pickle(o, protocol))
    spelled = b"numpy._core.multiarray" if b"numpy._core.multiarray" in members["data_batch_1"] \
        else b"numpy.core.multiarray"
    other = (b"numpy.core.multiarray" if spelled == b"numpy._core.multiarray"
             else b"numpy._core.multiarray")
    for k, (old, new) in enumerate([(spelled, spelled), (spelled, other)]):
        if protocol >= 4:  # names are length-prefixed strings there, and framed
            renamed = {n: _rename_protocol4(b, old, new) for n, b in members.items()}
        else:
            renamed = {n: b.replace(old, new) for n, b in members.items()}
        assert new in renamed["data_batch_1"]
        raw = read_cifar10(write_tarball(tmp_path / f"p{k}.tar.gz", renamed))
        np.testing.assert_array_equal(raw.x_train, want.x_train)
        np.testing.assert_array_equal(raw.y_test, want.y_test)
        assert raw.classes == CLASSES


def _rename_protocol4(data: bytes, old: bytes, new: bytes) -> bytes:
    """Rename a module in a protocol >= 3 pickle by rewriting its SHORT_BINUNICODE and dropping
    the frames (FRAME opcodes are optional), so the lengths stay right."""
    out, pos = [], 0
    for op, arg, at in pickletools.genops(data):
        if op.name == "FRAME":
            out.append(data[pos:at])
            pos = at + 9
        elif op.name == "SHORT_BINUNICODE" and arg == old.decode():
            out.append(data[pos:at])
            out.append(b"\x8c" + bytes([len(new)]) + new)
            pos = at + 2 + len(old)
    return b"".join(out) + data[pos:]


# --- md5 ----------------------------------------------------------------------------------------

def test_md5_checked_only_for_the_official_name_and_size(tarball, monkeypatch):
    assert cifar.OFFICIAL["cifar-10-python.tar.gz"] == (170498071, "c58f30108f718f92721af3b95e74349a")
    assert check_md5(tarball) is False  # official name, but not the official size: not checked
    import hashlib
    size, good = tarball.stat().st_size, hashlib.md5(tarball.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "OFFICIAL", {tarball.name: (size, good)})
    assert check_md5(tarball) is True
    read_cifar10(tarball)
    monkeypatch.setattr(cifar, "OFFICIAL", {tarball.name: (size, "0" * 32)})
    with pytest.raises(VaelabError, match=f"{tarball}.* has md5 {good}, but the official"):
        read_cifar10(tarball)


# --- bad files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["tar", "folder"])
@pytest.mark.parametrize("drop, named", [("batches.meta", "batches.meta"),
                                         ("test_batch", "test_batch"),
                                         ("data_batch_1", "data_batch_1")])
def test_a_missing_member_is_named(tmp_path, form, drop, named):
    members = official_members()
    del members[drop]
    path = (write_tarball(tmp_path / "c.tar.gz", members) if form == "tar"
            else write_folder(tmp_path, members))
    with pytest.raises(VaelabError, match=f"{path} has no (member {FOLDER}/|file ){named}, "):
        read_cifar10(path)


def test_a_gap_in_the_training_batches_is_named(tmp_path):
    members = official_members()
    members["data_batch_3"] = members.pop("data_batch_2")
    with pytest.raises(VaelabError, match=f"no member {FOLDER}/data_batch_2,"):
        read_cifar10(write_tarball(tmp_path / "c.tar.gz", members))


def test_truncated_or_foreign_archive(tmp_path, tarball):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(VaelabError, match=f"{cut} is not a readable tar archive"):
        read_cifar10(cut)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(VaelabError, match=f"{junk} is not a readable tar archive"):
        read_cifar10(junk)
    with pytest.raises(VaelabError, match="does not exist"):
        read_cifar10(tmp_path / "missing.tar.gz")


def _with_batch(tmp_path, data_batch_1: bytes) -> Path:
    members = official_members()
    members["data_batch_1"] = data_batch_1
    return write_tarball(tmp_path / "c.tar.gz", members)


@pytest.mark.parametrize("array, message", [
    (np.zeros((10, 3072), np.float32), "holds an array of dtype 'f4'; expected CIFAR's uint8"),
    (np.zeros((10, 3072), np.int16), "holds an array of dtype 'i2'"),
    (RawArray((10, 3072), b"u1", b"\0" * 3071 * 10), r"shape \(10, 3072\) whose bytes do not match"),
    (RawArray((10, 3072), b"u1", b"\0" * 30720, order=">"), "an array whose dtype has the state"),
    (np.zeros((10, 3071), np.uint8), r"data of shape \(10, 3071\), expected a uint8 array"),
    (np.zeros((10, 3, 1024), np.uint8), r"data of shape \(10, 3, 1024\)"),
    ([0] * 10, "data of shape list"),
])
def test_bad_data_array(tmp_path, array, message):
    path = _with_batch(tmp_path, py2_pickle(batch(array, [0] * 10)))
    with pytest.raises(VaelabError, match=f"{path} \\(member {FOLDER}/data_batch_1\\).*{message}"):
        read_cifar10(path)


@pytest.mark.parametrize("labels, message", [
    ([0] * 9, "has 9 labels for 10 images"),
    ([0] * 9 + [10], "has label 10, but batches.meta names 10 classes"),
    ([0] * 9 + [b"x"], "has labels that are not a list of ints"),
])
def test_bad_labels(tmp_path, labels, message):
    path = _with_batch(tmp_path, py2_pickle(batch(images(10, 0), labels)))
    with pytest.raises(VaelabError, match=f"data_batch_1\\) {message}"):
        read_cifar10(path)


def test_garbage_pickle(tmp_path):
    path = _with_batch(tmp_path, b"\x80\x02}q\x01(U\x04data")  # cut off in the middle
    with pytest.raises(VaelabError, match="data_batch_1\\) is not a readable pickle"):
        read_cifar10(path)


# --- crafted pickles ------------------------------------------------------------------------------

class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_a_crafted_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    evil = {protocol: pickle.dumps(_Reduce(builtins.eval, code), protocol) for protocol in (2, 4)}
    for payload in evil.values():  # the control: an ordinary unpickler runs them
        pickle.loads(payload)
        assert marker.exists()
        marker.unlink()
    payloads = {
        "__builtin__.eval": evil[2],  # how Python 2, and Python 3 at protocol 2, name it
        "builtins.eval": evil[4],
        "posix.system" if os.name == "posix" else "nt.system":  # hidden inside the batch
            py3_pickle(batch(_Reduce(os.system, f"touch {marker}"), [0] * 10)),
        "numpy.frombuffer": pickle.dumps(_Reduce(np.frombuffer, b"\0" * 30720, np.uint8), 2),
        "builtins.getattr": pickle.dumps(_Reduce(getattr, "text", "upper"), 4),
    }
    for forbidden, payload in payloads.items():
        for path in (_with_batch(tmp_path, payload),
                     write_folder(tmp_path / forbidden, {**official_members(), "test_batch": payload})):
            member = "data_batch_1" if path.suffix == ".gz" else "test_batch"
            with pytest.raises(VaelabError) as e:
                read_cifar10(path)
            msg = str(e.value)
            assert str(path) in msg and member in msg, msg
            assert f"asks for the global {forbidden}, so it was refused before anything" in msg, msg
            assert not marker.exists()


def test_numpy_stand_ins_cannot_be_modified(tmp_path):
    # BUILD on the global that stands in for numpy.dtype: refused, and the stand-in unchanged
    payload = b"\x80\x02cnumpy\ndtype\n}U\x01xK\x01sb."
    with pytest.raises(VaelabError, match="asks for a change to the state of numpy's functions"):
        read_cifar10(_with_batch(tmp_path, payload))
    payload = b"\x80\x02cnumpy\ndtype\nN}U\x01xK\x01s\x86b."  # (None, slotstate): setattr
    with pytest.raises(VaelabError, match="asks for a change to the state of numpy's functions"):
        read_cifar10(_with_batch(tmp_path, payload))
    with pytest.raises(Exception, match="a change to the attributes"):  # and behind __setstate__
        cifar._ADMITTED[("numpy", "dtype")].x = 1
    # an array whose subtype is not numpy.ndarray
    payload = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85U\x01b\x87R."
    with pytest.raises(VaelabError, match="type other than numpy.ndarray"):
        read_cifar10(_with_batch(tmp_path, payload))
    assert read_cifar10(write_tarball(tmp_path / "ok.tar.gz", official_members())).classes == CLASSES


# --- real data ------------------------------------------------------------------------------------

def test_real_cifar_pixels_round_trip(tmp_path):
    root = require_real("cifar10_batch1_first4000.npz")
    with np.load(root / "cifar10_batch1_first4000.npz") as z:
        data, labels = z["data"][:1100], z["labels"][:1100].astype(int).tolist()
    members = {"data_batch_1": py2_pickle(batch(data[:1000], labels[:1000])),
               "test_batch": py2_pickle(batch(data[1000:], labels[1000:], b"testing batch 1 of 1")),
               "batches.meta": py2_pickle(meta())}
    raw = read_cifar10(write_tarball(tmp_path / "cifar-10-python.tar.gz", members))
    np.testing.assert_array_equal(raw.x_train, data[:1000].reshape(1000, 3, 32, 32))
    np.testing.assert_array_equal(raw.x_test, data[1000:].reshape(100, 3, 32, 32))
    assert raw.y_train.tolist() == labels[:1000]
    # Published facts about data_batch_1: labels start 6, 9, 9, 4, 1, 1, 2, 7, 8, 3 (image 0 a
    # frog); image 0's row starts 59, 43, 50 (red, row 0) and ends 140, 84, 72 (blue, row 31).
    assert raw.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert raw.classes[raw.y_train[0]] == "frog"
    assert raw.x_train[0, 0, 0, :3].tolist() == [59, 43, 50]
    assert raw.x_train[0, 2, 31, -3:].tolist() == [140, 84, 72]


def test_odd_but_harmless_pickles(tmp_path):
    # labels kept as a uint8 array (a re-saved batch) are read like the official list
    raw = read_cifar10(_with_batch(tmp_path, py2_pickle(batch(images(10, 0), []) | {
        b"labels": np.arange(10, dtype=np.uint8)})))
    assert raw.y_train[:10].tolist() == list(range(10))
    # 100,000 nested lists: refused as not a batch, without a RecursionError
    deep = b"\x80\x02" + b"](" * 100_000 + b"e" * 100_000 + b"."
    with pytest.raises(VaelabError, match=r"data_batch_1\) is not a CIFAR batch: expected a dict"):
        read_cifar10(_with_batch(tmp_path, deep))
