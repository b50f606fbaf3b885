"""Datasets read by a file-format reader: where each one's files are, which options apply, and
how a :class:`~vaelab.data.raw.RawData` becomes the train / validation / test splits.

A named dataset is looked for in ``<root>/<name>/`` for each data root (``--data-dir``,
``$VAELAB_DATA``, ``./data``, ``~/.local/share/vaelab``), or read from ``--data-path`` when that
is given. ``image-folder`` and ``array`` read ``--data-path`` only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import VaelabError
from .raw import RawData

TEST_SEED = 0  # the permutation that holds out a test set where a format has none: never changes
TARBALL_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tar.xz")


@dataclass(frozen=True)
class Source:
    description: str
    read: Callable[[Path, dict], RawData]   # (path, options) -> the data
    folder_file: Callable[[Path], Path | None] | None = None  # the path to read inside <root>/<name>/
    options: tuple[str, ...] = ()           # the DataConfig fields that apply to it
    wants: str = ""                         # what a missing dataset should look like, for the message
    root_glob: str | None = None            # an archive that may also sit in the data root itself
    splits: tuple[str, ...] = ()            # the splits its files hold ("test", "val"); others are held out

    @property
    def needs_path(self) -> bool:
        return self.folder_file is None


def _in_folder(*names: str) -> Callable[[Path], Path | None]:
    def find(folder: Path) -> Path | None:
        return folder if all((folder / n).exists() for n in names) else None
    return find


def _cifar_file(folder: Path) -> Path | None:
    from .cifar import locate_cifar10
    return locate_cifar10(folder)


def _read_cifar(path: Path, o: dict) -> RawData:
    from .cifar import read_cifar10
    return read_cifar10(path)


def _lfw_file(folder: Path) -> Path | None:
    """An official LFW tarball, any other tarball, or the folder itself if it holds people."""
    for name in ("lfw.tgz", "lfw-funneled.tgz", "lfw-deepfunneled.tgz"):
        if (folder / name).is_file():
            return folder / name
    tars = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(TARBALL_SUFFIXES))
    if tars:
        return tars[0]
    return folder if any(p.is_dir() for p in folder.iterdir()) else None


def _progress() -> bool:
    import sys
    return sys.stderr.isatty()


def _read_lfw(path: Path, o: dict) -> RawData:
    from .lfw import read_lfw
    return read_lfw(path, min_faces_per_person=o.get("min_faces_per_person") or 0, image_size=o.get("image_size"),
                    crop=o.get("crop"), workers=o.get("workers"), progress=_progress(), defer_cache=True)


def _read_folder(path: Path, o: dict) -> RawData:
    from .folder import read_image_folder
    return read_image_folder(path, image_size=o.get("image_size"), crop=o.get("crop"), workers=o.get("workers"),
                             progress=_progress(), defer_cache=True)  # written by load_dataset


def _read_array(path: Path, o: dict) -> RawData:
    from .arrays import read_array
    return read_array(path, key=o.get("key"), label_key=o.get("label_key"), shape=o.get("shape"),
                      layout=o.get("layout") or "hwc", examples=o.get("examples") or "rows")


def _preset(name: str) -> Source:
    from .arrays import PRESETS
    p = PRESETS[name]

    def read(path: Path, o: dict) -> RawData:
        from .arrays import read_preset
        return read_preset(name, path)
    return Source(f"{'Frey faces' if name == 'frey-face' else 'Olivetti faces'}: {p['file']}, variable "
                  f"{p['key']!r}, {p['shape'][0]}x{p['shape'][1]} grey images", read, _in_folder(p["file"]),
                  wants=p["file"])


def _read_binarized(path: Path, o: dict) -> RawData:
    from .amat import read_binarized_mnist
    return read_binarized_mnist(path)


IMAGE_OPTIONS = ("image_size", "crop", "workers")
SOURCES: dict[str, Source] = {
    "cifar10": Source("CIFAR-10, 50,000 train + 10,000 test colour images, 32x32, 10 classes (the official "
                      "python version, read from the tarball or cifar-10-batches-py/)",
                      _read_cifar, _cifar_file, wants="cifar-10-python.tar.gz or cifar-10-batches-py/",
                      splits=("test",)),
    "lfw": Source("Labeled Faces in the Wild: lfw.tgz, lfw-funneled.tgz, lfw-deepfunneled.tgz or any tarball "
                  "or folder of <Person_Name>/<Person_Name>_0001.jpg; identity labels",
                  _read_lfw, _lfw_file, (*IMAGE_OPTIONS, "min_faces_per_person"),
                  wants="lfw.tgz (or another tarball or folder in that layout)", root_glob="lfw*.tgz"),
    "image-folder": Source("any folder or tarball of PNG/JPEG images (--data-path); class subfolders optional",
                           _read_folder, None, IMAGE_OPTIONS),
    "array": Source("images in a .npy, .npz or MATLAB .mat file (--data-path, --key, --shape, --layout)",
                    _read_array, None, ("key", "label_key", "shape", "layout", "examples")),
    "frey-face": _preset("frey-face"),
    "olivetti": _preset("olivetti"),
    "binarized-mnist": Source("statically binarized MNIST (Larochelle & Murray): binarized_mnist_{train,valid,test}"
                              ".amat, 50,000 / 10,000 / 10,000 images", _read_binarized,
                              _in_folder(*(f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test"))),
                              wants="binarized_mnist_train.amat, _valid.amat and _test.amat", splits=("test", "val")),
}


def locate(name: str, roots: list[Path], data_path: str | None = None) -> Path | None:
    """The path a source reads: ``data_path`` if given, else the first ``<root>/<name>/`` that
    holds its files."""
    if data_path is not None:
        return Path(data_path).expanduser()
    src = SOURCES[name]
    if src.needs_path:
        return None
    for root in roots:
        folder = root / name
        if folder.is_dir():
            found = src.folder_file(folder)
            if found is not None:
                return found
        if src.root_glob and root.is_dir():
            found = sorted(p for p in root.glob(src.root_glob) if p.is_file())
            if found:
                return found[0]
    return None


def read(name: str, roots: list[Path], options: dict[str, Any]) -> RawData:
    """Read a source, or say in one sentence what is missing where."""
    src = SOURCES[name]
    path = locate(name, roots, options.get("data_path"))
    if path is None:
        if src.needs_path:
            raise VaelabError(f"--data {name} reads the file or folder given by --data-path; none was given.")
        also = f" and {src.root_glob} in the data roots" if src.root_glob else ""
        raise VaelabError(f"cannot find the {name} dataset: looked for {src.wants} in "
                          f"{', '.join(str(r / name) for r in roots)}{also}; pass --data-dir pointing to a folder that "
                          f"holds {name}/, or --data-path to the file itself.")
    if not path.exists():
        raise VaelabError(f"--data-path {path} does not exist.")
    return src.read(path, options).check()


def held_out_test(n: int, test_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (rest, test) indices: the test set of a format without one, a fixed permutation's
    first ``test_size`` images (default a tenth), the same whatever --split-seed says."""
    size = round(n / 10) if test_size is None else test_size
    if not 0 < size < n:
        raise VaelabError(f"--test-size must be between 1 and {n - 1} (the data has {n} images), got {size}.")
    return hold_out(n, size, TEST_SEED)


def hold_out(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (rest, held-out) indices into ``n`` images: the held-out are the first ``size`` of
    a permutation seeded by ``seed``. Sorting keeps both in their original order, whatever the
    permutation: an epoch's order is then the trainer's business alone."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[size:]), np.sort(perm[:size])
