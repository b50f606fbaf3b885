"""torch.distributed as vaelab uses it: one process per rank, started by ``torchrun``.

Every function here is the identity (rank 0 of a world of 1) when no process group is up, so
training and evaluation call them unconditionally and a single process pays nothing.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` reads them and joins the group (gloo on the CPU, nccl on CUDA). A rank that dies
makes the others' next collective fail after ``timeout`` seconds instead of hanging.
"""
from __future__ import annotations

import datetime
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
