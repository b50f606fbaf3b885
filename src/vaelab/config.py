"""Config dataclasses and their one conversion path.

Every setting is a field of a dataclass (``DataConfig``, ``TrainConfig``, or a model's own
config such as ``VAEConfig``). A command-line flag ``--latent-dim`` and a config-file key
``latent_dim`` / ``latent-dim`` name the same field, and both go through :func:`coerce`, so
the CLI, a TOML/JSON ``--config`` file and the Python API accept exactly the same values.
Unknown keys are errors, never silently ignored.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import VaelabError, clip, did_you_mean, quote
from .registry import DEFAULT_DATA, DEFAULT_MODEL

# The most values a list setting takes (--hidden, --channels, kernel scales): a net is built
# layer by layer, so a million of them would hang the size check, not fail it.
MAX_LIST = 64


def opt(default, help: str, choices=None, flag: bool = True, metavar: str | None = None, none_word: str | None = None):
    """A config field with its help text (and allowed values) for the CLI; ``metavar`` names
    its value in the help where the type alone would not (a PATH, say); ``none_word``: a word
    the user writes for None (``--labels all``)."""
    kw = {"default_factory": (lambda d=default: d)} if isinstance(default, (list, dict)) else {"default": default}
    return field(metadata={"help": help, "choices": choices, "flag": flag, "metavar": metavar,
                           "none_word": none_word}, **kw)


# the DataConfig fields that only some readers take (each reader lists its own in data/sources.py)
READER_OPTIONS = ("key", "label_key", "shape", "layout", "examples", "image_size", "crop", "min_faces_per_person",
                  "workers")


@dataclass(frozen=True)
class DataConfig:
    data: str = opt(DEFAULT_DATA, "dataset name (see `vaelab datasets`)")
    data_dir: str | None = opt(None, "folder holding one sub-folder per dataset (else $VAELAB_DATA, else standard places)",
                               metavar="DIR")
    val_size: int | None = opt(None, "images held out of the training set for validation (default 1/12 of it)")
    split_seed: int = opt(0, "seed of the train/validation split")
    download: bool = opt(False, "download the official files (md5-checked) when not found")
    data_path: str | None = opt(None, "the file or folder to read: required by --data image-folder and array; "
                                      "for a named dataset, its archive or folder instead of <data-dir>/<name>/",
                                metavar="PATH")
    test_size: int | None = opt(None, "images held out as the test set where the data has no official one "
                                      "(default a tenth, by a fixed permutation)")
    image_size: int | None = opt(None, "resize images to this side after the crop (lfw, image-folder)")
    crop: int | None = opt(None, "side of the centred square crop, in source pixels (default: the shorter side)")
    min_faces_per_person: int = opt(0, "keep the people with at least this many images (lfw)")
    workers: int | None = opt(None, "processes decoding images (lfw, image-folder; default: up to 8)")
    key: str | None = opt(None, "the variable holding the images in an .npz or .mat file (--data array)")
    label_key: str | None = opt(None, "the variable holding the labels (--data array)")
    shape: tuple[int, ...] | None = opt(None, "H,W or H,W,C of a flat array's images (--data array)")
    layout: str = opt("hwc", "how a flat array row is an image: row-major with channels last, planar "
                             "channels (CIFAR), or column-major (MATLAB)", ("hwc", "chw", "column-major"))
    examples: str = opt("rows", "whether the array's rows or columns are the images (--data array)",
                        ("rows", "columns"))

    def reader_options(self) -> dict[str, Any]:
        """The settings :func:`vaelab.data.load_dataset` passes to a file-format reader."""
        return {n: getattr(self, n) for n in ("data_path", "test_size", *READER_OPTIONS)}


@dataclass(frozen=True)
class TrainConfig:
    model: str = opt(DEFAULT_MODEL, "model to train")
    epochs: int = opt(10, "training epochs")
    batch_size: int = opt(100, "minibatch size")
    lr: float = opt(1e-3, "Adam learning rate")
    lr_schedule: str = opt("constant", "learning-rate schedule over the epochs", ("constant", "cosine", "exponential"))
    lr_final: float | None = opt(None, "final learning rate of a schedule (default lr/10)")
    time_budget: float | None = opt(None, "stop after this many minutes of training (the schedule then runs on "
                                         "elapsed time; --epochs is the upper bound)")
    seed: int = opt(0, "random seed (weights, noise, batch order, dynamic binarization)")
    grad_clip: float | None = opt(None, "clip the gradient norm to this value")
    nll_samples: int = opt(100, "importance samples K for the test NLL at the end of training (0 = skip)")
    device: str = opt("auto", "device: auto, cpu, cuda, cuda:N", metavar="DEVICE")
    threads: int | None = opt(None, "CPU threads for torch, at most 4 a CPU (default: torch's choice; under torchrun, "
                                     "the machine's cores shared by its ranks)")
    out: str | None = opt(None, "run directory (default runs/<data>-<model>)", metavar="DIR")
    overwrite: bool = opt(False, "replace an existing run in --out")
    progress: bool = opt(True, "show a progress bar")
    log_every: int = opt(20, "steps between progress-bar updates, steps.jsonl's records and --max-bad-steps "
                             "checks (each waits for the device; nothing else does)")
    tensorboard: bool = opt(False, "also write TensorBoard event files to RUN/tensorboard/ (scalars every "
                                   "--log-every steps and every epoch, a grid of images every epoch)")
    csv: bool = opt(False, "also write metrics.jsonl's records as RUN/metrics.csv")
    labels: int | None = opt(None, "keep this many training labels, class-balanced and picked by --seed as probe "
                                   "--labels picks them, and hide the rest from the model (default: all)",
                             metavar="N|all", none_word="all")
    report: bool = opt(True, "write RUN/report.html at the end of training (about a second; vaelab report RUN "
                             "writes it at any time)")
    max_bad_steps: int = opt(100, "stop training, keeping the last good epoch's checkpoints, once this many steps in "
                                  "a row were skipped for a non-finite loss or gradient (checked every --log-every "
                                  "steps and at each epoch's end)")
    precision: str = opt("fp32", "training arithmetic: fp32, or autocast to bf16 (CPU or GPU) or fp16 (with loss "
                                 "scaling); evaluation is always fp32", ("fp32", "bf16", "fp16"))
    ema: float | None = opt(None, "evaluate and save an exponential moving average of the weights with this decay "
                                  "(e.g. 0.999), updated after every step; the trained weights are kept for resume")
    compile: bool = opt(False, "torch.compile the training objective (a one-off compile of tens of seconds; "
                               "checkpoints are the same)")
    channels_last: bool | None = opt(None, "true or false: conv nets in NHWC memory layout (unset: true on CUDA, "
                                           "false on the CPU, where it measured slower)")
    dist_timeout: float = opt(300.0, "under torchrun: seconds a rank waits for the others in a collective before "
                                     "the run stops, naming the rank (a rank that died or hung)")


@dataclass(frozen=True)
class ModelConfig:
    """What every model's config has: the image shape (from the data) and how the model wants
    the data's pixels. The data says what it is (its levels); the model says how it takes it."""
    shape: tuple[int, ...] = opt((1, 28, 28), "image shape C,H,W (taken from the data)", flag=False)
    # "auto" is settled once the data is known (vaelab.training.trainer.settle_for_data), and a
    # run's config.json holds what it became: an unset default must differ from an explicit value
    binarize: str = opt("auto", "how the model takes [0, 1] intensities: as they are (none), or binarized once "
                                "(static) or afresh at each use (dynamic); auto: none for colour images and for a "
                                "likelihood of grey levels, else dynamic", ("auto", "none", "static", "dynamic"))

    @property
    def dequantizes(self) -> bool:
        """Whether the model sees grey levels k as (k + u) / levels, u ~ U(0, 1)."""
        return False

    def check(self) -> None:
        """The config's own checks, before any data is read; a model's config extends them."""


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


@functools.cache
def field_types(cls) -> dict[str, Any]:
    """The type of each field of the config class ``cls``, resolved once per class
    (``typing.get_type_hints`` compiles every annotation again at each call: it was three
    quarters of the time a run's config.json takes to read)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# What Linux takes of a path: bytes a name may have, and a whole path. A longer one fails in the
# first stat() with ENAMETOOLONG, a traceback wherever that is (a 100 MB --out did).
NAME_MAX, PATH_MAX = 255, 4096


def check_path(flag: str, value: str | Path | None) -> None:
    """Refuse a path (``flag``'s value) that no file can have: a NUL byte, a name longer than
    :data:`NAME_MAX` bytes, or more than :data:`PATH_MAX` bytes in all."""
    if value is None:
        return
    raw = str(value).encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise VaelabError(f"{flag} {quote(str(value))} holds a NUL byte, which no path can.")
    if len(raw) > PATH_MAX or any(len(part) > NAME_MAX for part in raw.split(b"/")):
        raise VaelabError(f"{flag} {quote(str(value))} is not a path this system can hold: expected names of at "
                          f"most {NAME_MAX} bytes and {PATH_MAX} bytes in all.")


SEED_MAX = 2 ** 63 - 1  # a seed is stored and drawn from as a signed 64-bit number (torch's generators)
THREADS_PER_CPU = 4  # --threads past this many a CPU: OpenMP's threads then mostly wait for one another


def check_seed(flag: str, seed: int | None) -> None:
    """Refuse a seed (``flag``'s) outside 0..:data:`SEED_MAX`: torch's generators take none
    larger (an OverflowError deep inside), numpy's no negative one."""
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise VaelabError(f"{flag} must be a whole number from 0 to 2^63 - 1, got {seed}.")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, where the system says)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(flag: str, threads: int | None) -> None:
    """Refuse a thread count (``flag``'s) below 1 or above :data:`THREADS_PER_CPU` times the
    usable CPUs: torch takes none past 2^63 (an OverflowError), and each thread reserves a stack,
    so a thousand of them took gigabytes of address space for nothing."""
    if threads is None:
        return
    most = THREADS_PER_CPU * usable_cpus()
    if not 1 <= threads <= most:
        raise VaelabError(f"{flag} must be from 1 to {most} ({THREADS_PER_CPU} a CPU, of the {usable_cpus()} this "
                          f"process may use), got {threads}.")


def coerce(cls, name: str, value: Any, where: str) -> Any:
    """Convert ``value`` (a string from the CLI, or a TOML/JSON value) to field ``name`` of ``cls``."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    tp, optional = _unwrap_optional(field_types(cls)[name])
    what = f"{where} {flag_name(name)}" if where == "flag" else f"key '{name}' in {where}"
    words = ("", "none", "null", *((f.metadata["none_word"],) if f.metadata.get("none_word") else ()))
    if value is None or (optional and isinstance(value, str) and value.lower() in words):
        if optional:
            return None
        raise VaelabError(f"{what} needs a value.")
    try:
        if tp is bool:
            if isinstance(value, bool):
                out = value
            elif str(value).lower() in ("1", "true", "yes", "on"):
                out = True
            elif str(value).lower() in ("0", "false", "no", "off"):
                out = False
            else:
                raise ValueError
        elif tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            out = int(value)
        elif tp is float:
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
        elif tp is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            out = str(value)
        elif typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]  # int (layer sizes) or float (kernel scales)
            items = value.split(",") if isinstance(value, str) else list(value)
            if isinstance(value, str) and not value.strip():
                items = []  # "" is the empty list; "200,,200" below is a slip, not 200,200
            if any(isinstance(v, str) and not v.strip() for v in items):
                raise VaelabError(f"{what} has an empty element in {quote(value)}: expected "
                                  f"{_KINDS.get(tp, _KINDS[tuple[int, ...]])}, each after one comma.")
            if len(items) > MAX_LIST:  # a net's depth is built layer by layer: bounded before any is
                raise VaelabError(f"{what} lists {len(items):,} values; at most {MAX_LIST} are taken.")
            out = tuple(elem(str(v).strip()) for v in items)
            if any(not (math.isfinite(v) and v > 0) for v in out):
                raise ValueError
        else:  # pragma: no cover - a field type this module does not know is a bug
            raise TypeError(f"unsupported config type {tp}")
    except (ValueError, TypeError):
        raise VaelabError(f"{what} expects {_KINDS.get(tp, _KINDS[tuple[int, ...]])}, got {quote(value)}.") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise VaelabError(f"{what} must be one of {', '.join(choices)}, got {quote(out)}{did_you_mean(out, choices)}.")
    return out


_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
          tuple[float, ...]: "comma-separated positive numbers such as 0.5,1,2",
          tuple[int, ...]: "comma-separated positive integers such as 200,200"}


def build(cls, values: dict[str, Any], where: str):
    """Instantiate ``cls`` from ``values`` (already coerced), rejecting unknown keys."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise VaelabError(f"unknown key {quote(unknown[0])} in {where}{did_you_mean(unknown[0], names)}; "
                          f"expected one of {', '.join(sorted(names))}.")
    return cls(**values)


def to_dict(cfg) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def from_dict(cls, d: dict[str, Any], where: str):
    """Rebuild a config saved by :func:`to_dict` (lists back to tuples, types checked)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return build(cls, {k: coerce(cls, k, v, where) if k in names else v for k, v in d.items()}, where)


# How deep a --config file's tables may nest: vaelab's own are one deep ([train]), a run's
# config.json two ("run" then "train"); deeper is a mistake, and 2,000 deep once hit the
# interpreter's recursion limit instead of a sentence.
MAX_TABLE_DEPTH = 4


def load_config_doc(path: str | Path, what: str = "--config file") -> dict[str, Any]:
    """The table a TOML or JSON file of settings holds, its nesting bounded by :data:`MAX_TABLE_DEPTH`."""
    p = Path(path)
    name = f"{what} {clip(path)}"
    try:
        raw = p.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise VaelabError(f"cannot read {name}: {getattr(e, 'strerror', None) or e}.") from None
    suffix = p.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise VaelabError(f"{name} must end in .toml or .json.")
    try:
        if suffix == ".json":
            data = json.loads(raw.decode("utf-8"))
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(raw.decode("utf-8"))
    except RecursionError:  # a parser's own recursion, on values nested thousands deep
        raise VaelabError(f"{name} nests its values thousands deep: expected tables at most "
                          f"{MAX_TABLE_DEPTH} deep, such as [train].") from None
    except Exception as e:  # json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError
        raise VaelabError(f"{name} is not valid {suffix[1:].upper()}: {clip(e)}.") from None
    if not isinstance(data, dict):
        raise VaelabError(f"{name} must hold a table of settings.")
    return data


def flatten(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """A file's tables (e.g. ``[train]``) flattened into one dict of field names (dashes become
    underscores), since every field name is unique across the config classes. The same setting
    twice (``epochs`` beside ``[train] epochs``, or ``latent-dim`` beside ``latent_dim``) is
    refused: which one wins would be a guess. Walked without recursion, and no deeper than
    :data:`MAX_TABLE_DEPTH`."""
    flat: dict[str, Any] = {}
    at: dict[str, str] = {}  # each key's dotted place in the file, for the message of a second one
    todo = [((), doc)]
    while todo:
        path, table = todo.pop()
        if len(path) > MAX_TABLE_DEPTH:
            raise VaelabError(f"{where} nests tables {quote('.'.join(path[:MAX_TABLE_DEPTH + 1]) + '...')} deeper "
                              f"than {MAX_TABLE_DEPTH}: expected settings at the top or in tables such as [train].")
        for k, v in table.items():
            if isinstance(v, dict):
                todo.append(((*path, str(k)), v))
                continue
            name, place = str(k).replace("-", "_"), ".".join((*path, str(k)))
            if name in flat:
                first, second = sorted((at[name], place))
                raise VaelabError(f"{where} sets {quote(name)} twice, as {quote(first)} and {quote(second)}: "
                                  "keep one.")
            flat[name], at[name] = v, place
    return flat
