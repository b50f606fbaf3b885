"""What every file-format reader returns: raw uint8 images and labels, before any split.

A reader (``cifar.py``, ``lfw.py``, ``folder.py``, ``arrays.py``, ``amat.py``) knows one format
and nothing of splits, models or flags; :mod:`vaelab.data.datasets` turns its result into the
train / validation / test splits every dataset has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class RawData:
    x_train: np.ndarray            # uint8 [N, C, H, W], values 0..levels-1
    y_train: np.ndarray            # int64 [N]; zeros where the data has no labels
    x_test: np.ndarray | None = None  # the format's official test split, if it has one
    y_test: np.ndarray | None = None
    x_val: np.ndarray | None = None   # the format's official validation split, if it has one
    y_val: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)  # class names by label; [] = unlabelled
    levels: int = 256              # distinct pixel values (2 for binarized data)
    source: str = ""               # the file or folder that was read
    write_cache: Callable[[], None] | None = None  # writes the decoded-image cache a reader left unwritten

    def check(self) -> "RawData":
        """Assert the invariants above (a reader's bug, not a user's mistake, if they fail)."""
        for x, y in ((self.x_train, self.y_train), (self.x_test, self.y_test), (self.x_val, self.y_val)):
            if x is None:
                assert y is None
                continue
            assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1:] == self.x_train.shape[1:], x.shape
            assert y is not None and y.dtype == np.int64 and y.shape == (len(x),)
            assert len(x) == 0 or int(x.max()) < self.levels
            if self.classes and len(y):
                assert 0 <= y.min() and y.max() < len(self.classes)
        return self
