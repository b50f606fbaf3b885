"""`vaelab train` with the contract flags against a plain PyTorch loop of the same net and recipe.

Both train the IWAE paper's 784-200-200-50 tanh VAE (Bernoulli, dynamic binarization, Adam,
batch 100, lr 1e-3, seed 0) on all 60,000 MNIST training images for the same epochs. The plain
loop is written the way pytorch/examples' vae/main.py is: a DataLoader over a TensorDataset,
summed BCE + KL. Both models are then scored on the same fixed binarized test set by the same
importance-sampled NLL, written plainly here (independent of vaelab's estimator), and the vaelab
model also by vaelab's own. One JSON line per case.

    python benchmarks/vs_plain_loop.py --epochs 10 --seeds 0,1,2 --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import vaelab
from vaelab.api import split_inputs
from vaelab.data import load_dataset


class PlainVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 100))
        self.dec = nn.Sequential(nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784))

    def encode(self, x):
        mu, logvar = self.enc(x.flatten(1)).chunk(2, -1)
        return mu, logvar


def plain_loss(model, x):
    mu, logvar = model.encode(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    bce = F.binary_cross_entropy_with_logits(model.dec(z), x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return (bce + kld) / x.shape[0]


def train_plain(x_train: torch.Tensor, epochs: int, seed: int) -> tuple[PlainVAE, float]:
    torch.manual_seed(seed)
    model = PlainVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x_train.flatten(1)), batch_size=100, shuffle=True)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for (xb,) in loader:
            xb = torch.bernoulli(xb)  # dynamic binarization
            loss = plain_loss(model, xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, time.perf_counter() - t0


@torch.no_grad()
def plain_nll(encode, decode_logits, x: torch.Tensor, k: int, chunk: int = 100) -> float:
    """-mean log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), written out by hand."""
    torch.manual_seed(123)
    total = 0.0
    xf = x.flatten(1)
    for i in range(0, len(x), 100):
        xb = xf[i:i + 100]
        mu, logvar = encode(x[i:i + 100])
        std = torch.exp(0.5 * logvar)
        parts = []
        for s in range(0, k, chunk):
            z = mu + std * torch.randn(min(chunk, k - s), *mu.shape)
            logits = decode_logits(z).flatten(2)
            log_px = -F.binary_cross_entropy_with_logits(logits, xb.expand_as(logits), reduction="none").sum(-1)
            log_pz = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_qz = (-0.5 * ((z - mu) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
            parts.append(torch.logsumexp(log_px + log_pz - log_qz, 0))
        total += (torch.logsumexp(torch.stack(parts), 0) - math.log(k)).sum().item()
    return -total / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--nll-samples", type=int, default=1000)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; one pair of lines per seed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--out", default="runs/bench-vs-plain")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for seed in (int(s) for s in a.seeds.split(",")):
        compare(a, seed)


def compare(a, seed: int) -> None:
    exe = Path(sys.executable).parent / "vaelab"
    cmd = [str(exe), "train", "--model", "vae", "--data", "mnist", "--arch", "mlp", "--hidden", "200,200",
           "--activation", "tanh", "--latent-dim", "50", "--likelihood", "bernoulli", "--binarize", "dynamic",
           "--epochs", str(a.epochs), "--batch-size", "100", "--lr", "1e-3", "--seed", str(seed),
           "--out", a.out, "--val-size", "0", "--nll-samples", "0", "--threads", str(a.threads), "--overwrite",
           "--no-progress"] + (["--data-dir", a.data_dir] if a.data_dir else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    hist = [json.loads(x) for x in (Path(a.out) / "metrics.jsonl").read_text().splitlines()]
    x_test, _ = split_inputs(a.out, "test", a.data_dir)  # the fixed binarized test set both are scored on
    model = vaelab.load(a.out, device="cpu")
    ours_own = vaelab.evaluate(a.out, k=a.nll_samples, data_dir=a.data_dir, save=False, sample_metrics=False)["nll"]
    def ours_encode(x):
        q = model.encode(x)
        return q.mu, q.logvar

    ours_plain = plain_nll(ours_encode, model.decoder, x_test, a.nll_samples)
    print(json.dumps({"benchmark": "vs_plain_loop", "case": "vaelab train", "seed": seed, "epochs": len(hist),
                      "train_seconds": round(sum(h["seconds"] for h in hist), 1),
                      "test_nll_plain_estimator": round(ours_plain, 3), "test_nll_vaelab_estimator": round(ours_own, 3),
                      "k": a.nll_samples}), flush=True)

    ds = load_dataset("mnist", a.data_dir, val_size=0)
    plain, secs = train_plain(ds.train.x.float().div(255), a.epochs, seed)
    print(json.dumps({"benchmark": "vs_plain_loop", "case": "plain PyTorch loop", "seed": seed, "epochs": a.epochs,
                      "train_seconds": round(secs, 1),
                      "test_nll_plain_estimator": round(plain_nll(plain.encode, plain.dec, x_test, a.nll_samples), 3),
                      "k": a.nll_samples}), flush=True)


if __name__ == "__main__":
    main()
