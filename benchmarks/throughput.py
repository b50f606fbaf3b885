"""Training throughput of vaelab against the plain PyTorch recipe, in the same process,
interleaved, median of repeats, with the ratio and the fraction of this machine's matmul peak.

Cases (a) to (d) of issue 7. (a): the MLP VAE 784-400-20 (pytorch/examples
``vae/main.py``), batch 128, Adam 1e-3, summed BCE + KL, on statically binarized Fashion-MNIST.
The reference is that recipe written plainly: a DataLoader over a TensorDataset, shuffled.
vaelab runs ``vaelab.train`` for one epoch (its own timer covers the batch loop only: no
validation, checkpoints or pictures). Each repeat times one epoch of each, alternately.

(b) the conv VAE and (c) the DCGAN (k = 1) on the 4,000 CIFAR-10 images at 32x32x3, batch 64,
against vaelab's own modules trained in a plain loop (the same network and initial weights; the
GAN's loop is Algorithm 1 with fresh noise for each player, as vaelab's). (d): the importance-sampled NLL with K = 1000 on 1,000 test images, vaelab's batched and
chunked estimator against the same sums one image at a time (as Pythae computes it).

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
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import vaelab
from _common import emit
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


DECODER_MACS = 20 * 400 + 400 * 784


def reference_nll(model, x: torch.Tensor, k: int) -> float:
    """The importance-sampled NLL one image at a time (as Pythae computes it): K samples of z
    for each image in turn."""
    import math
    total = 0.0
    with torch.no_grad():
        for xi in x:
            q = model.encode(xi[None])
            z = q.mu + q.std * torch.randn(k, q.mu.shape[-1])
            logits = model.decoder(z).flatten(1)
            log_px = -F.binary_cross_entropy_with_logits(logits, xi.flatten()[None].expand_as(logits),
                                                         reduction="none").sum(-1)
            log_pz = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_qz = (-0.5 * ((z - q.mu) / q.std) ** 2 - torch.log(q.std) - 0.5 * math.log(2 * math.pi)).sum(-1)
            total -= (torch.logsumexp(log_px + log_pz - log_qz, 0) - math.log(k)).item()
    return total / len(x)


def nll_case(a, peak: dict, x_test: torch.Tensor) -> dict:
    """Case (b) the conv VAE and (c) the DCGAN (k = 1) on the 4,000 CIFAR-10 images at 32x32x3, batch 64,
against vaelab's own modules trained in a plain loop (the same network and initial weights; the
GAN's loop is Algorithm 1 with fresh noise for each player, as vaelab's). (d): the importance-sampled NLL, K = 1000, 1000 test images, the MLP VAE."""
    from vaelab.likelihood import evaluate_likelihood
    from vaelab.models.vae import VAE, VAEConfig
    from vaelab.run import PRESETS
    torch.manual_seed(0)
    model = VAE(VAEConfig(shape=(1, 28, 28), **{k: v for k, v in PRESETS["pytorch-examples"].items()})).eval()
    x = x_test[:a.nll_images]
    flops = len(x) * a.nll_k * 2 * DECODER_MACS
    ref, ours = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        r_nll = reference_nll(model, x, a.nll_k)
        ref.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        o_nll = evaluate_likelihood(model, x, a.nll_k, batch_size=100)["nll"]
        ours.append(time.perf_counter() - t0)
    r, o = statistics.median(ref), statistics.median(ours)
    return {"benchmark": "throughput", "case": f"d: importance-sampled NLL, K={a.nll_k}, {len(x)} images, mlp vae",
            "precision": "fp32", "threads": a.threads, "repeats": a.repeats, "reference": "one image at a time",
            "reference_s": round(r, 3), "vaelab_s": round(o, 3), "speedup": round(r / o, 2),
            "vaelab_gflops": round(flops / o / 1e9, 2), "matmul_peak_gflops_fp32": round(peak["fp32"], 1),
            "fraction_of_fp32_peak": round(flops / o / 1e9 / peak["fp32"], 3),
            "nll_reference": round(r_nll, 3), "nll_vaelab": round(o_nll, 3)}


# ------------------------------------------------------------------------------------------
# (b) the conv VAE and (c) the DCGAN on 32x32x3: the 4,000 CIFAR-10 images through --data array.
# The reference loops train vaelab's own modules (the same network, the same initial weights)
# the plain way: a shuffled DataLoader over a TensorDataset, Adam, the loss written out.
# ------------------------------------------------------------------------------------------

CIFAR = dict(data="array", key="data", label_key="labels", shape=(32, 32, 3), layout="chw", binarize="none",
             arch="conv", val_size=0, batch_size=64, epochs=1, nll_samples=0, seed=0)
CASE_FLAGS = {"b": dict(model="vae", channels=(64, 128, 256, 256), latent_dim=64, likelihood="bernoulli", lr=1e-3),
              "c": dict(model="gan", k=1, lr=2e-4)}


def _cifar_run(a, case: str):
    flags = {**CIFAR, **CASE_FLAGS[case], "data_path": str(Path(a.data_dir) / "cifar10_batch1_first4000.npz")}
    return vaelab.make_config(threads=a.threads, progress=False, overwrite=True, out=f"{a.out}-{case}", **flags)


def vaelab_cifar_epoch(a, case: str) -> float:
    from vaelab.training.trainer import train as train_loop
    run = train_loop(_cifar_run(a, case), log=lambda m: None)
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["seconds"]


def reference_cifar(a, case: str):
    """(epoch function, number of images): vaelab's module for the case, trained plainly."""
    import dataclasses
    from vaelab.registry import MODELS
    cfg = _cifar_run(a, case)
    ds = vaelab.data.run_dataset(cfg.data)
    x = to_unit(ds.train.x, ds.spec.levels)
    model_cfg = dataclasses.replace(cfg.model, shape=tuple(ds.spec.shape))
    torch.manual_seed(0)
    model = MODELS[cfg.train.model].model_cls(model_cfg).train()
    loader = DataLoader(TensorDataset(x), batch_size=64, shuffle=True)
    if case == "b":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def epoch() -> float:
            t0 = time.perf_counter()
            for (data,) in loader:
                opt.zero_grad()
                q = model.encode(data)
                z = q.mu + q.std * torch.randn_like(q.mu)
                logits = model.decoder(z)
                bce = F.binary_cross_entropy_with_logits(logits, data, reduction="sum")
                kld = -0.5 * torch.sum(1 + q.logvar - q.mu.pow(2) - q.logvar.exp())
                (bce + kld).backward()
                opt.step()
            return time.perf_counter() - t0
        return epoch, len(x)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def gan_epoch() -> float:  # Algorithm 1, k = 1: fresh noise for each player's step
        t0 = time.perf_counter()
        for (data,) in loader:
            if len(data) < 2:
                continue
            opt_d.zero_grad()
            fake = model.generate(model.prior(len(data))).detach()
            real_logits, fake_logits = model.discriminate(data), model.discriminate(fake)
            d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                      + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
            d_loss.backward()
            opt_d.step()
            opt_g.zero_grad()
            out = model.discriminate(model.generate(model.prior(len(data))))
            F.binary_cross_entropy_with_logits(out, torch.ones_like(out)).backward()
            opt_g.step()
        return time.perf_counter() - t0
    return gan_epoch, len(x)


def cifar_case(a, case: str) -> dict:
    epoch, n = reference_cifar(a, case)
    epoch()
    vaelab_cifar_epoch(a, case)  # warm-up of both
    ref, ours = [], []
    for _ in range(a.repeats):
        ref.append(epoch())
        ours.append(vaelab_cifar_epoch(a, case))
    r, o = statistics.median(ref), statistics.median(ours)
    what = {"b": "b: conv vae 64-128-256-256, 32x32x3, batch 64", "c": "c: dcgan 32x32x3, k=1, batch 64"}[case]
    return {"benchmark": "throughput", "case": what, "precision": "fp32", "threads": a.threads, "examples": n,
            "repeats": a.repeats, "reference_s": round(r, 3), "vaelab_s": round(o, 3), "speedup": round(r / o, 3),
            "reference_examples_per_s": round(n / r, 1), "vaelab_examples_per_s": round(n / o, 1),
            "reference_all_s": [round(v, 3) for v in ref], "vaelab_all_s": [round(v, 3) for v in ours]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="runs/bench-throughput")
    ap.add_argument("--results", default="benchmarks/results/throughput.jsonl")
    ap.add_argument("--cases", default="a,b,c,d")
    ap.add_argument("--nll-k", type=int, default=1000)
    ap.add_argument("--nll-images", type=int, default=1000)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    ds = load_dataset("fashion-mnist", a.data_dir, val_size=0)
    cases = a.cases.split(",")
    for case in ("b", "c"):
        if case in cases:
            emit(a.results, cifar_case(a, case))
    if "d" in cases:
        emit(a.results, nll_case(a, peak, binarize_fixed(to_unit(ds.test.x, ds.spec.levels))))
    if "a" not in cases:
        return
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
    emit(a.results, row)


if __name__ == "__main__":
    main()
