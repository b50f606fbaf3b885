"""Colour images: how fast they load, how fast a conv VAE trains on them, and the bits/dim it
reaches on CIFAR-10 after a fixed budget.

Cases (one JSON line each):
* ``load``: images/s of reading the LFW tarball and an image folder (the same JPEGs extracted),
  decoded and resized to 32x32 — first run (empty cache) and cached run;
* ``train``: conv VAE training images/s at 32x32 RGB (the 4,000 CIFAR-10 images through
  ``--data array``), after a warm-up epoch;
* ``bpd``: test bits/dim on the 4,000 CIFAR images (400 held out) after ``--minutes`` of training,
  for the discretized logistic mixture and for the Gaussian on dequantized pixels: both are
  code lengths of the 8-bit images, so they compare.

    python benchmarks/images.py --data-dir ../shared/data --minutes 5
"""
from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch

import vaelab
from _common import RESULTS, emit
from vaelab.data.folder import read_image_folder
from vaelab.data.lfw import read_lfw

CIFAR = dict(data="array", key="data", label_key="labels", shape=(32, 32, 3), layout="chw", binarize="none",
             arch="conv", channels=(64, 128, 256, 256), latent_dim=64, batch_size=64, lr=1e-3, seed=0)


def _timed_load(read, path, cache: Path, **kw) -> list[dict]:
    rows = []
    os.environ["VAELAB_CACHE"] = str(cache)
    for run in ("first", "cached"):
        t0 = time.perf_counter()
        raw = read(path, image_size=32, progress=False, **kw)
        s = time.perf_counter() - t0
        rows.append({"case": "load", "source": Path(path).name, "run": run, "images": len(raw.x_train),
                     "seconds": round(s, 2), "images_per_s": round(len(raw.x_train) / s, 1),
                     "from_cache": bool(getattr(raw, "from_cache", run == "cached"))})
    return rows


def load_cases(a) -> list[dict]:
    tgz = Path(a.data_dir) / "lfw3d_90.tgz"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = _timed_load(read_lfw, tgz, tmp / "cache-lfw", workers=a.workers)
        with tarfile.open(tgz) as t:
            t.extractall(tmp / "folder", filter="data")
        rows += _timed_load(read_image_folder, tmp / "folder", tmp / "cache-folder", workers=a.workers)
    return rows


def _run(a, out: str, **kw) -> Path:
    cfg = vaelab.make_config(data_path=str(Path(a.data_dir) / "cifar10_batch1_first4000.npz"), threads=a.threads,
                             progress=False, overwrite=True, out=out, **{**CIFAR, **kw})
    return vaelab.train(cfg, log=lambda m: None)


def train_case(a) -> dict:
    run = _run(a, os.path.join(a.out, "speed"), likelihood="logistic-mixture", epochs=3, nll_samples=0)
    hist = [json.loads(x) for x in open(run / "metrics.jsonl")]
    n = len(vaelab.api.split_inputs(run, "train")[0])
    secs = sum(h["seconds"] for h in hist[1:])  # after the warm-up epoch
    return {"case": "train", "model": "conv VAE", "channels": list(CIFAR["channels"]), "batch_size": 64,
            "likelihood": "logistic-mixture", "epochs_timed": len(hist) - 1,
            "images_per_s": round(n * (len(hist) - 1) / secs, 1)}


def bpd_case(a, likelihood: str) -> dict:
    run = _run(a, os.path.join(a.out, likelihood), likelihood=likelihood, epochs=100_000, time_budget=a.minutes,
               nll_samples=0)
    hist = [json.loads(x) for x in open(run / "metrics.jsonl")]
    ev = vaelab.evaluate(run, k=a.nll_samples, sample_metrics=False, checkpoint="best")
    return {"case": "bpd", "data": "cifar10 first 4000 (3600 train+val / 400 test)", "likelihood": likelihood,
            "minutes": a.minutes, "epochs": len(hist), "test_nll": ev["nll"], "test_bpd": ev["bpd"],
            "nll_samples": a.nll_samples}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--nll-samples", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cases", default="load,train,bpd")
    ap.add_argument("--out", default="runs/bench-images")
    ap.add_argument("--results", default=str(RESULTS / "images.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cases = a.cases.split(",")

    def emit_all(rows: list[dict]) -> None:  # written as each case ends
        for r in rows:
            emit(a.results, {"benchmark": "images", "threads": a.threads, **r})

    if "load" in cases:
        emit_all(load_cases(a))
    if "train" in cases:
        emit_all([train_case(a)])
    if "bpd" in cases:
        for lik in ("logistic-mixture", "gaussian"):
            emit_all([bpd_case(a, lik)])


if __name__ == "__main__":
    main()
