"""torch.distributed as vaelab uses it: one process per rank, started by ``torchrun``.

Every function here is the identity (rank 0 of a world of 1) when no process group is up, so
training and evaluation call them unconditionally and a single process pays nothing.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` reads them and joins the group (gloo on the CPU, nccl on CUDA). A rank that dies
makes the others' next collective fail after ``timeout`` seconds instead of hanging.
"""
from __future__ import annotations

import datetime
import hashlib
import os

import torch
import torch.distributed as dist

from .errors import VaelabError

DEFAULT_TIMEOUT_S = 300  # a collective waits this long for a dead or stuck rank


def launched() -> bool:
    """Started by torchrun (or any launcher setting its variables) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one that writes logs, pictures and checkpoints."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def setup(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the process group torchrun describes (once), and return the device this rank uses:
    ``cuda:LOCAL_RANK`` when ``device`` is CUDA, else ``device``. A no-op without torchrun."""
    if not launched():
        return device
    if not dist.is_available():
        raise VaelabError("WORLD_SIZE > 1 was set (torchrun), but this torch has no torch.distributed.")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return device


def shard(n: int, r: int | None = None, world: int | None = None) -> slice:
    """Rank ``r``'s contiguous part of ``n`` items: sizes differ by at most one, the first ranks
    take the larger parts, and the parts in rank order are ``range(n)``."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def blocks(n: int, size: int) -> range:
    """The blocks of ``size`` items (the last one shorter) that this rank takes of ``n`` items:
    whole blocks, a contiguous run of them; the ranks' runs in rank order are
    ``range(ceil(n / size))``, so results gathered in rank order are in block order."""
    s = shard(-(-n // size))
    return range(s.start, s.stop)


def block_seed(seed: int, block: int) -> int:
    """The seed of block ``block``'s random draws: it depends on the block alone, not on which
    rank draws it or how many ranks there are, so a split evaluation draws what one process draws."""
    digest = hashlib.blake2b(f"{seed}/{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: any torch.manual_seed takes it


def seed_block(seed: int, block: int, device: torch.device) -> None:
    """Seed the CPU's generator and ``device``'s with :func:`block_seed` for a block's draws
    (``torch.manual_seed`` seeds every backend's: 0.26 ms a call on this CPU, against 6 us)."""
    s = block_seed(seed, block)
    torch.default_generator.manual_seed(s)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(s)


def gather(items: list) -> list:
    """Every rank's list of ``items`` (picklable: numbers, CPU tensors), concatenated in rank
    order, on every rank (with :func:`blocks`: in block order); ``items`` alone."""
    if not active():
        return items
    parts = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part]


def from_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` computed on rank 0 alone and sent to every rank (a picklable value);
    a VaelabError raised there is raised on every rank, so none waits for a value that never comes."""
    if not active():
        return fn(*args, **kwargs)
    out = err = None
    if is_main():
        try:
            out = fn(*args, **kwargs)
        except VaelabError as e:
            err = e
    out, err = broadcast_object((out, err))
    if err is not None:
        raise err
    return out


def main_first(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0, then on the other ranks once it has returned: rank 0 fills
    a cache in a shared folder (a sampler fitted after training, in the run directory) that the
    others then read, instead of each doing the work and racing to write the file."""
    box = []
    from_main(lambda: box.append(fn(*args, **kwargs)))
    return box[0] if box else fn(*args, **kwargs)


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over the ranks, in place (``sum``, ``max`` or ``min``); ``t`` itself alone."""
    if active():
        dist.all_reduce(t, {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (a picklable value: a message, a path)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
