"""The linear autoencoder against PCA on MNIST (the lecture's "linear AE = PCA").

Trains ``--model ae --arch linear`` (one affine map each way, L2 loss) on [0, 1] MNIST
intensities and compares the decoder's column space with scikit-learn's top-d PCA subspace of
the same training images: principal angles, and the test reconstruction MSE of both. One JSON
line.

    python benchmarks/linear_pca.py --dim 10 --epochs 50 --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os

import torch

import vaelab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--out", default="runs/bench-linear-pca")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = vaelab.make_config(model="ae", arch="linear", data=a.data, data_dir=a.data_dir, binarize="none",
                             latent_dim=a.dim, epochs=a.epochs, lr=a.lr, lr_schedule="cosine", lr_final=a.lr / 100,
                             batch_size=a.batch_size, threads=a.threads, progress=False, overwrite=True,
                             out=a.out, seed=0)
    run = vaelab.train(cfg, log=lambda m: None)
    hist = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    pca = json.loads(open(os.path.join(run, "eval-test.json")).read())["pca"]
    print(json.dumps({"benchmark": "linear_pca", "data": a.data, "d": a.dim, "epochs": len(hist),
                      "train_seconds": round(sum(h["seconds"] for h in hist), 1),
                      "max_angle_deg": round(pca["max_angle_deg"], 3),
                      "angles_deg": [round(v, 3) for v in pca["angles_deg"]],
                      "ae_test_mse": pca["ae_mse"], "pca_test_mse": pca["pca_mse"],
                      "mse_ratio": round(pca["mse_ratio"], 5)}))


if __name__ == "__main__":
    main()
