"""Time to quality: test NLL of the IWAE paper's VAE on MNIST against wall-clock minutes of
training, for vaelab's recipe and for a plain PyTorch loop of the same net.

The protocol is the paper's (Burda et al. 2016, Table 1): 784-200-200-50 tanh, Bernoulli
likelihood, dynamic binarization, all 60,000 training images; the test NLL by importance
sampling on all 10,000 test images, K = 1000 at each mark (2, 5, 10, 20 minutes of training)
and K = 5000 at the end. Paper: VAE 86.76 nats. Each recipe trains once for the whole budget;
a mark's checkpoint is the first epoch ending after it (vaelab's weights as it saves them,
averaged under --ema; the plain loop's raw weights). One JSON line per (recipe, mark), with the
machine; --plot draws benchmarks/results/time_to_quality.png from the results file.

    python benchmarks/time_to_quality.py --recipes vaelab,plain --minutes 20 --threads 2 \\
        --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

from _common import RESULTS, emit, iwae_net, machine

MARKS = (2, 5, 10, 20, 30, 60)
PAPER_VAE = 86.76
PAPER_IWAE_K5 = 85.54  # Burda et al. 2016, Table 1, 1 stochastic layer
# vaelab's recipe: what `--preset iwae` trains with, plus the budget
VAELAB = dict(data="mnist", preset="iwae", binarize="dynamic", val_size=0, batch_size=100, lr=1e-3, lr_final=1e-4,
              lr_schedule="cosine", ema=0.999, nll_samples=0, progress=False, seed=0)


def _watch(run_dir: Path, marks, snaps: Path, stop: threading.Event, recipe: str) -> None:
    """Copy model.safetensors at the first epoch that ends after each mark (metrics.jsonl is
    written after the weights, and the next epoch takes seconds, so the copy is that epoch's)."""
    left = list(marks)
    while left and not stop.is_set():
        time.sleep(0.2)
        try:
            hist = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        except (OSError, ValueError):
            continue
        spent = sum(h["seconds"] for h in hist)
        while left and spent >= 60 * left[0]:
            shutil.copy(run_dir / "model.safetensors", snaps / f"{recipe}-{left[0]}.safetensors")
            (snaps / f"{recipe}-{left[0]}.json").write_text(json.dumps({"epochs": len(hist), "seconds": spent}))
            left.pop(0)


def recipe_settings(recipe: str, a) -> dict:
    """vaelab's settings for a recipe: ``vaelab`` (the VAE), ``iwae`` (the same net and recipe
    on the IWAE bound with ``--k``)."""
    return {**VAELAB, "model": "iwae", "k": a.k} if recipe == "iwae" else dict(VAELAB)


def train_vaelab(a, snaps: Path, recipe: str = "vaelab") -> Path:
    import vaelab
    out = Path(a.out) / recipe
    cfg = vaelab.make_config(**recipe_settings(recipe, a), data_dir=a.data_dir, epochs=100000,
                             time_budget=a.minutes, threads=a.threads, out=str(out), overwrite=True)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(out, [m for m in MARKS if m <= a.minutes], snaps, stop, recipe))
    watcher.start()
    try:
        vaelab.train(cfg, log=lambda m: None)
    finally:
        stop.set()
        watcher.join()
    return out


def train_plain(a, snaps: Path) -> None:
    """The same net in a plain loop: Adam 1e-3, batch 100, a cosine learning rate over the
    budget to 1e-4, dynamic binarization, the ELBO with the closed-form KL."""
    import torch.nn.functional as F
    from vaelab.data import load_dataset
    from vaelab.models.vae import VAE, VAEConfig
    ds = load_dataset("mnist", a.data_dir)
    x = ds.train.x.float().div(255).flatten(1)  # all 60,000
    torch.manual_seed(0)
    net = iwae_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    spent, marks, epochs = 0.0, [m for m in MARKS if m <= a.minutes], 0
    while spent < 60 * a.minutes:
        t0 = time.perf_counter()
        for g in opt.param_groups:
            frac = min(1.0, spent / (60 * a.minutes))
            g["lr"] = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * frac))
        for idx in torch.randperm(len(x)).split(100):
            xb = torch.bernoulli(x[idx]).view(-1, 1, 28, 28)
            h = net.encoder(xb)
            mu, logvar = h.chunk(2, -1)
            z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
            rec = F.binary_cross_entropy_with_logits(net.decoder(z), xb, reduction="sum")
            kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum()
            opt.zero_grad()
            ((rec + kl) / len(xb)).backward()
            opt.step()
        spent += time.perf_counter() - t0
        epochs += 1
        while marks and spent >= 60 * marks[0]:
            torch.save(net.state_dict(), snaps / f"plain-{marks[0]}.pt")
            (snaps / f"plain-{marks[0]}.json").write_text(json.dumps({"epochs": epochs, "seconds": spent}))
            marks.pop(0)


def nll(a, recipe: str, mark: int, snaps: Path, k: int) -> dict:
    """Test NLL of a snapshot with vaelab's estimator (the same for both recipes)."""
    from vaelab.data import load_dataset
    from vaelab.data.transforms import eval_inputs
    from vaelab.evaluation.likelihood import evaluate_likelihood
    from vaelab.io import load_weights
    from vaelab.models.vae import VAE, VAEConfig
    ds = load_dataset("mnist", a.data_dir)
    x = eval_inputs(ds.test.x, ds.spec.levels, "dynamic")  # the fixed binarized test set, all 10,000
    net = iwae_net()
    if recipe == "plain":
        net.load_state_dict(torch.load(snaps / f"plain-{mark}.pt"))
    else:  # the IWAE's nets are the VAE's: its weights load into the same module
        load_weights(net, snaps / f"{recipe}-{mark}.safetensors")
    epochs = json.loads((snaps / f"{recipe}-{mark}.json").read_text())["epochs"]
    t0 = time.perf_counter()
    res = evaluate_likelihood(net.eval(), x, k, seed=1, precision="fp32")  # the protocol's fp32
    return {"nll": round(res["nll"], 3), "elbo": round(res["elbo"], 3), "k": k, "n": res["n"], "epochs": epochs,
            "eval_seconds": round(time.perf_counter() - t0, 1), "nll_path": res["nll_path"]}


def plot(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for recipe in ("vaelab", "plain", "iwae"):
        pts = sorted((r["minutes"], r["nll"]) for r in rows if r["recipe"] == recipe and r["k"] == 1000)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{recipe} (K = 1000)")
        end = [(r["minutes"], r["nll"]) for r in rows if r["recipe"] == recipe and r["k"] == 5000]
        if end:
            ax.scatter(*zip(*end), marker="*", s=120, label=f"{recipe} (K = 5000)")
    ax.axhline(PAPER_VAE, color="grey", ls="--", lw=0.8, label="paper, VAE (86.76)")
    if any(r["recipe"] == "iwae" for r in rows):
        ax.axhline(PAPER_IWAE_K5, color="grey", ls=":", lw=0.8, label="paper, IWAE k = 5 (85.54)")
    ax.set(xlabel="minutes of training", ylabel="test NLL (nats)", title="MNIST, 784-200-200-50 VAE")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "time_to_quality.png", dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="vaelab,plain", help="vaelab, plain, iwae (the IWAE bound, --k)")
    ap.add_argument("--k", type=int, default=5, help="importance samples of the iwae recipe's bound")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--out", default="runs/bench-time-to-quality")
    ap.add_argument("--results", default=str(RESULTS / "time_to_quality.jsonl"))
    ap.add_argument("--plot", action="store_true", help="only draw the plot from the results file")
    a = ap.parse_args()
    if a.plot:
        plot(Path(a.results))
        return
    torch.set_num_threads(a.threads)
    snaps = Path(a.out) / "snapshots"
    snaps.mkdir(parents=True, exist_ok=True)
    for recipe in a.recipes.split(","):
        t0 = time.perf_counter()
        train_plain(a, snaps) if recipe == "plain" else train_vaelab(a, snaps, recipe)
        wall = time.perf_counter() - t0
        marks = [m for m in MARKS if m <= a.minutes]
        for m in marks:
            for k in ((1000, 5000) if m == marks[-1] else (1000,)):
                emit(a.results, {"benchmark": "time_to_quality", **machine(a.threads), "recipe": recipe,
                                 "minutes": m, "train_wall_seconds": round(wall, 1),
                                 **(recipe_settings(recipe, a) if recipe != "plain" else {}),
                                 **nll(a, recipe, m, snaps, k),
                                 "paper_vae_nll": PAPER_VAE})
    plot(Path(a.results))


if __name__ == "__main__":
    sys.exit(main())
