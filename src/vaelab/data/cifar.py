"""Reader for CIFAR-10 in its official "python version": ``cifar-10-python.tar.gz``, read
straight from the archive without extracting it, or its extracted ``cifar-10-batches-py/``.

The format (https://www.cs.toronto.edu/~kriz/cifar.html): the archive holds
``cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
``batches.meta`` and ``readme.html``. Each batch is a pickle written by Python 2's cPickle (read
in Python 3 with ``encoding='bytes'``) of a dict whose ``data`` is a 10000x3072 uint8 numpy array
(per row: 1024 red, then 1024 green, then 1024 blue values, each plane a 32x32 image in row-major
order) and whose ``labels`` is a list of 10000 ints in 0..9; it also holds ``batch_label`` and
``filenames``. ``batches.meta`` is a dict whose ``label_names`` are the 10 class names.

Pickles can run code, so they are read by :class:`_PlainDataUnpickler`, which admits only the
few globals a CIFAR batch names (numpy's array reconstruction) and hands out its own stand-ins for
them, which build nothing but a plain uint8 array from raw bytes; any other global is refused
before anything is called.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np

from vaelab.errors import VaelabError, clip

from .archive import safe_member_name
from .download import file_md5
from .raw import RawData

TARBALL = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
META, TEST = "batches.meta", "test_batch"
_TRAIN_RE = re.compile(r"data_batch_([1-9][0-9]*)")

# (size in bytes, md5) of the official archive, as served by www.cs.toronto.edu/~kriz/ and checked
# by torchvision (tgz_md5). The md5 is checked only for a file of this name and size, so a smaller
# archive in the same format (a test's) is read without it. Module-level so tests can change it.
OFFICIAL: dict[str, tuple[int, str]] = {
    TARBALL: (170498071, "c58f30108f718f92721af3b95e74349a"),
}

_MAX_MEMBER = 1 << 30  # an official batch is ~31 MB; refuse to pull a gigabyte into memory
_ADMITTED_TEXT = "dicts, lists, bytes, str, ints and uint8 numpy arrays"


def locate_cifar10(folder: str | os.PathLike) -> Path | None:
    """The CIFAR-10 files in a dataset folder: ``<folder>/cifar-10-python.tar.gz`` (preferred,
    since its md5 can be checked) or ``<folder>/cifar-10-batches-py/``; None if neither is there."""
    folder = Path(folder)
    if (folder / TARBALL).is_file():
        return folder / TARBALL
    if (folder / FOLDER).is_dir():
        return folder / FOLDER
    return None


def read_cifar10(path: str | os.PathLike) -> RawData:
    """Read CIFAR-10 from the tarball, from ``cifar-10-batches-py/`` or from a folder holding
    either; return every ``data_batch_N`` (N = 1, 2, ... in order) as the training set and
    ``test_batch`` as the test set, uint8 ``[N, 3, 32, 32]``, with the class names of
    ``batches.meta``. Every problem with the files raises :class:`VaelabError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise VaelabError(f"{path} does not exist; expected {TARBALL} or a {FOLDER}/ folder.")
    if path.is_dir() and not any((path / n).exists() for n in (META, TEST, "data_batch_1")):
        found = locate_cifar10(path)
        if found is None:
            raise VaelabError(f"{path} holds neither {TARBALL} nor a {FOLDER}/ folder with the "
                              f"CIFAR-10 batches.")
        path = found
    if path.is_dir():
        members, where = _read_folder(path), (lambda name: f"{path / name}")
        missing = lambda name: f"{path} has no file {name}"  # noqa: E731
    else:
        check_md5(path)
        members, where = _read_tarball(path), (lambda name: f"{path} (member {FOLDER}/{name})")
        missing = lambda name: f"{path} has no member {FOLDER}/{name}"  # noqa: E731
    return _assemble(members, where, missing, str(path))


def check_md5(path: Path) -> bool:
    """Check ``path`` against :data:`OFFICIAL` when its name and size are the official ones;
    raise :class:`VaelabError` on a mismatch. Returns whether the md5 was checked."""
    official = OFFICIAL.get(path.name)
    if official is None or path.stat().st_size != official[0]:
        return False
    got = file_md5(path)
    if got != official[1]:
        raise VaelabError(f"{path} has md5 {got}, but the official {path.name} has md5 "
                          f"{official[1]}; the file is corrupt or altered, so download it again.")
    return True


# --- reading the members ---------------------------------------------------------------------

def _wanted(name: str) -> bool:
    return name in (META, TEST) or _TRAIN_RE.fullmatch(name) is not None


def _read_tarball(path: Path) -> dict[str, object]:
    """Unpickle the wanted members of ``FOLDER/`` in one pass over the archive, extracting nothing."""
    members: dict[str, object] = {}
    try:
        with tarfile.open(path, "r|*") as tar:  # a stream: gzip is decompressed only once
            for info in tar:
                safe_member_name(path, info)  # every member, wanted or not: no '..', absolute path, link or device
                folder, _, name = info.name.removeprefix("./").partition("/")
                if folder != FOLDER or not _wanted(name):
                    continue
                label = f"{path} (member {info.name})"
                if not info.isfile():
                    raise VaelabError(f"{label} is a link or a folder, not a regular file.")
                if name in members:
                    raise VaelabError(f"{label} appears twice in the archive.")
                if info.size > _MAX_MEMBER:
                    raise VaelabError(f"{label} is {info.size} bytes, far larger than a CIFAR "
                                      f"batch (about 31 MB).")
                members[name] = _unpickle(tar.extractfile(info).read(), label)
    except PermissionError as e:
        raise VaelabError(f"{path} cannot be read: {e.strerror or e}.") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise VaelabError(f"{path} is not a readable tar archive ({type(e).__name__}: {e}); "
                          f"it is corrupt or truncated, so download {TARBALL} again.") from None
    return members


def _read_folder(folder: Path) -> dict[str, object]:
    members: dict[str, object] = {}
    for file in sorted(folder.iterdir()):
        if _wanted(file.name):
            if not file.is_file():
                raise VaelabError(f"{file} is a folder, not a CIFAR batch file.")
            if file.stat().st_size > _MAX_MEMBER:
                raise VaelabError(f"{file} is {file.stat().st_size} bytes, far larger than a "
                                  f"CIFAR batch (about 31 MB).")
            try:
                raw = file.read_bytes()
            except OSError as e:
                raise VaelabError(f"{file} cannot be read: {e.strerror or e}.") from None
            members[file.name] = _unpickle(raw, str(file))
    return members


# --- the restricted unpickler ------------------------------------------------------------------

class _Refused(Exception):
    """A pickle asked for something outside plain data; the message says what."""


class _BadArray(Exception):
    """A pickled array that is not a plain uint8 array; the message says how."""


class _StandIn:
    """What the unpickler hands out for an admitted global: callable, but with no state that a
    BUILD or SETATTR in the pickle could change."""
    __slots__ = ("_fn",)

    def __init__(self, fn):
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args):
        return self._fn(*args)

    def __setattr__(self, name, value):
        raise _Refused("a change to the attributes of numpy's functions")

    def __setstate__(self, state):
        raise _Refused("a change to the state of numpy's functions")


class _Dtype:
    """Stand-in for ``numpy.dtype('u1', False, True)`` and its BUILD state; only uint8 passes."""

    def __init__(self, code, align=False, copy=False):
        if code not in ("u1", b"u1", "uint8", b"uint8"):
            raise _BadArray(f"an array of dtype {_text(code)!r}")

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment[, flags]); '|' = none.
        # The oldest numpy (a 5-tuple) wrote no version, so the byte order comes first there.
        if not (isinstance(state, tuple) and len(state) >= 5
                and state[0 if len(state) == 5 else 1] in ("|", b"|")):
            raise _BadArray(f"an array whose dtype has the state {state!r}")


class _Array:
    """Stand-in for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``; its BUILD state
    (version, shape, dtype, is_fortran, raw bytes) becomes ``self.array``, a plain uint8 array."""

    def __init__(self, subtype, shape, typecode):
        self.array = None
        if subtype is not _NDARRAY:
            raise _BadArray("an array of a type other than numpy.ndarray")

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # drop the version number numpy writes first
        if not isinstance(state, tuple) or len(state) != 4:
            raise _BadArray("an array whose state is not numpy's (shape, dtype, order, bytes)")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype):
            raise _BadArray("an array without a numpy dtype")
        if isinstance(raw, str):
            raw = raw.encode("latin1")  # what numpy does with a Python 2 str read as latin1
        if not (isinstance(shape, tuple) and all(type(s) is int and s >= 0 for s in shape)
                and isinstance(raw, (bytes, bytearray)) and len(raw) == math.prod(shape)):
            raise _BadArray(f"an array of shape {shape!r} whose bytes do not match that shape")
        self.array = np.frombuffer(raw, np.uint8).reshape(shape, order="F" if fortran else "C").copy()


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """Stand-in for ``_codecs.encode``, with which Python 3 pickles bytes at protocol <= 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode of {type(text).__name__} with {encoding!r}")
    return text.encode("latin1")


def _text(s):
    return s.decode("latin1") if isinstance(s, bytes) else s


def _not_callable(*args):
    raise _Refused("a call of numpy.ndarray itself")


_NDARRAY = _StandIn(_not_callable)
_RECONSTRUCT = _StandIn(_Array)
# Everything a CIFAR batch names: numpy's array and dtype reconstruction (numpy < 2 writes
# numpy.core, numpy 2 numpy._core), plus the way Python 3 writes bytes at protocol 2.
_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _StandIn(_Dtype),
    ("_codecs", "encode"): _StandIn(_latin1_encode),
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ADMITTED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"the global {module}.{name}") from None


_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _check_memo(raw: bytes) -> None:
    """Refuse a pickle that names a memo slot past the number of objects it memoizes, read
    without running it (:func:`pickletools.genops`): the unpickler sizes its memo to twice the
    largest slot it is told to fill, so nine bytes could take gigabytes; a real pickler numbers
    its slots one after another, so none is past that count."""
    ops = list(pickletools.genops(raw))
    puts = sum(op.name in _MEMO_PUTS or op.name == "MEMOIZE" for op, _, _ in ops)
    for op, arg, _ in ops:
        if op.name in _MEMO_PUTS and isinstance(arg, int) and arg > puts:
            raise _Refused(f"memo slot {arg:,} among {puts:,} memoized objects (memory for every slot up to it)")


def _unpickle(raw: bytes, label: str) -> object:
    """Load a CIFAR pickle with :class:`_PlainDataUnpickler`; arrays come back as ndarrays."""
    try:
        _check_memo(raw)
        obj = _PlainDataUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as e:
        raise VaelabError(f"{label} is a pickle that asks for {e}, so it was refused before "
                          f"anything in it ran: a CIFAR batch holds only {_ADMITTED_TEXT}.") from None
    except _BadArray as e:
        raise VaelabError(f"{label} holds {e}; expected CIFAR's uint8 array of shape "
                          f"(n, 3072).") from None
    except Exception as e:  # a corrupt pickle can fail in any of a dozen ways
        raise VaelabError(f"{label} is not a readable pickle ({type(e).__name__}: {clip(e)}); the "
                          f"file is corrupt or not a CIFAR batch.") from None
    return _plain(obj)


def _plain(obj):
    """A batch dict with str keys and its :class:`_Array` values replaced by their arrays (only
    the top level: that is where CIFAR keeps its array, and no deep nesting can recurse here)."""
    if not isinstance(obj, dict):
        return obj
    return {(k.decode("latin1") if isinstance(k, bytes) else k):
            (v.array if isinstance(v, _Array) else v) for k, v in obj.items()}


# --- from members to RawData -------------------------------------------------------------------

def _assemble(members: dict, where, missing, source: str) -> RawData:
    nums = sorted(int(_TRAIN_RE.fullmatch(n).group(1)) for n in members if _TRAIN_RE.fullmatch(n))
    gap = next((i for i, n in enumerate(nums, 1) if i != n), None if nums else 1)
    for name in [META, TEST] + ([f"data_batch_{gap}"] if gap else []):
        if name not in members:
            raise VaelabError(f"{missing(name)}, which the official {TARBALL} holds.")
    classes = _classes(members[META], where(META))
    train = [_batch(members[f"data_batch_{n}"], where(f"data_batch_{n}"), classes) for n in nums]
    x_test, y_test = _batch(members[TEST], where(TEST), classes)
    return RawData(x_train=np.concatenate([x for x, _ in train]),
                   y_train=np.concatenate([y for _, y in train]),
                   x_test=x_test, y_test=y_test, classes=classes, levels=256,
                   source=source).check()


def _classes(meta, label: str) -> list[str]:
    names = meta.get("label_names") if isinstance(meta, dict) else None
    if not (isinstance(names, list) and names
            and all(isinstance(n, (bytes, str)) and n for n in names)):
        raise VaelabError(f"{label} has no label_names list of class names.")
    try:
        return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise VaelabError(f"{label} has class names that are not UTF-8 text.") from None


def _batch(batch, label: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise VaelabError(f"{label} is not a CIFAR batch: expected a dict with data and labels.")
    x, y = batch["data"], batch["labels"]
    if isinstance(y, np.ndarray) and y.ndim == 1:
        y = y.tolist()  # a re-saved batch may hold its labels as a uint8 array
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise VaelabError(f"{label} has data of shape {getattr(x, 'shape', type(x).__name__)}, "
                          f"expected a uint8 array of shape (n, 3072).")
    if not isinstance(y, list) or not all(type(v) is int for v in y):
        raise VaelabError(f"{label} has labels that are not a list of ints.")
    if len(y) != len(x):
        raise VaelabError(f"{label} has {len(y)} labels for {len(x)} images.")
    bad = next((v for v in y if not 0 <= v < len(classes)), None)
    if bad is not None:
        raise VaelabError(f"{label} has label {bad}, but batches.meta names {len(classes)} "
                          f"classes (labels 0..{len(classes) - 1}).")
    return x.reshape(len(x), 3, 32, 32), np.array(y, dtype=np.int64).reshape(len(y))
