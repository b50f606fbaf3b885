"""The IWAE paper's 1-stochastic-layer VAE on MNIST, trained for a wall-clock budget.

Burda, Grosse & Salakhutdinov (2016), Table 1: 784-200-200-50 tanh, Bernoulli likelihood,
dynamic binarization, trained on all 60,000 training images, test NLL by importance sampling
with K = 5000: VAE 86.76 nats, IWAE (k = 50) 84.78 nats, after 3280 epochs.

This script trains with ``--time-budget`` (the run stops after the epoch in which the budget is
spent) and an exponential learning-rate decay from 1e-3 to 1e-4 over that time (the range of
the paper's schedule, compressed to the budget), evaluates the final weights with K = 5000 on
the full test set and prints one JSON line.

    python benchmarks/mnist_nll.py --minutes 60 --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import vaelab
from vaelab.api import evaluate
from vaelab.run import make_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget (wall clock)")
    ap.add_argument("--epochs", type=int, default=None, help="train exactly this many epochs instead")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-final", type=float, default=1e-4)
    ap.add_argument("--nll-samples", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--out", default="runs/bench-mnist-nll")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = make_config(data="mnist", data_dir=a.data_dir, val_size=0, preset="iwae", binarize="dynamic",
                      batch_size=a.batch_size, lr=a.lr, lr_final=a.lr_final, lr_schedule="exponential",
                      epochs=a.epochs or 100000, time_budget=None if a.epochs else a.minutes, nll_samples=0, out=a.out, overwrite=True, threads=a.threads,
                      progress=False, seed=0)
    t0 = time.perf_counter()
    run_dir = vaelab.train(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    hist = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    t1 = time.perf_counter()
    res = evaluate(run_dir, "test", a.nll_samples, batch_size=100, checkpoint="last", data_dir=a.data_dir,
                   sample_metrics=False)
    print(json.dumps({
        "benchmark": "mnist_nll", "model": "vae 784-200-200-50 tanh (IWAE paper, 1 stochastic layer)",
        "epochs": len(hist), "train_seconds": round(sum(h["seconds"] for h in hist), 1),
        "wall_seconds_with_pictures": round(wall, 1), "batch_size": a.batch_size,
        "budget_minutes": None if a.epochs else a.minutes, "lr": [a.lr, a.lr_final], "threads": a.threads, "test_nll": round(res["nll"], 3),
        "test_elbo": round(res["elbo"], 3), "test_bpd": round(res["bpd"], 4), "k": res["k"], "n": res["n"],
        "eval_seconds": round(time.perf_counter() - t1, 1), "paper_vae_nll": 86.76, "paper_iwae_k50_nll": 84.78,
        "torch": torch.__version__, "run_dir": str(run_dir),
    }))


if __name__ == "__main__":
    main()
