"""A run directory as the later stages read it: its model and its data splits (the file names
are :mod:`vaelab.rundir`'s). Training writes runs (:mod:`vaelab.training`); evaluation, probes,
samplers, pictures and the report read them through here, so none of them imports the trainer
or the package face."""
from __future__ import annotations

from pathlib import Path

import torch

from .data import DataSpec, run_dataset
from .data.transforms import eval_inputs
from .errors import VaelabError
from .io import load_weights
from .models import get_model
from .run import RunConfig
from .rundir import CHECKPOINTS, CONFIG, read_run_config


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


def read_run(run_dir) -> tuple[RunConfig, DataSpec]:
    return _read_run(run_dir)[:2]


def _read_run(run_dir) -> tuple[RunConfig, DataSpec, str | None]:
    """The run's config, its data spec and where training found its data (None: not recorded)."""
    doc = read_run_config(Path(run_dir))
    where = f"{Path(run_dir) / CONFIG}"
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
