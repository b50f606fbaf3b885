"""Reader for the statically binarized MNIST (Salakhutdinov & Murray 2008; Larochelle & Murray
2011).

The files as Hugo Larochelle publishes them
(http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/):
``binarized_mnist_train.amat`` (50,000 lines), ``binarized_mnist_valid.amat`` (10,000) and
``binarized_mnist_test.amat`` (10,000), one image a line: 784 space-separated 0/1 values, a
28x28 image row-major. Values are read whether written ``0``/``1`` or as floats (``0.0``, ``1.``).
The data is unlabelled, and its validation file is the validation split.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vaelab.errors import VaelabError

from .raw import RawData

AMAT_FILES = {"train": "binarized_mnist_train.amat", "val": "binarized_mnist_valid.amat",
              "test": "binarized_mnist_test.amat"}
PIXELS = 784  # 28 x 28


def read_binarized_mnist(folder: str | os.PathLike) -> RawData:
    """The three ``.amat`` files of ``folder`` as uint8 ``[N, 1, 28, 28]`` 0/1 images, levels 2."""
    folder = Path(folder)
    x = {split: read_amat(folder / name).reshape(-1, 1, 28, 28)
         for split, name in AMAT_FILES.items()}
    zeros = {split: np.zeros(len(v), np.int64) for split, v in x.items()}
    return RawData(x_train=x["train"], y_train=zeros["train"], x_val=x["val"], y_val=zeros["val"],
                   x_test=x["test"], y_test=zeros["test"], classes=[], levels=2,
                   source=str(folder)).check()


def read_amat(path: str | os.PathLike, width: int = PIXELS) -> np.ndarray:
    """One ``.amat`` file as uint8 ``[lines, width]``; every line must hold ``width`` 0/1 values.

    Lines written the usual way (``0 1 0 ...`` or ``0.0 1.0 ...``: fixed-width values, single
    spaces) are checked and parsed all at once with numpy; any other line (mixed widths, tabs,
    bad values) goes through ``np.fromstring`` on its own, which finds and names the problem.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VaelabError(f"{path} does not exist: binarized-mnist expects the files "
                          f"{', '.join(AMAT_FILES.values())} in {path.parent}.") from None
    except IsADirectoryError:
        raise VaelabError(f"{path} is a folder, not an .amat file.") from None
    except OSError as e:
        raise VaelabError(f"{path} cannot be read: {e.strerror or e}.") from None
    lines = [line.strip() for line in data.split(b"\n")]
    while lines and not lines[-1]:  # the final newline, and blank lines at the very end
        lines.pop()
    if not lines:
        raise VaelabError(f"{path} is empty: expected lines of {width} space-separated 0/1 values.")
    out = np.empty((len(lines), width), np.uint8)
    lengths = np.fromiter(map(len, lines), np.int64, len(lines))
    slow = np.ones(len(lines), bool)
    for length in np.unique(lengths[((lengths + 1) % width == 0) & (lengths >= 2 * width - 1)]):
        # Lines of fixed-width values ("0", "1", or "0.0", "1.000", ...) each followed by one
        # space (one is added at the end): a [lines, width, chars] block checked in one go.
        chars = (int(length) + 1) // width
        rows = np.flatnonzero(lengths == length)
        block = np.frombuffer(b" ".join([lines[i] for i in rows]) + b" ", np.uint8)
        block = block.reshape(len(rows), width, chars)
        values = block[:, :, 0] - np.uint8(ord("0"))  # '0' -> 0, '1' -> 1, others wrap above 1
        ok = (values <= 1).all(axis=1) & (block[:, :, -1] == ord(" ")).all(axis=1)
        if chars > 2:
            ok &= (block[:, :, 1] == ord(".")).all(axis=1)
            ok &= (block[:, :, 2:-1] == ord("0")).all(axis=(1, 2))
        out[rows[ok]] = values[ok]
        slow[rows[ok]] = False
    for i in np.flatnonzero(slow):
        out[i] = _parse_line(path, i + 1, lines[i], width)
    return out


def _parse_line(path: Path, number: int, line: bytes, width: int) -> np.ndarray:
    """One line in any spacing or number format, checked: ``width`` values, each 0 or 1."""
    try:
        values = np.fromstring(line.decode("ascii"), dtype=np.float64, sep=" ")
    except (ValueError, UnicodeDecodeError):
        bad = next((t for t in line.split() if not _is_number(t)), line[:20])
        raise VaelabError(f"{path} line {number} holds {bad.decode('ascii', 'replace')!r}, "
                          f"not a number: expected {width} space-separated 0/1 values.") from None
    if len(values) != width:
        raise VaelabError(f"{path} line {number} holds {len(values)} values: expected {width} "
                          f"space-separated 0/1 values.")
    bad = np.flatnonzero((values != 0) & (values != 1))
    if bad.size:
        raise VaelabError(f"{path} line {number} holds the value {values[bad[0]]:g} (value "
                          f"{bad[0] + 1}): expected only 0 or 1.")
    return values.astype(np.uint8)


def _is_number(token: bytes) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False
