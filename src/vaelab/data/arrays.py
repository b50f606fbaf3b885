"""Reader for images stored as plain arrays: ``.npy``, ``.npz`` and MATLAB ``.mat`` (v4 to v7.2).

What an array may hold:

* images already shaped: ``[N, H, W]`` (greyscale) or ``[N, H, W, C]`` with ``C`` 1 or 3
  (channel-last, the default ``layout="hwc"``), or ``[N, C, H, W]`` with ``layout="chw"``;
* flat rows ``[N, D]``, which need ``shape=(H, W)`` or ``(H, W, C)`` and a ``layout`` saying how
  a row of ``D = H*W*C`` values is an image:

  - ``"hwc"``: row-major over ``(H, W, C)``: pixel ``(i, j)`` at ``i*W + j``, channels interleaved;
  - ``"chw"``: planar channels, each plane row-major (the CIFAR python layout: 1024 R, 1024 G,
    1024 B);
  - ``"column-major"``: Fortran order over ``(H, W, C)``: pixel ``(i, j)`` at ``i + j*H``
    (MATLAB's own order, e.g. Olivetti faces).

``examples="columns"`` says that the *last* axis indexes the examples instead of the first: for a
flat ``[D, N]`` array each column is one image (Frey faces, Olivetti), and a MATLAB ``H x W x N``
stack works the same way.

Pixel values: ``uint8`` is kept as is; other integer, boolean or float arrays whose values are all
whole numbers in 0..255 are converted to ``uint8`` unchanged; float arrays within [0, 1] that are
not all whole become ``round(x * 255)``; anything else (negative, above 255, NaN) is an error.
``levels`` is 2 when the stored values are all 0 or 1 (binary data, like binarized MNIST) and 256
otherwise (always 256 for rescaled [0, 1] floats).

Labels come from ``label_key`` (an integer array of the same N in the same file, each below
:data:`vaelab.limits.MAX_CLASSES`), used as they are; without it every label is 0 and
``classes`` is ``[]``. With labels and no ``classes``, the class names are ``"0"`` ..
``str(max label)``.

Every problem raises :class:`VaelabError` in one sentence naming the file or flag.
"""
from __future__ import annotations

import contextlib
import math
import os
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from vaelab.errors import VaelabError, clip
from vaelab.limits import MAX_CLASSES, check_bytes

from .raw import RawData

LAYOUTS = ("hwc", "chw", "column-major")
EXAMPLES = ("rows", "columns")
SUFFIXES = (".npy", ".npz", ".mat")

# Two classic sets in their original MATLAB files, read from <data-dir>/<name>/<file>.
# frey-face (Roweis): ff is 560 x 1965 uint8, each column a 28-tall, 20-wide image, row-major
#   (every public loader does ff.T.reshape(-1, 28, 20)).
# olivetti (Roweis, via scikit-learn): faces is 4096 x 400, each column a 64x64 image in MATLAB's
#   column-major order (sklearn: faces.T.reshape(-1, 64, 64).transpose(0, 2, 1)), 256 grey levels;
#   40 people x 10 images in order, so image i shows person i // 10.
PRESETS: dict[str, dict] = {
    "frey-face": dict(file="frey_rawface.mat", key="ff", shape=(28, 20), layout="hwc",
                      examples="columns"),
    "olivetti": dict(file="olivettifaces.mat", key="faces", shape=(64, 64),
                     layout="column-major", examples="columns", per_class=10,
                     class_name="person {}"),
}


def read_preset(name: str, folder: str | os.PathLike) -> RawData:
    """Read a preset's original file, ``<folder>/<file>`` (see :data:`PRESETS`), or the file
    ``folder`` itself when it names one."""
    if name not in PRESETS:
        raise VaelabError(f"unknown array preset {name!r}: expected one of {', '.join(PRESETS)}.")
    p = PRESETS[name]
    path = Path(folder) if Path(folder).is_file() else Path(folder) / p["file"]
    if not path.is_file():
        raise VaelabError(f"{path} does not exist: the {name} dataset expects its original file "
                          f"{p['file']} (variable '{p['key']}') in {Path(folder)}.")
    raw = read_array(path, key=p["key"], shape=p["shape"], layout=p["layout"],
                     examples=p["examples"])
    if "per_class" in p:  # labels implied by the order of the images
        n = len(raw.x_train)
        raw.y_train = np.arange(n, dtype=np.int64) // p["per_class"]
        raw.classes = [p["class_name"].format(k) for k in range(-(-n // p["per_class"]))]
    return raw.check()


def read_array(path: str | os.PathLike, key: str | None = None, label_key: str | None = None,
               shape: tuple[int, ...] | None = None, layout: str = "hwc",
               examples: str = "rows", classes: list[str] | None = None) -> RawData:
    """Read the images (and optionally labels) of one array file into :class:`RawData`.

    All images land in ``x_train`` as uint8 ``[N, C, H, W]``; the caller splits them. See the
    module's docstring for the accepted shapes, layouts and values. ``classes`` (names by label)
    is used only with ``label_key``.
    """
    path = Path(path)
    if layout not in LAYOUTS:
        raise VaelabError(f"--layout {layout!r} is not a layout: expected one of "
                          f"{', '.join(LAYOUTS)}.")
    if examples not in EXAMPLES:
        raise VaelabError(f"--examples {examples!r} is not valid: expected rows or columns.")
    if shape is not None:
        shape = _check_shape(shape)
    data, labels = _load(path, key, label_key)
    images = _to_images(path, data, shape, layout, examples)
    x, levels = _to_uint8(path, images)
    if label_key is not None:
        y = _labels(path, label_key, labels, len(x))
        if classes is None:
            classes = [str(k) for k in range(int(y.max(initial=0)) + 1)]
        classes = list(classes)
        if len(y) and y.max() >= len(classes):
            raise VaelabError(f"{path}: label {int(y.max())} in '{label_key}' has no class name: "
                              f"only {len(classes)} classes were given.")
    else:
        y, classes = np.zeros(len(x), np.int64), []
    return RawData(x_train=x, y_train=y, classes=classes, levels=levels, source=str(path)).check()


def _check_shape(shape) -> tuple[int, int, int]:
    """(H, W) or (H, W, C) with C 1 or 3 -> (H, W, C)."""
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        dims = ()
    if len(dims) not in (2, 3) or min(dims) < 1 or (len(dims) == 3 and dims[2] not in (1, 3)):
        raise VaelabError(f"--shape {shape!r} is not an image shape: expected H,W or H,W,C with "
                          f"positive sizes and C 1 or 3.")
    return dims if len(dims) == 3 else (*dims, 1)


def _load(path: Path, key: str | None, label_key: str | None):
    """(images, labels or None) from the file; with no key the images are its only other array."""
    if not path.exists():
        raise VaelabError(f"{path} does not exist.")
    if not path.is_file():
        raise VaelabError(f"{path} is a folder, not an array file.")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise VaelabError(f"--data-path {path} is not an array file: expected a .npy, .npz or "
                          f".mat file.")
    if suffix == ".npy":
        if key is not None or label_key is not None:
            raise VaelabError(f"{path} is a .npy file, which holds one unnamed array: --key and "
                              f"--label-key apply only to .npz and .mat files.")
        with open(path, "rb") as f:
            _check_npy_header(path, f, os.fstat(f.fileno()).st_size)
        return _np_load(path, lambda: np.load(path, allow_pickle=False)), None
    if suffix == ".npz":
        with open_npz(path) as archive:
            key = _pick(path, list(archive.files), key, label_key)
            images = _npz_array(path, archive, key)
            return images, None if label_key is None else _npz_array(path, archive, label_key)
    variables = _loadmat(path, [n for n in (key, label_key) if n is not None])
    key = _pick(path, list(variables), key, label_key)
    return variables[key], None if label_key is None else variables[label_key]


@contextlib.contextmanager
def open_npz(path: Path) -> Iterator[np.lib.npyio.NpzFile]:
    """The archive ``path``, closed when the block ends, however it ends. The file is opened here,
    not by np.load: given a name, np.load leaves its own handle open when the zip directory
    cannot be read (a truncated file)."""
    def unreadable(e: Exception) -> VaelabError:
        return VaelabError(f"{path} is not a readable .npz file ({e}).")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise unreadable(e) from None
    with f:
        try:
            archive = np.load(f, allow_pickle=False)
        # NotImplementedError: zipfile's word for a version or a compression it does not read
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as e:
            raise unreadable(e) from None
        with archive:
            yield archive


def _pick(path: Path, found: list[str], key: str | None, label_key: str | None) -> str:
    """The images' name: ``key``, or the file's only array besides the labels."""
    listing = ", ".join(repr(k) for k in found) or "none"
    for flag, name in (("--key", key), ("--label-key", label_key)):
        if name is not None and name not in found:
            raise VaelabError(f"{path} has no variable {name!r} (named by {flag}): the variables "
                              f"in it are {listing}.")
    if key is None:
        others = [k for k in found if k != label_key]
        if len(others) != 1:
            raise VaelabError(f"{path} holds {len(found)} arrays ({listing}): say which holds "
                              f"the images with --key.")
        key = others[0]
    return key


def _npz_array(path: Path, archive, name: str) -> np.ndarray:
    """One array of an .npz archive, its header checked before numpy allocates it."""
    member = name if name in archive.zip.namelist() else name + ".npy"  # as NpzFile names them

    def check_header() -> None:
        with archive.zip.open(member) as f:
            _check_npy_header(path, f, archive.zip.getinfo(member).file_size, name)
    _np_load(path, check_header, name)  # the same errors as the load
    return _np_load(path, lambda: archive[name], name)


def _check_npy_header(path: Path, f, size: int, name: str = "") -> None:
    """Read the .npy header at the start of ``f`` (``size`` bytes long) and refuse an array larger
    than the memory limit or than the bytes that follow it, before numpy allocates it."""
    what = f" array {name!r}" if name else ""
    try:
        if f.read(6) != b"\x93NUMPY":
            raise VaelabError(f"{path}{what} is not a .npy {'array' if name else 'file'}: it does not start "
                              f"with the NumPy magic bytes.")
        major = f.read(2)[:1]
        # versions 2 and 3 differ only in the header's text encoding, ASCII for numeric arrays
        read = np.lib.format.read_array_header_1_0 if major == b"\x01" else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    # numpy parses the header's text as Python tokens: a cut or changed header can end in
    # tokenize's or the parser's errors too; the member of a corrupt .npz, in zlib's
    except (ValueError, SyntaxError, tokenize.TokenError, zlib.error, EOFError, zipfile.BadZipFile,
            NotImplementedError) as e:
        raise VaelabError(f"{path}{what} cannot be read as a NumPy array ({clip(e)}).") from None
    if dtype.hasobject:
        return  # the load refuses Python objects
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    check_bytes(f"{path}{what}: the shape {clip(shape)} its .npy header declares", nbytes)
    if nbytes > size - f.tell():
        raise VaelabError(f"{path}{what} is truncated: its header declares shape {clip(shape)}, which is "
                          f"{nbytes} bytes of data, but {size - f.tell()} bytes follow the header.")


def _np_load(path: Path, load, name: str = "") -> np.ndarray:
    what = f" array {name!r}" if name else ""
    try:
        return load()
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickled" in str(e):
            raise VaelabError(f"{path}{what} holds Python objects, not numbers: expected a "
                              f"numeric array.") from None
        raise VaelabError(f"{path}{what} cannot be read as a NumPy array ({e}).") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise VaelabError(f"{path}{what} cannot be read ({clip(e)}); is the file truncated?") from None


def _loadmat(path: Path, wanted=()) -> dict[str, np.ndarray]:
    """The numeric variables of a .mat file (v4 to v7.2), their sizes checked from the headers
    first (:func:`_mat_variables`); ``wanted``: the names asked for, refused if not numeric."""
    import scipy.io  # a heavy import, only for .mat files

    with open(path, "rb") as f:
        header = f.read(128)
    if header.startswith(b"MATLAB 7.3"):
        raise VaelabError(f"{path} is a MATLAB v7.3 (HDF5) file, which cannot be read: re-save "
                          f"it in MATLAB with save(..., '-v7') or convert it to .npy.")
    total, numeric, other = _mat_variables(path)
    for name in wanted:
        if name in other:
            raise VaelabError(f"{path}: its variable {name!r} is {other[name]}, not an array of numbers.")
    if not numeric and other:
        listing = ", ".join(f"{k!r} ({v})" for k, v in list(other.items())[:8])
        raise VaelabError(f"{path} holds no array of numbers: its variables are {listing}.")
    check_bytes(f"{path}: the variables its headers declare", total)
    try:
        # only the numeric variables are read: a cell, a struct or a sparse matrix is no image, and
        # what it holds cannot be sized from its header
        variables = scipy.io.loadmat(path, variable_names=numeric)
    except NotImplementedError:  # v7.3 without the usual header text
        raise VaelabError(f"{path} is a MATLAB v7.3 (HDF5) file, which cannot be read: re-save "
                          f"it in MATLAB with save(..., '-v7') or convert it to .npy.") from None
    # scipy's reader of a cut or changed file fails in many ways of its own, deep inside: each is
    # this file's fault, said in one sentence
    except (ValueError, TypeError, OSError, EOFError, scipy.io.matlab.MatReadError, zlib.error, IndexError, KeyError,
            AttributeError, OverflowError) as e:
        raise VaelabError(f"{path} is not a readable MATLAB .mat file ({type(e).__name__}: {clip(e)}).") from None
    out = {k: v for k, v in variables.items() if not k.startswith("__")}
    for k, v in out.items():  # what the headers called numeric, scipy must have read as an array
        if not isinstance(v, np.ndarray) or v.dtype.kind not in "biuf":
            kind = v.dtype.kind if isinstance(v, np.ndarray) else ""
            what = "text" if kind in ("U", "S") else "complex numbers" if kind == "c" else type(v).__name__
            raise VaelabError(f"{path}: its variable {k!r} is not an array of numbers (it holds {what}).")
    return out


# MATLAB v4 element sizes by the P digit of a variable's type (MOPT): double, single, int32,
# int16, uint16, uint8
_MAT4_BYTES = (8, 4, 4, 2, 2, 1)
_MAT4_MAX_VARIABLES = 10_000
# MATLAB v5: data types of the tags, and the classes of numeric arrays with their item sizes
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15
_MI_NUMERIC = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}  # miINT8 .. miUINT64: item bytes
_MX_NUMERIC = {6: 8, 7: 4, 8: 1, 9: 1, 10: 2, 11: 2, 12: 4, 13: 4, 14: 8, 15: 8}  # double .. uint64
_MX_NAMES = {1: "a cell array", 2: "a struct", 3: "an object", 4: "text", 5: "a sparse matrix"}
_MAT5_HEADER = 128
_MAT5_HEAD_BYTES = 4096  # a variable's header (flags, dimensions, name, its data's tag) is read up to this


def _mat_variables(path: Path) -> tuple[int, list[str], dict[str, str]]:
    """What a .mat file's variables would take once read, from their headers alone: (bytes, the
    numeric variables' names, the others' names with what each is), so that a file declaring more
    than the memory bound is refused before scipy reads anything (scipy allocates what a header
    says, inflates a compressed variable as it reads it, and crashes the process on a data type
    that is none of MATLAB's).

    - v5 (MATLAB's default up to 7.2): each variable is a data element, compressed or not; its
      array flags, dimensions, name and the tag of its data are read (a compressed one's from at
      most 4 kB inflated) and checked, and it counts its elements times its class's item size plus
      the bytes its data's tag declares (which scipy reads before it converts them). Complex,
      sparse, cell, struct, object and text variables are no images: they are listed apart, and
      not read.
    - v4: each variable's 20-byte header gives rows x columns x its element size (twice, if
      complex).

    A header that is not what the format says is refused here, in one sentence: scipy would read
    on from it (a name of any length, a data type of any number)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_MAT5_HEADER)
        if len(head) < 4 or head.count(0) == len(head):
            return 0, [], {}  # scipy's own refusal: too short, or zeros
        if 0 in head[:4]:
            return _mat4_variables(path, f, size)
        order = ">" if head[126:128] == b"MI" else "<"
        total, numeric, other = 0, [], {}
        pos = _MAT5_HEADER
        while pos + 8 <= size:
            f.seek(pos)
            kind, n = struct.unpack(order + "II", f.read(8))
            if kind >> 16 or n == 0 or kind not in (_MI_MATRIX, _MI_COMPRESSED):
                raise _unreadable(path, pos, f"is not a matrix (a data element of type {kind & 0xFFFF}, {n} bytes)")
            if kind == _MI_COMPRESSED:
                try:
                    data = zlib.decompressobj().decompress(f.read(min(n, 1 << 16)), _MAT5_HEAD_BYTES)
                except zlib.error as e:
                    raise _unreadable(path, pos, f"is compressed, and its stream is corrupt ({e})") from None
                if len(data) < 8 or struct.unpack(order + "I", data[:4])[0] != _MI_MATRIX:
                    raise _unreadable(path, pos, "is compressed, and holds no matrix")
                data = data[8:]
            else:
                data = f.read(min(n, _MAT5_HEAD_BYTES))
            try:
                var = _mat5_matrix(path, data, order)
            except struct.error:
                var = None
            if var is None:
                raise _unreadable(path, pos, "has a header (flags, dimensions, name, data type) that cannot be read")
            name, what, nbytes = var
            if what is None:
                numeric.append(name)
                total += nbytes
            else:
                other[name] = what
            pos += 8 + n  # where scipy looks for the next variable
    return total, numeric, other


def _unreadable(path: Path, pos: int, why: str) -> VaelabError:
    return VaelabError(f"{path} is not a readable MATLAB .mat file: its variable at byte {pos} {why}.")


def _mat5_element(data: bytes, at: int, order: str) -> tuple[int, int, int, int] | None:
    """The data element at ``at`` of a variable's header: (type, byte count, where its data
    begins, where the next element begins), the small format (data inside the tag) included;
    None where the header ends before its data does."""
    if at + 8 > len(data):
        return None
    kind, n = struct.unpack_from(order + "II", data, at)
    if kind >> 16:  # small: 2 bytes of count, 2 of type, 4 of data
        kind, n, start, end = kind & 0xFFFF, kind >> 16, at + 4, at + 8
        return (kind, n, start, end) if n <= 4 else None
    return kind, n, at + 8, at + 8 + n + (-n % 8)


def _mat5_matrix(path: Path, data: bytes, order: str) -> tuple[str, str | None, int] | None:
    """(name, what it is if not numeric, the bytes reading it takes) of the miMATRIX element whose
    data begins ``data``; None where its header is not the format's."""
    flags = _mat5_element(data, 0, order)
    if flags is None or flags[0] != _MI_UINT32 or flags[1] < 8 or flags[2] + 8 > len(data):
        return None
    word = struct.unpack_from(order + "I", data, flags[2])[0]
    cls, is_complex = word & 0xFF, bool(word & 0x0800)
    dims = _mat5_element(data, flags[3], order)
    if dims is None or dims[0] != _MI_INT32 or dims[1] % 4 or not 8 <= dims[1] <= 4 * 64 \
            or dims[2] + dims[1] > len(data):
        return None
    shape = struct.unpack_from(f"{order}{dims[1] // 4}i", data, dims[2])
    named = _mat5_element(data, dims[3], order)
    if named is None or named[0] != _MI_INT8 or named[1] > 255 or named[2] + named[1] > len(data):
        return None
    name = data[named[2]:named[2] + named[1]].decode("latin1")
    if cls not in _MX_NUMERIC or is_complex:
        return name, _MX_NAMES.get(cls, f"of MATLAB class {cls}") if not is_complex else "complex", 0
    real = _mat5_element(data, named[3], order)
    if real is None and named[3] + 8 > len(data) or real is not None and real[0] not in _MI_NUMERIC:
        return None  # a data type scipy's reader does not check: it crashed the process (SIGSEGV)
    stored = 0 if real is None else real[1]
    return name, None, math.prod(max(d, 0) for d in shape) * _MX_NUMERIC[cls] + stored


def _mat4_variables(path: Path, f, size: int) -> tuple[int, list[str], dict[str, str]]:
    """v4: a run of 20-byte headers (type, rows, columns, complex, name length), names and data."""
    total, names = 0, []
    pos = 0
    while pos < size and len(names) < _MAT4_MAX_VARIABLES:
        f.seek(pos)
        raw = f.read(20)
        if len(raw) < 20:
            raise _unreadable(path, pos, "is cut short inside its 20-byte header")
        order = "<" if struct.unpack("<i", raw[:4])[0] in range(5000) else ">"
        mopt, rows, cols, imagf, namlen = struct.unpack(order + "5i", raw)
        o, p, t = mopt // 100 % 10, mopt // 10 % 10, mopt % 10
        if not (0 <= mopt < 5000 and o == 0 and p < len(_MAT4_BYTES) and t <= 2 and rows >= 0 and cols >= 0
                and imagf in (0, 1) and 0 < namlen <= 4096) or raw.count(0) == 20:
            raise _unreadable(path, pos, "has a v4 header that is not the format's (type, sizes, name length)")
        data = rows * cols * _MAT4_BYTES[p] * (2 if imagf else 1)
        if pos + 20 + namlen + data > size:
            raise _unreadable(path, pos, f"declares {rows:,} x {cols:,} values, more than the file holds")
        names.append(f.read(namlen).rstrip(b"\0").decode("latin1"))
        total += data + (rows * cols * 16 if imagf else 0)
        pos += 20 + namlen + data
    return total, names, {}


def _to_images(path: Path, a: np.ndarray, shape, layout: str, examples: str) -> np.ndarray:
    """The array as images ``[N, C, H, W]`` (values not yet converted)."""
    if a.dtype.kind not in "biuf":
        raise VaelabError(f"{path} holds {a.dtype} values, not numbers: expected a numeric "
                          f"array of images.")
    if a.ndim < 2 or a.ndim > 4:
        raise VaelabError(f"{path} holds an array of shape {a.shape}: expected flat images "
                          f"[N, D] or images [N, H, W], [N, H, W, C] or [N, C, H, W].")
    if examples == "columns":
        a = np.moveaxis(a, -1, 0)
    if a.shape[0] == 0:
        raise VaelabError(f"{path} holds no images: its array has shape {a.shape}.")
    if a.ndim == 2:
        if shape is None:
            raise VaelabError(f"{path} holds flat rows of {a.shape[1]} values: give --shape H,W "
                              f"or H,W,C to say what image a row is.")
        h, w, c = shape
        if a.shape[1] != h * w * c:
            raise VaelabError(f"--shape {_fmt(shape)} does not fit {path}: a row holds "
                              f"{a.shape[1]} values, but {_fmt(shape)} is {h * w * c}.")
        n = len(a)
        if layout == "hwc":
            return a.reshape(n, h, w, c).transpose(0, 3, 1, 2)
        if layout == "chw":
            return a.reshape(n, c, h, w)
        # column-major: pixel (i, j) of channel c at i + j*H + c*H*W
        return a.reshape(n, c, w, h).transpose(0, 1, 3, 2)
    if layout == "column-major":
        raise VaelabError(f"--layout column-major applies to flat rows, but {path} holds "
                          f"images of shape {a.shape}.")
    if a.ndim == 3:
        images = a[:, None]
    elif layout == "chw":
        images = a
    else:
        images = a.transpose(0, 3, 1, 2)
    if images.shape[1] not in (1, 3):
        chw = layout == "hwc" and a.shape[1] in (1, 3)
        hint = " (channel-first? give --layout chw)" if chw else ""
        raise VaelabError(f"{path} holds images of shape {a.shape} with {images.shape[1]} "
                          f"channels: expected 1 or 3{hint}.")
    if 0 in images.shape[2:]:
        raise VaelabError(f"{path} holds images of {images.shape[2]}x{images.shape[3]} pixels (array "
                          f"shape {a.shape}): expected images at least 1 pixel high and wide.")
    if shape is not None and images.shape[1:] != (shape[2], shape[0], shape[1]):
        raise VaelabError(f"--shape {_fmt(shape)} does not match {path}, whose images are "
                          f"{images.shape[2]}x{images.shape[3]} with {images.shape[1]} channels.")
    return images


def _fmt(shape) -> str:
    h, w, c = shape
    return f"{h},{w}" + (f",{c}" if c != 1 else "")


def _to_uint8(path: Path, a: np.ndarray) -> tuple[np.ndarray, int]:
    """uint8 pixels and their number of levels (2 for 0/1 data, else 256)."""
    if a.dtype == np.uint8:
        x = a
    else:
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise VaelabError(f"{path} holds NaN or infinite values: expected pixel values "
                              f"0..255 or within [0, 1].")
        lo, hi = a.min(), a.max()
        whole = a.dtype.kind in "biu" or bool(np.all(a == np.floor(a)))
        if lo >= 0 and hi <= 255 and whole:
            x = a.astype(np.uint8)
        elif lo >= 0 and hi <= 1:
            return np.ascontiguousarray(np.rint(a * 255.0).astype(np.uint8)), 256
        else:
            raise VaelabError(f"{path} holds pixel values from {lo:g} to {hi:g}: expected whole "
                              f"numbers 0..255 or floats within [0, 1].")
    return np.ascontiguousarray(x), 2 if int(x.max()) <= 1 else 256


def _labels(path: Path, name: str, y: np.ndarray, n: int) -> np.ndarray:
    """int64 labels [n] from a label array (a MATLAB 1 x N or N x 1 vector is fine)."""
    y = np.asarray(y)
    if y.ndim != 1 and math.prod(y.shape) == max(y.shape, default=0):
        y = y.reshape(-1)
    if y.ndim != 1 or len(y) != n:
        raise VaelabError(f"{path}: the labels {name!r} have shape {y.shape}: expected one "
                          f"label for each of the {n} images.")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise VaelabError(f"{path}: the labels {name!r} include NaN or infinite values: expected "
                          f"whole numbers.")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(y == np.floor(y))):
        raise VaelabError(f"{path}: the labels {name!r} are {y.dtype} values: expected whole "
                          f"numbers.")
    if n and y.min() < 0:
        raise VaelabError(f"{path}: the labels {name!r} include {y.min():g}: expected labels "
                          f"0 or more.")
    if n and y.max() >= MAX_CLASSES:  # each label up to the largest names a class
        raise VaelabError(f"{path}: the labels {name!r} include {y.max():g}: expected labels "
                          f"below {MAX_CLASSES:,}.")
    return y.astype(np.int64)
