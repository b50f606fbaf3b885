"""``report.html``: a run on one page. Written at the end of training and by ``vaelab report
RUN_DIR``; a run killed mid-training, or one without a likelihood or samples, gets a page of what
it holds, with a note of what is missing and why."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch

from ..errors import VaelabError
from ..loading import load, split_inputs
from ..models.base import ENCODE, LIKELIHOOD, SAMPLE
from ..rundir import (CHECKPOINTS, FIGURES, METRICS, PICTURES, PLOTS, PNG, REPORT, STEPS, epoch_of, finished_epochs,
                      progress_pictures, read_jsonl, read_run_config)
from ..version import __version__
from . import analysis
from .curves import plot_panels
from .metrics import measurements, training_rows, used_columns
from .page import data_uri, embeddable, figure_uri, write_page

PROGRESS_SHOWN = 6  # epochs' grids on the page, spread over the run

# what a picture of the run shows, where the run did not record it (a run of an older vaelab)
KNOWN = {
    PNG.samples: ("Samples", "Samples drawn by the model's default sampler."),
    PNG.samples_by_class: ("Samples by class", "A row of samples for each class."),
    PNG.reconstructions: ("Reconstructions", "Test images, each row above the row of their reconstructions."),
    PNG.interpolation: ("Interpolations", "Decoded points on straight lines between two codes."),
    PNG.manifold: ("The learned manifold", "The decoder's mean over a grid of the 2-D latent space."),
    PNG.denoising: ("Denoising", "Corrupted, denoised and clean test images."),
    PNG.codes_histogram: ("Code values", "A histogram of the code values of the test images."),
    PNG.progress: ("Progress", "The first row of the fixed-noise grid after each epoch."),
    PNG.game: ("The game", "D(x), D(G(z)) and both players' losses per epoch."),
    PNG.curves: ("Training curves", "The training loss and the validation score per epoch."),
}


def _settings(doc: dict) -> list[tuple[str, list[tuple[str, str]]]]:
    """The run's settings by part (data, model, training), unset ones left out."""
    run = doc.get("run", {})
    out = []
    for part, title in (("data", "data"), ("model", "model"), ("train", "training")):
        items = [(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                 for k, v in sorted(run.get(part, {}).items()) if v is not None]
        out.append((title, items))
    return out


def _recorded_figures(run_dir: Path) -> list[dict]:
    """The pictures of the run with their titles and captions, as training recorded them
    (figures.json), then any other picture it holds, with what vaelab knows of its name."""
    try:
        recorded = json.loads((run_dir / FIGURES).read_text())
        recorded = [f for f in recorded if isinstance(f, dict) and isinstance(f.get("file"), str)]
    except (OSError, ValueError, UnicodeDecodeError):
        recorded = []
    seen = {f["file"] for f in recorded}
    for name in PICTURES:
        if name not in seen and (run_dir / name).is_file():
            title, caption = KNOWN[name]
            recorded.append({"file": name, "title": title, "caption": caption + " (recorded by an older vaelab, "
                             "or before the run finished: no caption of its own)"})
    out = []
    for f in recorded:
        p = run_dir / f["file"]
        if p.parent == run_dir and embeddable(p):
            out.append({"src": data_uri(p), "title": f.get("title", ""), "caption": f.get("caption", ""),
                        "file": f["file"], "plot": f["file"] in PLOTS})
    return out


def write_figures_record(run_dir: Path, figures) -> None:
    """figures.json: each picture's file, title and caption, for the report (Figures of
    :mod:`vaelab.report.pictures`)."""
    from ..io import write_json
    write_json(Path(run_dir) / FIGURES, [{"file": Path(f.path).name, "title": f.title, "caption": f.caption}
                                         for f in figures if Path(f.path).parent == Path(run_dir)])


def _progress(run_dir: Path) -> list[dict]:
    grids = [g for g in progress_pictures(run_dir) if embeddable(g)]
    if not grids:
        return []
    n = min(PROGRESS_SHOWN, len(grids))
    picked = sorted({round(i * (len(grids) - 1) / max(1, n - 1)) for i in range(n)})
    return [{"src": data_uri(grids[i]), "epoch": epoch_of(grids[i])} for i in picked]


def _a(name: str) -> str:
    """'a gan', 'an ae': a model's name with its article."""
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _curves(run_dir: Path, hist: list[dict], notes: list[dict]) -> list[dict]:
    """The per-epoch and per-step panels; a series of one record is a row of single dots, which
    the metrics table already holds, so it is left out with a note (and costs nothing to draw)."""
    out = []
    val_name = next((h.get("val_name") for h in hist if h.get("val_name")), None)
    if len(hist) == 1:
        notes.append({"what": "curves per epoch", "why": "one epoch is one point per quantity: its figures are "
                      "the metrics table's training and validation rows"})
    elif hist:
        fig, keys = plot_panels([("run", hist)], "epoch", val_name)
        if fig is not None:
            out.append({"src": figure_uri(fig, tight=False), "title": "Every quantity per epoch",
                        "caption": f"Each panel one quantity of metrics.jsonl against the epoch: the means over each "
                                   f"epoch's steps (training), the validation score, the learning rate, the seconds "
                                   f"and the dropped steps; {len(hist)} epochs."
                                   + (" Dashed: the game's equilibrium values (D = 1/2, D's loss log 4)."
                                      if any(k.endswith(("d_real", "d_loss")) for k in keys) else "")})
    steps = read_jsonl(run_dir / STEPS)
    if len(steps) == 1:
        notes.append({"what": "curves per step", "why": f"{STEPS} holds one record (one every --log-every steps); "
                      "a lower --log-every logs more"})
    elif steps:
        fig, keys = plot_panels([("run", steps)], "step")
        if fig is not None:
            out.append({"src": figure_uri(fig, tight=False), "title": "Every quantity per step",
                        "caption": f"Each panel one quantity of steps.jsonl against the step: the figures of single "
                                   f"minibatches, one every --log-every steps ({len(steps)} records), so noisier "
                                   "than the epoch means."})
    return out


def _analysis(run_dir: Path, model, x, y, notes: list[dict]) -> list[dict]:
    out = []
    if not model.can(ENCODE):
        notes.append({"what": "traversals, codes and reconstruction errors",
                      "why": f"a {model.run_config.train.model} has no encoder: there are no codes of test images"})
        return out
    t = analysis.traversal(model, x)
    if t:
        out.append({"src": t[0], "title": "Latent traversals", "caption": t[1]})
    else:
        notes.append({"what": "latent traversals", "why": "the codes are grids of codebook indices, not vectors"})
    c = analysis.codes_2d(model, x, y)
    if c:
        out.append({"src": c[0], "title": "The test codes in 2-D", "caption": c[1]})
    h = analysis.error_histogram(model, x)
    out.append({"src": h[0], "title": "Reconstruction error per image", "caption": h[1]})
    out.append({"src": h[2], "title": "The worst reconstructions", "caption": h[3]})
    return out


def write_report(run_dir, data_dir: str | None = None, model: torch.nn.Module | None = None,
                 x: torch.Tensor | None = None, y: torch.Tensor | None = None, log=None,
                 checkpoint: str = "best") -> Path:
    """Write ``RUN_DIR/report.html`` from what the run directory holds and return its path."""
    run_dir = Path(run_dir)
    doc = read_run_config(run_dir)
    run = doc.get("run", {})
    t = run.get("train", {})
    hist = read_jsonl(run_dir / METRICS)
    notes: list[dict] = []
    finished = finished_epochs(run_dir)
    epochs_wanted = t.get("epochs")
    if finished is None:
        notes.append({"what": "the final evaluation and pictures",
                      "why": f"training has not finished: {len(hist)} of {epochs_wanted} epochs are recorded "
                             f"(stopped, still running or killed); vaelab train --resume {run_dir} continues it"})
    rows = training_rows(run_dir) + measurements(run_dir)
    if not any(r.file.startswith("eval-") for r in rows):
        notes.append({"what": "test-set figures", "why": "no evaluation file: training did not reach its final "
                      f"evaluation, or it was skipped; vaelab eval {run_dir} measures it"})
    analysis_figs, model_name = [], t.get("model", "?")
    if (run_dir / CHECKPOINTS[checkpoint]).is_file():
        try:
            if model is None:
                model = load(run_dir, checkpoint, "cpu")
            if x is None or y is None:
                x, y = split_inputs(run_dir, "test", data_dir)
            with torch.no_grad():
                analysis_figs = _analysis(run_dir, model, x, y, notes)
            if not model.can(LIKELIHOOD):
                notes.append({"what": "a likelihood (ELBO, NLL, bits/dim)",
                              "why": f"{_a(model_name)} defines no density p(x)"})
            if not model.can(SAMPLE):
                notes.append({"what": "samples", "why": f"{_a(model_name)} has no prior to draw codes from"
                              + (f"; vaelab sample {run_dir} --sampler gmm:10 fits one to its training codes "
                                 "and draws from it" if model.can(ENCODE) else "")})
        except VaelabError as e:
            notes.append({"what": "the figures drawn from the model", "why": str(e)})
    else:
        notes.append({"what": "the figures drawn from the model",
                      "why": f"no {CHECKPOINTS[checkpoint]}: no epoch finished"})
    page = write_page(
        run_dir / REPORT, "run.html", version=__version__, written=datetime.date.today().isoformat(),
        name=run_dir.name, model=model_name, data=run.get("data", {}).get("data", "?"),
        epochs=len(hist), epochs_wanted=epochs_wanted, finished=finished is not None,
        seconds=sum(h.get("seconds", 0) or 0 for h in hist), notes=notes, settings=_settings(doc),
        columns=used_columns(rows), rows=rows, curves=_curves(run_dir, hist, notes), progress=_progress(run_dir),
        pictures=_recorded_figures(run_dir), analysis=analysis_figs, vaelab_version=doc.get("vaelab_version", "?"))
    if log:
        log(f"wrote {page}")
    return page
