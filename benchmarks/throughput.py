"""Training throughput of vaelab against the plain PyTorch recipe, in the same process,
interleaved, median of repeats, with the ratio and the fraction of this machine's matmul peak.

Cases (a) to (d) of issue 7. (a): the MLP VAE 784-400-20 (pytorch/examples
``vae/main.py``), batch 128, Adam 1e-3, summed BCE + KL, on statically binarized Fashion-MNIST.
The reference is that recipe written plainly: a DataLoader over a TensorDataset, shuffled.
vaelab runs its training loop for two epochs and the second is timed by the loop's own timer
(the batch loop only: no validation, checkpoints or pictures; the first epoch holds a
compile, reported as ``first_epoch_extra_s``). Each repeat times the reference and every
variant (fp32, bf16, compile, bf16 + compile: vaelab's flags) in turn.

(b) the conv VAE and (c) the DCGAN (k = 1) on the 4,000 CIFAR-10 images at 32x32x3, batch 64,
against vaelab's own modules trained in a plain loop (the same network and initial weights; the
GAN's loop is Algorithm 1 with fresh noise for each player, as vaelab's), with the share of
the reference's time spent in convolutions (torch.profiler), the kernels both share. (d): the
importance-sampled NLL with K = 1000 on 1,000 test images, vaelab's batched and chunked
estimator, eager and compiled, against the same sums one image at a time (as Pythae computes
it). Last, the test NLL of (a) after the same epochs in fp32 and bf16 + compile.

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
from _common import RESULTS, emit
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


# the fast paths measured, as vaelab's flags
VARIANTS = {"fp32": {}, "bf16": {"precision": "bf16"}, "compile": {"compile": True},
            "bf16+compile": {"precision": "bf16", "compile": True}, "channels_last": {"channels_last": True}}


def timed_run(cfg) -> tuple[float, float]:
    """(seconds of the second epoch, seconds the first took beyond it: the compile) of the
    training loop alone (no evaluation, no pictures), from its own timer."""
    from vaelab.training.trainer import train as train_loop
    run = train_loop(cfg, log=lambda m: None)
    e1, e2 = (json.loads(x)["seconds"] for x in (run / "metrics.jsonl").read_text().splitlines()[:2])
    return e2, e1 - e2


def mlp_config(a, variant: str, epochs: int = 2, nll_samples: int = 0):
    return vaelab.make_config(data="fashion-mnist", data_dir=a.data_dir, preset="pytorch-examples",
                              binarize="static", batch_size=128, lr=1e-3, epochs=epochs, nll_samples=nll_samples,
                              val_size=0, threads=a.threads, progress=False, overwrite=True,
                              out=f"{a.out}-a-{variant}", seed=0, **VARIANTS[variant])


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
    from vaelab.evaluation.likelihood import evaluate_likelihood
    from vaelab.models.vae import VAE, VAEConfig
    PRESETS = VAE.presets  # the VAE family's published nets
    torch.manual_seed(0)
    model = VAE(VAEConfig(shape=(1, 28, 28), **{k: v for k, v in PRESETS["pytorch-examples"].items()})).eval()
    x = x_test[:a.nll_images]
    flops = len(x) * a.nll_k * 2 * DECODER_MACS
    evaluate_likelihood(model, x[:100], a.nll_k, compile=True)  # the one-off compile
    times: dict[str, list[float]] = {"reference": [], "fp32": [], "compile": []}
    nll = {}
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        nll["reference"] = reference_nll(model, x, a.nll_k)
        times["reference"].append(time.perf_counter() - t0)
        for variant in ("fp32", "compile"):
            t0 = time.perf_counter()
            nll[variant] = evaluate_likelihood(model, x, a.nll_k, compile=variant == "compile")["nll"]
            times[variant].append(time.perf_counter() - t0)
    r = statistics.median(times["reference"])
    rows = []
    for variant in ("fp32", "compile"):
        o = statistics.median(times[variant])
        rows.append({"benchmark": "throughput", "case": f"d: importance-sampled NLL, K={a.nll_k}, {len(x)} images, mlp vae",
                     "variant": variant, "threads": a.threads, "repeats": a.repeats,
                     "reference": "one image at a time", "reference_s": round(r, 3), "vaelab_s": round(o, 3),
                     "speedup": round(r / o, 2), "vaelab_gflops": round(flops / o / 1e9, 2),
                     "matmul_peak_gflops_fp32": round(peak["fp32"], 1),
                     "fraction_of_fp32_peak": round(flops / o / 1e9 / peak["fp32"], 3),
                     "nll_reference": round(nll["reference"], 3), "nll_vaelab": round(nll[variant], 3)})
    return rows


# ------------------------------------------------------------------------------------------
# (b) the conv VAE and (c) the DCGAN on 32x32x3: the 4,000 CIFAR-10 images through --data array.
# The reference loops train vaelab's own modules (the same network, the same initial weights)
# the plain way: a shuffled DataLoader over a TensorDataset, Adam, the loss written out.
# ------------------------------------------------------------------------------------------

CIFAR = dict(data="array", key="data", label_key="labels", shape=(32, 32, 3), layout="chw", binarize="none",
             arch="conv", val_size=0, batch_size=64, epochs=1, nll_samples=0, seed=0)
CASE_FLAGS = {"b": dict(model="vae", channels=(64, 128, 256, 256), latent_dim=64, likelihood="bernoulli", lr=1e-3),
              "c": dict(model="gan", k=1, lr=2e-4)}


def _cifar_run(a, case: str, variant: str = "fp32"):
    flags = {**CIFAR, **CASE_FLAGS[case], "data_path": str(Path(a.data_dir) / "cifar10_batch1_first4000.npz"),
             **VARIANTS[variant], "epochs": 2}
    return vaelab.make_config(threads=a.threads, progress=False, overwrite=True, out=f"{a.out}-{case}-{variant}",
                              **flags)


def reference_cifar(a, case: str):
    """(epoch function, number of images): vaelab's module for the case, trained plainly."""
    import dataclasses
    from vaelab.models import MODELS
    cfg = _cifar_run(a, case)
    ds = vaelab.data.run_dataset(cfg.data)
    x = to_unit(ds.train.x, ds.spec.levels)
    model_cfg = dataclasses.replace(cfg.model, shape=tuple(ds.spec.shape))
    torch.manual_seed(0)
    model = MODELS[cfg.train.model](model_cfg).train()
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


def conv_fraction(epoch) -> float:
    """The share of a reference epoch's CPU time spent in convolutions (forward and backward),
    from torch.profiler: the kernels vaelab and the reference share, so the most any loop
    around them can gain over the reference is 1 / (this share)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        epoch()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if "conv" in e.key.lower()) / total


def cifar_case(a, case: str, variants: list[str]) -> list[dict]:
    epoch, n = reference_cifar(a, case)
    epoch()  # warm-up
    times: dict[str, list[float]] = {"reference": [], **{v: [] for v in variants}}
    compile_s: dict[str, float] = {}
    for _ in range(a.repeats):
        times["reference"].append(epoch())
        for v in variants:
            t, c = timed_run(_cifar_run(a, case, v))
            times[v].append(t)
            compile_s[v] = max(c, compile_s.get(v, 0.0))  # the first run of a variant compiles
    share = conv_fraction(epoch)
    r = statistics.median(times["reference"])
    what = {"b": "b: conv vae 64-128-256-256, 32x32x3, batch 64", "c": "c: dcgan 32x32x3, k=1, batch 64"}[case]
    rows = []
    for v in variants:
        o = statistics.median(times[v])
        rows.append({"benchmark": "throughput", "case": what, "variant": v, "threads": a.threads, "examples": n,
                     "repeats": a.repeats, "reference_s": round(r, 3), "vaelab_s": round(o, 3),
                     "speedup": round(r / o, 3), "reference_examples_per_s": round(n / r, 1),
                     "vaelab_examples_per_s": round(n / o, 1), "first_epoch_extra_s": round(compile_s[v], 1),
                     "reference_conv_share": round(share, 3), "speedup_bound_same_conv_kernels": round(1 / share, 2),
                     "reference_all_s": [round(x, 3) for x in times["reference"]],
                     "vaelab_all_s": [round(x, 3) for x in times[v]]})
    return rows


def quality_case(a) -> dict:
    """Test NLL (K = 1000, all 10,000 test images) after the same epochs, fp32 against each
    fast variant: what the speed costs."""
    nll = {}
    for v in ["fp32", *a.quality_variants.split(",")]:
        run = vaelab.train(mlp_config(a, v, epochs=a.quality_epochs, nll_samples=1000), log=lambda m: None)
        nll[v] = json.loads((run / "eval-test.json").read_text())["nll"]
    return {"benchmark": "throughput", "case": "a: test NLL after the same epochs", "epochs": a.quality_epochs,
            "k": 1000, "nll": {k: round(v, 3) for k, v in nll.items()},
            "difference_to_fp32": {k: round(v - nll["fp32"], 3) for k, v in nll.items() if k != "fp32"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="runs/bench-throughput")
    ap.add_argument("--results", default=str(RESULTS / "throughput.jsonl"))
    ap.add_argument("--cases", default="a,b,c,d")
    ap.add_argument("--nll-k", type=int, default=1000)
    ap.add_argument("--nll-images", type=int, default=1000)
    ap.add_argument("--variants-a", default="fp32,bf16,compile,bf16+compile")
    ap.add_argument("--variants-b", default="fp32,channels_last,bf16,compile")
    ap.add_argument("--variants-c", default="fp32,channels_last,compile")
    ap.add_argument("--quality-epochs", type=int, default=10, help="epochs of the NLL comparison (0 skips it)")
    ap.add_argument("--quality-variants", default="bf16+compile")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    ds = load_dataset("fashion-mnist", a.data_dir, val_size=0)
    cases = a.cases.split(",")
    for case in ("b", "c"):
        if case in cases:
            for row in cifar_case(a, case, getattr(a, f"variants_{case}").split(",")):
                emit(a.results, row)
    if "d" in cases:
        for row in nll_case(a, peak, binarize_fixed(to_unit(ds.test.x, ds.spec.levels))):
            emit(a.results, row)
    if "a" not in cases:
        return
    x = binarize_fixed(to_unit(ds.train.x, ds.spec.levels))
    n = len(x)
    torch.manual_seed(0)
    model = ExamplesVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x), batch_size=128, shuffle=True)
    reference_epoch(model, opt, loader)  # warm-up
    variants = a.variants_a.split(",")
    times: dict[str, list[float]] = {"reference": [], **{v: [] for v in variants}}
    compile_s: dict[str, float] = {}
    for _ in range(a.repeats):
        times["reference"].append(reference_epoch(model, opt, loader))
        for v in variants:
            t, c = timed_run(mlp_config(a, v))
            times[v].append(t)
            compile_s[v] = max(c, compile_s.get(v, 0.0))  # the first run of a variant compiles
    r = statistics.median(times["reference"])
    for v in variants:
        o = statistics.median(times[v])
        emit(a.results, {
            "benchmark": "throughput", "case": "a: mlp vae 784-400-20, batch 128, binarized fashion-mnist",
            "variant": v, "threads": a.threads, "examples": n, "repeats": a.repeats,
            "reference_s": round(r, 3), "vaelab_s": round(o, 3), "speedup": round(r / o, 3),
            "reference_examples_per_s": round(n / r), "vaelab_examples_per_s": round(n / o),
            "first_epoch_extra_s": round(compile_s[v], 1),
            "vaelab_gflops": round(n * FLOPS_PER_EXAMPLE / o / 1e9, 2),
            "matmul_peak_gflops_fp32": round(peak["fp32"], 1), "matmul_peak_gflops_bf16": round(peak["bf16"], 1),
            "fraction_of_fp32_peak": round(n * FLOPS_PER_EXAMPLE / o / 1e9 / peak["fp32"], 3),
            "reference_all_s": [round(x, 3) for x in times["reference"]],
            "vaelab_all_s": [round(x, 3) for x in times[v]]})
    if a.quality_epochs:
        emit(a.results, quality_case(a))


if __name__ == "__main__":
    main()
