"""PNG/JPEG bytes -> uint8 arrays ``[C, H, W]``: decode, centre crop, resize; many at once in
worker processes.

Colour: a greyscale source (modes ``1``, ``L``, ``LA``, 16-bit ``I;16``/``I``) gives 1 channel,
anything else (RGB, RGBA, palette, CMYK, ...) 3; alpha is dropped. A collection that mixes the
two is returned as RGB (grey replicated into the 3 channels); ``channels`` forces 1 or 3.

Resampling: ``Image.Resampling.BOX`` when shrinking, the common case (250 -> 64, 90 -> 32). It is
the exact area average of the source pixels each output pixel covers: it never rings or
overshoots (Lanczos and bicubic do, clipping at a face's edge), so the pixels stay in the
source's range, and shrinking by a whole factor gives the plain block mean, which the tests
check. Enlarging uses ``BICUBIC``, because BOX would enlarge as nearest neighbour, in blocks.
"""
from __future__ import annotations

import io
import math
import multiprocessing
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from vaelab.errors import VaelabError
from vaelab.limits import check_bytes, pillow_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
MAX_WORKERS = 8
_CHUNK = 256  # images per task: big enough that the pickling round trip is noise


def is_image_name(name: str) -> bool:
    """True for a ``.png``, ``.jpg`` or ``.jpeg`` name, in any case."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def check_transform(crop: int | None, size: int | None, channels: int | None) -> None:
    """Refuse impossible options before any file is read."""
    for flag, v in (("--crop", crop), ("--image-size", size)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise VaelabError(f"{flag} must be a positive number of pixels, got {v!r}.")
    if channels not in (None, 1, 3):
        raise VaelabError(f"--channels must be 1 (greyscale) or 3 (RGB), got {channels!r}.")


def _check_pixels(img: Image.Image, name: str) -> None:
    """Refuse an image whose header declares more pixels than Pillow's decompression-bomb limit
    (``Image.MAX_IMAGE_PIXELS``) before it is decoded: Pillow itself only warns up to twice the
    limit, and 10,000 x 10,000 RGB pixels, stored in 1 MB, decode to 300 MB."""
    limit = pillow_pixels()
    w, h = img.size
    if w * h > limit:
        raise VaelabError(f"{name} declares {w:,}x{h:,} pixels, more than the {limit:,} vaelab decodes "
                          f"(Pillow's decompression-bomb limit); expected an image of ordinary size.")
    # decoded, then converted to L or RGB (a copy): checked against the memory bound too
    band = 4 if img.mode in ("I", "F", "RGBX") else 2 if img.mode.startswith("I;16") else 1
    check_bytes(f"{name}: the {w:,}x{h:,} pixels its header declares", 2 * w * h * len(img.getbands()) * band)


def decode(data: bytes, name: str, channels: int | None = None) -> Image.Image:
    """Decode image bytes into a Pillow image of mode ``L`` or ``RGB``.

    Args:
        data: the file's bytes (PNG, JPEG, or anything else Pillow reads).
        name: the file or member name, for the error message.
        channels: 1 or 3 to force greyscale or RGB; None keeps the source's kind.
    Raises:
        VaelabError: naming ``name`` when the bytes do not decode.
    """
    try:
        with warnings.catch_warnings():  # past Pillow's limit it warns; _check_pixels refuses
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        _check_pixels(img, name)
        img.load()  # open() only reads the header; a truncated or corrupt body fails here
    except Image.UnidentifiedImageError:
        raise VaelabError(f"{name} does not decode as an image (its bytes are no format Pillow "
                          f"knows); expected a PNG or JPEG file.") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise VaelabError(f"{name} does not decode as an image ({e}); expected a PNG or JPEG file.") from None
    if img.mode.startswith("I") or img.mode == "F":
        # Pillow clips 16-bit greyscale to 255 when it converts to L; scale it down instead.
        top = 65535 if img.mode != "F" else 255
        img = Image.fromarray((np.clip(np.asarray(img), 0, top) * (255 / top)).round().astype(np.uint8))
    grey = channels == 1 or (channels is None and img.mode in _GREY_MODES)
    mode = "L" if grey else "RGB"
    return img if img.mode == mode else img.convert(mode)


def center_crop_resize(img: Image.Image, crop: int | None, size: int | None, name: str = "the image") -> np.ndarray:
    """Crop a centred ``crop`` x ``crop`` square and resize it to ``size`` x ``size``.

    Args:
        img: a decoded image (mode ``L`` or ``RGB``).
        crop: side of the square; None takes the shorter side. More than the shorter side is an
            error naming ``name`` and ``--crop``.
        size: output side; None keeps the crop's size.
        name: the file, for error messages.
    Returns:
        uint8 array ``[C, H, W]`` (C = 1 for ``L``, 3 for ``RGB``).
    """
    w, h = img.size
    side = min(w, h)
    c = side if crop is None else crop
    if c > side:
        raise VaelabError(f"{name} is {w}x{h} pixels, too small for a {c}x{c} crop; expected "
                          f"--crop of at most {side}.")
    # When the margin is odd, the extra pixel is left on the right / bottom.
    left, top = (w - c) // 2, (h - c) // 2
    box = (left, top, left + c, top + c)
    if size is None or size == c:
        img = img.crop(box)
    else:
        resample = Image.Resampling.BOX if size < c else Image.Resampling.BICUBIC
        img = img.resize((size, size), resample, box=box)
    a = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))  # [C, H, W]


def default_workers() -> int:
    """min(usable CPUs, 8): decoding scales with cores, past 8 the reading of bytes dominates."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return min(n, MAX_WORKERS)


def decode_images(items: Sequence[tuple[str, bytes]], crop: int | None = None, size: int | None = None,
                  channels: int | None = None, workers: int | None = None, progress: bool = True,
                  desc: str = "decoding") -> np.ndarray:
    """Decode, crop and resize ``(name, bytes)`` pairs into one uint8 array ``[N, C, H, W]``.

    Chunks of images go to ``workers`` processes (None: :func:`default_workers`; 0 or 1: this
    process); the result's order is the order of ``items`` whatever the workers. A tqdm bar on
    stderr counts images unless ``progress`` is False. Errors name the file: one that does not
    decode, a crop that does not fit, or images whose sizes differ while ``size`` is None.
    """
    if not items:
        raise ValueError("decode_images needs at least one image")  # the readers check first
    workers = default_workers() if workers is None else workers
    n_chunks = max(1, workers) * 8  # several chunks per worker keep every worker busy to the end
    step = max(1, min(_CHUNK, math.ceil(len(items) / n_chunks)))
    chunks = [list(items[i:i + step]) for i in range(0, len(items), step)]
    job = _DecodeChunk(crop, size, channels)
    from tqdm import tqdm  # here, so that importing vaelab.data stays cheap
    with tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, disable=not progress) as bar:
        arrays = [a for chunk in _map(job, chunks, workers, lambda ch: bar.update(len(ch))) for a in chunk]
    return _stack(arrays, [name for name, _ in items], channels)


class _DecodeChunk:
    """The worker's task: a picklable callable from a list of (name, bytes) to [C, H, W] arrays."""

    def __init__(self, crop: int | None, size: int | None, channels: int | None):
        self.crop, self.size, self.channels = crop, size, channels

    def __call__(self, chunk: list[tuple[str, bytes]]) -> list[np.ndarray]:
        return [center_crop_resize(decode(data, name, self.channels), self.crop, self.size, name)
                for name, data in chunk]


def _map(fn: Callable, chunks: list, workers: int, done: Callable) -> list:
    """``[fn(c) for c in chunks]``, in worker processes when ``workers`` > 1; ``done(c)`` after each."""
    if workers <= 1 or len(chunks) == 1:
        out = []
        for c in chunks:
            out.append(fn(c))
            done(c)
        return out
    # fork where there is one, as torch's DataLoader does: the workers need only Pillow and
    # numpy, and spawn would re-import vaelab (and with it torch) in each, costing seconds.
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=ctx) as pool:
        futures = [pool.submit(fn, c) for c in chunks]
        out = []
        try:
            # In submission order, so the error reported is the first bad file whatever the timing.
            for c, f in zip(chunks, futures):
                out.append(f.result())
                done(c)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        return out


def _stack(arrays: list[np.ndarray], names: list[str], channels: int | None) -> np.ndarray:
    """One [N, C, H, W] array; grey images become RGB where the collection mixes the two."""
    if channels is None and len({a.shape[0] for a in arrays}) > 1:
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    first = arrays[0].shape[1:]
    for a, name in zip(arrays, names):
        if a.shape[1:] != first:
            raise VaelabError(f"{name} gives a {a.shape[2]}x{a.shape[1]} image but {names[0]} gives "
                              f"{first[1]}x{first[0]}; pass --image-size to resize every image to one size.")
    return np.stack(arrays)
