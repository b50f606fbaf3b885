"""Read the files of a tarball or a folder, safely and in a deterministic order, without extracting.

The public API is three functions:

* :func:`is_tarball` -- is this path a tar archive (any compression) rather than a folder?
* :func:`iter_tar_files` -- ``(member name, bytes)`` for a tarball's regular files, refusing
  anything that would be unsafe to extract: an absolute path, a ``..`` component, a symbolic or
  hard link, a device or a FIFO.
* :func:`read_files` -- ``(relative name, bytes)`` for every accepted file of a tarball *or* a
  folder, sorted by path components, so the two layouts of the same data give the same list.

Names are POSIX paths relative to the archive's or the folder's root (``lfw/Name/Name_0001.jpg``),
with a leading ``./`` removed. Hidden files (any path component starting with ``.``, such as the
``._name`` files macOS puts into tarballs) are skipped. Every problem raises :class:`VaelabError`
naming the file, and the member where there is one.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tarfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from vaelab.errors import VaelabError

Accept = Callable[[str], bool]  # called with a relative POSIX name; True keeps the file

# What a broken archive raises from inside tarfile and the decompressors (EOFError: a truncated
# gzip/bz2/xz stream; zlib/lzma errors: corrupt compressed data).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
_COMPRESSED = (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)


def is_tarball(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file that opens as a tar archive (plain, gzip, bzip2 or xz)."""
    try:
        return Path(path).is_file() and tarfile.is_tarfile(path)
    except _ARCHIVE_ERRORS:
        return False


def iter_tar_files(path: str | os.PathLike, accept: Accept | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for each regular file of the tarball ``path``, in archive order.

    Every member is checked, accepted or not: one with an absolute path or a ``..`` component, a
    link, a device or a FIFO raises :class:`VaelabError` naming the tarball and the member.
    Directories are skipped silently, and so are hidden files. ``accept(name)`` picks the files
    to read; the others are never decompressed into memory. A file that is not a tar archive, or
    one that is truncated or corrupt, raises :class:`VaelabError` naming it.
    """
    path = Path(path)
    try:
        tf = tarfile.open(path, "r:*")
    except FileNotFoundError:
        raise VaelabError(f"{path} does not exist.") from None
    except IsADirectoryError:
        raise VaelabError(f"{path} is a folder, not a tar archive.") from None
    except _ARCHIVE_ERRORS as e:
        raise VaelabError(f"{path} is not a readable tar archive (plain, .gz, .bz2 or .xz): "
                          f"{_first_line(e)}.") from None
    with tf:
        try:
            for member in tf:
                name = safe_member_name(path, member)
                if name is None or _hidden(name) or (accept is not None and not accept(name)):
                    continue
                _check_size(f"{path} (member {name})", member.size)
                yield name, tf.extractfile(member).read()
            _check_end(path, tf)
        except _ARCHIVE_ERRORS as e:
            raise VaelabError(f"{path} is a truncated or corrupt tar archive ({_first_line(e)}); "
                              f"fetch it again.") from None


def read_files(path: str | os.PathLike, accept: Accept | None = None) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` for every accepted, non-hidden file of a tarball or a folder, sorted.

    The order is by path components (``a/b`` before ``a.b/c``), the same for a tarball and for
    the folder it extracts to. A folder's symbolic links are followed when they point inside it;
    one that points outside it is an error naming the link.
    """
    path = Path(path)
    if path.is_dir():
        items = [(name, _read(p)) for name, p in list_folder_files(path, accept)]
    elif not path.exists():
        raise VaelabError(f"{path} does not exist: expected a folder or a tar archive.")
    else:
        items = list(iter_tar_files(path, accept))
        dups = [n for n, k in Counter(n for n, _ in items).items() if k > 1]
        if dups:
            dup = dups[0]
            raise VaelabError(f"{path} holds the member {dup} more than once; expected each file once.")
    return sorted(items, key=lambda item: item[0].split("/"))


MAX_FILE_BYTES = 1 << 28  # 256 MB: no photograph is larger; a decompression bomb may be


def _check_size(what: str, size: int) -> None:
    """Refuse a file too large to be one image before reading it into memory."""
    if size > MAX_FILE_BYTES:
        raise VaelabError(f"{what} is {size:,} bytes, more than the {MAX_FILE_BYTES:,} an image file may have; "
                          "expected PNG or JPEG images of ordinary size.")


def list_folder_files(root: str | os.PathLike, accept: Accept | None = None) -> list[tuple[str, Path]]:
    """``(relative POSIX name, path)`` of every accepted, non-hidden file under ``root``, sorted.

    Recursive; symbolic links are followed only when they resolve inside ``root`` (a link out of
    it, or a link loop, is a :class:`VaelabError` naming the link).
    """
    root = Path(root)
    real_root = root.resolve()
    out: list[tuple[str, Path]] = []

    def walk(folder: Path, prefix: str, above: tuple[Path, ...] = ()) -> None:
        real = folder.resolve()
        if real in above:
            raise VaelabError(f"{folder} is a symbolic link to a folder that holds it, a loop; "
                              f"expected links under {root} to lead down, never back up.")
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            raise VaelabError(f"{folder} cannot be read: {e.strerror or e}.") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            p = Path(entry.path)
            if entry.is_symlink():
                try:
                    target = p.resolve()
                except (RuntimeError, OSError):  # Python 3.11 and 3.13 say a loop of links each their own way
                    raise VaelabError(f"{p} is a symbolic link that leads back to itself, a loop; expected links "
                                      f"under {root} to lead to files.") from None
                if not target.is_relative_to(real_root):
                    raise VaelabError(f"{p} is a symbolic link to {target}, outside {root}; "
                                      f"expected every file of the data inside its folder.")
            if entry.is_dir():
                walk(p, f"{prefix}{entry.name}/", (*above, real))
            elif entry.is_file() and (accept is None or accept(prefix + entry.name)):
                _check_size(str(p), p.stat().st_size)
                out.append((prefix + entry.name, p))

    walk(root, "")
    return sorted(out, key=lambda item: item[0].split("/"))


# ------------------------------------------------------------------------------------ helpers

def safe_member_name(path: Path, m: tarfile.TarInfo) -> str | None:
    """The member's normalised name, None for a directory; an error for anything unsafe."""
    name = m.name
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("/"):
        raise VaelabError(f"{path} is unsafe: its member {m.name} has an absolute path; "
                          f"expected paths relative to the archive's root.")
    if ".." in name.split("/"):
        raise VaelabError(f"{path} is unsafe: its member {m.name} has a '..' component; "
                          f"expected paths inside the archive's root.")
    if m.issym() or m.islnk():
        kind = "symbolic" if m.issym() else "hard"
        raise VaelabError(f"{path} is unsafe: its member {m.name} is a {kind} link (to {m.linkname}); "
                          f"expected only regular files and folders.")
    if m.isdir():
        return None
    if not m.isreg():
        raise VaelabError(f"{path} is unsafe: its member {m.name} is a device or FIFO; "
                          f"expected only regular files and folders.")
    return name.rstrip("/")


def _check_end(path: Path, tf: tarfile.TarFile) -> None:
    # tarfile stops silently when an uncompressed tar ends on a header boundary, so look for the
    # zero block that ends every complete archive. (A compressed stream cut short raises
    # EOFError by itself; seeking back in one would decompress it all again.)
    if isinstance(tf.fileobj, _COMPRESSED):
        return
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
        raise tarfile.ReadError("it ends without the end-of-archive marker")


def _hidden(name: str) -> bool:
    return any(part.startswith(".") for part in name.split("/"))


def _read(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise VaelabError(f"{p} cannot be read: {e.strerror or e}.") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":.")
