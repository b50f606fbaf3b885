"""GANs by Algorithm 1 and a VAE on MNIST, each for the same wall-clock training budget, their
samples scored on one scale: the Parzen-window log-likelihood of Goodfellow et al. 2014
(Table 1: GAN 225 +- 2, deep GSN 214 +- 1.1, DBN 138 +- 2, stacked CAE 121 +- 1.6 nats), the
Fréchet distance in the features of vaelab's own MNIST classifier, and samples/s.

Cases: GAN with k = 1 and k = 5 discriminator steps, each with the minimax and the
non-saturating generator loss (the mlp nets, DCGAN's Adam settings), and the IWAE-paper VAE
(dynamic binarization; its samples are the means of p(x|z)). One JSON line per case, and each
case's sample grid copied next to the results.

    python benchmarks/gan_vs_vae.py --minutes 8 --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

import vaelab
from _common import RESULTS, emit

CASES = {
    "gan-k1-non-saturating": {"model": "gan", "k": 1, "g_loss": "non-saturating"},
    "gan-k1-minimax": {"model": "gan", "k": 1, "g_loss": "minimax"},
    "gan-k5-non-saturating": {"model": "gan", "k": 5, "g_loss": "non-saturating"},
    "gan-k5-minimax": {"model": "gan", "k": 5, "g_loss": "minimax"},
    "vae": {"model": "vae", "preset": "iwae", "binarize": "dynamic", "lr": 1e-3},
}


def run_case(name: str, a) -> dict:
    out = os.path.join(a.out, name)
    cfg = vaelab.make_config(data="mnist", data_dir=a.data_dir, epochs=100_000, time_budget=a.minutes,
                             batch_size=100, nll_samples=0, threads=a.threads, progress=False, overwrite=True,
                             out=out, seed=a.seed, **CASES[name])
    vaelab.train(cfg, log=lambda m: None)
    hist = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    t0 = time.perf_counter()
    ev = vaelab.evaluate(out, k=a.nll_samples, data_dir=a.data_dir, save=False, sample_metrics=True,
                         samples=a.samples, checkpoint="last")
    row = {"benchmark": "gan_vs_vae", "case": name, **{k: v for k, v in CASES[name].items() if k != "preset"},
           "epochs": len(hist), "train_seconds": round(sum(h["seconds"] for h in hist), 1),
           "threads": a.threads, **{k: ev[k] for k in ("parzen_ll", "parzen_se", "parzen_sigma", "parzen_samples",
                                                     "frechet", "frechet_classifier_accuracy", "samples_per_s")},
           "eval_seconds": round(time.perf_counter() - t0, 1)}
    if "nll" in ev:
        row["test_nll"], row["nll_samples"] = ev["nll"], a.nll_samples
    last = hist[-1]
    if "train_d_real" in last:  # where the game stood: both near 1/2 at the equilibrium
        row["final_d_real"], row["final_d_fake"] = last["train_d_real"], last["train_d_fake"]
    os.makedirs(a.pictures, exist_ok=True)
    shutil.copy(os.path.join(out, "samples.png"), os.path.join(a.pictures, f"{name}.png"))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=8.0, help="training budget per case")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--nll-samples", type=int, default=100, help="importance samples of the VAE's test NLL")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench-gan-vs-vae")
    ap.add_argument("--pictures", default=str(RESULTS / "gan_vs_vae"))
    ap.add_argument("--results", default=str(RESULTS / "gan_vs_vae.jsonl"))
    a = ap.parse_args()
    for name in a.cases.split(","):
        if name not in CASES:
            ap.error(f"--cases: unknown case {name!r}; expected some of {', '.join(CASES)}")
        emit(a.results, run_case(name, a))


if __name__ == "__main__":
    main()
