"""Data-parallel training: samples/s and seconds per epoch of `vaelab train` under torchrun with
P processes, against P = 1, for a VAE and a GAN on MNIST.

Each case runs `python -m torch.distributed.run --standalone --nproc-per-node P -m vaelab train
... --out DIR` for a few epochs (the global batch is --batch-size whatever P is) and reads the
epochs' seconds from the run's metrics.jsonl (the training loop alone: no validation,
checkpoints or pictures). seconds_per_epoch is the median over the epochs after the first (which
holds the warm-up), samples_per_s the training images an epoch over it, and speedup the P = 1
case's seconds over P's. One JSON line per case, with the machine.

On the CPU (gloo) each rank takes --threads threads (default 1): P = 1 and 2 on a 2-core machine.
Two ranks there are not twice one: the two cores share one memory system and cache, the ranks
all-reduce the gradients every step, and a small model's step is short next to that.

    python benchmarks/scaling.py --data-dir ../shared/data --epochs 4
    python benchmarks/scaling.py --gpus --data-dir /shared/data --epochs 4 --batch-size 512   # a GPU node: 1 GPU against all (nccl)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, emit, machine, shown

SRC = Path(__file__).resolve().parent.parent / "src"
CASES = {
    # the IWAE paper's MLP VAE, dynamic binarization (as benchmarks/vs_plain_loop.py)
    "vae": ["--model", "vae", "--arch", "mlp", "--hidden", "200,200", "--activation", "tanh", "--latent-dim", "50",
            "--likelihood", "bernoulli", "--binarize", "dynamic"],
    # the MLP GAN with its own defaults (k discriminator steps, DCGAN's Adam)
    "gan": ["--model", "gan"],
}


def train_images(run_dir: Path, data_dir: str | None) -> int:
    from vaelab.api import split_inputs
    return len(split_inputs(run_dir, "train", data_dir)[0])


def run_case(a, name: str, procs: int) -> dict:
    out = Path(a.out) / f"{name}-p{procs}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
           "-m", "vaelab", "train", *CASES[name], "--data", a.data, "--epochs", str(a.epochs),
           "--batch-size", str(a.batch_size), "--seed", str(a.seed), "--nll-samples", "0", "--no-progress",
           "--overwrite", "--out", str(out), "--device", "cuda" if a.gpus else "cpu"]
    cmd += ["--data-dir", a.data_dir] if a.data_dir else []
    cmd += [] if a.gpus else ["--threads", str(a.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(a.threads)}
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    seconds = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    per_epoch = statistics.median(seconds[1:] or seconds)
    n = train_images(out, a.data_dir)
    return {"benchmark": "scaling", "case": name, "data": a.data, "processes": procs,
            "device": "cuda" if a.gpus else "cpu", "backend": "nccl" if a.gpus else "gloo",
            "threads_per_rank": None if a.gpus else a.threads, "batch_size": a.batch_size, "epochs": len(seconds),
            "train_images": n, "epoch_seconds": [round(s, 3) for s in seconds],
            "seconds_per_epoch": round(per_epoch, 3), "samples_per_s": round(n / per_epoch, 1),
            "launch_to_exit_seconds": round(wall, 1), "command": shown(cmd[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--procs", default=None, help="comma-separated P (default: 1,2 on the CPU; 1 and every GPU "
                                                  "with --gpus)")
    ap.add_argument("--gpus", action="store_true", help="ranks on GPUs (nccl), one a GPU")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=100, help="the global batch, whatever P is")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads a rank")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--out", default="runs/bench-scaling")
    ap.add_argument("--results", default=str(RESULTS / "scaling.jsonl"))
    a = ap.parse_args()
    gpus = []
    if a.gpus:
        import torch
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if not gpus:
            ap.error("--gpus: torch sees no CUDA GPU here")
    procs = [int(p) for p in a.procs.split(",")] if a.procs else sorted({1, len(gpus)} if a.gpus else {1, 2})
    for name in a.cases.split(","):
        if name not in CASES:
            ap.error(f"--cases: unknown case {name!r}; expected some of {', '.join(CASES)}")
        base = None
        for p in procs:
            row = run_case(a, name, p)
            base = base or row["seconds_per_epoch"]  # the first P's: 1 unless --procs says otherwise
            row["speedup"] = round(base / row["seconds_per_epoch"], 3)
            emit(a.results, {**row, **machine(p * a.threads if not a.gpus else a.threads),
                             **({"gpus": gpus} if gpus else {})})


if __name__ == "__main__":
    main()
