"""``vaelab compare RUN_DIR ... --out DIR``: runs side by side. ``DIR/compare.html`` shows the
settings that differ, one table of figures (the best of each column in bold; only figures
measured alike share a column: the same split, checkpoint, K and sampler), the curves overlaid
and the pictures next to each other; ``DIR/compare.csv`` and ``DIR/compare.md`` hold the table."""
from __future__ import annotations

import csv
import datetime
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import VaelabError, clip
from ..io import atomic_write
from ..rundir import CONFIG, METRICS, PNG, STEPS, read_jsonl, read_run_config
from ..version import __version__
from .curves import plot_panels
from .metrics import HOW, METRIC_COLUMNS, measurements
from .page import data_uri, embeddable, figure_uri, number, write_page

MAX_RUNS = 64           # runs on one page (each adds its pictures)
SIDE_BY_SIDE = (PNG.samples, PNG.samples_by_class, PNG.reconstructions, PNG.interpolation, PNG.manifold, PNG.denoising)


@dataclass(frozen=True)
class Column:
    """A column of the table: one metric measured one way."""
    key: str
    label: str
    better: str
    how: tuple   # (data, split, checkpoint, k, sampler, samples, labels, nll_of): metrics.HOW

    @property
    def heading(self) -> str:
        data, split, ckpt, k, sampler, n, labels, nll_of = self.how
        parts = ([f"{data} {split}" if data else split] + ([ckpt] if ckpt else []) + ([f"K={k}"] if k is not None else [])
                 + ([f"{sampler}, n={n}"] if sampler else []) + ([f"{labels} labels"] if labels is not None else [])
                 + ([f"of {nll_of}"] if nll_of else []))
        return f"{self.label} ({', '.join(str(p) for p in parts)})"


def find_runs(paths: list[str]) -> list[Path]:
    """The run directories ``paths`` name: each a run (it holds config.json) or a folder whose
    sub-folders are runs, in name order. Refused in one sentence when one is neither."""
    runs: list[Path] = []
    for given in paths:
        p = Path(given)
        if not p.is_dir():
            raise VaelabError(f"vaelab compare: {clip(p)} is not a folder: expected a run directory or a folder of "
                              "runs.")
        if (p / CONFIG).is_file():
            runs.append(p)
            continue
        inside = sorted(q for q in p.iterdir() if q.is_dir() and (q / CONFIG).is_file())
        if not inside:
            raise VaelabError(f"vaelab compare: {clip(p)} is not a run directory ({CONFIG} is missing) and holds none.")
        runs += inside
    unique = list(dict.fromkeys(r.resolve() for r in runs))
    if len(unique) > MAX_RUNS:
        raise VaelabError(f"vaelab compare takes at most {MAX_RUNS} runs; {len(unique)} were given.")
    if not unique:
        raise VaelabError("vaelab compare needs at least one run directory.")
    return [Path(r) for r in unique]


def _names(runs: list[Path]) -> list[str]:
    """A short name for each run: its folder's name, with its parent's where two share one."""
    names = [r.name for r in runs]
    return [f"{r.parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def _flat_settings(doc: dict) -> dict[str, str]:
    out = {}
    for part, values in doc.get("run", {}).items():
        if isinstance(values, dict):
            for k, v in values.items():
                out[f"{part}.{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out


def table(runs: list[Path]) -> tuple[list[Column], list[dict]]:
    """The columns (each metric measured one way, in the order of METRIC_COLUMNS) and, per run, its
    value of each ({column: value})."""
    per_run = [measurements(r) for r in runs]
    cols: dict[tuple, Column] = {}
    values: list[dict] = []
    for ms in per_run:
        row = {}
        for m in ms:
            for metric in METRIC_COLUMNS:
                how = tuple(m.how.get(k) if k in metric.depends else None for k in HOW)
                if metric.key in m.values:
                    col = cols.setdefault((metric.key, how), Column(metric.key, metric.label, metric.better, how))
                    row.setdefault(col, m.values[metric.key])  # training's evaluation first
        values.append(row)
    order = {m.key: i for i, m in enumerate(METRIC_COLUMNS)}
    columns = sorted(cols.values(), key=lambda c: (order[c.key], str(c.how)))
    return columns, values


def _best(columns: list[Column], values: list[dict]) -> dict[Column, float]:
    best = {}
    for c in columns:
        got = [v[c] for v in values if c in v]
        if len(got) > 1 and c.better:
            best[c] = max(got) if c.better == "higher" else min(got)
    return best


def _csv(names, columns, values) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", *(c.heading for c in columns)])
    for name, row in zip(names, values):
        w.writerow([name, *(repr(row[c]) if c in row else "" for c in columns)])
    return buf.getvalue()


def _markdown(names, columns, values, best) -> str:
    def cell(c, row):
        if c not in row:
            return "–"
        text = number(row[c])
        return f"**{text}**" if best.get(c) == row[c] else text
    arrows = {"higher": " ↑", "lower": " ↓", "": ""}
    lines = ["| run | " + " | ".join(c.heading + arrows[c.better] for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join([name.replace("|", "\\|"), *(cell(c, row) for c in columns)]) + " |"
              for name, row in zip(names, values)]
    return "\n".join(lines) + "\n\n↑ higher is better, ↓ lower is better; the best of each column in bold.\n"


def compare(paths: list[str], out: str | Path, log=None) -> Path:
    """Write ``out/compare.html``, ``compare.csv`` and ``compare.md`` for the runs ``paths`` name
    (run directories or folders of them); returns the page's path."""
    runs = find_runs(paths)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VaelabError(f"--out {clip(out)} is a file: expected a folder to write compare.html into.")
    docs = [read_run_config(r) for r in runs]
    names = _names(runs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaelabError(f"cannot create --out {clip(out)}: {e.strerror or e}.") from None
    settings = [_flat_settings(d) for d in docs]
    keys = sorted(set().union(*settings))
    differ = [(k, [s.get(k, "–") for s in settings]) for k in keys
              if len({s.get(k, "–") for s in settings}) > 1 and k not in ("train.out",)]
    columns, values = table(runs)
    best = _best(columns, values)
    hists = [read_jsonl(r / METRICS) for r in runs]
    curves = []
    fig, _ = plot_panels(list(zip(names, hists)), "epoch")
    if fig is not None:
        curves.append({"src": figure_uri(fig, tight=False), "title": "Every quantity per epoch, overlaid",
                       "caption": "Each panel one quantity of the runs' metrics.jsonl against the epoch, a line per "
                                  "run (the legend names them). The validation score is each run's own "
                                  "(its model's val_name), so compare it only between runs of the same kind."})
    steps = [read_jsonl(r / STEPS) for r in runs]
    if any(steps):
        fig, _ = plot_panels([(n, s) for n, s in zip(names, steps) if s], "step")
        if fig is not None:
            curves.append({"src": figure_uri(fig, tight=False), "title": "Every quantity per step, overlaid",
                           "caption": "Each panel one quantity of the runs' steps.jsonl against the step: single "
                                      "minibatches, one record every --log-every steps."})
    pictures = []
    for name in SIDE_BY_SIDE:
        if any((r / name).is_file() for r in runs):
            pictures.append({"file": name, "cells": [{"run": n, "src": data_uri(r / name) if embeddable(r / name)
                                                       else None} for n, r in zip(names, runs)]})
    rows = [{"name": n, "model": d.get("run", {}).get("train", {}).get("model", "?"),
             "data": d.get("run", {}).get("data", {}).get("data", "?"), "epochs": len(h), "path": str(r),
             "cells": [{"text": number(v[c]) if c in v else "–", "best": c in v and best.get(c) == v[c]}
                       for c in columns]}
            for n, d, h, r, v in zip(names, docs, hists, runs, values)]
    csv_text, md_text = _csv(names, columns, values), _markdown(names, columns, values, best)
    atomic_write(out / "compare.csv", lambda p: Path(p).write_text(csv_text))
    atomic_write(out / "compare.md", lambda p: Path(p).write_text(md_text))
    page = write_page(out / "compare.html", "compare.html", version=__version__,
                      written=datetime.date.today().isoformat(), runs=rows, columns=columns, differ=differ,
                      names=names, curves=curves, pictures=pictures)
    if log:
        log(f"wrote {page}, compare.csv and compare.md")
    return page
