"""torch.distributed as vaelab uses it: one process per rank, started by ``torchrun``.

Every function here is the identity (rank 0 of a world of 1) when no process group is up, so
training and evaluation call them unconditionally and a single process pays nothing.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` reads them and joins the group (gloo on the CPU, nccl on CUDA). A rank that dies
makes the others' next collective fail at once (its connection closes), and one that hangs, after
``timeout`` seconds, each with a sentence that says which happened; the waits
for one rank's own work (:func:`together`: rank 0's download, its Fréchet classifier, a sampler it
fits) take their own group, whose timeout is :data:`PATIENT_TIMEOUT_S`.
"""
from __future__ import annotations

import atexit
import datetime
import hashlib
import os
import time

import torch
import torch.distributed as dist

from .errors import VaelabError, quote

DEFAULT_TIMEOUT_S = 300  # a collective waits this long for a dead or stuck rank
# together()'s waits for a rank's own work, which may take far longer than a collective (rank 0
# trains a Fréchet classifier or a PixelCNN while the others wait): a backstop for a rank that
# hangs there, not a limit on the work; a rank that dies is noticed at once (its connections close)
PATIENT_TIMEOUT_S = 24 * 3600
RANK_SEED_STRIDE = 1_000_003  # a prime: rank r's noise is seeded seed + r * this (+ the epoch on a resume)
_timeout_s = DEFAULT_TIMEOUT_S  # what setup was given, for the message when a collective fails
_patient = None  # the gloo group of together()'s waits (setup); None: the default group
_joined = False  # setup has begun: from then on a rank's errors may be its own (prints)


def env_int(name: str, default: int, low: int = 0) -> int:
    """A whole number torchrun (or a launcher like it) sets in the environment: ``default`` when
    unset, one sentence naming the variable when it is not a number of at least ``low``."""
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw.strip() else default
    except ValueError:
        value = None
    if value is None or value < low:
        raise VaelabError(f"the environment variable {name} is {quote(raw)}: expected a whole number of at least "
                          f"{low}, as torchrun sets it (unset it to run in one process).")
    return value


def launched() -> bool:
    """Started by torchrun (or any launcher setting its variables) with more than one rank."""
    return env_int("WORLD_SIZE", 1, low=1) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one that writes logs, pictures and checkpoints."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, a CUDA ``device`` is this rank's GPU, ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", env_int("LOCAL_RANK", 0))
    return device


def setup(device: torch.device, timeout_s: float = DEFAULT_TIMEOUT_S, threads: int | None = None) -> torch.device:
    """Join the process group torchrun describes (once), and return the device this rank uses:
    ``cuda:LOCAL_RANK`` when ``device`` is CUDA, else ``device``. Sets torch's CPU threads to
    ``threads`` (--threads), else under torchrun to :func:`default_threads` (torchrun's own
    OMP_NUM_THREADS=1 would leave all but one core of a rank idle). Without torchrun, only
    ``threads``."""
    threads = threads or default_threads()
    if threads:
        torch.set_num_threads(threads)
    if not launched():
        return device
    rank, size = env_int("RANK", 0), env_int("WORLD_SIZE", 1, low=1)  # read by torch below: a sentence first
    if rank >= size:
        raise VaelabError(f"the environment variable RANK is {rank}, but WORLD_SIZE is {size}: a rank is from 0 to "
                          f"{size - 1}, as torchrun sets it (unset WORLD_SIZE to run in one process).")
    global _timeout_s, _patient, _joined
    _joined = True
    if not dist.is_available():
        raise VaelabError("WORLD_SIZE > 1 was set (torchrun), but this torch has no torch.distributed.")
    device = local_device(device)
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if device.index >= gpus:  # else torch's "invalid device ordinal", deep in set_device
            raise VaelabError(f"LOCAL_RANK {device.index}: torchrun started more ranks on this machine "
                              f"({os.environ.get('LOCAL_WORLD_SIZE', '?')}) than it has GPUs ({gpus}): give "
                              f"--nproc-per-node {gpus} or fewer, or --device cpu.")
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # the group's timeout is the first call's: the one the message names
        for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):  # who and where the ranks meet: else torch's ValueError
            if not os.environ.get(name, "").strip():
                raise VaelabError(f"WORLD_SIZE is {os.environ['WORLD_SIZE'].strip()}, but the environment variable "
                                  f"{name} is not set: torchrun sets RANK, MASTER_ADDR and MASTER_PORT (unset WORLD_SIZE "
                                  "to run in one process).")
        env_int("MASTER_PORT", 0, low=1)
        _timeout_s = timeout_s
        backend = "nccl" if device.type == "cuda" else "gloo"
        _call(dist.init_process_group, backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if device.type == "cuda" else {}))
        _patient = _call(dist.new_group, backend="gloo",
                         timeout=datetime.timedelta(seconds=max(timeout_s, PATIENT_TIMEOUT_S)))
        atexit.register(_leave)
    return device


def _leave() -> None:
    """At exit: leave the group (nccl warns of one never destroyed)."""
    global _patient
    if dist.is_initialized():
        dist.destroy_process_group()
    _patient = None


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
    return [item for part in all_gather_object(items) for item in part]


def from_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` computed on rank 0 alone and sent to every rank (a picklable value);
    a failure there stops every rank with its message (:func:`together`), so none waits for a
    value that never comes."""
    return broadcast_object(together(lambda: fn(*args, **kwargs), main_only=True))


def main_first(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0, then on the other ranks once it has returned: rank 0 fills
    a cache in a shared folder (a sampler fitted after training, in the run directory) that the
    others then read, instead of each doing the work and racing to write the file. A failure
    anywhere stops every rank (:func:`together`, both times)."""
    box = []
    from_main(lambda: box.append(fn(*args, **kwargs)))
    return together(lambda: box[0] if box else fn(*args, **kwargs))


# how gloo (and the rendezvous) say that a peer is gone: its connection closed (it ended: killed,
# crashed or exited, noticed at once), or no answer came within the timeout (it hung, or is slow)
_CLOSED = ("connection closed", "connection reset", "broken pipe", "read error", "end of file")
_TIMED_OUT = ("timed out", "timeout")


def _call(op, *args, **kwargs):
    """A collective: one that fails becomes one VaelabError that names this rank and what
    happened (a rank's connection closed: it ended; or no answer within ``--dist-timeout``),
    instead of a traceback from deep inside torch; any other failure, one that names this rank
    and quotes torch."""
    t0 = time.monotonic()
    try:
        return op(*args, **kwargs)
    except RuntimeError as e:
        waited = time.monotonic() - t0
        # torchrun's numbers: the group is not up when its own setup is what failed
        r, world = os.environ.get("RANK", rank()), os.environ.get("WORLD_SIZE", world_size())
        said = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        if any(word in said.lower() for word in _CLOSED):
            msg = (f"rank {r} of {world}: another rank ended {waited:.1f} s into a collective, its connection closed "
                   f"({said}): it was killed or crashed; its own output, or torchrun's, says which and why.")
        elif any(word in said.lower() for word in _TIMED_OUT):
            msg = (f"rank {r} of {world}: no answer from the other ranks within --dist-timeout {_timeout_s:g} s "
                   f"({said}): another rank stopped or hung; its own output says why "
                   "(or raise --dist-timeout if a rank is only slow).")
        else:
            msg = f"rank {r} of {world}: a collective between the ranks failed in torch.distributed ({said})."
        raise VaelabError(msg) from None


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced over the ranks, in place (``sum``, ``max`` or ``min``); ``t`` itself alone."""
    if active():
        _call(dist.all_reduce, t, {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (a picklable value: a message, a path)."""
    if not active():
        return obj
    box = [obj]
    _call(dist.broadcast_object_list, box, src)
    return box[0]


def all_gather_object(obj, group=None) -> list:
    """Every rank's ``obj``, in rank order (a picklable value)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    _call(dist.all_gather_object, out, obj, group)
    return out


def _flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


@torch.no_grad()
def _unflat_(ts: list[torch.Tensor], flat: torch.Tensor) -> None:
    # element by element in logical order, so a channels_last tensor gets its own values back
    i = 0
    for t in ts:
        t.copy_(flat[i:i + t.numel()].view(t.shape))
        i += t.numel()


@torch.no_grad()
def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Rank ``src``'s values of ``tensors`` (weights, buffers) on every rank, in place: one
    collective per dtype."""
    if not active():
        return
    for dtype in sorted({t.dtype for t in tensors}, key=str):  # one order on every rank (a set's varies)
        group = [t for t in tensors if t.dtype == dtype]
        flat = _flat(group)
        _call(dist.broadcast, flat, src)
        _unflat_(group, flat)


@torch.no_grad()
def weighted_mean_(tensors: list[torch.Tensor], n: int, total: int,
                   extra: torch.Tensor | None = None) -> torch.Tensor | None:
    """Each tensor becomes sum over ranks of ``n`` times its value, over ``total``, in place, in
    one collective: with ``n`` the images this rank's value is a mean over and ``total`` their
    sum, exactly the mean over the global minibatch, however unequal the shards. A rank with
    ``n = 0`` adds zeros (its values may be NaN). ``extra`` (1-D) rides along, summed, and its
    sum is returned."""
    parts = [_flat(tensors).mul_(n) if n else _flat(tensors).zero_()] if tensors else []
    flat = torch.cat(parts + ([extra] if extra is not None else []))
    _call(dist.all_reduce, flat)
    if tensors:
        _unflat_(tensors, flat[:len(flat) - (0 if extra is None else len(extra))] / total)
    return None if extra is None else flat[len(flat) - len(extra):]


def together(fn, main_only: bool = False):
    """``fn()`` on every rank (or on rank 0 alone), then a check that it went well everywhere:
    a failure on any rank stops every rank with that rank's message (rank 0 prints it, once),
    instead of leaving the others waiting in their next collective. Returns this rank's result
    (None where it did not run). Doubles as a barrier, one that waits for the slowest rank's
    ``fn`` up to :data:`PATIENT_TIMEOUT_S`, not ``--dist-timeout``. One process: just ``fn()``."""
    if not active():
        return fn()
    failure, result = None, None
    if is_main() or not main_only:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 -- passed on below, and re-raised on this rank
            failure = e
    said = all_gather_object(None if failure is None else str(failure) if isinstance(failure, VaelabError)
                             else f"{type(failure).__name__}: {failure}", _patient)
    first = next((r for r, m in enumerate(said) if m is not None), None)
    if first is None:
        return result
    if failure is not None and first == rank():
        raise alike(failure)  # rank 0 says it, as "rank r: ..." if it is another's
    if failure is not None and said[rank()] != said[first]:
        raise failure  # a failure of this rank's own besides the first one: this rank says it
    raise alike(VaelabError(said[first] if first == 0 else f"rank {first}: {said[first]}"))


def alike(err: Exception) -> Exception:
    """``err``, marked as one that rank 0 raises too (the ranks' checks of the same flags and
    data, decisions on figures summed over the ranks, what :func:`together` passed on): rank 0
    alone prints it (:func:`prints`)."""
    err.alike = True
    return err


def prints(err: VaelabError) -> bool:
    """Whether this rank prints ``err``: rank 0 always; another rank, unless rank 0 says the
    same (:func:`alike`) or the error came before the ranks met (a bad flag, raised alike).
    Any other error of a rank is its own, perhaps the only word of what stopped the run."""
    raw = os.environ.get("RANK", "0").strip()
    size = os.environ.get("WORLD_SIZE", "1").strip()
    # a rank that cannot read its own number, or the launch's size, or whose number is past it, has no
    # rank 0 of a real launch beside it to say the same: it speaks
    def whole(t: str) -> bool:
        return t.isascii() and t.isdigit()
    if raw == "0" or not whole(raw) or not whole(size) or int(raw) >= int(size):
        return True
    return _joined and not getattr(err, "alike", False)


def rank_seed(seed: int, r: int, epoch: int = 0) -> int:
    """The seed of rank ``r``'s own noise (rank 0 keeps ``seed``'s stream), and of a rank whose
    state a resumed checkpoint lacks (``epoch``: where the run resumes)."""
    return seed + RANK_SEED_STRIDE * r + epoch


def default_threads() -> int | None:
    """Under torchrun, the CPU's cores shared by the ranks on this machine (at least one
    each); else None (torch's own choice)."""
    if not launched():
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // env_int("LOCAL_WORLD_SIZE", 1, low=1))
