"""Class-conditional samples on MNIST: the share of the samples drawn for class c that the Fréchet
feature classifier assigns to c (``class_accuracy``), and the Fréchet distance per class, for the
conditional VAE trained for a wall-clock budget; or for runs already trained (``--runs``, an
M2's for example). One JSON line per run:

    python benchmarks/class_samples.py --minutes 10 --data-dir ../shared/data
    python benchmarks/class_samples.py --runs /tmp/ssg/m2-100-0 --data-dir ../shared/data

The samples are ``vaelab eval RUN --samples N``'s (10,000 by default, 1,000 a class), each class's
z drawn from p(z) and decoded to the decoder's mean; the classifier is the one the Fréchet distance
reads (trained once on the data's training images, then cached).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, emit, machine, shown  # noqa: E402

import vaelab  # noqa: E402
from vaelab.rundir import read_run_config  # noqa: E402

# the conditional VAE as the semi-supervised benchmark's M2 is built: one hidden layer of 500
# softplus units in q(z|x,y) and p(x|y,z), a 50-D z, Bernoulli pixels binarized afresh
CVAE = dict(model="cvae", hidden=(500,), activation="softplus", latent_dim=50)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="the CVAE's training budget")
    p.add_argument("--runs", default=None, help="comma-separated run directories to score instead of training")
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/vaelab-class-samples", help="where the CVAE's run is written")
    p.add_argument("--out", default=str(RESULTS / "class_samples.jsonl"))
    a = p.parse_args()
    base = {"machine": machine(a.threads), "command": shown(sys.argv)}
    if a.runs:
        runs = [(Path(r), None) for r in a.runs.split(",")]
    else:
        cfg = vaelab.make_config(data="mnist", data_dir=a.data_dir, seed=a.seed, epochs=100_000,
                                 time_budget=a.minutes, nll_samples=0, report=False, progress=False,
                                 threads=a.threads, out=str(Path(a.work) / f"cvae-{a.seed}"), overwrite=True, **CVAE)
        t0 = time.perf_counter()
        run = vaelab.train(cfg, log=lambda m: None)
        runs = [(run, (time.perf_counter() - t0) / 60)]
    for run, minutes in runs:
        t0 = time.perf_counter()
        res = vaelab.evaluate(run, k=1, samples=a.samples, sample_metrics=True, save=False, data_dir=a.data_dir,
                              threads=a.threads)
        model = read_run_config(run)["run"]["train"]["model"]
        emit(a.out, {"run": run.name, "model": model, "minutes": minutes, "budget_minutes": a.minutes if minutes else None,
                     "samples": a.samples, "class_accuracy": res["class_accuracy"],
                     "frechet_per_class": res.get("frechet_per_class"), "frechet": res.get("frechet"),
                     "frechet_classifier_accuracy": res.get("frechet_classifier_accuracy"),
                     "eval_minutes": (time.perf_counter() - t0) / 60, **base})


if __name__ == "__main__":
    main()
