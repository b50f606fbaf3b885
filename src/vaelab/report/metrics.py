"""The figures a run directory holds, as rows of one table: each evaluation file one row, with how
it was measured (split, checkpoint, K, sampler and samples) beside what it measured. Shared by
a run's page and ``vaelab compare``."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import VaelabError
from ..rundir import METRICS, TRAINING_EVAL, eval_files, probe_files, read_jsonl, read_run_config


@dataclass(frozen=True)
class Metric:
    key: str        # in an eval JSON (or a record of metrics.jsonl)
    label: str      # the column's heading
    better: str     # "higher", "lower" or "" (neither: reported, not ranked)
    note: str       # the unit, or how it was measured
    depends: tuple = ("data", "split", "checkpoint")  # what of HOW the figure depends on


SAMPLED = ("data", "split", "checkpoint", "sampler", "samples")
METRIC_COLUMNS = [
    # a conditional model's (nll_of: "x given its label") never shares a column with -log p(x)
    Metric("elbo", "ELBO", "higher", "nats per example", ("data", "split", "checkpoint", "nll_of")),
    Metric("nll", "NLL", "lower", "nats per example, importance-sampled with K samples",
           ("data", "split", "checkpoint", "k", "nll_of")),
    Metric("bpd", "bits/dim", "lower", "the NLL in bits per pixel value", ("data", "split", "checkpoint", "k", "nll_of")),
    Metric("kl", "KL", "", "KL(q(z|x) || p(z)), nats per example"),
    Metric("mse", "recon. MSE", "lower", "mean squared error per pixel at the code (pixels in [0, 1])"),
    Metric("parzen_ll", "Parzen LL", "higher", "Gaussian Parzen-window log-likelihood of the samples, nats", SAMPLED),
    Metric("frechet", "Fréchet", "lower", "Fréchet distance of the samples' features (vaelab's classifier)", SAMPLED),
    Metric("psnr_denoised", "PSNR denoised", "higher", "dB, corrupted test images denoised"),
    Metric("near_zero_fraction", "codes ≈ 0", "", "fraction of code values with |z| < 0.01"),
    # the figures training logs for models without a likelihood (an autoencoder's, a GAN's game)
    Metric("recon", "recon. loss", "lower", "the reconstruction term as trained, per example"),
    Metric("d_real", "D(x)", "", "the discriminator's mean output on data (1/2 at the game's equilibrium)"),
    Metric("d_fake", "D(G(z))", "", "the discriminator's mean output on samples (1/2 at the equilibrium)"),
    Metric("d_loss", "D's loss", "", "the discriminator's loss (log 4 = 1.386 at the equilibrium)"),
    Metric("g_loss", "G's loss", "", "the generator's loss"),
    Metric("accuracy", "probe acc.", "higher", "test accuracy of a logistic regression on the best checkpoint's codes, "
           "trained on the given number of labelled images (vaelab probe)", ("data", "split", "checkpoint", "labels")),
    Metric("classifier_accuracy", "classifier acc.", "higher", "test accuracy of the model's own classifier q(y|x) "
           "(m2), trained with the run's labels"),
]
# how a figure was measured: what must match for two runs' figures to share a column
HOW = ("data", "split", "checkpoint", "k", "sampler", "samples", "labels", "nll_of")


@dataclass
class Measurement:
    """One evaluation file of a run: how it was measured and what."""
    file: str
    how: dict
    values: dict
    text: str | None = None  # what the row says of how it was measured, where the file does not

    @property
    def label(self) -> str:
        if self.text:
            return self.text
        h = self.how
        parts = [f"{h.get('split', '?')} split", f"{h.get('checkpoint', '?')} checkpoint"]
        if h.get("k") is not None:
            parts.append(f"K = {h['k']:,}")
        if h.get("labels") is not None:
            parts = ["test split", f"a linear probe on {h['labels']:,} labelled training images"]
        if h.get("sampler"):
            parts.append(f"samples by {h['sampler']} (n = {h.get('samples', '?'):,})"
                         if isinstance(h.get("samples"), int) else f"samples by {h['sampler']}")
        return ", ".join(parts)


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def data_name(run_dir) -> str | None:
    """The dataset a run trained and was evaluated on (its config's ``data``), or None."""
    try:
        run = read_run_config(Path(run_dir)).get("run")
    except VaelabError:
        return None
    data = run.get("data") if isinstance(run, dict) else None
    return data.get("data") if isinstance(data, dict) and isinstance(data.get("data"), str) else None


def measurements(run_dir) -> list[Measurement]:
    """Every evaluation of the run (training's first), unreadable files left out."""
    out = []
    data = data_name(run_dir)
    for p in eval_files(run_dir):
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if not isinstance(d, dict):
            continue
        how = {**{k: d.get(k) for k in HOW}, "data": data}
        if "nll" not in d:
            how["k"] = None
        if "sampler" not in d:
            how["samples"] = None
        values = {m.key: d[m.key] for m in METRIC_COLUMNS if _finite(d.get(m.key))}
        out.append(Measurement(p.name, how, values))
    for p in probe_files(run_dir):
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(d, dict) and _finite(d.get("accuracy")) and isinstance(d.get("labels"), int):
            out.append(Measurement(p.name, {"data": data, "split": "test", "checkpoint": "best", "labels": d["labels"]},
                                   {"accuracy": d["accuracy"]}))
    return out


def training_rows(run_dir) -> list[Measurement]:
    """The last epoch's training figures and its validation score, from metrics.jsonl."""
    hist = read_jsonl(Path(run_dir) / METRICS)
    if not hist:
        return []
    last = hist[-1]
    rows = []
    train = {m.key: last[f"train_{m.key}"] for m in METRIC_COLUMNS if _finite(last.get(f"train_{m.key}"))}
    if train:
        rows.append(Measurement(METRICS, {"split": "train"}, train,
                                f"train split, epoch {last['epoch']} (the mean over its steps)"))
    if _finite(last.get("val")) and last.get("val_name"):
        key = last["val_name"]
        if any(m.key == key for m in METRIC_COLUMNS):  # a score of no column would be an empty row
            rows.append(Measurement(METRICS, {"split": "val"}, {key: last["val"]},
                                    f"val split, the weights after epoch {last['epoch']}"))
    return rows


def used_columns(rows: list[Measurement]) -> list[Metric]:
    return [m for m in METRIC_COLUMNS if any(m.key in r.values for r in rows)]


__all__ = ["Metric", "METRIC_COLUMNS", "Measurement", "measurements", "training_rows", "used_columns", "HOW",
           "TRAINING_EVAL"]
