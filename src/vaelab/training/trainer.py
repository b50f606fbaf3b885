"""The training loop: data in, checkpoints, metrics and pictures out. It knows no model: it
hands each step's minibatch(es) and a :class:`~vaelab.models.base.StepInfo` to the model's
step protocol, applies the losses it yields through :mod:`vaelab.training.update`, and owns the
schedule, validation, checkpoints and resume.

Under torchrun (``torchrun --nproc-per-node N -m vaelab train ...``) every rank runs this loop
on its part of each global minibatch (:class:`~vaelab.data.transforms.Batches`), the update
path averages the gradients (:mod:`vaelab.training.update`), the epoch's sums and validation
scores are summed over the ranks, and rank 0 alone writes the run directory and the log; every
decision (an epoch's best, a dropped step, divergence) is then the same on every rank."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed as dist
from ..io import (all_or_nothing, lock_run, remove_temporaries, run_subfolder, save_weights,
                  write_json)
from ..version import __version__
from ..config import TrainConfig
from ..data import Batch, DataSpec, run_dataset
from ..data.labels import balanced_subset
from ..data.transforms import Batches, dequantize_fixed, eval_inputs
from ..errors import VaelabError, clip
from ..models import get_model
from ..models.base import SAMPLE, StepInfo
from ..run import RunConfig, check_model_size
from ..loading import resolve_device
from ..rundir import (CHECKPOINTS, CONFIG, FORMAT_VERSION, RESUME, RUN_FILES, RUN_PATTERNS, SUBFOLDERS,
                      finished_epochs, read_run_config, report_done, run_entries)
from . import checkpoint as ckpt
from .ema import EMA
from .loggers import Logger, run_loggers, tensorboard_writer_class
from .update import FastPaths, make_scalers, take_step

# What may change when a run is resumed: how long it trains and where it runs and finds its
# data, never what it computes.
RESUMABLE = {"train": ("epochs", "progress", "device", "threads", "log_every", "compile", "channels_last",
                       "max_bad_steps", "dist_timeout", "tensorboard", "csv", "report"),
             "data": ("data_dir", "data_path", "workers")}

def uses_channels_last(t: TrainConfig, model: torch.nn.Module, device: torch.device) -> bool:
    """--channels-last, by default on for conv nets on CUDA (where cuDNN's NHWC kernels are the
    fast ones) and off on the CPU (measured slower there for vaelab's conv VAE)."""
    has_conv = any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())
    wanted = t.channels_last if t.channels_last is not None else device.type == "cuda"
    return bool(wanted and has_conv)


def _has_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):  # native bf16 (compute capability 8+), not emulated
        return torch.cuda.is_bf16_supported(including_emulation=False)


def _steps(batches, per_step: int):
    """The epoch's minibatches, one per step, or in lists of ``per_step`` (a GAN's k
    discriminator minibatches); a last incomplete group is dropped."""
    if per_step == 1:
        yield from batches
        return
    group = []
    for xb in batches:
        group.append(xb)
        if len(group) == per_step:
            yield group
            group = []


def labelled_mask(t: TrainConfig, ds) -> torch.Tensor | None:
    """Which training labels the run may use ([N] bool): ``--labels N`` keeps the class-balanced
    subset that ``probe --labels N`` picks for the same seed, and hides the rest; None: all."""
    if t.labels is None:
        return None
    keep = torch.zeros(len(ds.train), dtype=torch.bool)
    keep[balanced_subset(ds.train.y, t.labels, ds.spec.num_classes, t.seed)] = True
    return keep


def learning_rate(t: TrainConfig, epoch: int, elapsed: float = 0.0) -> float:
    """The learning rate of epoch ``epoch`` (0-based): a pure function, so resume needs no
    scheduler state. With a time budget, progress is the fraction of it spent (``elapsed``
    seconds), so the schedule ends when the budget does."""
    final = t.lr_final if t.lr_final is not None else t.lr / 10
    if t.time_budget:
        frac = min(1.0, elapsed / (60 * t.time_budget))
    else:
        frac = epoch / max(1, t.epochs - 1)
    if t.lr_schedule == "cosine":
        return final + (t.lr - final) * 0.5 * (1 + math.cos(math.pi * frac))
    if t.lr_schedule == "exponential":
        return t.lr * (final / t.lr) ** frac
    return t.lr


def default_out(run: RunConfig) -> Path:
    return Path("runs") / f"{run.data.data}-{run.train.model}"


def run_dir(run: RunConfig, resume: str | Path | None = None) -> Path:
    """Where :func:`train` writes: the run resumed, else --out, else runs/<data>-<model>."""
    return Path(resume) if resume is not None else Path(run.train.out) if run.train.out else default_out(run)


def _prepare_out(out: Path, overwrite: bool, hold: contextlib.ExitStack) -> None:
    if out.exists() and not out.is_dir():
        raise VaelabError(f"--out {out} is a file, not a directory.")
    replace = out.is_dir() and (out / CONFIG).exists()
    if replace and not overwrite:
        raise VaelabError(f"--out {out} already holds a run: pass --resume {out} to continue it, "
                          "--overwrite to replace it, or another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaelabError(f"cannot create the run directory --out {out}: {e.strerror or e}.") from None
    hold.enter_context(lock_run(out))  # before anything is deleted: the run may be another's
    _remove_temporaries(out)
    _check_subfolders(out)
    if replace:
        found = run_entries(out)
        folder = next((p for p in found if p.is_dir() and not p.is_symlink()), None)
        if folder is not None:  # checked before anything is deleted
            raise VaelabError(f"--overwrite cannot replace {clip(folder)}: it is a folder where the run keeps a file; "
                              "move it away first.")
        for p in found:
            p.unlink(missing_ok=True)


def _check_subfolders(out: Path) -> None:
    """Refuse a run whose sub-folders (a GAN's progress/, samplers/) are links out of it before
    anything is deleted or written: neither --overwrite's deletions nor the pictures go through."""
    for name in SUBFOLDERS:
        run_subfolder(out / name, create=False)


def _remove_temporaries(out: Path) -> None:
    remove_temporaries(out, RUN_FILES + RUN_PATTERNS)


def _out_of_memory(out: Path, device: torch.device, batch_size: int, step: int, kept: int,
                   e: BaseException) -> VaelabError:
    """A training step that ran out of the device's memory (a GPU's allocator raises
    ``torch.OutOfMemoryError``): the advice is a smaller minibatch, and what the run keeps."""
    keep = (f"{out} keeps the checkpoints of epoch {kept}" if kept else f"{out} holds no checkpoint yet")
    smaller = (f"--batch-size {batch_size // 2}, or a smaller model (--hidden, --latent-dim)" if batch_size > 1 else
               "a smaller model (--hidden, --latent-dim)")
    what = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
    return VaelabError(f"training ran out of memory on {device} at step {step + 1}, with --batch-size {batch_size} "
                       f"({clip(what, 200)}); {keep}; try {smaller}.")


def _diverged(out: Path, what: str, lr: float, kept: int) -> VaelabError:
    keep = (f"{out} keeps the checkpoints of epoch {kept}, the last good one" if kept else
            f"no epoch ended with finite values, so {out} holds no checkpoint")
    # decided on figures summed over the ranks: every rank raises it, rank 0 says it
    return dist.alike(VaelabError(f"training diverged: {what}; {keep}; try a lower --lr (the rate was {lr:g})."))


class _BadSteps:
    """The steps dropped for a non-finite loss or gradient: each step leaves its flag on the
    device (``flags[i]``), and the host reads them only at the checks, so no step waits."""

    def __init__(self, limit: int):
        self.limit, self.run = limit, 0  # the dropped steps in a row so far, across epochs

    def new_epoch(self, n_steps: int, device: torch.device, first_step: int) -> None:
        self.flags = torch.zeros(n_steps, dtype=torch.bool, device=device)
        self.read = self.skipped = 0
        self.first_step = first_step  # the run's step count before the epoch

    def check(self, upto: int) -> int | None:
        """Read the flags of the epoch's steps up to ``upto``: the run's step (1-based) that
        made ``limit`` dropped steps in a row, if one did."""
        for i, dropped in enumerate(self.flags[self.read:upto].tolist(), self.read):
            self.run = self.run + 1 if dropped else 0
            self.skipped += dropped
            if self.run >= self.limit:
                return self.first_step + i + 1
        self.read = upto
        return None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _validation_scores(measured, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """``measured.validation`` of each image of ``x`` (labels ``y``, or None), [len(x)], in
    chunks of 1000."""
    with torch.no_grad():
        return torch.cat([measured.validation(Batch(x[i:i + 1000], None if y is None else y[i:i + 1000]))
                          for i in range(0, len(x), 1000)])


def _sum_over_ranks(sums: dict[str, torch.Tensor], seconds: float, measured, x_val: torch.Tensor,
                    y_val: torch.Tensor | None, n_val: int) -> tuple[dict[str, torch.Tensor], float, float | None]:
    """Under torchrun: the epoch's training sums (each step's metrics weighted by this rank's
    share of its minibatch), this rank's seconds and its part of the validation set's scores,
    summed over the ranks in one collective, in float64. Returns the sums, the ranks' mean
    seconds (one figure on every rank: a time budget and the schedule read it) and the mean
    validation score over all ``n_val`` images (None without a validation set)."""
    dev = next(iter(sums.values())).device
    scores = _validation_scores(measured, x_val, y_val) if len(x_val) else torch.zeros(0, device=dev)
    keys = sorted(sums)
    packed = torch.stack([sums[k].double() for k in keys] +
                         [torch.tensor(seconds, dtype=torch.float64, device=dev), scores.double().sum().to(dev)])
    dist.all_reduce_(packed)
    return (dict(zip(keys, packed[:len(keys)])), packed[len(keys)].item() / dist.world_size(),
            packed[-1].item() / n_val if n_val else None)


def _rng_states(device: torch.device, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """What resume restores of the random streams: the data generator (the same on every rank)
    and each rank's torch (and CUDA) state, rank r > 0's under ``torch.rank<r>``, names a
    single process ignores."""
    own = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    rng = {**own, "data": gen.get_state()}
    if dist.active():
        for r, states in enumerate(dist.all_gather_object(own)[1:], 1):
            rng.update({f"{k}.rank{r}": v for k, v in states.items()})
    return rng


def _restore_rng(rng: dict[str, torch.Tensor], device: torch.device, seed: int, epoch: int) -> None:
    """This rank's streams from a resume file; a rank the run did not have (a one-process run
    resumed under torchrun) starts one derived from the seed and the epoch it resumes at."""
    r = dist.rank()
    own = "" if r == 0 else f".rank{r}"
    if f"torch{own}" in rng:
        torch.set_rng_state(rng[f"torch{own}"])
    else:
        torch.manual_seed(dist.rank_seed(seed, r, epoch))
    if device.type == "cuda" and f"cuda{own}" in rng:
        torch.cuda.set_rng_state(rng[f"cuda{own}"], device)


def settle_for_data(cfg, spec: DataSpec):
    """The model config ``cfg`` fitted to data of ``spec``: its image shape, pixel levels and
    number of classes (where it has such fields) taken from the data, and the settings left to it (``auto``) chosen. Returns the config and
    one line saying what was chosen and why (None: nothing was left to choose).

    A config that decides for itself (``settled()``: a model with a likelihood, which picks it
    and its binarization together) does; any other's --binarize auto is none for colour images
    (:attr:`~vaelab.data.DataSpec.colour`), whose levels binarizing would throw away, and dynamic
    for the rest, the lecture's default."""
    names = {f.name for f in dataclasses.fields(cfg)}
    from_data = {"shape": tuple(spec.shape), "levels": spec.levels, "num_classes": spec.num_classes}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in from_data.items() if k in names})
    if hasattr(cfg, "settled"):
        return cfg.settled()
    if getattr(cfg, "binarize", None) != "auto":
        return cfg, None
    binarize = "none" if spec.colour else "dynamic"
    why = (f"the images are in colour ({spec.shape[0]} channels, {spec.levels} levels)" if spec.colour else
           f"the images are {'single-channel' if spec.shape[0] == 1 else 'binary'} ({spec.shape[0]} channel"
           f"{'s' if spec.shape[0] > 1 else ''}, {spec.levels} levels)")
    return dataclasses.replace(cfg, binarize=binarize), f"--binarize {binarize}: {why}; --binarize chooses another."


def on_data_scale(rec: dict, model, val_name: str) -> dict:
    """An epoch's record ``rec`` with its figures in nats per example of the data's discrete
    pixels, the scale ``vaelab eval`` reports: a model on dequantized pixels says what to add to
    which of its metrics (``data_scale()``: D log(levels), its density on (k + u) / levels being
    that much above the log-probability of the image it bounds); the others' are on it already."""
    shift = model.data_scale() if hasattr(model, "data_scale") else {}
    if not shift:
        return rec
    out = dict(rec)
    for key, name in [("train_loss", "loss"), ("val", val_name),
                      *((k, k[len("train_"):]) for k in rec if k.startswith("train_") and k != "train_loss")]:
        if key in out and name in shift:
            out[key] = out[key] + shift[name]
    return out


def start_from_data(model, x: torch.Tensor, levels: int, seed: int, device: torch.device) -> None:
    """A fresh run's :meth:`~vaelab.models.base.Model.init_from_data`: min(``model.data_init``,
    len(x)) of the images ``x`` (uint8, ``levels`` levels) as pixels in [0, 1], drawn by a
    generator of their own (seed + 2), so the batches' stream is untouched; the same on every rank."""
    if model.data_init:
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 2))[:model.data_init]
        model.init_from_data(eval_inputs(x[pick], levels, "none").to(device))


def _resumed_settings(run: RunConfig, resume) -> tuple[RunConfig, str | None]:
    """The settings to train with: ``run``'s, or for a resumed run its own but the fields of
    :data:`RESUMABLE`, taken from ``run``; and where a resumed run found its data (looked at first,
    unless the data flags moved it)."""
    if resume is None:
        return run, None
    old_doc = dist.together(lambda: read_run_config(Path(resume)))
    old = dist.together(lambda: RunConfig.from_dict(old_doc["run"], f"{resume}/{CONFIG}"))
    run = dataclasses.replace(old, **{
        part: dataclasses.replace(getattr(old, part), **{f: getattr(getattr(run, part), f) for f in fields})
        for part, fields in RESUMABLE.items()})
    same_place = (run.data.data_dir, run.data.data_path) == (old.data.data_dir, old.data.data_path)
    return run, old_doc.get("data_source") if same_place else None


def _fitted_to_data(run: RunConfig, resume, found_at, device: torch.device):
    """The run's data, read on every rank (rank 0 first: what it downloads the others then find),
    and the run with its model config fitted to it (:func:`settle_for_data`), checked against it
    on every rank; and the line saying what the data chose (None: nothing)."""
    t, d = run.train, run.data
    model_cls = get_model(t.model)

    def check_bf16():  # each rank its own GPU: together() says which fails, once
        if not _has_bf16(device):
            raise VaelabError(f"--precision bf16 needs a GPU with bfloat16 support; {device} has none: use fp16.")
    if t.precision == "bf16" and device.type == "cuda":
        dist.together(check_bf16)

    def load():
        return run_dataset(d, found_at=found_at, download=d.download, defer_cache=True)
    ds = dist.together(load, main_only=True)
    ds = dist.together(lambda: load() if ds is None else ds)
    # what the model takes from the data: its image shape (and pixel levels, where it has them),
    # and what it left to the data to decide (a resumed run's config.json holds its choices)
    model_cfg, chosen = settle_for_data(run.model, ds.spec)
    if hasattr(model_cfg, "settled_on_images"):  # a config that reads training images to decide (M1+M2)
        model_cfg, more = model_cfg.settled_on_images(lambda n: eval_inputs(ds.train.x[:n], ds.spec.levels, "none"))
        chosen = " ".join(line for line in (chosen, more) if line) or None

    def check_data():  # against the data each rank read: through together(), one message
        if resume is not None and tuple(run.model.shape) != tuple(ds.spec.shape):
            raise VaelabError(f"--resume {resume}: the run was trained on images of shape {run.model.shape}, "
                              f"but {d.data} has {ds.spec.shape}.")
        if resume is not None and getattr(run.model, "levels", ds.spec.levels) != ds.spec.levels:
            raise VaelabError(f"--resume {resume}: the run was trained on {run.model.levels} pixel levels, "
                              f"but {d.data} now has {ds.spec.levels}.")
        if t.batch_size > len(ds.train):
            raise VaelabError(f"--batch-size {t.batch_size} is larger than the training set "
                              f"({len(ds.train)} images).")
        model_cls.check_batch(t.batch_size, dist.world_size())  # each rank's part of it
        if model_cls.needs_labels and ds.spec.num_classes < 2:
            raise VaelabError(f"--model {t.model} learns from class labels, and {d.data} has none: give it "
                              "labelled data (a dataset with classes, or a folder of class sub-folders).")
        if model_cls.needs_labels and not model_cls.labelled_part and t.labels is not None:
            raise VaelabError(f"--labels {t.labels}: --model {t.model} learns from labelled images only, so it "
                              "needs every label; a model that learns from a few (m2) takes --labels.")
        check_model_size(t.model, model_cfg, batch_size=-(-t.batch_size // dist.world_size()))  # a rank's part
    dist.together(check_data)
    return ds, dataclasses.replace(run, model=model_cfg), chosen


def _write_config(out: Path, run: RunConfig, ds) -> None:
    # where the data was found, absolute, so that later commands find it again from anywhere
    # (loading.split_inputs); the bundled digits' source is no path
    source = ds.source if not Path(ds.source).exists() else str(Path(ds.source).absolute())
    config_doc = {"format_version": FORMAT_VERSION, "vaelab_version": __version__,
                  "run": run.to_dict(), "data_spec": ds.spec.to_dict(), "data_source": source}

    def write():
        ds.keep_cache()  # the arguments passed: a later run may skip the decoding
        write_json(out / CONFIG, config_doc)
    dist.together(write, main_only=True)


class _Loop:
    """What the loop carries from epoch to epoch: the model, its optimizers (and weight average,
    loss scalers), the batches, the validation images, the step count, the history and the best
    score; and the loggers that receive what it measures."""

    def __init__(self, run: RunConfig, ds, device: torch.device, resume, log):
        t, cfg = run.train, run.model
        self.t, self.ds, self.device, self.log = t, ds, device, log
        self.model_cls = model_cls = get_model(t.model)
        torch.manual_seed(t.seed)
        model = model_cls(cfg).to(device)
        if resume is None:
            start_from_data(model, ds.train.x, ds.spec.levels, t.seed, device)
        if dist.rank():  # rank 0 keeps one process's noise; the others draw their own, reproducibly
            torch.manual_seed(dist.rank_seed(t.seed, dist.rank()))
        self.channels_last = uses_channels_last(t, model, device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizers = model.optimizers(t)
        self.ema = EMA(model, t.ema) if t.ema else None
        self.measured = self.ema.model if self.ema else model  # what validation, the checkpoints and the pictures see
        self.scalers = make_scalers(t.precision, device.type, self.optimizers)
        self.gen = torch.Generator().manual_seed(t.seed + 1)  # batch order and dynamic binarization
        # how the model takes the data's pixels: its own binarization or dequantization
        binarize, deq = cfg.binarize, cfg.dequantizes
        # the labels ride along where the data has classes (a model that ignores them reads batch.x)
        self.batches = Batches(ds.train.x, ds.spec.levels, binarize, t.batch_size, self.gen, device, dequantize=deq,
                               drop_last=model_cls.drop_last,
                               shard=(dist.rank(), dist.world_size()) if dist.active() else None,
                               y=ds.train.y if ds.spec.num_classes >= 2 else None, labelled=labelled_mask(t, ds),
                               with_labelled=model_cls.labelled_part)
        self.shares = self.batches.shares()  # (this rank's images, the global minibatch's) of each minibatch
        x_val = eval_inputs(ds.val.x, ds.spec.levels, binarize).to(device)
        self.x_val = dequantize_fixed(x_val, ds.spec.levels) if deq else x_val
        self.x_val_part = self.x_val[dist.shard(len(self.x_val))]  # what this rank scores of it
        # the validation images' labels, all shown (a model that ignores them reads batch.x)
        self.y_val = ds.val.y.to(device) if ds.spec.num_classes >= 2 else None
        self.y_val_part = None if self.y_val is None else self.y_val[dist.shard(len(self.x_val))]
        self.per_step = per_step = model.batches_per_step
        if len(self.batches) < per_step:
            raise dist.alike(VaelabError(f"--model {t.model} takes {per_step} minibatches a step, but the training "
                                         f"set makes {len(self.batches)} of --batch-size {t.batch_size}."))
        # a step's minibatches take one share of the global minibatch (StepInfo.shard): whole ones
        assert per_step == 1 or model_cls.drop_last, f"{model_cls.__name__} takes {per_step} minibatches a step: " \
            "it must set drop_last, so that they are all whole"
        self.start_epoch, self.step, self.history, self.best = 0, 0, [], -math.inf
        self.bad = _BadSteps(t.max_bad_steps)
        self.loggers: Logger = Logger()

    def restore(self, out: Path, hold: contextlib.ExitStack) -> bool:
        """Take up the run in ``out`` where its resume file left it; True where every epoch is
        trained already (killed before its final evaluation, which vaelab.api.train finishes)."""
        t, ema = self.t, self.ema

        def claim():
            hold.enter_context(lock_run(out, "--resume"))
            _remove_temporaries(out)
            _check_subfolders(out)
            if not (out / RESUME).exists():
                raise VaelabError(f"--resume {out}: no finished epoch to resume from ({RESUME} is missing).")

        def read():  # on every rank: the run directory is shared
            rng, loop = ckpt.load_resume(out / RESUME, self.model, self.optimizers, self.measured if ema else None)
            ckpt.check_loop(out / RESUME, loop)
            return rng, loop
        dist.together(claim, main_only=True)
        rng, loop = dist.together(read)
        _restore_rng(rng, self.device, t.seed, loop["epoch"])
        self.gen.set_state(rng["data"])
        self.start_epoch, self.step, self.history, self.best = (loop["epoch"], loop["global_step"], loop["history"],
                                                                loop["best"])
        self.bad.run = loop.get("bad_run", 0)
        if ema:
            ema.updates = loop.get("ema_updates", 0)
        for name, state in loop.get("scalers", {}).items():
            self.scalers[name].load_state_dict(state)
        # finished: its epochs, evaluation, pictures and (where it makes one) its report are all there; a
        # run killed while its report was being written is finished again, page and all
        if self.start_epoch >= t.epochs and finished_epochs(out) == self.start_epoch and (
                not t.report or report_done(out)):
            raise dist.alike(VaelabError(f"--resume {out}: the run already finished {self.start_epoch} epochs and "
                                         f"its final evaluation; pass --epochs larger than {self.start_epoch} to "
                                         "continue it."))
        if self.start_epoch >= t.epochs:
            self.log(f"resuming {out}: its {self.start_epoch} epochs are trained; finishing its evaluation and "
                     "pictures")
            return True
        self.log(f"resuming {out} at epoch {self.start_epoch + 1}/{t.epochs}")
        return False

    def start(self, out: Path, hold: contextlib.ExitStack, resumed: bool) -> None:
        """The same model on every rank, the loggers (rank 0's) and the update path's settings."""
        t, model, measured = self.t, self.model, self.measured
        self.out = out
        if dist.active():  # one model on every rank from the start, whatever each built or read
            dist.broadcast_([*model.parameters(), *model.buffers(), *(measured.parameters() if self.ema else ()),
                             *(measured.buffers() if self.ema else ())])
        # who receives what the loop measures (rank 0's): metrics.jsonl, steps.jsonl, the progress
        # grids, TensorBoard, CSV (vaelab.training.loggers); a resumed run's cut back to its resume
        # file (a --tensorboard without its package stops every rank, rank 0 saying why)
        self.loggers = dist.together(lambda: run_loggers(out, t, (self.start_epoch, self.step) if resumed else None,
                                                         model.can(SAMPLE)), main_only=True) or Logger()
        hold.callback(self.loggers.close)
        self.fast = FastPaths(precision=t.precision, device_type=self.device.type, compile=t.compile,
                              channels_last=self.channels_last, grad_clip=t.grad_clip, scalers=self.scalers)

    def _check_bad_steps(self, upto: int, lr: float) -> None:
        last = self.bad.check(upto)
        if last is not None:
            n = self.t.max_bad_steps
            raise _diverged(self.out, f"steps {last - n + 1} to {last} ({n} in a row, --max-bad-steps) had a "
                                      "non-finite loss or gradient", lr, len(self.history))

    def train_steps(self, epoch: int, lr: float) -> tuple[dict[str, torch.Tensor], int, float]:
        """One epoch's steps: the sums of their metrics (on the device, each rank's share of its
        minibatch; a dropped step's left out), the steps and the seconds they took."""
        t, model, per_step = self.t, self.model, self.per_step
        for opt in self.optimizers.values():  # each group's own rate (a GAN's players), scheduled alike
            for g in opt.param_groups:
                g["lr"] = g.get("base_lr", t.lr) * lr / t.lr
        model.train()
        # the sums stay on the device: a step never waits for the host, except at the checks
        # every --log-every steps (the bar's loss, the logged step, the dropped steps)
        sums: dict[str, torch.Tensor] = {}
        n_steps = len(self.batches) // per_step
        self.bad.new_epoch(n_steps, self.device, self.step)
        t0 = time.perf_counter()
        bar = tqdm(_steps(self.batches, per_step), total=n_steps, desc=f"epoch {epoch + 1}/{t.epochs}",
                   leave=False, disable=not t.progress or not dist.is_main() or None, file=sys.stderr)
        for i, xb in enumerate(bar):
            # a step of several minibatches (a GAN's k) takes its last one's share: all whole (drop_last)
            share = self.shares[(i + 1) * per_step - 1] if dist.active() else None
            info = StepInfo(epoch, self.step, n_steps, len(self.ds.train), self.fast.compiled, share,
                             self.t.labels)
            try:
                m = take_step(model, self.optimizers, xb, info, self.fast)
            except torch.cuda.OutOfMemoryError as e:  # torch.OutOfMemoryError from torch 2.5
                raise _out_of_memory(self.out, self.device, t.batch_size, self.step, len(self.history), e) from None
            self.step += 1
            dropped = m.pop("skipped").bool()
            if self.ema:
                self.ema.update(dropped.float())
            self.bad.flags[i] = dropped
            for k, v in m.items():  # a dropped step's metrics (NaN, maybe) are left out
                if share:  # this rank's part of the global minibatch's mean (none for a stand-in)
                    v = v * (share[0] / share[1]) if share[0] else torch.zeros_like(v)
                sums[k] = sums.get(k, 0.0) + torch.where(dropped, 0.0, v)
            if i % t.log_every == 0:
                if not bar.disable:
                    bar.set_postfix(loss=f"{m['loss'].item():.2f}")
                if dist.is_main():
                    self.loggers.steps(self.step, epoch + 1, {"lr": lr, **{k: v.item() for k, v in m.items()}})
                self._check_bad_steps(i + 1, lr)
        self._check_bad_steps(n_steps, lr)
        return sums, n_steps, time.perf_counter() - t0

    def end_epoch(self, epoch: int, lr: float, sums: dict[str, torch.Tensor], n_steps: int, seconds: float) -> None:
        """Validate, log and keep the epoch: its record, checked for divergence, then its
        checkpoints and logs, written together."""
        cls, measured = self.model_cls, self.measured
        n_skipped = self.bad.skipped
        taken = n_steps - n_skipped
        self.model.eval()
        val = None
        if dist.active():
            sums, seconds, val = _sum_over_ranks(sums, seconds, measured, self.x_val_part, self.y_val_part,
                                                 len(self.x_val))
        elif len(self.x_val):
            val = _validation_scores(measured, self.x_val, self.y_val).mean().item()
        rec = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 3), "skipped_steps": n_skipped,
               "train_loss": (sums["loss"] / taken).item() if taken else float("nan")}
        rec.update({f"train_{k}": (v / taken).item() for k, v in sums.items() if k != "loss"})
        if len(self.x_val):
            rec["val"] = val
            rec["val_name"] = cls.val_name
        if cls.epoch_metrics and len(self.x_val) and self.y_val is not None:  # rank 0's, sent to all
            extra = dist.from_main(measured.metrics, Batch(self.x_val, self.y_val))
            rec.update({f"val_{k}": v for k, v in extra.items()})
        # without a validation set, the training score of the same quantity (not the loss,
        # which carries beta and the warm-up weight)
        metric = rec.get("val", rec.get(f"train_{cls.val_name}"))
        if cls.higher_is_better is None:  # no ranking of epochs: the best is the latest
            score = float(epoch + 1)
        elif metric is None:  # e.g. the IWAE bound is trained: its loss is the bound's negative
            score = -rec["train_loss"]
        else:
            score = metric if cls.higher_is_better else -metric
        # the same figures on the data's scale, as eval reports them; the score stays on the
        # model's own, so that a run resumed from an older vaelab ranks its epochs alike
        rec = on_data_scale(rec, self.model, cls.val_name)
        val_txt = f", val {cls.val_name} {rec['val']:.3f}" if "val" in rec else ""
        if "val_classifier_accuracy" in rec:
            val_txt += f", val accuracy {rec['val_classifier_accuracy']:.4f}"
        skip_txt = f", {n_skipped} of {n_steps} steps skipped (non-finite loss or gradient)" if n_skipped else ""
        self.log(f"epoch {epoch + 1}/{self.t.epochs}: train loss {rec['train_loss']:.3f}{val_txt}{skip_txt} "
                 f"({seconds:.1f}s)")
        if not all(math.isfinite(v) for v in (score, rec["train_loss"], metric or 0.0)):
            # not saved: the checkpoints stay the last good epoch's
            what = (f"every step of epoch {epoch + 1} had a non-finite loss or gradient" if not taken else
                    f"epoch {epoch + 1} ended at step {self.step} with a non-finite "
                    f"{'validation ' + cls.val_name if 'val' in rec else 'training loss'}")
            raise _diverged(self.out, what, lr, len(self.history))
        self.history.append(rec)
        improved = score > self.best
        self.best = max(self.best, score)
        rng = _rng_states(self.device, self.gen)
        dist.together(lambda: self._save(epoch, rec, improved, rng), main_only=True)  # the others wait for the files

    def _save(self, epoch: int, rec: dict, improved: bool, rng: dict) -> None:
        out, measured, ema = self.out, self.measured, self.ema
        # the checkpoints and logs move to this epoch together or not at all: a write that fails
        # (a full disk) leaves the last epoch's set whole, resumable and consistent
        kept = (f"the checkpoints and metrics of epoch {epoch} are intact (--resume continues from there)"
                if epoch else "no checkpoint was written")
        with all_or_nothing(kept):
            save_weights(measured, out / CHECKPOINTS["last"], {"epoch": epoch + 1})
            if improved:
                save_weights(measured, out / CHECKPOINTS["best"], {"epoch": epoch + 1})
            ckpt.save_resume(out / RESUME, self.model, self.optimizers, rng,
                             {"epoch": epoch + 1, "global_step": self.step, "history": self.history,
                              "best": self.best, "bad_run": self.bad.run,
                              **({"ema_updates": ema.updates} if ema else {}),
                              "scalers": {name: s.state_dict() for name, s in self.scalers.items()}},
                             measured if ema else None)
            self.loggers.epoch(rec, self.history, self.step)
        grid = measured.epoch_grid() if self.loggers.wants_images else None
        if grid is not None:
            self.loggers.images(epoch + 1, self.step, "samples", grid)


def train(run: RunConfig, resume: str | Path | None = None, log=_log,
          hold: contextlib.ExitStack | None = None) -> Path:
    """Train ``run`` (or continue the run in ``resume``) and return its run directory.

    The run directory receives config.json, the checkpoints and the logs (evaluation, pictures
    and the report are :func:`vaelab.api.train`'s). On resume, the run's own settings are used
    except the fields in :data:`RESUMABLE`, which are taken from ``run``. The run directory is
    locked (:func:`vaelab.io.lock_run`) until ``hold`` closes (without one, until this returns).

    Training stops with a VaelabError when ``--max-bad-steps`` steps in a row were dropped
    for a non-finite loss or gradient (checked every ``--log-every`` steps and at the end of
    each epoch, so the host never waits for a step in between), or when an epoch ends with a
    non-finite score; that epoch is not saved, so the checkpoints are the last good epoch's.
    """
    if hold is None:
        with contextlib.ExitStack() as hold:
            return train(run, resume, log, hold)
    # under torchrun: join the ranks (the device, the timeout and the threads may change on a
    # resume, so they are this call's); every rank computes, rank 0 alone writes and logs
    device = dist.setup(resolve_device(run.train.device), run.train.dist_timeout, run.train.threads)
    if not dist.is_main():
        log = lambda msg: None  # noqa: E731
    run, found_at = _resumed_settings(run, resume)
    ds, run, chosen = _fitted_to_data(run, resume, found_at, device)
    t = run.train
    if t.tensorboard:
        tensorboard_writer_class()  # a missing package is said before anything is written
    loop = _Loop(run, ds, device, resume, log)
    out = run_dir(run, resume)
    if resume is not None:
        if loop.restore(out, hold):
            return out
    else:
        dist.together(lambda: _prepare_out(out, t.overwrite, hold), main_only=True)
    _write_config(out, run, ds)
    loop.start(out, hold, resumed=resume is not None)
    if loop.start_epoch == 0:
        if chosen:
            log(chosen)
        n_params = sum(p.numel() for p in loop.model.parameters())
        log(f"training {t.model} ({n_params:,} parameters) on {run.data.data} "
            f"({len(ds.train)} train / {len(ds.val)} val) on "
            f"{f'{dist.world_size()} ranks ({device.type})' if dist.active() else device} -> {out}")
    for epoch in range(loop.start_epoch, t.epochs):
        elapsed = sum(h["seconds"] for h in loop.history)
        if t.time_budget and elapsed >= 60 * t.time_budget:
            log(f"time budget of {t.time_budget:g} min spent after {epoch} epochs")
            break
        lr = learning_rate(t, epoch, elapsed)
        sums, n_steps, seconds = loop.train_steps(epoch, lr)
        loop.end_epoch(epoch, lr, sums, n_steps, seconds)
    return out
