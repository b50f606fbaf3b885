"""``lfw``: Labeled Faces in the Wild, read from its tarball (or a folder) without extracting.

The layout of the official ``lfw.tgz``, ``lfw-funneled.tgz`` and ``lfw-deepfunneled.tgz``, and of
versions such as LFW3D's ``lfw3d_90.tgz``: ``<Person_Name>/<Person_Name>_0001.jpg``, usually under
one top folder (``lfw/``, ``lfw_funneled/``, ``lfw3d_90/``). Only files named that way count; the
label of an image is the index of its person in the sorted list of people kept. Decoding and the
cache are those of :func:`vaelab.data.folder.load_images`.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from typing import Callable

import numpy as np

from vaelab.errors import VaelabError

from .folder import load_images
from .raw import RawData

# <any top folders>/<Person>/<Person>_NNNN.jpg; group 1 is the person, the name repeated
_LFW_FILE = re.compile(r"(?:.*/)?([^/]+)/\1_\d{4}\.(?i:jpe?g)")


def is_lfw_name(name: str) -> bool:
    """True for ``[top/]<Person_Name>/<Person_Name>_NNNN.jpg``."""
    return _LFW_FILE.fullmatch(name) is not None


def read_lfw(path: str | os.PathLike, min_faces_per_person: int = 0, image_size: int | None = None,
             crop: int | None = None, workers: int | None = None, progress: bool = True,
             cache: bool = True, log: Callable[[str], None] | None = None, defer_cache: bool = False) -> RawData:
    """Read LFW (or any data in its layout) from a tarball or a folder into :class:`RawData`.

    Args:
        path: ``lfw.tgz``, ``lfw-funneled.tgz``, ``lfw-deepfunneled.tgz``, ``lfw3d_90.tgz``, ...,
            or the folder one of them extracts to.
        min_faces_per_person: drop the people with fewer images than this.
        image_size, crop, workers, progress, cache, log, defer_cache: as for
            :func:`vaelab.data.folder.read_image_folder` (LFW's JPEGs are RGB: 3 channels).
    Returns:
        Only ``x_train``/``y_train`` (the caller splits); ``classes`` are the people's names;
        the ``from_cache`` attribute says whether the cache was used.
    """
    if isinstance(min_faces_per_person, bool) or not isinstance(min_faces_per_person, int) \
            or min_faces_per_person < 0:
        raise VaelabError(f"--min-faces-per-person must be a whole number of at least 0, "
                          f"got {min_faces_per_person!r}.")

    def select(names: list[str], tarball: bool) -> tuple[list[int], np.ndarray, list[str]]:
        if not names:
            raise VaelabError(f"{path} holds no LFW images; expected files named "
                              f"<Person_Name>/<Person_Name>_0001.jpg, possibly under one top folder.")
        matches = [_LFW_FILE.fullmatch(n) for n in names]
        tops = sorted({n[:m.start(1)] for n, m in zip(names, matches)})
        if len(tops) > 1:  # e.g. lfw/ and lfw_funneled/ side by side: every face twice
            raise VaelabError(f"{path} holds LFW images under more than one top folder "
                              f"({tops[0] or './'} and {tops[1] or './'}); point it at one of them.")
        people = [m.group(1) for m in matches]
        counts = Counter(people)
        kept = sorted(p for p, k in counts.items() if k >= min_faces_per_person)
        if not kept:
            raise VaelabError(f"no person in {path} has {min_faces_per_person} or more images (the most is "
                              f"{max(counts.values())}); lower --min-faces-per-person.")
        index = {p: i for i, p in enumerate(kept)}
        keep = [i for i, p in enumerate(people) if p in index]
        return keep, np.array([index[people[i]] for i in keep], np.int64), kept

    return load_images(path, "lfw", is_lfw_name, select, {"min_faces_per_person": min_faces_per_person},
                       image_size=image_size, crop=crop, channels=3, workers=workers, progress=progress,
                       cache=cache, log=log, defer_cache=defer_cache)
