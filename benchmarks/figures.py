"""The lecture's five figures (`vaelab figures`): how long each takes to train and draw, and the
numbers each claims. The issue's budget: all five in at most 10 minutes on a 2-core CPU.

Runs :func:`vaelab.lecture.write_figures` once and prints one JSON line per figure (its
name, seconds, key numbers, the CPU model and flags), then one with the total.

    python benchmarks/figures.py --data-dir ../shared/data --out runs/bench-figures
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from _common import RESULTS, emit, machine

from vaelab.lecture import FIGURES, INDEX, THREADS, write_figures

# the numbers that say whether each figure shows what it claims
KEY_NUMBERS = {
    "gan-1d": ("first_mean_abs_d_minus_half", "last_mean_abs_d_minus_half", "last_tv_distance"),
    "dae-field": ("mean_cosine", "mean_cosine_within_2_sigma", "fraction_positive"),
    "linear-ae-pca": ("start_max_angle_deg", "final_max_angle_deg"),
    "aevb-manifold": ("epochs", "final_val_elbo"),
    "gan-game": ("final_d_real", "final_d_fake", "final_d_loss"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--out", default="runs/bench-figures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help=f"comma-separated figure names, of {','.join(FIGURES)}")
    ap.add_argument("--results", default=str(RESULTS / "figures.jsonl"), help="JSON lines appended here")
    a = ap.parse_args()
    out = Path(a.out)
    host = machine(THREADS)  # the threads the figures train with; the load average before them
    t0 = time.perf_counter()
    write_figures(out, seed=a.seed, data_dir=a.data_dir, only=a.only.split(",") if a.only else None,
                  log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - t0
    index = json.loads((out / INDEX).read_text())
    for f in index["figures"]:
        doc = json.loads((out / f["json"]).read_text())
        emit(a.results, {"benchmark": "figures", "figure": f["name"], "seconds": f["seconds"],
                         **{k: doc.get(k) for k in KEY_NUMBERS[f["name"]]}, "seed": a.seed, **host})
    emit(a.results, {"benchmark": "figures", "figure": "total", "figures": len(index["figures"]),
                     "seconds": index["total_seconds"], "wall_seconds": round(wall, 2), "budget_seconds": 600,
                     "within_budget": wall <= 600, "seed": a.seed, **host,
                     "load_1min_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None})


if __name__ == "__main__":
    main()
