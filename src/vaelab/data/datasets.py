"""Named datasets: where their files are, how they load, and how they split.

Every dataset comes back as uint8 images ``[N, C, H, W]`` holding the raw pixel values
``0..levels-1`` and int64 labels, in three splits: train, validation (held out from the
official train set) and test (the official test set).
"""
from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vaelab.errors import VaelabError
from vaelab.limits import MAX_CLASSES

from . import download as _download
from . import sources as _sources
from .idx import read_idx

DATA_ENV = "VAELAB_DATA"
BUNDLED_SOURCE = "scikit-learn (bundled)"

# The 4 official file names, the same for MNIST and Fashion-MNIST: (images, labels) per split.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_ALL_IDX_FILES = tuple(f for pair in IDX_FILES.values() for f in pair)
_IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions (N, H, W)
_LABELS_MAGIC = 0x00000801  # uint8, 1 dimension (N)

# Folders where an operating-system package installs a dataset (Debian's
# dataset-fashion-mnist); searched after the data roots. Module-level so tests can empty it.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}

# sklearn's digits have no official test split: this many images, picked by a fixed
# permutation, play that role.
DIGITS_TEST_SIZE = 360


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about its data: image shape, pixel levels, classes."""

    name: str
    shape: tuple[int, ...]  # (C, H, W)
    levels: int  # number of distinct raw pixel values: pixels are 0..levels-1
    num_classes: int

    @property
    def colour(self) -> bool:
        """Colour images on more than two levels (:func:`is_colour`)."""
        return is_colour(self.shape, self.levels)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the shape as a list), the inverse of :meth:`from_dict`."""
        return {"name": self.name, "shape": list(self.shape), "levels": self.levels,
                "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> "DataSpec":
        """Rebuild a spec from :meth:`to_dict`'s output (e.g. read back from a checkpoint);
        ``where`` (such as ``"run/config.json: "``) starts the message of a value out of bounds."""
        missing = [k for k in ("name", "shape", "levels", "num_classes") if k not in d]
        if missing:
            raise VaelabError(f"{where}the data spec lacks the key(s) {', '.join(missing)}.")
        spec = cls(name=str(d["name"]), shape=tuple(int(s) for s in d["shape"]),
                   levels=int(d["levels"]), num_classes=int(d["num_classes"]))
        if len(spec.shape) != 3 or min(spec.shape) < 1:
            raise VaelabError(f"{where}the data spec's shape {list(spec.shape)} is not an image shape: expected "
                              f"C, H, W, each at least 1.")
        check_levels(spec.levels, f"{where}the data spec's levels")
        if not 0 <= spec.num_classes <= MAX_CLASSES:
            raise VaelabError(f"{where}the data spec's num_classes is {spec.num_classes}: expected 0 to "
                              f"{MAX_CLASSES:,}.")
        return spec


def is_colour(shape: tuple[int, ...], levels: int) -> bool:
    """Whether images of ``shape`` (C, H, W) on ``levels`` pixel levels are colour images whose
    levels carry the picture (photographs: CIFAR-10, LFW, a folder of photos), which the models'
    ``auto`` defaults take as they are, never binarized. Single-channel images keep the lecture's
    default, binarized: from the pixels alone, handwritten digits cannot be told from a grey
    photograph (a user says --likelihood for those)."""
    return shape[0] > 1 and levels > 2


def check_levels(levels: int, what: str) -> None:
    """Pixels are uint8 values 0..levels-1: at least 2 of them (1 would scale them by 1/0), at most 256."""
    if not 2 <= levels <= 256:
        raise VaelabError(f"{what} is {levels}: expected 2 to 256 pixel levels.")


@dataclass
class Split:
    """Images ``x`` (uint8 ``[N, C, H, W]``, contiguous) and labels ``y`` (int64 ``[N]``)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class Dataset:
    """A loaded dataset: its spec, three splits, and where it was read from."""

    spec: DataSpec
    train: Split
    val: Split  # 0 rows when val_size=0
    test: Split
    source: str  # the folder the files were read from, or "scikit-learn (bundled)"
    pending_cache: Callable[[], None] | None = None  # see keep_cache

    def keep_cache(self) -> None:
        """Write the decoded-image cache that ``load_dataset(defer_cache=True)`` left unwritten: the
        trainer calls it once the run's arguments have passed their checks, so that a run refused
        after the images were decoded leaves no cache behind."""
        if self.pending_cache is not None:
            self.pending_cache()
            self.pending_cache = None


@dataclass(frozen=True)
class _Info:
    spec: DataSpec
    description: str
    splits: tuple[str, ...] = ("test",)  # official splits beside the training set


_DATASETS: dict[str, _Info] = {
    "digits": _Info(DataSpec("digits", (1, 8, 8), 17, 10),
                    "scikit-learn's 1,797 handwritten digits, 8x8, 17 grey levels "
                    "(bundled, nothing to download)"),
    "fashion-mnist": _Info(DataSpec("fashion-mnist", (1, 28, 28), 256, 10),
                           "Zalando's Fashion-MNIST clothing images, 60,000 train + 10,000 "
                           "test, 28x28, 256 grey levels"),
    "mnist": _Info(DataSpec("mnist", (1, 28, 28), 256, 10),
                   "MNIST handwritten digits, 60,000 train + 10,000 test, 28x28, "
                   "256 grey levels"),
}


def known_spec(name: str) -> DataSpec | None:
    """The spec of a dataset whose images are known before it is read (mnist, ...), else None."""
    return _DATASETS[name].spec if name in _DATASETS else None


def official_splits(name: str) -> tuple[str, ...]:
    """The splits a dataset's own files define beside the training set ("test", "val"); the
    others vaelab holds out by a fixed permutation."""
    return _DATASETS[name].splits if name in _DATASETS else _sources.SOURCES[name].splits


def check_options(d) -> None:
    """The data flags of a run (a DataConfig), checked against what the dataset is and what its
    reader takes, before anything is read."""
    from ..config import READER_OPTIONS, DataConfig, flag_name
    sources = _sources.SOURCES
    takes = sources[d.data].options if d.data in sources else ()
    defaults = DataConfig()
    for name in READER_OPTIONS:
        if getattr(d, name) != getattr(defaults, name) and name not in takes:
            users = sorted(n for n, s in sources.items() if name in s.options)
            raise VaelabError(f"{flag_name(name)} applies to --data {' or '.join(users)}, not to --data {d.data}.")
    if d.data in sources and d.download:
        downloads = " and ".join(_download.MD5)
        raise VaelabError(f"--download fetches {downloads}; --data {d.data} reads files you provide.")
    splits = official_splits(d.data) if d.data in _DATASETS or d.data in sources else ()
    if "val" in splits and (d.val_size is not None or d.split_seed != 0):
        raise VaelabError(f"--data {d.data} has its own validation file; --val-size and --split-seed do not apply.")
    if d.data_path is not None and d.data not in sources:
        raise VaelabError(f"--data-path applies to the datasets read from a file ({', '.join(sorted(sources))}); "
                          f"--data {d.data} is found through --data-dir.")
    if d.test_size is not None and "test" in splits:
        raise VaelabError(f"--test-size applies to data without an official test split; --data {d.data} has one.")
    for name in ("image_size", "crop", "test_size", "workers"):
        v = getattr(d, name)
        if v is not None and v < (0 if name == "workers" else 1):
            raise VaelabError(f"{flag_name(name)} must be at least {0 if name == 'workers' else 1}, got {v}.")
    if d.min_faces_per_person < 0:
        raise VaelabError(f"--min-faces-per-person must be 0 or more, got {d.min_faces_per_person}.")


def dataset_names() -> list[str]:
    """The names :func:`load_dataset` knows, sorted."""
    return sorted([*_DATASETS, *_sources.SOURCES])


def default_data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The data roots to search, in order; each holds one folder per dataset (``<root>/mnist/``).

    An explicit ``data_dir`` (the ``--data-dir`` flag) is the only root: the user asked for it.
    Otherwise: ``$VAELAB_DATA`` if set, then ``./data``, then ``$XDG_DATA_HOME/vaelab``
    (by default ``~/.local/share/vaelab``).
    """
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = []
    env = os.environ.get(DATA_ENV)
    if env:
        roots.append(Path(env).expanduser())
    roots += [Path.cwd() / "data", _user_data_root()]
    return _unique(roots)


def locate_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding all 4 IDX files of ``name`` (for a reader's dataset, the file or
    folder it would read), or None if there is none.

    Looks in ``<root>/<name>/`` for each root of :func:`default_data_dirs`, then (unless
    ``data_dir`` is given) where a system package installs it. ``digits`` is bundled: None.
    """
    if name in _sources.SOURCES:  # a file-format reader's dataset: the path it would read
        return _sources.locate(name, default_data_dirs(data_dir))
    _info(name)
    for folder in _candidate_folders(name, data_dir):
        if all((folder / f).is_file() for f in _ALL_IDX_FILES):
            return folder
    return None


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One dict per dataset, ``{"name", "found", "where", "description"}``, for a listing."""
    rows = []
    for name in dataset_names():
        if name in _sources.SOURCES:
            src = _sources.SOURCES[name]
            path = _sources.locate(name, default_data_dirs(data_dir))
            where = str(path) if path is not None else ("given by --data-path" if src.needs_path else None)
            rows.append({"name": name, "found": path is not None, "where": where, "description": src.description})
            continue
        if name == "digits":
            where = BUNDLED_SOURCE
        else:
            folder = locate_dataset(name, data_dir)
            where = str(folder) if folder is not None else None
        rows.append({"name": name, "found": where is not None, "where": where,
                     "description": _DATASETS[name].description})
    return rows


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                 val_size: int | None = None, split_seed: int = 0,
                 download: bool = False, test_size: int | None = None, defer_cache: bool = False,
                 **options: Any) -> Dataset:
    """Load ``name`` with its train/validation/test splits.

    The validation split is ``val_size`` images held out from the official train set by a
    permutation seeded with ``split_seed`` (default size: 1/12 of it, 5000 for MNIST); train
    keeps the rest in their original order. A format with an official validation split
    (binarized MNIST) keeps it. A format without a test split gets ``test_size`` images (default
    a tenth) held out by a fixed permutation. ``download=True`` fetches a missing MNIST or
    Fashion-MNIST into the first data root. ``options`` are the readers' (``data_path``, ``key``,
    ``shape``, ``image_size``, ...: see :mod:`vaelab.data.sources`). The decoded-image cache of
    image files is written once the splits are made, or with ``defer_cache`` by
    :meth:`Dataset.keep_cache`. Bad input raises :class:`VaelabError`.
    """
    if name in _sources.SOURCES:
        ds = _load_source(name, data_dir, val_size, split_seed, test_size, options)
        if not defer_cache:
            ds.keep_cache()
        return ds
    spec = _info(name).spec
    if name == "digits":
        (x_train, y_train), (x_test, y_test) = _digits_arrays()
        source = BUNDLED_SOURCE
    else:
        folder = _find_or_download(name, data_dir, download)
        (x_train, y_train), (x_test, y_test) = _idx_arrays_cached(folder, spec)
        source = str(folder)
    train_idx, val_idx = split_indices(len(y_train), val_size, split_seed)
    return Dataset(spec=spec,
                   train=_make_split(x_train, y_train, train_idx),
                   val=_make_split(x_train, y_train, val_idx),
                   test=_make_split(x_test, y_test, np.arange(len(y_test))),
                   source=source)


def run_dataset(d, data_dir: str | os.PathLike | None = None, found_at: str | None = None,
                **load_options: Any) -> Dataset:
    """The dataset of a run's data config ``d`` (a :class:`vaelab.config.DataConfig`), found in
    ``data_dir`` if given; else first where the run found it, ``found_at`` (its config.json's
    ``data_source``), so that a later command needs neither the flags nor the environment that
    training had; else where the run's own flags and the data roots say. For a run that read a
    file (``--data-path``), ``data_dir`` names that file or folder in its new place; the run's
    own ``--data-dir`` is no new place (it named no file), so passing it back, as the end of
    training does, still reads the run's ``--data-path``. ``load_options``: more of
    :func:`load_dataset`'s (``download``, ``defer_cache``)."""
    options = d.reader_options()
    if data_dir is not None and d.data_path is not None:
        if not _same_path(data_dir, d.data_dir):
            options["data_path"] = str(data_dir)
        data_dir = None
    elif data_dir is None and found_at is not None:
        place = _found_again(d.data, found_at)
        if place is not None:
            if d.data in _sources.SOURCES:
                options["data_path"] = str(place)  # the very file or folder the run read
            else:
                data_dir = place  # the data root above <root>/<name>/
        elif found_at != BUNDLED_SOURCE:
            try:
                return run_dataset(d, **load_options)
            except VaelabError as e:  # say where it was, since that is what a user remembers
                raise VaelabError(f"{str(e).rstrip('.')}; training read it from {found_at}, which no longer "
                                  "holds it.") from None
    return load_dataset(d.data, data_dir or d.data_dir, val_size=d.val_size, split_seed=d.split_seed,
                        **options, **load_options)


def _found_again(name: str, found_at: str) -> Path | None:
    """Where the data a run read from ``found_at`` is still found: for a file-format reader's
    dataset, that file or folder; for an IDX dataset found in ``<root>/<name>/``, that root.
    None when it is there no more (or was bundled)."""
    if found_at == BUNDLED_SOURCE:
        return None
    place = Path(found_at).expanduser()
    if name in _sources.SOURCES:
        return place if place.exists() else None
    if place.name == name and all((place / f).is_file() for f in _ALL_IDX_FILES):
        return place.parent
    return None


def _same_path(a: str | os.PathLike, b: str | os.PathLike | None) -> bool:
    return b is not None and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _load_source(name: str, data_dir, val_size, split_seed, test_size, options: dict) -> Dataset:
    raw = _sources.read(name, default_data_dirs(data_dir), options)
    x, y = raw.x_train, raw.y_train
    if raw.x_test is not None:
        x_test, y_test = raw.x_test, raw.y_test
    else:
        rest, test = _sources.held_out_test(len(y), test_size)
        x, y, x_test, y_test = x[rest], y[rest], x[test], y[test]
    if raw.x_val is not None:  # the format's own validation split
        x_val, y_val = raw.x_val, raw.y_val
    else:
        train_idx, val_idx = split_indices(len(y), val_size, split_seed)
        x, y, x_val, y_val = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    spec = DataSpec(name, tuple(int(v) for v in x.shape[1:]), raw.levels, len(raw.classes))
    every = lambda a, b: _make_split(a, b, np.arange(len(b)))  # noqa: E731
    return Dataset(spec=spec, train=every(x, y), val=every(x_val, y_val), test=every(x_test, y_test),
                   source=raw.source, pending_cache=raw.write_cache)


def split_indices(n: int, val_size: int | None, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) indices into ``n`` training images: validation is the first
    ``val_size`` of a permutation seeded by ``split_seed``, train is the rest."""
    val_size = _check_val_size(n, val_size)
    return _sources.hold_out(n, val_size, _check_split_seed(split_seed))


# --- locating -----------------------------------------------------------------------------

def _info(name: str) -> _Info:
    if name not in _DATASETS:
        raise VaelabError(f"unknown dataset {name!r}: the known datasets are "
                          f"{', '.join(dataset_names())}.")
    return _DATASETS[name]


def _user_data_root() -> Path:
    # XDG says a relative $XDG_DATA_HOME is invalid and must be ignored.
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "vaelab"


def _download_root(data_dir: str | os.PathLike | None) -> Path:
    """Where ``--download`` puts files: ``data_dir``, else $VAELAB_DATA, else the user's data
    folder (not ./data, which would scatter copies wherever the command happens to run)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else _user_data_root()


def _candidate_folders(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    if name == "digits":
        return []
    folders = [root / name for root in default_data_dirs(data_dir)]
    if data_dir is None:
        folders += SYSTEM_DIRS.get(name, [])
    return _unique(folders)


def _unique(paths: list[Path]) -> list[Path]:
    # $VAELAB_DATA may well be ./data; searching (and listing) it twice would only confuse.
    return list(dict.fromkeys(paths))


def _find_or_download(name: str, data_dir: str | os.PathLike | None, download: bool) -> Path:
    folder = locate_dataset(name, data_dir)
    if folder is not None:
        return folder
    if download:
        return _download.download_dataset(name, _download_root(data_dir))
    raise VaelabError(_not_found_message(name, data_dir))


def _not_found_message(name: str, data_dir: str | os.PathLike | None) -> str:
    places = _candidate_folders(name, data_dir)
    notes = []
    for folder in places:
        present = [f for f in _ALL_IDX_FILES if (folder / f).is_file()]
        if present:
            missing = [f for f in _ALL_IDX_FILES if f not in present]
            notes.append(f"{folder} lacks {', '.join(missing)}")
    if data_dir is not None and (Path(data_dir).expanduser() / _ALL_IDX_FILES[0]).is_file():
        # A common slip: --data-dir pointing at the dataset's own folder, not at its parent.
        notes.append(f"{data_dir} holds IDX files itself, but --data-dir must be the folder "
                     f"above, holding {name}/")
    detail = f" ({'; '.join(notes)})" if notes else ""
    return (f"cannot find the {name} dataset: looked for its 4 IDX files "
            f"({', '.join(_ALL_IDX_FILES)}) in {', '.join(str(p) for p in places)}{detail}; "
            f"pass --data-dir pointing to a folder that holds {name}/, or --download to fetch it.")


# --- loading ------------------------------------------------------------------------------

def _idx_arrays_cached(folder: Path, spec: DataSpec):
    """The raw arrays of a folder, cached by the files' mtimes and sizes so that a replaced
    file is read again while repeated loads (tests, sweeps) cost nothing."""
    stamp = tuple(_stamp(folder / f) for f in _ALL_IDX_FILES)
    return _load_idx_folder(folder.resolve(), spec, stamp)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=4)
def _load_idx_folder(folder: Path, spec: DataSpec, stamp: tuple) -> tuple:
    del stamp  # only part of the cache key
    return tuple(_load_idx_pair(folder, images, labels, spec)
                 for images, labels in IDX_FILES.values())


def _load_idx_pair(folder: Path, images_file: str, labels_file: str,
                   spec: DataSpec) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = folder / images_file, folder / labels_file
    # held at once: this array (kept by the cache above) and the splits' copy of it
    # (_make_split); the labels also as int64, 8 bytes each
    x = read_idx(images_path, expected_magic=_IMAGES_MAGIC, copies=2)
    y = read_idx(labels_path, expected_magic=_LABELS_MAGIC, copies=1 + 8)
    if x.shape[1:] != spec.shape[1:]:
        raise VaelabError(f"{images_path} holds {x.shape[1]}x{x.shape[2]} images, but "
                          f"{spec.name} images are {spec.shape[1]}x{spec.shape[2]}.")
    if len(x) != len(y):
        raise VaelabError(f"{labels_path} holds {len(y)} labels, but {images_path} holds "
                          f"{len(x)} images: the counts must agree.")
    if len(y) and y.max() >= spec.num_classes:
        raise VaelabError(f"{labels_path} holds label {int(y.max())}, but {spec.name} has "
                          f"classes 0..{spec.num_classes - 1} only.")
    x = x.reshape(len(x), *spec.shape)  # add the channel axis
    _freeze(x, y)
    return x, y


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple:
    from sklearn.datasets import load_digits  # slow to import; only digits needs it

    digits = load_digits()
    x = digits.images.astype(np.uint8).reshape(-1, 1, 8, 8)  # whole values 0..16
    y = digits.target.astype(np.int64)
    # A fixed permutation, independent of split_seed, so the test set never changes.
    perm = np.random.default_rng(0).permutation(len(y))
    train, test = np.sort(perm[:-DIGITS_TEST_SIZE]), np.sort(perm[-DIGITS_TEST_SIZE:])
    arrays = (x[train], y[train]), (x[test], y[test])
    for pair in arrays:
        _freeze(*pair)
    return arrays


def _freeze(*arrays: np.ndarray) -> None:
    # Cached arrays are shared by every load: make an accidental in-place edit fail loudly.
    for a in arrays:
        a.flags.writeable = False


def _make_split(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
    # Fancy indexing copies, so the tensors own writable memory apart from the cache.
    return Split(x=torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.uint8)),
                 y=torch.from_numpy(y[idx].astype(np.int64)))


def whole_number(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (numpy ints too, bools not), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _check_val_size(n: int, val_size: int | None) -> int:
    if val_size is None:
        return round(n / 12)
    if whole_number(val_size) is None:
        raise VaelabError(f"--val-size must be a whole number, got {val_size!r}.")
    val_size = whole_number(val_size)
    if not 0 <= val_size < n:
        raise VaelabError(f"--val-size must be between 0 and {n - 1} (the training set has {n} "
                          f"images), got {val_size}.")
    return val_size


def _check_split_seed(split_seed: int) -> int:
    seed = whole_number(split_seed)
    if seed is None or seed < 0:
        # numpy's generators take no negative seeds.
        raise VaelabError(f"the split seed (--split-seed) must be a whole number >= 0, "
                          f"got {split_seed!r}.")
    return seed
