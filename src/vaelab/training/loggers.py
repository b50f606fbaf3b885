"""What the training loop measures, and who receives it: the loop calls every logger of a run
through one seam (:class:`Loggers`), never one feature at a time.

A logger receives
* ``steps(step, epoch, scalars)``: every ``--log-every`` steps, this rank's figures of the step
  (its loss and the model's metrics; under torchrun rank 0's part of the minibatch) and the rate;
* ``epoch(record, history, step)``: at each epoch's end (the run's ``step`` steps done), the
  epoch's record as metrics.jsonl holds it (the means over the epoch's steps and over the ranks),
  with the run's history up to it;
* ``images(epoch, step, name, images)``: a grid of images after each epoch ([N, C, H, W] in [0, 1]);
* ``close()``: at the end, however training ended.

A logger's ``path`` is what it writes; a write there that fails (a full disk, a file-size limit)
ends the run in one sentence naming it (:class:`Loggers`), the records written before kept.

``metrics.jsonl`` (every run), ``steps.jsonl`` (every run), the progress grids (every model that
samples), TensorBoard (``--tensorboard``) and CSV (``--csv``) are loggers. Only rank 0 logs. The
epoch's records are written with its checkpoints, all or nothing (:func:`vaelab.io.all_or_nothing`);
a resumed run's logs are cut back to its resume file's step and epoch first, so nothing after the
last saved epoch stays in them.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
from pathlib import Path

import torch

from ..errors import VaelabError
from ..images import grid, save_grid
from ..io import atomic_write, cannot_write, dumps, run_subfolder
from ..rundir import (CSV, METRICS, STEPS, TENSORBOARD, epoch_of, progress_picture, progress_pictures,
                      read_jsonl)


class Logger:
    """Does nothing: a logger overrides what it takes."""
    wants_images = False
    path: Path | None = None  # what it writes, named where a write fails

    def steps(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        pass

    def epoch(self, record: dict, history: list[dict], step: int) -> None:
        pass

    def images(self, epoch: int, step: int, name: str, images: torch.Tensor) -> None:
        pass

    def close(self) -> None:
        pass


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))


class JsonLines(Logger):
    """metrics.jsonl: the history, one JSON record per epoch, rewritten whole each epoch (resume
    reads its own copy from the resume file; this one is for people and the report)."""

    def __init__(self, out: Path):
        self.path = Path(out) / METRICS

    def epoch(self, record: dict, history: list[dict], step: int) -> None:
        _write_text(self.path, "".join(dumps(h) + "\n" for h in history))


class StepLines(Logger):
    """steps.jsonl: one record per --log-every steps, appended (``{"step", "epoch", "lr", ...}``,
    the step 1-based). A resumed run first drops the records after its resume file's step."""

    def __init__(self, out: Path, resumed_step: int | None):
        self.path = Path(out) / STEPS
        if resumed_step is not None and self.path.exists():
            kept = [r for r in read_jsonl(self.path) if isinstance(r.get("step"), int) and r["step"] <= resumed_step]
            _write_text(self.path, "".join(dumps(r) + "\n" for r in kept))
        self.file = None

    def steps(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        if self.file is None:
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open until close()
        self.file.write(dumps({"step": step, "epoch": epoch, **scalars}) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Progress(Logger):
    """progress/epoch-NNNN.png: the model's grid of each epoch (samples of one fixed noise batch,
    :meth:`vaelab.models.base.Model.epoch_grid`), so the report can show samples over training.
    A resumed run drops the grids of epochs after its resume file's."""
    wants_images = True

    def __init__(self, out: Path, resumed_epoch: int | None):
        self.out = Path(out)
        self.path = progress_picture(self.out, 1).parent
        if resumed_epoch is not None:
            for p in progress_pictures(out):
                if epoch_of(p) > resumed_epoch:
                    p.unlink()

    def images(self, epoch: int, step: int, name: str, images: torch.Tensor) -> None:
        path = progress_picture(self.out, epoch)
        run_subfolder(path.parent)
        save_grid(images, path, nrow=8)


class CsvTable(Logger):
    """metrics.csv (--csv): metrics.jsonl's records as a table, a column per key in the order the
    records first hold them; rewritten whole each epoch."""

    def __init__(self, out: Path):
        self.path = Path(out) / CSV

    def epoch(self, record: dict, history: list[dict], step: int) -> None:
        keys = list(dict.fromkeys(k for h in history for k in h))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for h in history:
            w.writerow({k: ("" if v is None else v) for k, v in h.items()})
        _write_text(self.path, buf.getvalue())


def tensorboard_writer_class():
    """torch's SummaryWriter, or a sentence saying how to install what it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise VaelabError("--tensorboard needs the tensorboard package, which is not installed: "
                          "pip install tensorboard (or pip install 'vaelab[tensorboard]').") from None
    return SummaryWriter


class TensorBoard(Logger):
    """RUN/tensorboard/ (--tensorboard): scalars under ``step/`` at every logged step, under
    ``epoch/`` at every epoch's end, and each epoch's grid under ``images/``; the x of all is the
    run's step, so a resumed run purges at its resume file's step what its earlier process wrote
    after it, of every tag."""
    wants_images = True

    def __init__(self, out: Path, resumed_step: int | None, resumed_epoch: int | None):
        self.path = folder = run_subfolder(Path(out) / TENSORBOARD)
        writer = tensorboard_writer_class()
        # purge_step drops the events at or after it (SummaryWriter's own)
        with _writing(self):
            self.writer = writer(log_dir=str(folder), purge_step=resumed_step + 1 if resumed_step else None)

    def steps(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(f"step/{k}", v, step)

    def epoch(self, record: dict, history: list[dict], step: int) -> None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"epoch/{k}", v, step)
        self.writer.flush()

    def images(self, epoch: int, step: int, name: str, images: torch.Tensor) -> None:
        arr = grid(images, 8)  # [H, W, C] uint8
        self.writer.add_image(f"images/{name}", arr, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@contextlib.contextmanager
def _writing(logger: Logger):
    """A write of ``logger`` that fails with an OSError (a full disk; TensorBoard's writer thread
    hands on its own) raises the run's sentence naming what it writes."""
    try:
        yield
    except OSError as e:
        raise cannot_write(logger.path, e, "the records written before are intact") from None


class Loggers(Logger):
    """The run's loggers as one: what the loop calls. A write that fails ends in one sentence
    naming the file (:func:`_writing`); ``close`` closes every logger, then raises the first
    failure."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers
        self.wants_images = any(lg.wants_images for lg in loggers)

    def steps(self, step, epoch, scalars):
        for lg in self.loggers:
            with _writing(lg):
                lg.steps(step, epoch, scalars)

    def epoch(self, record, history, step):
        for lg in self.loggers:
            with _writing(lg):
                lg.epoch(record, history, step)

    def images(self, epoch, step, name, images):
        for lg in self.loggers:
            if lg.wants_images:
                with _writing(lg):
                    lg.images(epoch, step, name, images)

    def close(self):
        first = None
        for lg in self.loggers:
            try:
                with _writing(lg):
                    lg.close()
            except VaelabError as e:
                first = first or e
        if first is not None:
            raise first


def run_loggers(out: Path, train, resumed: tuple[int, int] | None, samples: bool) -> Loggers:
    """The loggers of a run in ``out``: metrics.jsonl and steps.jsonl always, the progress grids
    for a model that samples (``samples``), TensorBoard and CSV where ``train`` (its TrainConfig)
    asks. ``resumed``: (epoch, step) of the resume file, or None for a fresh run."""
    epoch, step = resumed if resumed else (None, None)
    loggers: list[Logger] = [JsonLines(out), StepLines(out, step)]
    if samples:
        loggers.append(Progress(out, epoch))
    if getattr(train, "csv", False):
        loggers.append(CsvTable(out))
    if getattr(train, "tensorboard", False):
        loggers.append(TensorBoard(out, step, epoch))
    return Loggers(loggers)
