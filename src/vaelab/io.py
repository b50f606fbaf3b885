"""The bottom layer: files written whole or not at all, valid JSON, and the run directory's
lock. Anything may import this module; it imports nothing of vaelab but its errors and its
memory bound."""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import VaelabError, clip
from .limits import check_bytes

LOCK = ".vaelab.lock"

# The random part of a temporary's name: 8 hex digits, as the writer makes them and as the
# clean-up matches them, from the one function below so the two cannot drift apart.
_RANDOM_HEX = 8


def _temp_name(name: str, random: str) -> str:
    """The temporary :func:`atomic_write` writes ``name`` under, ``random`` being its random part
    (or, for :func:`remove_temporaries`, a glob pattern for it)."""
    return f".{name}.{random}.tmp"


# What versions before this one left: mkstemp's names, prefix ".<name>..tmp" and suffix ".tmp"
# around 8 of its characters.
_OLD_RANDOM = ".tmp" + "[a-z0-9_]" * 8


def _create_temp(path: Path) -> Path:
    """A new empty file beside ``path``, named by :func:`_temp_name`. O_EXCL creates it or fails,
    and never opens what is there already, a symbolic link included; the mode 0666 less the umask
    is an ordinary file's."""
    for _ in range(100):
        tmp = path.parent / _temp_name(path.name, secrets.token_hex(_RANDOM_HEX // 2))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(path.parent))


def _why(e: BaseException) -> str:
    """The reason a write failed, in words: "file too large", "no space left on device"."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    code = re.search(r"os error (\d+)", str(e))  # safetensors: "... I/O error: File too large (os error 27)"
    return os.strerror(int(code.group(1))).lower() if code else str(e)


def cannot_write(path, e: BaseException, kept: str) -> VaelabError:
    """The sentence of a write to ``path`` that failed with ``e``: why, and what is left (``kept``)."""
    return VaelabError(f"cannot write {path}: {_why(e)}; {kept}.")


# Inside all_or_nothing(): the (temporary, destination) of each write, renamed when it ends, and
# what a failed write says is left
_pending: list[tuple[Path, Path]] | None = None
_kept = ""


@contextlib.contextmanager
def all_or_nothing(kept: str = "the files there before are intact"):
    """The :func:`atomic_write` calls inside the block keep their temporaries and are renamed
    together when it ends, so a set of files (an epoch's checkpoints, its metrics) moves from one
    state to the next whole: if one write fails (a full disk, a file-size limit), none is
    renamed, every temporary is removed, and the error ends with ``kept`` (what is left)."""
    global _pending, _kept
    if _pending is not None:  # nested: the outer block decides
        yield
        return
    _pending, _kept = [], kept
    try:
        yield
        done = _pending
    except BaseException:
        for tmp, _ in _pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _pending = None
    for tmp, path in done:
        os.replace(tmp, path)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``, so ``path`` is the old file or
    the new one, never half of one (inside :func:`all_or_nothing`, when the block ends, with the
    others). The rename replaces a symbolic link at ``path`` rather than writing through it. A
    write that fails (a full disk, a file-size limit) raises :class:`VaelabError` naming ``path``
    and why, and removes the temporary."""
    path = Path(path)
    tmp = None
    try:
        tmp = _create_temp(path)
        mode = stat.S_IMODE(os.stat(tmp).st_mode)
        write(str(tmp))
        os.chmod(tmp, mode)  # a writer may make its file anew, private (safetensors does: 0600)
        if _pending is not None:
            _pending.append((tmp, path))
            return
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if _pending is not None:  # a set's write: none of the set is renamed (all_or_nothing)
            kept = _kept
        else:
            kept = f"the {path.name} there before is intact" if os.path.lexists(path) else "nothing was written"
        raise cannot_write(path, e, kept) from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def remove_temporaries(folder: Path, names) -> list[Path]:
    """Delete the temporaries :func:`atomic_write` leaves when its process is killed between
    making one and renaming it (:func:`_temp_name`, and the names earlier versions made) for each
    of ``names`` (glob patterns, which may name a sub-folder). Only the run's own files, and only
    under the run's lock, so no live writer's temporary goes."""
    gone = []
    for pattern in names:
        sub, _, name = pattern.rpartition("/")
        if sub and (Path(folder) / sub).is_symlink():  # a link out of the run: its files are not the run's
            continue
        for random in ("[0-9a-f]" * _RANDOM_HEX, _OLD_RANDOM):
            for p in (Path(folder) / sub).glob(_temp_name(name, random)):
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def run_subfolder(folder: Path, create: bool = True) -> Path:
    """A sub-folder of a run directory that vaelab writes into or clears (a GAN's ``progress/``,
    the fitted ``samplers/``), made if missing (``create``). Refused if it is a symbolic link or
    not a folder: a run directory from someone else could otherwise send vaelab's pictures, or
    the deletions of ``--overwrite``, into any folder the user can write."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        what = "a symbolic link" if folder.is_symlink() else "not a folder"
        raise VaelabError(f"{clip(folder)} is {what}: vaelab writes only into a run's own sub-folders; "
                          "remove it if the run is yours.")
    if create:
        try:
            folder.mkdir(exist_ok=True)
        except OSError as e:
            raise VaelabError(f"cannot create {clip(folder)}: {_why(e)}.") from None
    return folder


@contextlib.contextmanager
def lock_run(run_dir: Path, flag: str = "--out"):
    """Hold the run directory for this process until the block ends: an exclusive lock on its
    lock file, with this process's id written inside, so a second run on the same folder stops
    at once and names the holder. The kernel drops the lock when the process ends, however it
    ends. The file stays: removing it could let two processes each lock a file of that name."""
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): runs are not locked there
        yield
        return
    f = _open_lock(Path(run_dir), flag)
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip()
            who = f"process {pid}" if pid.isdigit() else "another process"
            raise VaelabError(f"{flag} {run_dir} is in use by {who}: wait for it to end, "
                              "or give another directory.") from None
        except OSError as e:
            raise VaelabError(f"cannot lock {flag} {run_dir}: {e.strerror or e}.") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def _open_lock(run_dir: Path, flag: str):
    """The run's lock file, opened to read and write, created if need be. A run directory may come
    from someone else, so it is never followed: a symbolic link there could make this process
    write its id into any file the user can write (O_NOFOLLOW), and a hard link, a FIFO or a
    device is refused too (O_NONBLOCK: opening a FIFO must not wait for a writer)."""
    p = run_dir / LOCK
    flags = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(p, flags, 0o666)
    except OSError as e:
        what = "a symbolic link" if p.is_symlink() else "a folder" if p.is_dir() else None
        if what is None:
            raise VaelabError(f"cannot lock {flag} {run_dir}: {e.strerror or e}.") from None
        raise _not_a_lock(run_dir, flag, what) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise _not_a_lock(run_dir, flag, "a file with other hard links" if stat.S_ISREG(st.st_mode) else
                          "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket")
    return os.fdopen(fd, "r+")


def _not_a_lock(run_dir: Path, flag: str, what: str) -> VaelabError:
    return VaelabError(f"cannot lock {flag} {run_dir}: its {LOCK} is {what}, not a plain file of its own, "
                       "and vaelab does not write through it; remove it if the folder is yours.")


def finite_or_null(obj: Any) -> Any:
    """``obj`` with every NaN and infinity (in dicts and lists, too) replaced by None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def not_finite(obj: dict, prefix: str = "") -> list[str]:
    """The names of the NaN and infinite numbers in ``obj`` (nested names dotted)."""
    names = []
    for k, v in obj.items():
        if isinstance(v, dict):
            names += not_finite(v, f"{prefix}{k}.")
        elif isinstance(v, float) and not math.isfinite(v):
            names.append(f"{prefix}{k}")
    return names


def dumps(obj: Any, **kw) -> str:
    """JSON text of ``obj`` with non-finite numbers as null: json.dumps would write a bare
    NaN or Infinity, which is not JSON, and strict readers refuse the whole file."""
    return json.dumps(finite_or_null(obj), allow_nan=False, **kw)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: Path(p).write_text(dumps(obj, indent=2) + "\n"))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile and DDP wrap the module; checkpoints always hold the plain one.
    while hasattr(model, "_orig_mod") or hasattr(model, "module"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


# the attribute a wrapper (DistributedDataParallel, torch.compile) keeps the wrapped module in
WRAPPER_KEYS = ("module", "_orig_mod")


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The plain module's tensors, contiguous, on the CPU: what a safetensors file holds. A
    sub-module wrapped in place (``model.decoder = DDP(model.decoder)``) is unwrapped too: its
    keys lose the wrapper's ``module.`` segment, so a checkpoint never depends on how it ran."""
    plain = lambda k: ".".join(p for p in k.split(".") if p not in WRAPPER_KEYS)  # noqa: E731
    return {plain(k): v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}


def save_weights(model: torch.nn.Module, path: Path, meta: dict[str, Any] | None = None) -> None:
    sd = weights_of(model)
    md = {k: json.dumps(v) for k, v in (meta or {}).items()}
    atomic_write(path, lambda p: save_file(sd, p, metadata=md))


# safetensors refuses a longer header itself; the bound keeps this reader from reading one
MAX_HEADER = 100_000_000


def _not_safetensors(path: Path, why: Any) -> VaelabError:
    return VaelabError(f"cannot read checkpoint {path}: it is not a valid safetensors file ({why}).")


def _check_tensor_bytes(path: Path) -> None:
    """Refuse a file whose tensors need more memory than :func:`vaelab.limits.check_bytes`
    allows, or more bytes than follow its header, from the header alone: an 8-byte little-endian
    length, then JSON giving each tensor's ``data_offsets`` in the data after it. A sparse file
    can declare 16 GB in a few kilobytes of disk, and loading it allocates all 16."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, MAX_HEADER):
                raise ValueError(f"it is {size} bytes long, and its header cannot be {n} bytes")
            header = json.loads(f.read(n))
        ends = [info["data_offsets"][1] for k, info in header.items() if k != "__metadata__"]
        if not all(isinstance(e, int) and e >= 0 for e in ends):
            raise ValueError("a tensor's data_offsets are not whole numbers")
    except OSError as e:
        raise VaelabError(f"cannot read checkpoint {path}: {e.strerror or e}.") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:  # JSON of another shape
        raise _not_safetensors(path, e) from None
    # the offsets are validated by safetensors (contiguous, each the size of its shape and
    # dtype), so the last end is the bytes of all the tensors together
    data = max(ends, default=0)
    if data > size - 8 - n:
        raise VaelabError(f"checkpoint {path} is truncated: its header declares {data:,} bytes of tensors, "
                          f"but {size - 8 - n:,} follow it.")
    check_bytes(f"checkpoint {path}: the tensors its header declares", data)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise VaelabError(f"checkpoint {path} is missing.")
    _check_tensor_bytes(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _not_safetensors(path, e) from None


def read_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            md = f.metadata() or {}
        return {k: json.loads(v) for k, v in md.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _not_safetensors(path, e) from None


def load_weights(model: torch.nn.Module, path: Path, sd: dict[str, torch.Tensor] | None = None) -> None:
    """Load ``path`` (or its already-read tensors ``sd``) into ``model``, all or nothing."""
    sd = read_tensors(path) if sd is None else sd
    target = unwrap(model)
    # Check every name and shape before copying anything: load_state_dict copies the tensors
    # that fit before it raises on those that do not, which would leave the model half loaded.
    own = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    if own != got:
        diff = sorted(set(own) ^ set(got)) or sorted(k for k in own if own[k] != got[k])
        k = diff[0]
        raise VaelabError(f"checkpoint {path} does not fit the model its config.json describes: {k} is "
                          f"{got.get(k, 'missing')} in the file, {own.get(k, 'absent')} in the model.")
    target.load_state_dict(sd, strict=True)
