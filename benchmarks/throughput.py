"""Training throughput of vaelab against the plain PyTorch recipe, in the same process,
interleaved, median of repeats, with the ratio and the fraction of this machine's matmul peak.

Case (a) of issue 7, the first one measured: the MLP VAE 784-400-20 (pytorch/examples
``vae/main.py``), batch 128, Adam 1e-3, summed BCE + KL, on statically binarized Fashion-MNIST.
The reference is that recipe written plainly: a DataLoader over a TensorDataset, shuffled.
vaelab runs ``vaelab.train`` for one epoch (its own timer covers the batch loop only: no
validation, checkpoints or pictures). Each repeat times one epoch of each, alternately.

FLOPs per example of a training step: forward 2 x (784*400 + 400*40 + 20*400 + 400*784) and
backward about twice that (3x the forward in all); the peak is a 2048^3 matrix product, fp32
and bf16, timed in the same run. One JSON line per case.

    python benchmarks/throughput.py --data-dir ../shared/data --repeats 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import vaelab
from vaelab.data import load_dataset
from vaelab.data.transforms import binarize_fixed, to_unit

FORWARD_MACS = 784 * 400 + 400 * 40 + 20 * 400 + 400 * 784
FLOPS_PER_EXAMPLE = 3 * 2 * FORWARD_MACS


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n x n matrix product (median of repeats, after a warm-up)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


class ExamplesVAE(nn.Module):
    """pytorch/examples vae/main.py's model."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def reference_epoch(model, opt, loader) -> float:
    model.train()
    t0 = time.perf_counter()
    for (data,) in loader:
        opt.zero_grad()
        recon, mu, logvar = model(data)
        bce = F.binary_cross_entropy(recon, data.view(-1, 784), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        (bce + kld).backward()
        opt.step()
    return time.perf_counter() - t0


def vaelab_epoch(a) -> float:
    cfg = vaelab.make_config(data="fashion-mnist", data_dir=a.data_dir, preset="pytorch-examples",
                             binarize="static", batch_size=128, lr=1e-3, epochs=1, nll_samples=0, val_size=0,
                             threads=a.threads, progress=False, overwrite=True, out=a.out, seed=0)
    from vaelab.training.trainer import train as train_loop  # the loop alone: no eval, no pictures
    run = train_loop(cfg, log=lambda m: None)
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="runs/bench-throughput")
    ap.add_argument("--results", default="benchmarks/results/throughput.jsonl")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    ds = load_dataset("fashion-mnist", a.data_dir, val_size=0)
    x = binarize_fixed(to_unit(ds.train.x, ds.spec.levels))
    n = len(x)
    torch.manual_seed(0)
    model = ExamplesVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x), batch_size=128, shuffle=True)
    reference_epoch(model, opt, loader)  # warm-up of both
    vaelab_epoch(a)
    ref, ours = [], []
    for _ in range(a.repeats):
        ref.append(reference_epoch(model, opt, loader))
        ours.append(vaelab_epoch(a))
    r, o = statistics.median(ref), statistics.median(ours)
    row = {"benchmark": "throughput", "case": "a: mlp vae 784-400-20, batch 128, binarized fashion-mnist",
           "precision": "fp32", "threads": a.threads, "examples": n, "repeats": a.repeats,
           "reference_s": round(r, 3), "vaelab_s": round(o, 3), "speedup": round(r / o, 3),
           "reference_examples_per_s": round(n / r), "vaelab_examples_per_s": round(n / o),
           "vaelab_gflops": round(n * FLOPS_PER_EXAMPLE / o / 1e9, 2),
           "matmul_peak_gflops_fp32": round(peak["fp32"], 1), "matmul_peak_gflops_bf16": round(peak["bf16"], 1),
           "fraction_of_fp32_peak": round(n * FLOPS_PER_EXAMPLE / o / 1e9 / peak["fp32"], 3),
           "reference_all_s": [round(v, 3) for v in ref], "vaelab_all_s": [round(v, 3) for v in ours]}
    line = json.dumps(row)
    print(line, flush=True)
    with open(a.results, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
