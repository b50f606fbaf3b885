"""Curves of every logged quantity of a run (per step from steps.jsonl, per epoch from
metrics.jsonl), one small panel each, and overlaid over several runs for ``vaelab compare``."""
from __future__ import annotations

import math

# quantities drawn with a reference line: a GAN's game (Goodfellow et al. 2014: at p_g = p_data,
# D = 1/2 everywhere and the discriminator's loss is log 4)
REFERENCE = {"d_real": (0.5, "1/2"), "d_fake": (0.5, "1/2"), "d_loss": (math.log(4), "log 4")}
SKIP = {"epoch", "step", "seconds", "val_name"}
NAMES = {"loss": "training loss", "lr": "learning rate", "skipped_steps": "dropped steps",
         "d_real": "D(x), data", "d_fake": "D(G(z)), samples", "d_loss": "D's loss", "g_loss": "G's loss"}


def _numeric(records: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in records for k in r))
    return [k for k in keys if k not in SKIP
            and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in records)]


def quantity(key: str) -> str:
    """A logged key as people read it: train_d_real -> D(x), data (training)."""
    base = key[len("train_"):] if key.startswith("train_") else key
    name = NAMES.get(base, base.replace("_", " "))
    return f"{name} (training)" if key.startswith("train_") and base != "loss" else name


def plot_panels(series: list[tuple[str, list[dict]]], x: str, val_name: str | None = None, cols: int = 3):
    """A matplotlib figure of one panel per numeric key, each run of ``series`` ((label,
    records)) a line; ``x``: the records' key on the x axis (``step`` or ``epoch``). Returns
    (figure, the keys drawn) or (None, []) when nothing is numeric."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for _, recs in series for k in _numeric(recs)))
    if not keys:
        return None, []
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for i, (label, recs) in enumerate(series):
            pts = [(r[x], r[key]) for r in recs if isinstance(r.get(key), (int, float)) and x in r
                   and math.isfinite(r[key])]
            if pts:
                ax.plot(*zip(*pts), color=f"C{i}", marker="o" if len(pts) <= 30 else None, ms=3,
                        label=label if len(series) > 1 else None)
        base = key[len("train_"):] if key.startswith("train_") else key
        if base in REFERENCE:
            y, text = REFERENCE[base]
            ax.axhline(y, color="grey", lw=0.9, ls="--", label=text)
            ax.legend(fontsize=7)
        elif len(series) > 1:
            ax.legend(fontsize=7)
        title = f"validation {val_name}" if key == "val" and val_name else quantity(key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return fig, keys
