"""The VAE-family variants on MNIST, each against its paper: trained for a stated budget in
epochs, then scored by the paper's own metric beside the paper's figure.

Every registered variant (``vae`` the baseline, ``iwae``, ``hvae``, ``vamp``, ``iaf``,
``vqvae``, ``wae``, ``aae``, ``vaegan``, ``infovae``, ``btcvae``) is trained through vaelab's
API on all 60,000 MNIST training images (``--val-size 0``) with its own defaults, or its
paper's preset where it has one (the IWAE paper's 784-200-200-50 net for the likelihood
models, the AAE paper's 784-1000-1000-8), for ``--epochs`` epochs, so that the figures do not
depend on the machine's load (the seconds are recorded too). The weights at the budget's end
(``--checkpoint last``) are then scored on all 10,000 test images:

* the test NLL by importance sampling, K = 5000, fp32, for vae, iwae, hvae, vamp and iaf (the
  IAF's paper figure is its gain over the same net without the flow: here, over ``vae``);
* the Parzen-window log-likelihood of 10,000 samples (vaelab's protocol, Goodfellow et al.'s),
  the AAE paper's metric, and the Fréchet distance and samples/s, for every model;
* the reconstruction error per pixel, for every model;
* for vae and wae, each sampler fitted after training (``gmm:10``, ``two-stage``): its Fréchet
  distance and its gain over the prior's.

One JSON line per model and per (model, sampler) in the results file, with the machine, the
budget, the seconds and the commands; a 64-sample grid of each beside it (in
``benchmarks/results/variants/`` for ``variants.jsonl``). A model (or sampler) whose line for the same epochs is in the
results file already is skipped, so a stopped run continues where it stopped. ``--plot`` only
draws ``benchmarks/results/variants_samples.png``, the grids side by side; ``--table`` prints
the table in docs/benchmarks.md.

    python benchmarks/variants.py --epochs 5 --threads 1 --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from _common import RESULTS, emit, machine, shown

NLL_K = 5000        # the IWAE paper's protocol
SAMPLES = 10_000    # for the Parzen window (Goodfellow et al.'s) and the Fréchet distance
SAMPLERS = ("gmm:10", "two-stage")
SAMPLER_MODELS = ("vae", "wae")
# Each model: its settings (flags of `vaelab train`), the paper's metric (nll: the test NLL at
# K = 5000; parzen; None: no MNIST figure to set beside ours), the paper's figure, its source.
MODELS = {
    "vae": ({"preset": "iwae"}, "nll", 86.76, "Burda et al. 2016, Table 1: VAE, 1 stochastic layer"),
    "iwae": ({"preset": "iwae"}, "nll", 85.54, "Burda et al. 2016, Table 1: IWAE, k = 5, 1 stochastic layer"),
    "hvae": ({"preset": "iwae"}, "nll", 85.33, "Burda et al. 2016, Table 1: VAE, 2 stochastic layers"),
    "vamp": ({"preset": "iwae"}, "nll", 85.57,
             "Tomczak & Welling 2018, Table 1: one layer, dynamic MNIST, as Pythae's reproduction card quotes it"),
    "iaf": ({"preset": "iwae"}, "nll", None, "Kingma et al. 2016: the gain over the same VAE without the flow"),
    "vqvae": ({}, None, None, "van den Oord et al. 2017: none on MNIST (CIFAR-10 4.67 bits/dim)"),
    "wae": ({}, None, None, "Tolstikhin et al. 2018: samples only"),
    "aae": ({"preset": "paper"}, "parzen", 340.0, "Makhzani et al. 2016, Table 1: 340 ± 2"),
    "vaegan": ({}, None, None, "Larsen et al. 2016: CelebA pictures only"),
    "infovae": ({}, None, None, "Zhao et al. 2019: none on MNIST"),
    "btcvae": ({}, None, None, "Chen et al. 2018: disentanglement only (dSprites)"),
}
# the order of a full run: the models whose K = 5000 NLL takes 10-30 minutes each come last,
# the baseline first among them
ORDER = ("wae", "aae", "vqvae", "vaegan", "infovae", "btcvae", "vae", "iwae", "hvae", "vamp", "iaf")


def _flags(settings: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())


def train_settings(name: str, epochs: int) -> dict:
    """What the run of ``name`` is trained with: its settings, the data and the budget."""
    return {"model": name, **MODELS[name][0], "data": "mnist", "val_size": 0, "epochs": epochs, "nll_samples": 0,
            "seed": 0}


def commands(name: str, epochs: int, run: str, sampler: str | None = None) -> str:
    """The CLI commands that train and score the run as this script does."""
    k = NLL_K if MODELS[name][1] == "nll" and sampler is None else 1
    extra = f" --sampler {sampler}" if sampler else ""
    return (f"vaelab train {_flags(train_settings(name, epochs))} --out {run}; vaelab eval {run} --checkpoint last "
            f"--nll-samples {k} --nll-precision fp32 --samples {SAMPLES}{extra}")


def done(path: Path) -> set:
    """(model, sampler, epochs) of the lines already in the results file."""
    if not path.is_file():
        return set()
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {(r["model"], r.get("sampler"), r["epochs"]) for r in rows if r.get("benchmark") == "variants"}


# what may differ between a run and its reuse: where it ran and how it printed
_WHERE = {"data": ("data_dir",), "train": ("out", "overwrite", "progress", "threads", "device", "log_every")}


def same_settings(out: Path, cfg) -> bool:
    """Whether the run in ``out`` was made with ``cfg``'s model, data and training settings, every
    field alike (a run from before a model gained a field is not reused). It cannot see a change
    of code under the same settings: delete the run then."""
    try:
        saved = json.loads((out / "config.json").read_text())["run"]
    except (OSError, ValueError, KeyError):
        return False
    want = cfg.to_dict()
    if saved.get("model_name") != want["model_name"] or saved.get("model") != want["model"]:
        return False
    return all({k: v for k, v in saved.get(part, {}).items() if k not in skip}
               == {k: v for k, v in want[part].items() if k not in skip} for part, skip in _WHERE.items())


def trained(a, name: str, epochs: int) -> tuple[Path, dict]:
    """The run of ``name`` at ``epochs``: reused if a finished one with the same model and
    training settings is in --out (a run stopped after its model line, before its sampler
    lines), else trained afresh; and its timings."""
    import vaelab
    from vaelab.rundir import FINISHED
    out = Path(a.out) / name
    finished = out / FINISHED
    t0 = time.perf_counter()
    cfg = vaelab.make_config(**train_settings(name, epochs), data_dir=a.data_dir, threads=a.threads,
                             out=str(out), overwrite=True, progress=False)
    if not (finished.is_file() and json.loads(finished.read_text())["epochs"] == epochs and same_settings(out, cfg)):
        vaelab.train(cfg, log=lambda m: print(f"[{name}] {m}", file=sys.stderr, flush=True))
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return out, {"train_seconds": round(sum(h["seconds"] for h in hist), 1),
                 "train_wall_seconds": round(time.perf_counter() - t0, 1)}


def save_samples(run: Path, sampler: str | None, path: Path, data_dir: str | None) -> None:
    """A 64-sample grid of the run's last weights, drawn by ``sampler`` (None: the model's own)."""
    import vaelab
    from vaelab.images import save_grid
    from vaelab.samplers import sampler_for
    model = vaelab.load(run, "last")
    drawer = sampler_for(run, model, sampler, "last", data_dir)
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(drawer.sample(64), path, nrow=8)


def score(a, name: str, run: Path, sampler: str | None = None) -> dict:
    """The run's metrics at its last weights: the NLL (K = 5000) where the paper's metric is one,
    the reconstruction error, the sample scores of ``sampler``."""
    import vaelab
    k = NLL_K if MODELS[name][1] == "nll" and sampler is None else 1
    t0 = time.perf_counter()
    ev = vaelab.evaluate(run, "test", k, checkpoint="last", data_dir=a.data_dir, sample_metrics=True,
                         samples=SAMPLES, precision="fp32", sampler=sampler,
                         log=lambda m: print(f"[{name}] {m}", file=sys.stderr, flush=True))
    row = {"eval_seconds": round(time.perf_counter() - t0, 1), "mse": ev.get("mse"), "drawn_by": ev.get("sampler"),
           **{f: ev[f] for f in ("parzen_ll", "parzen_se", "parzen_sigma", "frechet",
                                 "frechet_classifier_accuracy", "samples_per_s") if f in ev}}
    if "nll" in ev:  # a likelihood model: the bound at K = 1, the NLL at K = 5000 where it is the paper's metric
        row["test_elbo"] = ev["elbo"]
        if k == NLL_K:
            row.update(test_nll=ev["nll"], nll_k=ev["k"], nll_n=ev["n"], nll_path=ev["nll_path"])
    return row


def grids(results: Path) -> Path:
    """The folder of a results file's sample grids: variants.jsonl -> variants/."""
    return results.with_suffix("")


def model_line(a, name: str, epochs: int, previous: dict) -> tuple[dict, Path]:
    settings, metric, paper, source = MODELS[name]
    run, times = trained(a, name, epochs)
    row = {"benchmark": "variants", "model": name, "sampler": None, **machine(a.threads), "epochs": epochs,
           "settings": train_settings(name, epochs), **times, **score(a, name, run),
           "paper_metric": metric, "paper_figure": paper, "paper_source": source,
           "command": commands(name, epochs, shown([run])), "script": shown(sys.argv)}
    row["vaelab_figure"] = {"nll": row.get("test_nll"), "parzen": row.get("parzen_ll")}.get(metric)
    if name == "iaf" and "vae" in previous:  # the IAF paper's figure is this gain
        row["nll_gain_over_vae"] = previous["vae"]["test_nll"] - row["test_nll"]
    save_samples(run, None, grids(Path(a.results)) / f"{name}.png", a.data_dir)
    return row, run


def sampler_line(a, name: str, sampler: str, epochs: int, run: Path, prior: dict) -> dict:
    row = {"benchmark": "variants", "model": name, "sampler": sampler, **machine(a.threads), "epochs": epochs,
           **score(a, name, run, sampler), "prior_frechet": prior["frechet"],
           "command": commands(name, epochs, shown([run]), sampler), "script": shown(sys.argv)}
    row["frechet_gain"] = prior["frechet"] - row["frechet"]  # positive: the sampler's samples are closer
    save_samples(run, sampler, grids(Path(a.results)) / _grid_name(row), a.data_dir)
    return row


def _rows(path: Path) -> list[dict]:
    """The results file's lines, the last of each (model, sampler) winning."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return list({(r["model"], r["sampler"]): r for r in rows if r.get("benchmark") == "variants"}.values())


def plot(path: Path) -> None:
    """<results>_samples.png beside the results file: each model's grid (and each sampler's)
    side by side, labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from vaelab.images import save_figure
    rows = sorted(_rows(path), key=lambda r: (ORDER.index(r["model"]) if r["sampler"] is None else len(ORDER),
                                              r["model"], r["sampler"] or ""))
    rows = [r for r in rows if (grids(path) / _grid_name(r)).is_file()]
    if not rows:
        return
    cols = min(6, len(rows))
    nrows = -(-len(rows) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.3 * cols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, rows):
        ax.imshow(plt.imread(grids(path) / _grid_name(r)), cmap="gray", vmin=0, vmax=1)
        head = r["model"] if r["sampler"] is None else f"{r['model']}, {r['sampler']}"
        ax.set_title(f"{head} ({r['epochs']} ep.)\nFréchet {r['frechet']:.1f}", fontsize=9)
    save_figure(fig, path.parent / f"{path.stem}_samples.png")


def _grid_name(r: dict) -> str:
    return f"{r['model']}.png" if r["sampler"] is None else f"{r['model']}-{r['sampler'].replace(':', '-')}.png"


def table(path: Path) -> str:
    """docs/benchmarks.md's tables from the results file: a row per model, then a row per sampler."""
    rows = {(r["model"], r["sampler"]): r for r in _rows(path)}
    metric_name = {"nll": "test NLL, K = 5000", "parzen": "Parzen log-lik."}
    out = ["| `--model` | the paper's metric and figure (source) | vaelab | epochs | training | recon. MSE/pixel | "
           "Parzen log-lik. | Fréchet | samples/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, (_, metric, paper, source) in MODELS.items():
        r = rows.get((name, None))
        fig = (source if metric is None else f"{metric_name[metric]}: {source}" if paper is None
               else f"{metric_name[metric]}: **{paper:g}** ({source})")
        if r is None:
            out.append(f"| `{name}` | {fig} | running |  |  |  |  |  |  |")
            continue
        mine = {"nll": f"{r.get('test_nll', 0):.2f}", "parzen": f"{r['parzen_ll']:.0f} ± {r['parzen_se']:.1f}"}
        mine = mine.get(metric, "")
        if "nll_gain_over_vae" in r:
            mine += f" (gain over `vae`: {r['nll_gain_over_vae']:+.2f})"
        out.append(f"| `{name}` | {fig} | {mine} | {r['epochs']} | {r['train_seconds'] / 60:.1f} min | {r['mse']:.4f} | "
                   f"{r['parzen_ll']:.0f} ± {r['parzen_se']:.1f} | {r['frechet']:.1f} | {r['samples_per_s']:,.0f} |")
    out += ["", "| `--model` | `--sampler` | epochs | Fréchet | the prior's Fréchet | gain | Parzen log-lik. | samples/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (name, sampler), r in rows.items():
        if sampler is not None:
            out.append(f"| `{name}` | `{sampler}` | {r['epochs']} | {r['frechet']:.1f} | {r['prior_frechet']:.1f} | "
                       f"{r['frechet_gain']:+.1f} | {r['parzen_ll']:.0f} ± {r['parzen_se']:.1f} | "
                       f"{r['samples_per_s']:,.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ORDER), help="some of " + ", ".join(ORDER) + " (run in this order)")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs of every model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--out", default="runs/bench-variants")
    ap.add_argument("--results", default=str(RESULTS / "variants.jsonl"))
    ap.add_argument("--plot", action="store_true", help="only draw the figure from the results file")
    ap.add_argument("--table", action="store_true", help="only print docs/benchmarks.md's table from the results file")
    a = ap.parse_args()
    results = Path(a.results)
    if a.table:
        print(table(results))
        return
    if a.plot:
        plot(results)
        return
    names = a.models.split(",")
    for name in names:
        if name not in MODELS:
            ap.error(f"--models: unknown model {name!r}; expected some of {', '.join(ORDER)}")
    if a.epochs < 1:
        ap.error(f"--epochs must be at least 1, got {a.epochs}")
    torch.set_num_threads(a.threads)
    previous = {r["model"]: r for r in _rows(results) if r["sampler"] is None and r["epochs"] == a.epochs}
    for name in names:
        have = done(results)
        wanted = [s for s in (SAMPLERS if name in SAMPLER_MODELS else ()) if (name, s, a.epochs) not in have]
        if (name, None, a.epochs) in have and not wanted:
            print(f"[{name}] {a.epochs} epochs: in {results} already, skipped", file=sys.stderr, flush=True)
            continue
        if (name, None, a.epochs) not in have:
            row, run = model_line(a, name, a.epochs, previous)
            emit(str(results), row)
            previous[name] = row
        else:
            run = trained(a, name, a.epochs)[0]
        for s in wanted:
            emit(str(results), sampler_line(a, name, s, a.epochs, run, previous[name]))
        plot(results)
    plot(results)


if __name__ == "__main__":
    main()
