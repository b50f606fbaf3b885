"""Reader for the IDX format (the container of MNIST and Fashion-MNIST), gzipped or plain.

The format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number made of two zero bytes,
a type byte and the number of dimensions; then one big-endian int32 size per dimension; then
the data, big-endian, row-major.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vaelab.errors import VaelabError, clip
from vaelab.limits import check_bytes, fmt_bytes

# Type byte -> big-endian numpy dtype, as the IDX spec lists them.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def describe_magic(magic: int) -> str:
    """Say in words what a magic number declares, e.g. 0x00000803 -> 'uint8, 3 dimensions'."""
    dtype = IDX_TYPES.get((magic >> 8) & 0xFF)
    kind = dtype.newbyteorder("=").name if dtype is not None else "unknown type"
    ndim = magic & 0xFF
    return f"{kind}, {ndim} dimension{'s' if ndim != 1 else ''}"


MAX_DIMS = 32  # numpy 1's limit (numpy 2's is 64)


def read_idx(path: str | os.PathLike, expected_magic: int | None = None, copies: int = 1) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a native-endian numpy array of its declared shape.

    ``expected_magic`` (e.g. ``0x00000803`` for uint8 images with 3 dimensions) makes a file
    of another type or rank an error, so a caller never has to guess what it got.
    Every problem with the file raises :class:`VaelabError` naming it.

    A gzip stream is decompressed as it is read, and no further than the header says: the data
    the header declares are checked against :func:`vaelab.limits.check_bytes` first, then read
    straight into the one array returned, a chunk at a time, and at most one byte more is read, so
    a gzip bomb costs neither memory nor the time to expand it, and the bytes checked are all
    the memory the loader takes (a bytes object converted into an array would be two copies).
    ``copies``: the bytes the caller will hold at its peak for each byte of the file's data (a
    dataset's splits copy the images once more while the array read is still held: 2), so that
    the bound counts every copy, not only this one.
    """
    path = Path(path)
    with _open(path) as f:
        head = _read(path, f, 4)
        if len(head) < 4:
            raise VaelabError(f"{path} is not an IDX file: it is only {len(head)} bytes long, "
                              f"shorter than the 4-byte magic number.")
        magic = int.from_bytes(head, "big")
        _check_magic(path, magic, expected_magic)
        dtype = IDX_TYPES[head[2]]
        shape = _read_shape(path, _read(path, f, 4 * head[3]), head[3])
        count = math.prod(shape)  # Python ints: a corrupt header cannot overflow this
        expected = count * dtype.itemsize
        held = f" ({copies} times its {fmt_bytes(expected)}: the data and its copies)" if copies > 1 else ""
        check_bytes(f"{path}: the shape {clip(shape)} its IDX header declares{held}", expected * copies)
        flat = np.empty(count, dtype=dtype)
        found = _read_into(path, f, memoryview(flat.view(np.uint8)))
        if found == expected:
            found += len(_read(path, f, 1))
    if found != expected:
        problem, follow = ("is truncated", f"{found} bytes") if found < expected else ("has trailing bytes", "more")
        raise VaelabError(f"{path} {problem}: its header declares shape {clip(shape)}, which is "
                          f"{expected} bytes of data, but {follow} follow the header.")
    # native byte order in place: the array the file was read into is the one returned
    return flat.byteswap(inplace=True).view(dtype.newbyteorder("=")).reshape(shape) \
        if dtype.byteorder == ">" else flat.reshape(shape)


# At most this much is decompressed at once: gzip's readinto decompresses into a bytes object of
# the size asked for and then copies it, so a large request would be a second copy of the data.
_CHUNK = 1 << 20


def _read_into(path: Path, f: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``f``; the bytes read (fewer at its end)."""
    done = 0
    while done < len(view):
        with _reading(path):
            n = f.readinto(view[done:done + _CHUNK])
        if not n:
            break
        done += n
    return done


def _open(path: Path) -> BinaryIO:
    """The file, opened to read, through a decompressor when it is gzip."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == _GZIP_MAGIC
        # Decide by content, not by name: browsers often save these files already decompressed
        # but keep the .gz name, and such a file is perfectly usable.
        return gzip.open(path, "rb") if gz else open(path, "rb")
    except FileNotFoundError:
        raise VaelabError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise VaelabError(f"{path} is a folder, not an IDX file.") from None
    except OSError as e:
        raise VaelabError(f"{path} cannot be read: {e.strerror or e}.") from None


def _read(path: Path, f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes of ``f`` (fewer at its end)."""
    with _reading(path):
        return f.read(n)


@contextlib.contextmanager
def _reading(path: Path):
    """Turn what a read of ``path`` raises into a sentence naming it."""
    try:
        yield
    except EOFError:
        raise VaelabError(f"{path} is a truncated gzip file: the compressed stream ends early "
                          f"(an interrupted download?); delete it and fetch it again.") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise VaelabError(f"{path} is a corrupt gzip file ({e}); delete it and fetch it "
                          f"again.") from None
    except OSError as e:
        raise VaelabError(f"{path} cannot be read: {e.strerror or e}.") from None


def _check_magic(path: Path, magic: int, expected: int | None) -> None:
    if expected is not None and magic != expected:
        raise VaelabError(f"{path} is not the expected IDX file: expected magic 0x{expected:08x} "
                          f"({describe_magic(expected)}), found 0x{magic:08x}.")
    if magic >> 16 != 0 or (magic >> 8) & 0xFF not in IDX_TYPES:
        types = "/".join(f"{t:02x}" for t in IDX_TYPES)
        raise VaelabError(f"{path} is not an IDX file: expected a magic number of two zero bytes, "
                          f"a type byte ({types}) and a dimension count, found 0x{magic:08x}.")


def _read_shape(path: Path, sizes: bytes, ndim: int) -> tuple[int, ...]:
    if len(sizes) < 4 * ndim:
        raise VaelabError(f"{path} is truncated: its header declares {ndim} dimensions, "
                          f"but the file ends after {4 + len(sizes)} bytes, inside the list of sizes.")
    if ndim > MAX_DIMS:  # numpy holds at most 64 (32 before numpy 2); an image file has 1 to 4
        raise VaelabError(f"{path} is not a readable IDX file: its header declares {ndim} dimensions, more than "
                          f"the {MAX_DIMS} an array may have (MNIST's images have 3).")
    # Sizes are big-endian *signed* int32 in the spec; read them unsigned so a corrupt header
    # shows up as an absurd size in the message below rather than as a negative one.
    return tuple(int(s) for s in np.frombuffer(sizes, dtype=">u4", count=ndim))
