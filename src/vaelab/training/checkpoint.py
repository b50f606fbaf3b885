"""Self-describing checkpoints: ``config.json`` + ``safetensors``. Nothing is pickled.

A run directory holds:

* ``config.json``: format version, model name and config, data config and spec, train config;
* ``model.safetensors``: the weights after the last finished epoch (unwrapped module);
* ``best.safetensors``: the weights with the best validation score so far;
* ``resume.safetensors``: the weights again, optimizer tensors and RNG states, with the loop
  position, history and the non-tensor optimizer state as JSON metadata: one file, so resume
  never mixes the weights of one epoch with the optimizer state of another.

Every file is written to a temporary name in the same folder and renamed, so a crash never
leaves a half-written checkpoint (and a run removes the temporaries a crash leaves, see
:func:`remove_temporaries`). JSON is always valid: a NaN or infinity is written as null.
"""
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

from ..errors import VaelabError

FORMAT_VERSION = 1


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


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile and DDP wrap the module; checkpoints always hold the plain one.
    while hasattr(model, "_orig_mod") or hasattr(model, "module"):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


def save_weights(model: torch.nn.Module, path: Path, meta: dict[str, Any] | None = None) -> None:
    sd = _state(model)
    md = {k: json.dumps(v) for k, v in (meta or {}).items()}
    atomic_write(path, lambda p: save_file(sd, p, metadata=md))


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
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
    sd = _read_tensors(path) if sd is None else sd
    target = _unwrap(model)
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


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}


def save_resume(path: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                rng: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {f"rng.{k}": v.contiguous() for k, v in rng.items()}
    tensors.update({f"model.{k}": v for k, v in _state(model).items()})
    optim_meta = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for idx, st in sd["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"optim.{name}.{idx}.{key}"] = val.detach().contiguous().cpu()
                else:
                    plain.setdefault(str(idx), {})[key] = val
        optim_meta[name] = {"param_groups": sd["param_groups"], "plain_state": plain}
    md = {"loop": dumps(meta), "optim": json.dumps(optim_meta)}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=md))


def load_resume(path: Path, model: torch.nn.Module,
                optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore the weights and optimizer states in place; return (rng states, loop metadata)."""
    tensors = _read_tensors(path)
    load_weights(model, path, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    try:
        md = read_metadata(path)
        optim_meta, loop = md["optim"], md["loop"]
        for name, opt in optimizers.items():
            state: dict[int, dict[str, Any]] = {}
            for key, val in tensors.items():
                parts = key.split(".")
                if parts[0] == "optim" and parts[1] == name:
                    state.setdefault(int(parts[2]), {})[parts[3]] = val
            for idx, plain in optim_meta[name]["plain_state"].items():
                state.setdefault(int(idx), {}).update(plain)
            opt.load_state_dict({"state": state, "param_groups": optim_meta[name]["param_groups"]})
            _layout_as_params(opt)
    except (KeyError, ValueError, IndexError) as e:
        raise VaelabError(f"cannot resume from {path}: its optimizer state does not fit this run ({e}).") from None
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    return rng, loop


def check_loop(path: Path, loop: Any) -> None:
    """Refuse the trainer's loop metadata of a resume file unless it holds whole counts, a numeric
    best score and a history of epochs that each say how long they took (a time budget sums them)."""
    def bad(what: str) -> VaelabError:
        return VaelabError(f"cannot resume from {path}: its {what}.")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if not isinstance(loop, dict):
        raise bad("loop metadata is not a table")
    for key in ("epoch", "global_step"):
        if not number(loop.get(key)) or not isinstance(loop[key], int) or loop[key] < 0:
            raise bad(f"'{key}' is {loop.get(key)!r}, expected a whole number of at least 0")
    if not number(loop.get("best")):
        raise bad(f"'best' is {loop.get('best')!r}, expected a number")
    history = loop.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) and number(h.get("seconds")) for h in history):
        raise bad("'history' is not a list of epochs, each with its seconds")


def _layout_as_params(opt: torch.optim.Optimizer) -> None:
    """Saved state is contiguous; a channels_last parameter's moments must be laid out as it is
    (a fused kernel walks them side by side), as the optimizer's own zeros_like would have."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def read_run_config(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise VaelabError(f"run directory {run_dir} does not exist.")
    if not p.is_file():
        raise VaelabError(f"{run_dir} is not a vaelab run directory: {p.name} is missing.")
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise VaelabError(f"cannot read {p}: it is not valid JSON ({e}).") from None
    if not isinstance(d, dict) or d.get("format_version") != FORMAT_VERSION:
        raise VaelabError(f"{p} is not a vaelab run config of format version {FORMAT_VERSION}.")
    return d
