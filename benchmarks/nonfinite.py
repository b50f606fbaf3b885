"""Non-finite losses injected into every registered model's training (tests/nonfinite.py): one
JSON line per model with the poisoned steps of its transient runs and how many the guard
skipped (counted, the run ending finite), and its runs poisoned for good and how many stopped in
one sentence keeping epoch 1's checkpoints:

    python benchmarks/nonfinite.py
    python benchmarks/nonfinite.py --models vae,gan --runs 5 --steps 4
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import RESULTS, emit, machine, names, shown  # noqa: E402

from nonfinite import Injected, persistent, transient  # noqa: E402
from vaelab.registry import MODELS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(sorted(MODELS)))
    p.add_argument("--runs", type=int, default=3, help="transient runs per model, each its own random steps")
    p.add_argument("--steps", type=int, default=3, help="steps poisoned in each transient run")
    p.add_argument("--out", default=str(RESULTS / "nonfinite.jsonl"))
    a = p.parse_args()
    import torch
    torch.set_num_threads(1)
    base = {"machine": machine(1), "command": shown(sys.argv)}
    for model in names(p, "--models", a.models, MODELS):
        t0 = time.perf_counter()
        out = Injected(model)
        with tempfile.TemporaryDirectory(prefix="vaelab-nonfinite-") as work:
            for seed in range(a.runs):
                transient(model, Path(work), out, a.steps, seed)
            persistent(model, Path(work), out)
        emit(a.out, {"model": model, "injected": out.injected, "skipped": out.skipped,
                     "persistent": out.persistent, "stopped": out.stopped, "failures": out.failures[:10],
                     "seconds": round(time.perf_counter() - t0, 1), **base})


if __name__ == "__main__":
    main()
