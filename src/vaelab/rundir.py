"""A run directory as the later stages read it: its config.json, its model, its data splits.
Training writes runs (:mod:`vaelab.training`); evaluation, probes, pictures and the API read
them through here, so none of them imports the trainer or the package face."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .data import DataSpec, run_dataset
from .data.transforms import eval_inputs
from .errors import VaelabError, clip
from .io import load_weights
from .models import get_model
from .run import FORMAT_VERSION, READABLE_VERSIONS, RunConfig  # noqa: F401 - FORMAT_VERSION: the trainer's


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
    if not isinstance(d, dict) or d.get("format_version") not in READABLE_VERSIONS:
        raise VaelabError(f"{p} is not a vaelab run config of format version "
                          f"{' or '.join(map(str, READABLE_VERSIONS))}.")
    return d


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise VaelabError(f"--device must be auto, cpu or cuda[:N], got {name!r}.")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise VaelabError(f"--device {name} was asked for, but torch sees {count} CUDA GPU(s) here.")
    return dev


CHECKPOINTS = {"best": "best.safetensors", "last": "model.safetensors"}


def read_run(run_dir) -> tuple[RunConfig, DataSpec]:
    return _read_run(run_dir)[:2]


def _read_run(run_dir) -> tuple[RunConfig, DataSpec, str | None]:
    """The run's config, its data spec and where training found its data (None: not recorded)."""
    doc = read_run_config(Path(run_dir))
    where = f"{Path(run_dir) / 'config.json'}"
    try:
        spec = DataSpec.from_dict(doc["data_spec"], f"{where}: ")
    except (KeyError, TypeError, ValueError):
        raise VaelabError(f"{where} has no valid data_spec.") from None
    source = doc.get("data_source")
    return RunConfig.from_dict(doc.get("run", {}), where), spec, source if isinstance(source, str) else None


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto") -> torch.nn.Module:
    """The trained model of a run, in eval mode, with ``encode``, ``decode``, ``sample``,
    ``reconstruct``. ``checkpoint`` is ``best`` (best validation score) or ``last``.
    The run's config and data spec are attached as ``model.run_config`` and ``model.data_spec``, the
    checkpoint's name as ``model.checkpoint``, and where training found its data (config.json's
    ``data_source``, for :func:`vaelab.data.run_dataset`) as ``model.data_source``."""
    if checkpoint not in CHECKPOINTS:
        raise VaelabError(f"--checkpoint must be best or last, got {checkpoint!r}.")
    run, spec, source = _read_run(run_dir)
    model = get_model(run.train.model)(run.model)
    load_weights(model, Path(run_dir) / CHECKPOINTS[checkpoint])
    model.run_config, model.data_spec, model.checkpoint, model.data_source = run, spec, checkpoint, source
    return model.to(resolve_device(device)).eval()


def split_inputs(run_dir, split: str = "test", data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed evaluation inputs of a run's dataset split (binarized as the run was), on the
    CPU: (x, y). The data is read from ``data_dir`` (--data-dir) if given, else first where
    training found it, whatever $VAELAB_DATA says now (:func:`vaelab.data.run_dataset`)."""
    run, spec, source = _read_run(run_dir)
    if split not in ("train", "val", "test"):
        raise VaelabError(f"--split must be train, val or test, got {split!r}.")
    d = run.data
    ds = run_dataset(d, data_dir, found_at=source)
    if tuple(ds.spec.shape) != tuple(spec.shape):
        raise VaelabError(f"{run_dir} was trained on images of shape {tuple(spec.shape)}, "
                          f"but {d.data} now has {tuple(ds.spec.shape)}.")
    s = getattr(ds, split)
    if len(s) == 0:
        raise VaelabError(f"--split {split} is empty for this run (it was trained with --val-size 0).")
    return eval_inputs(s.x, spec.levels, run.model.binarize), s.y


# What training writes and a later command never does. A later command (eval, sample,
# reconstruct, interpolate, manifold) writes under a name that carries every setting deciding
# its content (:func:`result_name`), so running it again with the same settings replaces only its
# own file, with the same result (it is seeded); elsewhere only where -o says.
TRAINING_EVAL = "eval-test.json"  # training's final evaluation (vaelab.api.train)


def result_name(kind: str, suffix: str, *settings) -> str:
    """A later command's file name: ``kind``, then each setting that is given, joined by ``-``:
    ``result_name("eval", ".json", "test", "best", "k1000", "seed0")`` is
    ``eval-test-best-k1000-seed0.json``. At least one setting, so it is never a name of
    training's (``eval-test.json``, ``samples.png``)."""
    parts = [str(s) for s in settings if s not in (None, "")]
    assert parts, "a later command's name carries its settings"
    return "-".join([kind, *parts]) + suffix


def result_path(run_dir, given: str | Path | None, name: str, overwrite: bool = False, flag: str = "-o") -> Path:
    """Where a later command writes: ``given`` (``-o``), else ``name`` in the run directory. A
    given file that exists is replaced only with ``overwrite``; the command's own name is
    replaced (the same settings give the same file)."""
    p = Path(given) if given is not None else Path(run_dir) / name
    suffix = Path(name).suffix
    if p.suffix.lower() != suffix:
        raise VaelabError(f"{flag} {clip(p)} must be a {suffix} file.")
    if p.is_dir():
        raise VaelabError(f"{flag + ' ' if given is not None else ''}{clip(p)} is a folder: expected a {suffix} file "
                          "to write.")
    if not p.parent.is_dir():
        raise VaelabError(f"{flag} {clip(p)}: folder {clip(p.parent)} does not exist.")
    if given is not None and (p.exists() or p.is_symlink()) and not overwrite:
        raise VaelabError(f"{flag} {clip(p)} exists: pass --overwrite to replace it, or give another file.")
    return p
