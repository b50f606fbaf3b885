"""The bottom layer: files written whole or not at all, valid JSON, and the run directory's
lock. Anything may import this module; it imports nothing of vaelab but its errors."""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import VaelabError

LOCK = ".vaelab.lock"


def _temp_name(name: str, random: str) -> str:
    return f".{name}.{random}.tmp"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_name(path.name, ""), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise VaelabError(f"cannot write {path}: {e.strerror or e}.") from None
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the permissions of an ordinary file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: Path, names) -> list[Path]:
    """Delete the temporaries :func:`atomic_write` leaves when its process is killed between
    making one and renaming it: ``.<name>.<8 random characters>.tmp`` (mkstemp's names) for each
    of ``names`` (glob patterns, which may name a sub-folder). Only the run's own files, and only
    under the run's lock, so no live writer's temporary goes."""
    gone = []
    for pattern in names:
        sub, _, name = pattern.rpartition("/")
        for p in (Path(folder) / sub).glob(_temp_name(name, "?" * 8)):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


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
    try:
        f = open(Path(run_dir) / LOCK, "a+")
    except OSError as e:
        raise VaelabError(f"cannot lock {flag} {run_dir}: {e.strerror or e}.") from None
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


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise VaelabError(f"checkpoint {path} is missing.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise VaelabError(f"cannot read checkpoint {path}: it is not a valid safetensors file ({e}).") from None


def read_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            md = f.metadata() or {}
        return {k: json.loads(v) for k, v in md.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise VaelabError(f"cannot read checkpoint {path}: it is not a valid safetensors file ({e}).") from None


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
