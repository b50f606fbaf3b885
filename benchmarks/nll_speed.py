"""The importance-sampled NLL, fast and honest: vaelab's estimator (the path `vaelab eval` takes,
chosen from the CPU's flags) timed against a plain batched estimator in the same process, on
the IWAE paper's MNIST net (784-200-200-50 tanh, Bernoulli) and all 10,000 test images.

The plain estimator is what a user writes with torch.distributions: encode a batch once, draw
the K samples in chunks (the same memory per chunk as vaelab's), score them, and take the
logsumexp over all K. Both must agree to within 0.05 nats (issue 14). vaelab's time on the first
repeat includes its one-off compile (seconds). One JSON line per repeat, with the machine.

    python benchmarks/time_to_quality.py ...   # writes the snapshot weights used by default
    python benchmarks/nll_speed.py --k 5000 --threads 2 --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.distributions import Normal

from _common import RESULTS, emit, iwae_net, machine

DEFAULT_WEIGHTS = "runs/bench-time-to-quality/snapshots/vaelab-20.safetensors"


@torch.no_grad()
def plain_nll(net, x: torch.Tensor, k: int, batch: int = 100, chunk_elements: int = 1 << 21) -> float:
    """-mean log p(x), log p(x) ~ logsumexp_k log p(x, z_k) / q(z_k|x) - log K, z_k ~ q(z|x)."""
    total = 0.0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].flatten(1)
        mu, logvar = net.encoder(x[i:i + batch]).chunk(2, -1)  # one encoder pass
        q, prior = Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
        c = max(1, chunk_elements // xb.numel())
        lws = []
        for s in range(0, k, c):
            z = q.sample((min(c, k - s),))  # [c, B, D]
            logits = net.decoder(z).flatten(2)
            log_px_z = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
            lws.append(log_px_z + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1))
        total += (torch.logsumexp(torch.cat(lws), 0) - math.log(k)).sum().item()
    return -total / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="the net's safetensors (a vaelab run's model.safetensors)")
    ap.add_argument("--k", type=int, default=5000)
    ap.add_argument("--n", type=int, default=10_000, help="test images (the protocol: all 10,000)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                    help="vaelab's chunk compiled: auto (from 2,000,000 samples), on, off")
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--results", default=str(RESULTS / "nll_speed.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from vaelab.data import load_dataset
    from vaelab.data.transforms import eval_inputs
    from vaelab.evaluation.likelihood import evaluate_likelihood
    from vaelab.io import load_weights
    from vaelab.models.vae import VAE, VAEConfig
    ds = load_dataset("mnist", a.data_dir)
    x = eval_inputs(ds.test.x, ds.spec.levels, "dynamic")[:a.n]  # the fixed binarized test set
    net = iwae_net()
    load_weights(net, a.weights)
    net.eval()
    lines = []
    fast_s, plain_s = [], []
    for rep in range(a.repeats):
        torch.manual_seed(rep)
        t0 = time.perf_counter()
        plain = plain_nll(net, x, a.k)
        plain_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fast = evaluate_likelihood(net, x, a.k, precision=a.precision, seed=rep,
                                    compile={"auto": None, "on": True, "off": False}[a.compile], log=lines.append)
        fast_s.append(time.perf_counter() - t0)
        emit(a.results, {"benchmark": "nll_speed", **machine(a.threads), "repeat": rep, "k": a.k, "n": len(x),
                         "path": fast["nll_path"], "vaelab_seconds": round(fast_s[-1], 1),
                         "plain_seconds": round(plain_s[-1], 1), "speedup": round(plain_s[-1] / fast_s[-1], 3),
                         "vaelab_nll": round(fast["nll"], 4), "plain_nll": round(plain, 4),
                         "difference": round(fast["nll"] - plain, 4), "weights": a.weights})
    if a.repeats > 1:
        print(f"median: vaelab {statistics.median(fast_s):.1f} s, plain {statistics.median(plain_s):.1f} s, "
              f"{statistics.median(plain_s) / statistics.median(fast_s):.2f}x", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
