"""A run's full configuration, and how flags, presets and config files combine into it.

Precedence, lowest first: the dataclass defaults, a ``--preset``, a ``--config`` file, explicit
flags (or keyword arguments of :func:`make_config`). ``--like RUN`` (a new run with the settings
of RUN) takes the place of the file, below the preset: each is given on the command line. A run's
config.json is itself a valid ``--config`` file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import (DataConfig, TrainConfig, build, check_path, check_seed, check_threads, coerce, flag_name,
                     flatten, from_dict, load_config_doc, to_dict)
from .data.datasets import check_levels, check_options, dataset_names, known_spec
from .errors import VaelabError, clip, did_you_mean, quote
from .limits import check_bytes, check_nll_samples
from .models import MODELS, get_model
from .registry import model_name
from .rundir import CONFIG, READABLE_VERSIONS

# a run's settings that say where and whether to write it: a run repeated from its config.json
# (--like, --config RUN/config.json) writes where its own flags say, never over the run itself
WHERE_TO_WRITE = ("out", "overwrite")

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
        except VaelabError as e:  # a value of the file (an unknown model's name): the message names the file
            if where in str(e):
                raise
            raise VaelabError(f"{where}: {e}") from None
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
    if not all(isinstance(d[part], dict) for part in ("data", "train", "model")):  # dict("ab") is a ValueError
        raise TypeError("a section is not a table")
    data, train, model = dict(d["data"]), dict(d["train"]), dict(d["model"])
    train["model"] = model_name(train["model"])  # a former name (hvae) as the model's name today
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


def settings_file(path: str | Path, what: str = "--config file") -> dict[str, Any]:
    """The settings a TOML or JSON file holds, flat (:func:`vaelab.config.flatten`); a run's
    config.json gives the settings it was trained with (:func:`run_settings`)."""
    doc = load_config_doc(path, what)
    where = f"{what} {clip(path)}"
    if "format_version" in doc and "run" in doc:
        return run_settings(doc, where)
    return flatten(doc, where)


def run_settings(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """The settings a run's config.json (``doc``) was trained with, as flat as a --config
    file's: the image shape and levels left out (they come from the data), and
    :data:`WHERE_TO_WRITE` too, so that the run is repeated elsewhere and never replaced."""
    if doc.get("format_version") not in READABLE_VERSIONS:
        raise VaelabError(f"{where} is a run config of format version {quote(doc.get('format_version'))}; this "
                          f"vaelab reads {' and '.join(map(str, READABLE_VERSIONS))}.")
    try:
        d = migrate(doc["run"])
        data, train, model = (dict(d[part]) for part in ("data", "train", "model"))
    except (KeyError, TypeError, AttributeError, ValueError):
        raise VaelabError(f"{where} does not describe a vaelab run (missing data/train/model sections).") from None
    from_data = {f.name for f in dataclasses.fields(get_model(train.get("model")).config_cls)
                 if not f.metadata.get("flag", True)}
    flat = {**data, **train, **{k: v for k, v in model.items() if k not in from_data}}
    return {k: v for k, v in flat.items() if k not in WHERE_TO_WRITE}


def like_run(run_dir: str | Path) -> dict[str, Any]:
    """``--like RUN``: the settings run ``run_dir`` was trained with (:func:`run_settings`)."""
    check_path("--like", run_dir)
    p = Path(run_dir)
    if not p.is_dir():
        raise VaelabError(f"--like {clip(run_dir)}: no such run directory.")
    if not (p / CONFIG).is_file():
        raise VaelabError(f"--like {clip(run_dir)} is not a vaelab run directory: {CONFIG} is missing.")
    return run_settings(load_config_doc(p / CONFIG, "--like"), f"--like {clip(run_dir)}")


def make_config(config_file: str | None = None, like: str | Path | None = None, **flags: Any) -> RunConfig:
    """Build a :class:`RunConfig` from keyword flags (names as on the command line, with
    underscores), an optional TOML/JSON file (or a run's config.json), an optional ``preset``,
    or (``like``) the settings of a run directory.

    Values may be strings as typed on the command line or Python values. Unknown names and
    options that do not apply to the chosen model are errors. Precedence, lowest first: the
    defaults, the preset, the file, the flags; with ``like``: the defaults, the run's settings,
    the preset, the flags. A run taken ``like`` another with another --model keeps the run's
    settings that the new model has, and leaves the others behind.
    """
    if config_file is not None and like is not None:
        raise VaelabError("--like and --config are two sources of settings: give one (flags win over either).")
    given = {k.replace("-", "_"): v for k, v in flags.items()}
    if like is not None:
        base, base_where = like_run(like), f"--like {clip(like)}"
    elif config_file is not None:
        check_path("--config", config_file)
        base, base_where = settings_file(config_file), f"--config file {clip(config_file)}"
    else:
        base, base_where = {}, "flag"
    where_of = {**{k: base_where for k in base}, **{k: "flag" for k in given}}

    name = coerce(TrainConfig, "model", given.get("model", base.get("model", TrainConfig.model)),
                  where_of.get("model", "flag"))
    model_cls = get_model(name)
    if like is not None and model_name(base.get("model")) != model_cls.name:  # what the new model has of the run's
        base = {k: v for k, v in base.items() if _owner(k, model_cls.config_cls) is not None}
    values = {**base, **given, "model": model_cls.name}
    preset = values.pop("preset", None)
    if preset is not None:
        presets = model_cls.presets
        if not isinstance(preset, str) or preset not in presets:
            have = f"one of {', '.join(presets)}" if presets else "not available"
            raise VaelabError(f"--preset for --model {model_cls.name} is {have}, got {quote(preset)}"
                              f"{did_you_mean(preset, presets)}.")
        if like is not None:  # a flag on the command line: above the run's settings, below the other flags
            values.update({k: v for k, v in presets[preset].items() if k not in given})
            where_of.update({k: "flag" for k in presets[preset]})
        else:
            values = {**presets[preset], **values}
            where_of.update({k: "flag" for k in presets[preset] if k not in where_of})
    values = {**model_cls.train_defaults, **values}  # the model's own defaults, below everything given

    parts: dict[type, dict[str, Any]] = {DataConfig: {}, TrainConfig: {}, model_cls.config_cls: {}}
    for name, v in values.items():
        where = where_of.get(name, "flag")
        owner = _owner(name, model_cls.config_cls)
        if owner is None:
            if any(_owner(name, m.config_cls) for m in MODELS.values()):
                raise VaelabError(f"{flag_name(clip(name))} does not apply to --model {model_cls.name}.")
            if where == "flag":
                raise VaelabError(f"unknown flag {flag_name(clip(name))}{did_you_mean(flag_name(name), _flags(model_cls))}.")
            raise VaelabError(f"unknown key {quote(name)} in {where}{did_you_mean(name, _keys(model_cls))}.")
        if not next(f for f in dataclasses.fields(owner) if f.name == name).metadata.get("flag", True):
            raise VaelabError(f"{flag_name(name)} cannot be set: it is taken from the data.")
        parts[owner][name] = coerce(owner, name, v, where)
    cfg = RunConfig(build(DataConfig, parts[DataConfig], "flags"), build(TrainConfig, parts[TrainConfig], "flags"),
                    build(model_cls.config_cls, parts[model_cls.config_cls], "flags"))
    check(cfg)
    return cfg


def _keys(model_cls) -> list[str]:
    """Every setting's name for ``model_cls``: what a mistyped key is compared with."""
    return [f.name for cls in (DataConfig, TrainConfig, model_cls.config_cls) for f in dataclasses.fields(cls)
            if f.metadata.get("flag", True)] + ["preset"]


def _flags(model_cls) -> list[str]:
    return [flag_name(k) for k in _keys(model_cls)]


# Training holds each parameter four times over: the weights, their gradients, Adam's two moments.
TRAIN_BYTES_PER_PARAMETER = 16


def check_model_size(model: str, cfg, where: str = "", batch_size: int | None = None) -> None:
    """Refuse a net whose training would not fit in memory (:func:`vaelab.limits.check_bytes`):
    its parameters (:meth:`~vaelab.models.base.Model.count_parameters`, which builds nothing),
    and with ``batch_size`` what one step holds of the minibatch
    (:meth:`~vaelab.models.base.Model.step_memory`: an IWAE's k decoded copies of it)."""
    model_cls = get_model(model)
    # the sizes the message names: as keys in a file (where), else as flags
    widths = {"mlp": ["hidden"], "conv": ["channels" if hasattr(cfg, "channels") else "width"]}
    names = ["latent_dim", *widths.get(getattr(cfg, "arch", "mlp"), []), *model_cls.size_fields]
    show = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    named = ", ".join(f"{n if where else flag_name(n)} {clip(show(getattr(cfg, n)))}" for n in names)
    images = "x".join(map(str, cfg.shape))
    try:
        n = model_cls.count_parameters(cfg)
    except (RuntimeError, TypeError) as e:  # a size no tensor can have: past int64, or negative
        why = "a size past what a tensor can hold" if "verflow" in str(e) else clip(str(e).splitlines()[0])
        raise VaelabError(f"{where}{named} on {images} images make no {model_cls.name}: {why}.") from None
    check_bytes(f"{where}{named} on {images} images make a {model_cls.name} of {n:,} parameters, which at "
                f"{TRAIN_BYTES_PER_PARAMETER} bytes each to train", n * TRAIN_BYTES_PER_PARAMETER)
    held = model_cls.step_memory(cfg, batch_size) if batch_size is not None else None
    if held is not None:
        check_bytes(f"{where}{held[0]}", held[1])


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
    check_threads("--threads", t.threads)
    check_seed("--seed", t.seed)
    if t.channels_last and getattr(cfg.model, "arch", None) != "conv":
        raise VaelabError("--channels-last applies to conv nets (--arch conv) only.")
    if t.nll_samples < 0:
        raise VaelabError(f"--nll-samples must be 0 (skip) or more, got {t.nll_samples}.")
    check_nll_samples(t.nll_samples)
    for name in ("out", "data_dir", "data_path"):  # before the first stat() of one
        check_path(flag_name(name), getattr(t if name == "out" else cfg.data, name))
    if cfg.data.data not in dataset_names():
        raise VaelabError(f"--data must be one of {', '.join(dataset_names())}, got {quote(cfg.data.data)}"
                          f"{did_you_mean(cfg.data.data, dataset_names())}.")
    check_options(cfg.data)
    cfg.model.check()
    get_model(t.model).check_train(t)
    spec = known_spec(cfg.data.data)
    if spec is not None:  # the image shape is known before the data are read: refuse a net too big now
        check_model_size(t.model, dataclasses.replace(cfg.model, shape=spec.shape), batch_size=t.batch_size)
