"""The bound every size a user or a file names is checked against before memory is allocated.

A count of samples or images, a network's widths, the shape an IDX or ``.npy`` header declares:
each is turned into the bytes it would take and compared with :func:`memory_limit`, half the
memory this machine (or its container, or this process under ``ulimit -v``) has, leaving the
other half to everything else a run holds. A refused size ends in one sentence that names it,
the bytes and the limit, before the allocation that would have met the out-of-memory killer.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import VaelabError

FALLBACK_MEMORY = 16 << 30  # where the machine's memory cannot be read
# Labels index classes, and every class costs a name and a row of each classifier head; the
# largest labelled image sets have tens of thousands (ImageNet-21k: 21,841).
MAX_CLASSES = 100_000


def pillow_pixels() -> int:
    """The most pixels an image or a grid picture may have: Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 by default), its default where set to None."""
    from PIL import Image
    return Image.MAX_IMAGE_PIXELS or 89_478_485


def _cgroup_memory() -> int | None:
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            return int(Path(f).read_text())
        except (OSError, ValueError):  # absent, or "max"
            continue
    return None


def _process_memory() -> int | None:
    """This process's own cap (``ulimit -v`` or ``-d``), which ends an allocation past it in a
    MemoryError however much memory the machine has."""
    try:
        import resource
    except ImportError:  # not POSIX
        return None
    caps = []
    for name in ("RLIMIT_AS", "RLIMIT_DATA"):
        try:
            soft = resource.getrlimit(getattr(resource, name))[0]
        except (AttributeError, ValueError, OSError):
            continue
        if soft != resource.RLIM_INFINITY:
            caps.append(soft)
    return min(caps, default=None)


def memory_limit() -> int:
    """Half of the physical memory, or of a smaller container limit or process cap, in bytes."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on a POSIX system
        total = FALLBACK_MEMORY
    return min(c for c in (total, _cgroup_memory(), _process_memory()) if c) // 2


def fmt_bytes(n: int) -> str:
    """1234567 -> '1.2 MB' (decimal units); a size past any memory (a corrupt header's product of
    sizes, thousands of digits long) by its order of magnitude."""
    if n >= 1000 ** 7:
        return f"about 2^{n.bit_length() - 1} bytes"
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover - the loop returns at PB


def check_bytes(what: str, nbytes: int) -> None:
    """Refuse ``what`` (a phrase naming the flag or file and its value) when it needs more than
    :func:`memory_limit` bytes."""
    limit = memory_limit()
    if nbytes > limit:
        raise VaelabError(f"{what} would take {fmt_bytes(nbytes)} of memory, more than the limit of "
                          f"{fmt_bytes(limit)} (half of the memory this process may use).")


# The most importance samples an NLL takes per image. Its memory is bounded by chunks, its time
# is not: K decoder passes per image, so the papers' K = 5000 takes minutes on MNIST's test set
# and a K of 10^9 (a slip of the keyboard) would run for years. 10^6 is 200 times the papers'.
MAX_NLL_SAMPLES = 1_000_000


def check_nll_samples(k: int, flag: str = "--nll-samples") -> None:
    if k > MAX_NLL_SAMPLES:
        raise VaelabError(f"{flag} {k:,} is more importance samples than vaelab takes ({MAX_NLL_SAMPLES:,} at "
                          "most; the papers' NLL uses 5,000): each is a decoder pass per image.")
