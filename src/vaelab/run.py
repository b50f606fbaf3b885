"""A run's full configuration, and how flags, presets and config files combine into it.

Precedence, lowest first: the dataclass defaults, a ``--preset``, a ``--config`` file, explicit
flags (or keyword arguments of :func:`make_config`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import (DataConfig, TrainConfig, build, coerce, flag_name, from_dict, read_config_file,
                     to_dict)
from .data.datasets import check_levels, check_options, known_spec
from .errors import VaelabError
from .limits import check_bytes
from .models import MODELS, get_model

@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    train: TrainConfig
    model: Any  # the model's own config dataclass, e.g. VAEConfig

    def to_dict(self) -> dict[str, Any]:
        return {"model_name": self.train.model, "data": to_dict(self.data), "train": to_dict(self.train),
                "model": to_dict(self.model)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> "RunConfig":
        try:
            d = migrate(d)
            model_cls = get_model(d["train"]["model"])
            run = cls(from_dict(DataConfig, d["data"], where), from_dict(TrainConfig, d["train"], where),
                      from_dict(model_cls.config_cls, d["model"], where))
        except (KeyError, TypeError, AttributeError):
            raise VaelabError(f"{where} does not describe a vaelab run (missing data/train/model sections).") from None
        if hasattr(run.model, "levels"):
            check_levels(run.model.levels, f"{where}: the model's levels")
        check_model_size(run.train.model, run.model, f"{where}: ")
        return run


# fields a run saved before each model held its own settings (format 1) had in its train section
FORMAT1_TRAIN_FIELDS = ("beta", "warmup_epochs", "iw_samples")


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """A run saved in format 1 in today's words: --binarize was the data's, --beta,
    --warmup-epochs and --iw-samples the trainer's; the model it was decides what they become
    (:meth:`vaelab.models.base.Model.upgrade_format1`)."""
    data, train, model = dict(d["data"]), dict(d["train"]), dict(d["model"])
    if "binarize" in data:
        model["binarize"] = data.pop("binarize")
    old = {n: train.pop(n) for n in FORMAT1_TRAIN_FIELDS if n in train}
    if old:
        train["model"], model = get_model(train["model"]).upgrade_format1(old, model)
    return {**d, "data": data, "train": train, "model": model}


def _owner(name: str, model_cls) -> type | None:
    for cls in (DataConfig, TrainConfig, model_cls):
        if name in {f.name for f in dataclasses.fields(cls)}:
            return cls
    return None


def make_config(config_file: str | None = None, **flags: Any) -> RunConfig:
    """Build a :class:`RunConfig` from keyword flags (names as on the command line, with
    underscores), an optional TOML/JSON file and an optional ``preset``.

    Values may be strings as typed on the command line or Python values. Unknown names and
    options that do not apply to the chosen model are errors.
    """
    file_vals = read_config_file(config_file) if config_file else {}
    where_of = {k: f"--config file {config_file}" for k in file_vals}
    where_of.update({k.replace("-", "_"): "flag" for k in flags})
    values = {**file_vals, **{k.replace("-", "_"): v for k, v in flags.items()}}

    model_name = values.get("model", TrainConfig.model)
    model_name = coerce(TrainConfig, "model", model_name, where_of.get("model", "flag"))
    model_cls = get_model(model_name)
    preset = values.pop("preset", None)
    if preset is not None:
        presets = model_cls.presets
        if preset not in presets:
            have = f"one of {', '.join(presets)}" if presets else "not available"
            raise VaelabError(f"--preset for --model {model_name} is {have}, got {preset!r}.")
        values = {**presets[preset], **values}
        where_of.update({k: "flag" for k in presets[preset] if k not in where_of})
    values = {**model_cls.train_defaults, **values}  # the model's own defaults, below everything given

    parts: dict[type, dict[str, Any]] = {DataConfig: {}, TrainConfig: {}, model_cls.config_cls: {}}
    for name, v in values.items():
        where = where_of.get(name, "flag")
        owner = _owner(name, model_cls.config_cls)
        if owner is None:
            if any(_owner(name, m.config_cls) for m in MODELS.values()):
                raise VaelabError(f"{flag_name(name)} does not apply to --model {model_name}.")
            src = "flag" if where == "flag" else where
            raise VaelabError(f"unknown {'flag ' + flag_name(name) if src == 'flag' else 'key ' + repr(name) + ' in ' + src}.")
        if not next(f for f in dataclasses.fields(owner) if f.name == name).metadata.get("flag", True):
            raise VaelabError(f"{flag_name(name)} cannot be set: it is taken from the data.")
        parts[owner][name] = coerce(owner, name, v, where)
    cfg = RunConfig(build(DataConfig, parts[DataConfig], "flags"), build(TrainConfig, parts[TrainConfig], "flags"),
                    build(model_cls.config_cls, parts[model_cls.config_cls], "flags"))
    check(cfg)
    return cfg


# Training holds each parameter four times over: the weights, their gradients, Adam's two moments.
TRAIN_BYTES_PER_PARAMETER = 16


def check_model_size(model: str, cfg, where: str = "") -> None:
    """Refuse a net whose training would not fit in memory (:func:`vaelab.limits.check_bytes`),
    counting its parameters on the meta device, where tensors have shapes and no memory."""
    import torch
    # the sizes the message names: as keys in a file (where), else as flags
    widths = {"mlp": ["hidden"], "conv": ["channels" if hasattr(cfg, "channels") else "width"]}
    names = ["latent_dim", *widths.get(getattr(cfg, "arch", "mlp"), [])]
    show = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    named = ", ".join(f"{n if where else flag_name(n)} {show(getattr(cfg, n))}" for n in names)
    images = "x".join(map(str, cfg.shape))
    try:
        with torch.device("meta"):
            net = get_model(model)(cfg)
    except (RuntimeError, TypeError) as e:  # a size no tensor can have: past int64, or negative
        why = "a size past what a tensor can hold" if "verflow" in str(e) else str(e).splitlines()[0]
        raise VaelabError(f"{where}{named} on {images} images make no {model}: {why}.") from None
    n = sum(t.numel() for t in (*net.parameters(), *net.buffers()))
    check_bytes(f"{where}{named} on {images} images make a {model} of {n:,} parameters, which at "
                f"{TRAIN_BYTES_PER_PARAMETER} bytes each to train", n * TRAIN_BYTES_PER_PARAMETER)


def check(cfg: RunConfig) -> None:
    """Checks raised before any work starts: the run's own here, the model's in its config
    (``check``) and its class (``check_train``)."""
    t = cfg.train
    positive = {"epochs": t.epochs, "batch_size": t.batch_size, "log_every": t.log_every,
                "max_bad_steps": t.max_bad_steps}
    for name, v in positive.items():
        if v < 1:
            raise VaelabError(f"{flag_name(name)} must be at least 1, got {v}.")
    for name in ("lr", "lr_final", "grad_clip", "time_budget", "dist_timeout"):
        v = getattr(t, name)
        if v is not None and v <= 0:
            raise VaelabError(f"{flag_name(name)} must be positive, got {v}.")
    if t.ema is not None and not 0 < t.ema < 1:
        raise VaelabError(f"--ema must be a decay in (0, 1), such as 0.999, got {t.ema}.")
    if t.threads is not None and t.threads < 1:
        raise VaelabError(f"--threads must be at least 1, got {t.threads}.")
    if t.channels_last and getattr(cfg.model, "arch", None) != "conv":
        raise VaelabError("--channels-last applies to conv nets (--arch conv) only.")
    if t.nll_samples < 0:
        raise VaelabError(f"--nll-samples must be 0 (skip) or more, got {t.nll_samples}.")
    check_options(cfg.data)
    cfg.model.check()
    get_model(t.model).check_train(t)
    spec = known_spec(cfg.data.data)
    if spec is not None:  # the image shape is known before the data are read: refuse a net too big now
        check_model_size(t.model, dataclasses.replace(cfg.model, shape=spec.shape))
