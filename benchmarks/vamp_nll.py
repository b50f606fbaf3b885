"""The VampPrior's importance-sampled NLL with its mixture computed once per evaluation, against
the mixture computed again for each chunk of importance samples (vaelab before), in one process,
with the same seed and threads: the seconds, the encoder passes over the pseudo-inputs, and the
figure, which must not change (to the last bit on the fp32 path).

Cases:

* ``digits``: a small VampPrior (MLP 64, 8-D z, 500 pseudo-inputs, Bernoulli on the binarized
  digits) trained for 5 epochs on the bundled digits, scored on their test split at K = 1000;
* ``mnist`` (where --data-dir holds MNIST): the IWAE paper's net (784-200-200-50 tanh) with 500
  pseudo-inputs started at training images, untrained (the seconds do not depend on the
  weights), on the first 500 test images, dynamically binarized, K = 1000.

Paths: fp32 eager, and vaelab's default for this CPU (bf16 products where it has bf16 units).
On the bf16 path the mixture is now computed in fp32, as q(z|x) always was, instead of under the
chunk's autocast: there the figure may move by the bf16 rounding of the mixture.

Each repeat runs both ways, in alternating order, after one untimed evaluation of each; the
speed-up is the ratio of the median CPU seconds (the process's, one thread: the wall seconds are
recorded too, but on a shared machine they count the other work). One JSON line per case and
path in ``benchmarks/results/vamp_nll.jsonl``, with the machine.

    python benchmarks/vamp_nll.py --threads 1 --data-dir ../shared/data

Measured (AMD EPYC with AVX-512, one thread): on mnist the encoder passes over the pseudo-inputs
fall from 200 to 1 and the evaluation takes 1.07x less CPU time (fp32: 8.04 s -> 7.49 s, the
median of 3; bf16 the same); on digits, whose pseudo-input passes cost next to nothing, the
difference is within the noise (1.04x and 0.99x). The fp32 figures are equal to the last bit;
the bf16 ones move by 2e-4 and 4e-4 nats.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from _common import RESULTS, emit, machine, shown  # noqa: E402

K = 1000           # importance samples
COMPONENTS = 500   # pseudo-inputs (vaelab's default)


def digits_case() -> tuple[torch.nn.Module, torch.Tensor, str]:
    import vaelab
    from vaelab.loading import split_inputs
    from vaelab.training.trainer import train
    out = Path(tempfile.mkdtemp(prefix="vamp-nll-")) / "digits"
    cfg = vaelab.make_config(model="vamp", data="digits", hidden=(64,), latent_dim=8, components=COMPONENTS,
                             epochs=5, batch_size=100, nll_samples=0, progress=False, device="cpu", seed=0,
                             out=str(out))
    train(cfg, log=lambda m: None)
    x = split_inputs(out, "test")[0]
    return vaelab.load(out, "last", device="cpu"), x, "vaelab train --model vamp --data digits --hidden 64 " \
        f"--latent-dim 8 --components {COMPONENTS} --epochs 5 --batch-size 100 --seed 0; its test split"


def mnist_case(data_dir: str | None, n: int = 500) -> tuple[torch.nn.Module, torch.Tensor, str] | None:
    from vaelab.data import load_dataset
    from vaelab.data.transforms import eval_inputs
    from vaelab.errors import VaelabError
    from vaelab.models.vae import VAE
    from vaelab.models.vamp import VampConfig, VampPrior
    try:
        ds = load_dataset("mnist", data_dir)
    except VaelabError as e:
        print(f"mnist skipped: {e}", file=sys.stderr)
        return None
    net = {k: v for k, v in VAE.presets["iwae"].items() if k in ("arch", "hidden", "activation", "latent_dim",
                                                                   "likelihood")}
    torch.manual_seed(0)
    model = VampPrior(VampConfig(shape=(1, 28, 28), components=COMPONENTS, **net))
    model.init_from_data(ds.train.x[:COMPONENTS].float() / (ds.spec.levels - 1))
    x = eval_inputs(ds.test.x, ds.spec.levels, "dynamic")[:n]
    return model.eval(), x, f"the IWAE net, {COMPONENTS} pseudo-inputs at training images, untrained; {n} test images"


def per_chunk():
    """The mixture computed again wherever it is asked for: vaelab before."""
    from vaelab.models.vamp import VampPrior
    return mock.patch.object(VampPrior, "fixed_prior", lambda self: contextlib.nullcontext())


def timed(model, x, precision: str, old: bool) -> tuple[float, float, dict, int]:
    """Wall and CPU seconds, evaluate_likelihood's result and the encoder passes over the
    pseudo-inputs."""
    from vaelab.evaluation.likelihood import evaluate_likelihood
    passes = []
    hook = model.encoder.register_forward_hook(
        lambda m, inp, out: passes.append(1) if len(inp[0]) == COMPONENTS + 1 else None)
    try:
        with per_chunk() if old else contextlib.nullcontext():
            t0, c0 = time.perf_counter(), time.process_time()
            res = evaluate_likelihood(model, x, K, precision=precision, compile=False, seed=0)
            return time.perf_counter() - t0, time.process_time() - c0, res, len(passes)
    finally:
        hook.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="digits,mnist")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--results", default=str(RESULTS / "vamp_nll.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from vaelab.evaluation.likelihood import choose_path
    for case in a.cases.split(","):
        made = digits_case() if case == "digits" else mnist_case(a.data_dir) if case == "mnist" else None
        if made is None:
            continue
        model, x, what = made
        for precision in ("fp32", "auto"):
            path = choose_path(x.device, len(x) * K, precision, compile=False)
            for old in (True, False):  # untimed: first touches, allocator
                timed(model, x, precision, old)
            secs, cpu, last = {True: [], False: []}, {True: [], False: []}, {}
            for rep in range(a.repeats):
                for old in ((True, False) if rep % 2 == 0 else (False, True)):
                    s, c, res, passes = timed(model, x, precision, old)
                    secs[old].append(s)
                    cpu[old].append(c)
                    last[old] = res, passes
            (before_res, before_passes), (after_res, after_passes) = last[True], last[False]
            row = {"benchmark": "vamp_nll", "case": case, "model": what, **machine(a.threads),
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(), "images": len(x), "k": K,
                   "components": COMPONENTS, "precision": path.precision, "nll_path": after_res["nll_path"],
                   "repeats": a.repeats,
                   "seconds_per_chunk": [round(s, 3) for s in secs[True]],
                   "seconds_once": [round(s, 3) for s in secs[False]],
                   "cpu_seconds_per_chunk": [round(s, 3) for s in cpu[True]],
                   "cpu_seconds_once": [round(s, 3) for s in cpu[False]],
                   # from the CPU seconds (one thread): what other work on a shared machine adds to the
                   # wall time does not count
                   "speedup": round(statistics.median(cpu[True]) / statistics.median(cpu[False]), 3),
                   "pseudo_passes_per_chunk": before_passes, "pseudo_passes_once": after_passes,
                   "nll_per_chunk": before_res["nll"], "nll_once": after_res["nll"],
                   "nll_equal": before_res["nll"] == after_res["nll"],
                   "nll_difference": after_res["nll"] - before_res["nll"],
                   "elbo_equal": before_res["elbo"] == after_res["elbo"], "kl_equal": before_res["kl"] == after_res["kl"],
                   "script": shown(sys.argv)}
            emit(a.results, row)


if __name__ == "__main__":
    main()
