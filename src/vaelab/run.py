"""A run's full configuration, and how flags, presets and config files combine into it.

Precedence, lowest first: the dataclass defaults, a ``--preset``, a ``--config`` file, explicit
flags (or keyword arguments of :func:`make_config`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import (READER_OPTIONS, DataConfig, TrainConfig, build, coerce, flag_name, from_dict, read_config_file,
                     to_dict)
from .data.datasets import check_levels, known_spec
from .errors import VaelabError
from .limits import check_bytes
from .registry import MODELS, get_model

PRESETS: dict[str, dict[str, Any]] = {
    # Burda et al. 2016 (IWAE), 1 stochastic layer: 784-200-200-50, tanh.
    "iwae": {"arch": "mlp", "hidden": (200, 200), "activation": "tanh", "latent_dim": 50, "likelihood": "bernoulli"},
    # Kingma & Welling 2014 (AEVB), MNIST: one hidden layer of 500 tanh units.
    "aevb": {"arch": "mlp", "hidden": (500,), "activation": "tanh", "latent_dim": 20, "likelihood": "bernoulli"},
    # pytorch/examples vae/main.py: 784-400-20, ReLU.
    "pytorch-examples": {"arch": "mlp", "hidden": (400,), "activation": "relu", "latent_dim": 20,
                         "likelihood": "bernoulli"},
}


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
            entry = get_model(d["train"]["model"])
            run = cls(from_dict(DataConfig, d["data"], where), from_dict(TrainConfig, d["train"], where),
                      from_dict(entry.config_cls, d["model"], where))
        except (KeyError, TypeError, AttributeError):
            raise VaelabError(f"{where} does not describe a vaelab run (missing data/train/model sections).") from None
        if hasattr(run.model, "levels"):
            check_levels(run.model.levels, f"{where}: the model's levels")
        check_model_size(run.train.model, run.model, f"{where}: ")
        return run


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
    entry = get_model(model_name)
    preset = values.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise VaelabError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}.")
        values = {**PRESETS[preset], **values}
        where_of.update({k: "flag" for k in PRESETS[preset] if k not in where_of})
    values = {**entry.defaults, **values}  # the model's own defaults, below everything given

    parts: dict[type, dict[str, Any]] = {DataConfig: {}, TrainConfig: {}, entry.config_cls: {}}
    for name, v in values.items():
        where = where_of.get(name, "flag")
        owner = _owner(name, entry.config_cls)
        if owner is None:
            if any(_owner(name, e.config_cls) for e in MODELS.values()):
                raise VaelabError(f"{flag_name(name)} does not apply to --model {model_name}.")
            src = "flag" if where == "flag" else where
            raise VaelabError(f"unknown {'flag ' + flag_name(name) if src == 'flag' else 'key ' + repr(name) + ' in ' + src}.")
        if not next(f for f in dataclasses.fields(owner) if f.name == name).metadata.get("flag", True):
            raise VaelabError(f"{flag_name(name)} cannot be set: it is taken from the data.")
        parts[owner][name] = coerce(owner, name, v, where)
    cfg = RunConfig(build(DataConfig, parts[DataConfig], "flags"), build(TrainConfig, parts[TrainConfig], "flags"),
                    build(entry.config_cls, parts[entry.config_cls], "flags"))
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
            net = get_model(model).model_cls(cfg)
    except (RuntimeError, TypeError) as e:  # a size no tensor can have: past int64, or negative
        why = "a size past what a tensor can hold" if "verflow" in str(e) else str(e).splitlines()[0]
        raise VaelabError(f"{where}{named} on {images} images make no {model}: {why}.") from None
    n = sum(t.numel() for t in (*net.parameters(), *net.buffers()))
    check_bytes(f"{where}{named} on {images} images make a {model} of {n:,} parameters, which at "
                f"{TRAIN_BYTES_PER_PARAMETER} bytes each to train", n * TRAIN_BYTES_PER_PARAMETER)


def check(cfg: RunConfig) -> None:
    """Cross-field checks, raised before any work starts."""
    t = cfg.train
    positive = {"epochs": t.epochs, "batch_size": t.batch_size, "iw_samples": t.iw_samples, "log_every": t.log_every,
                "max_bad_steps": t.max_bad_steps, "latent_dim": getattr(cfg.model, "latent_dim", 1)}
    for name, v in positive.items():
        if v < 1:
            raise VaelabError(f"{flag_name(name)} must be at least 1, got {v}.")
    for name in ("lr", "lr_final", "grad_clip", "time_budget"):
        v = getattr(t, name)
        if v is not None and v <= 0:
            raise VaelabError(f"{flag_name(name)} must be positive, got {v}.")
    for name in ("beta", "warmup_epochs"):
        if getattr(t, name) < 0:
            raise VaelabError(f"{flag_name(name)} must be 0 or more, got {getattr(t, name)}.")
    if t.threads is not None and t.threads < 1:
        raise VaelabError(f"--threads must be at least 1, got {t.threads}.")
    if getattr(cfg.model, "arch", None) == "mlp" and not cfg.model.hidden:
        alt = "" if t.model == "gan" else "; for none, use --arch linear"
        raise VaelabError(f"--hidden must list at least one layer size, such as "
                          f"{','.join(map(str, type(cfg.model)().hidden))}{alt}.")
    if getattr(cfg.model, "arch", None) == "conv" and not getattr(cfg.model, "channels", (1,)):
        raise VaelabError("--channels must list at least one channel count for --arch conv, e.g. 32,32,64,64.")
    if t.channels_last and getattr(cfg.model, "arch", None) != "conv":
        raise VaelabError("--channels-last applies to conv nets (--arch conv) only.")
    if t.nll_samples < 0:
        raise VaelabError(f"--nll-samples must be 0 (skip) or more, got {t.nll_samples}.")
    if t.iw_samples > 1 and (t.beta != 1.0 or t.warmup_epochs > 0):
        raise VaelabError("--beta and --warmup-epochs apply to the ELBO, not to the IWAE bound of --iw-samples > 1.")
    _check_data(cfg.data)
    m = cfg.model
    spec = known_spec(cfg.data.data)
    if spec is not None:  # the image shape is known before the data are read: refuse a net too big now
        check_model_size(t.model, dataclasses.replace(m, shape=spec.shape))
    if not get_model(t.model).has_likelihood:
        for name, default in (("beta", 1.0), ("warmup_epochs", 0.0), ("iw_samples", 1)):
            if getattr(t, name) != default:
                raise VaelabError(f"{flag_name(name)} applies to the ELBO of --model vae, not to --model {t.model}.")
    _check_unused(cfg)
    if t.model == "gan":
        if t.batch_size < 2:
            raise VaelabError("--batch-size must be at least 2 for a GAN (batch norm needs two images).")
        if m.k < 1:
            raise VaelabError(f"--k must be at least 1 (discriminator steps per generator step), got {m.k}.")
        if m.width < 1:
            raise VaelabError(f"--width must be at least 1, got {m.width}.")
        if m.d_lr is not None and m.d_lr <= 0:
            raise VaelabError(f"--d-lr must be positive, got {m.d_lr}.")
        for name in ("beta1", "momentum", "dropout"):
            if not 0 <= getattr(m, name) < 1:
                raise VaelabError(f"{flag_name(name)} must be in [0, 1), got {getattr(m, name)}.")
    if getattr(m, "l1", 0.0) < 0:
        raise VaelabError(f"--l1 must be 0 or more, got {m.l1}.")
    if getattr(m, "sparsity_weight", 0.0):
        rho = m.sparsity_target
        if rho is None or not 0 < rho < 1:
            raise VaelabError(f"--sparsity-weight needs --sparsity-target RHO with 0 < RHO < 1, got {rho}.")
        if m.code_activation != "sigmoid":
            raise VaelabError("the KL sparsity penalty needs codes in (0, 1): add --code-activation sigmoid.")
        if m.sparsity_weight < 0:
            raise VaelabError(f"--sparsity-weight must be 0 or more, got {m.sparsity_weight}.")
    if getattr(m, "corruption", None) is not None:
        from .corruption import parse_corruption
        parse_corruption(m.corruption)
    if getattr(m, "likelihood", "").startswith("logistic"):
        if cfg.data.binarize != "none":
            raise VaelabError(f"--likelihood {m.likelihood} models the grey levels: use it with --binarize none.")
        if m.mixtures < 1:
            raise VaelabError(f"--mixtures must be at least 1, got {m.mixtures}.")
    gs = getattr(cfg.model, "gaussian_std", None)
    if gs is not None and gs <= 0:
        raise VaelabError(f"--gaussian-std must be positive, got {gs}.")
    if getattr(cfg.model, "likelihood", None) == "bernoulli" and gs is not None:
        raise VaelabError("--gaussian-std applies to --likelihood gaussian, not bernoulli.")


def _check_data(d: DataConfig) -> None:
    """Reader options only where the reader takes them; sizes positive."""
    from .data.sources import SOURCES
    takes = SOURCES[d.data].options if d.data in SOURCES else ()
    defaults = DataConfig()
    for name in READER_OPTIONS:
        if getattr(d, name) != getattr(defaults, name) and name not in takes:
            users = sorted(n for n, s in SOURCES.items() if name in s.options)
            raise VaelabError(f"{flag_name(name)} applies to --data {' or '.join(users)}, not to --data {d.data}.")
    if d.data in SOURCES and d.download:
        raise VaelabError(f"--download fetches mnist and fashion-mnist; --data {d.data} reads files you provide.")
    if d.data == "binarized-mnist" and (d.val_size is not None or d.split_seed != 0):
        raise VaelabError("--data binarized-mnist has its own validation file; --val-size and --split-seed "
                          "do not apply.")
    if d.data_path is not None and d.data not in SOURCES:
        raise VaelabError(f"--data-path applies to the datasets read from a file ({', '.join(sorted(SOURCES))}); "
                          f"--data {d.data} is found through --data-dir.")
    if d.test_size is not None and d.data in ("digits", "mnist", "fashion-mnist", "cifar10", "binarized-mnist"):
        raise VaelabError(f"--test-size applies to data without an official test split; --data {d.data} has one.")
    for name in ("image_size", "crop", "test_size", "workers"):
        v = getattr(d, name)
        if v is not None and v < (0 if name == "workers" else 1):
            raise VaelabError(f"{flag_name(name)} must be at least {0 if name == 'workers' else 1}, got {v}.")
    if d.min_faces_per_person < 0:
        raise VaelabError(f"--min-faces-per-person must be 0 or more, got {d.min_faces_per_person}.")


# model options that only one setting of another option reads: (option, applies when, condition text)
_ONLY_WITH = {
    "gan": (("dropout", lambda m: m.arch == "mlp", "--arch mlp"), ("hidden", lambda m: m.arch == "mlp", "--arch mlp"),
            ("width", lambda m: m.arch == "conv", "--arch conv"),
            ("momentum", lambda m: m.optimizer == "sgd", "--optimizer sgd"),
            ("beta1", lambda m: m.optimizer == "adam", "--optimizer adam")),
    "vae": (("gaussian_std", lambda m: m.likelihood == "gaussian", "--likelihood gaussian"),
            ("mixtures", lambda m: m.likelihood == "logistic-mixture", "--likelihood logistic-mixture")),
}


def _check_unused(cfg: RunConfig) -> None:
    """An option set away from its default where nothing reads it is an error, not a no-op."""
    m = cfg.model
    default = type(m)()
    for name, applies, where in _ONLY_WITH.get(cfg.train.model, ()):
        if getattr(m, name) != getattr(default, name) and not applies(m):
            raise VaelabError(f"{flag_name(name)} applies with {where} only.")
