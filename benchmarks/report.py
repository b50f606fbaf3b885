"""What the report costs: the seconds `vaelab report` takes on finished runs (its share of a
training run's end), and the seconds of `vaelab compare` over them. One JSON line per case.

    python benchmarks/report.py                      # the demo's VAE and a WAE on the digits
    python benchmarks/report.py --data mnist --epochs 2

Each case trains its run once (not timed), then times write_report (and compare) --repeats
times and reports the median, the page's size in bytes and the training's own seconds."""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, emit, machine, shown  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="digits")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--results", default=str(RESULTS / "report.jsonl"))
    a = p.parse_args()
    import torch

    import vaelab
    from vaelab.report.compare import compare
    from vaelab.report.run import write_report
    torch.set_num_threads(a.threads)
    info = {**machine(a.threads), "command": shown(["python", "benchmarks/report.py", *sys.argv[1:]])}
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for model in ("vae", "wae"):
            t0 = time.perf_counter()
            run = vaelab.train(vaelab.make_config(data=a.data, model=model, epochs=a.epochs, progress=False,
                                                  nll_samples=100, threads=a.threads, out=f"{tmp}/{model}"),
                               log=lambda m: None)
            trained = time.perf_counter() - t0
            runs.append(run)
            times = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                page = write_report(run)
                times.append(time.perf_counter() - t0)
            emit(a.results, {"case": "report", "data": a.data, "model": model, "epochs": a.epochs,
                             "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                             "max_s": round(max(times), 3), "page_bytes": page.stat().st_size,
                             "train_and_finish_s": round(trained, 1), **info})
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            page = compare([str(r) for r in runs], f"{tmp}/cmp")
            times.append(time.perf_counter() - t0)
        emit(a.results, {"case": "compare", "data": a.data, "runs": len(runs), "epochs": a.epochs,
                         "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                         "max_s": round(max(times), 3), "page_bytes": page.stat().st_size, **info})


if __name__ == "__main__":
    main()
