"""``--data image-folder``: any folder or tarball of PNG/JPEG images, and the decode-and-cache
pipeline every image-file reader shares (:func:`load_images`, used by :mod:`vaelab.data.lfw`).

Labels come from the layout: when every image sits in a first-level subfolder (at any depth
below it), those subfolders are the classes, by sorted name; when every image sits at the top,
the data are unlabelled. A tarball that wraps everything in one top folder
(``tar czf faces.tgz faces/``) is read from inside that folder.

The cache: decoding is slow and hashing bytes is not, so the decoded uint8 array is kept in
``$VAELAB_CACHE/images/`` (default ``~/.cache/vaelab/images/``), one ``.npz`` per source and
transform, written atomically. Its name is a SHA-256 of the reader, the transform (crop,
size, channels, the reader's own options such as min-faces) and the source's content: a
tarball's bytes, or a folder's image names and bytes. So a second run decodes nothing, and an
edited, added or removed image, or another transform, gives another key. A cache file that
does not read back is ignored and rewritten.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from vaelab.errors import VaelabError

from .archive import read_files
from .arrays import open_npz
from .imagefiles import check_transform, decode_images, is_image_name
from .raw import RawData

CACHE_ENV = "VAELAB_CACHE"
CACHE_FORMAT = 1  # bump when what a cache file holds, or how it is made, changes

# select(names, tarball) -> (indices of the files to keep, int64 labels for them, class names)
Select = Callable[[list[str], bool], tuple[list[int], np.ndarray, list[str]]]


def read_image_folder(path: str | os.PathLike, image_size: int | None = None, crop: int | None = None,
                      channels: int | None = None, workers: int | None = None, progress: bool = True,
                      cache: bool = True, log: Callable[[str], None] | None = None,
                      defer_cache: bool = False) -> RawData:
    """Read every ``.png``/``.jpg``/``.jpeg`` of a folder or tarball into :class:`RawData`.

    Args:
        path: a folder, or a tar archive (any compression).
        image_size: side of the square output; None keeps the crop's size (then every image
            must give the same size).
        crop: side of the centred square cropped first; None takes each image's shorter side.
        channels: 1 or 3 to force greyscale or RGB; None: RGB unless every image is greyscale.
        workers: decoding processes (None: min(CPUs, 8); 0 or 1: this process).
        progress: show a progress bar on stderr while decoding.
        cache: read and write the decoded array in ``$VAELAB_CACHE/images``.
        log: called with one line saying whether the cache was used.
        defer_cache: leave writing the cache to the caller, through the result's ``write_cache``
            (a run that then fails on its arguments leaves no cache behind).
    Returns:
        Only ``x_train``/``y_train`` (the caller splits); ``classes`` are the subfolder names,
        or [] with zero labels. The result's ``from_cache`` attribute says whether the cache
        was used.
    """
    def select(names: list[str], tarball: bool) -> tuple[list[int], np.ndarray, list[str]]:
        if not names:
            raise VaelabError(f"{path} holds no images; expected .png, .jpg or .jpeg files.")
        names = _strip_top_folder(names) if tarball else names
        nested = ["/" in n for n in names]
        if not any(nested):
            return list(range(len(names))), np.zeros(len(names), np.int64), []
        if not all(nested):
            top, sub = names[nested.index(False)], names[nested.index(True)]
            raise VaelabError(f"{path} mixes images at its top level ({top}) with images in subfolders "
                              f"({sub}); expected either one subfolder per class or no subfolders.")
        folders = [n.split("/", 1)[0] for n in names]
        classes = sorted(set(folders))
        index = {c: i for i, c in enumerate(classes)}
        return list(range(len(names))), np.array([index[f] for f in folders], np.int64), classes

    return load_images(path, "image-folder", is_image_name, select, {}, image_size=image_size, crop=crop,
                       channels=channels, workers=workers, progress=progress, cache=cache, log=log,
                       defer_cache=defer_cache)


def load_images(path: str | os.PathLike, kind: str, accept: Callable[[str], bool], select: Select,
                options: dict, *, image_size: int | None, crop: int | None, channels: int | None,
                workers: int | None, progress: bool, cache: bool,
                log: Callable[[str], None] | None, defer_cache: bool = False) -> RawData:
    """The pipeline of every image-file reader: read the files, label them, decode, cache.

    ``accept(name)`` picks the files, ``select(names, tarball)`` labels them (and may drop some);
    ``kind`` and the JSON-able ``options`` that ``select`` depends on go into the cache key.
    """
    path = Path(path)
    say = log or (lambda line: None)
    check_transform(crop, image_size, channels)
    files = None
    if path.is_dir():
        files = read_files(path, accept)
        source = _hash_items(files)
    elif path.exists():
        source = _hash_file(path)  # cheaper than reading the members, and enough for the key
    else:
        raise VaelabError(f"{path} does not exist: expected a folder or a tar archive of images.")
    meta = {"format": CACHE_FORMAT, "kind": kind, "crop": crop, "size": image_size,
            "channels": channels, "options": options}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode() + source).hexdigest()
    cache_path = cache_dir() / f"{kind}-{key[:32]}.npz"
    if cache:
        raw = _load_cache(cache_path, meta, say)
        if raw is not None:
            say(f"{kind}: {len(raw.x_train)} images of {path} loaded from the cache {cache_path}.")
            raw.source, raw.from_cache = str(path), True
            return raw

    start = time.perf_counter()
    if files is None:
        files = read_files(path, accept)
    tarball = not path.is_dir()
    keep, y, classes = select([name for name, _ in files], tarball)
    # Errors name the image as a user finds it: a member of the tarball, or a path.
    where = (lambda name: f"{name} in {path}") if tarball else (lambda name: str(path / name))
    x = decode_images([(where(files[i][0]), files[i][1]) for i in keep], crop, image_size, channels,
                      workers, progress, desc=f"decoding {path.name}")
    raw = RawData(x_train=x, y_train=y, classes=classes, source=str(path)).check()
    say(f"{kind}: decoded {len(x)} images of {path} in {time.perf_counter() - start:.1f} s.")
    if cache:
        write = functools.partial(_save_cache, cache_path, raw, meta, say)
        if defer_cache:
            raw.write_cache = write
        else:
            write()
    raw.from_cache = False
    return raw


def cache_dir() -> Path:
    """``$VAELAB_CACHE/images``, or ``~/.cache/vaelab/images``; read at each call."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vaelab") / "images"


# ------------------------------------------------------------------------------------ helpers

def _strip_top_folder(names: list[str]) -> list[str]:
    """Drop one folder that wraps every name (``faces/cat/1.png`` -> ``cat/1.png``)."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return [n.split("/", 1)[1] for n in names]
    return names


def _hash_items(items: list[tuple[str, bytes]]) -> bytes:
    h = hashlib.sha256(b"files\0")
    for name, data in items:
        # Lengths delimit the fields, so no two different folders hash the same stream.
        h.update(f"{len(name.encode())}:{name}:{len(data)}:".encode())
        h.update(data)
    return h.digest()


def _hash_file(path: Path) -> bytes:
    h = hashlib.sha256(b"tar\0")
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise VaelabError(f"{path} cannot be read: {e.strerror or e}.") from None
    return h.digest()


def _load_cache(path: Path, meta: dict, say: Callable[[str], None]) -> RawData | None:
    if not path.is_file():
        return None
    try:
        with open_npz(path) as z:  # closes the file even when the archive is unreadable
            if json.loads(str(z["meta"])) != meta:
                raise ValueError("it was made for another source or transform")
            raw = RawData(x_train=z["x"], y_train=z["y"], classes=[str(c) for c in z["classes"]])
        if raw.x_train.dtype != np.uint8 or raw.x_train.ndim != 4 or raw.y_train.dtype != np.int64 \
                or raw.y_train.shape != (len(raw.x_train),):
            raise ValueError("its arrays have the wrong type or shape")
        return raw
    except Exception as e:  # noqa: BLE001 -- whatever is wrong with a cache file, it is only a cache
        say(f"ignoring the unreadable cache file {path} ({e}); decoding again.")
        return None


def _save_cache(path: Path, raw: RawData, meta: dict, say: Callable[[str], None]) -> None:
    from ..io import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
            np.savez(f, x=raw.x_train, y=raw.y_train, classes=np.array(raw.classes, dtype=str),
                     meta=np.array(json.dumps(meta, sort_keys=True)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        say(f"cached the decoded images in {path}.")
    except (OSError, VaelabError) as e:
        # A read-only or full cache folder costs the next run time, not this run its data.
        say(f"could not write the cache file {path} ({e}); the next run will decode again.")
