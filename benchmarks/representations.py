"""PCA, AE, sparse AE, DAE and VAE side by side: what their codes are good for.

For each dataset and code size: reconstruction MSE per pixel on the test set, linear-probe
accuracy on the frozen codes at 100 / 1,000 / all labels, fine-tune vs from-scratch accuracy at
100 and 1,000 labels, and the DAE's PSNR gain. Every model uses the same MLP (one hidden layer
of 400 ReLU units), the same epochs and Adam settings, on [0, 1] intensities (no binarization,
so every model reconstructs the same targets). One JSON line per (dataset, code size, model).

    python benchmarks/representations.py --datasets mnist,fashion-mnist --dims 10,32 --epochs 10 \\
        --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

import vaelab
from vaelab.data import load_dataset
from vaelab.data.transforms import eval_inputs
from vaelab.probe import balanced_subset, finetune, linear_probe, probe_accuracy

MODELS = {
    "ae": {},
    "sparse-ae": {"l1": 1e-3},
    "dae": {"corruption": "mask:0.25"},
    "vae": {},
}


def pca_row(name: str, d: int, data_dir, labels: list) -> dict:
    from sklearn.decomposition import PCA
    ds = load_dataset(name, data_dir)
    flat = lambda s: eval_inputs(s.x, ds.spec.levels, "none").flatten(1).numpy()  # noqa: E731
    x_tr, x_te = flat(ds.train), flat(ds.test)
    t0 = time.perf_counter()
    pca = PCA(n_components=d, random_state=0).fit(x_tr)
    row = {"model": "pca", "train_seconds": round(time.perf_counter() - t0, 1),
           "mse": float(((pca.inverse_transform(pca.transform(x_te)) - x_te) ** 2).mean())}
    f_tr, f_te = pca.transform(x_tr), pca.transform(x_te)
    for n in labels:
        idx = balanced_subset(ds.train.y, n, ds.spec.num_classes, seed=0).numpy()
        row[f"probe_{n or 'all'}"] = probe_accuracy(f_tr[idx], ds.train.y.numpy()[idx], f_te, ds.test.y.numpy())
    return row


def model_row(model: str, name: str, d: int, a, labels: list, finetune_labels: list) -> dict:
    out = os.path.join(a.out, f"{name}-{d}-{model}")
    cfg = vaelab.make_config(model=model, data=name, data_dir=a.data_dir, latent_dim=d, hidden=(400,),
                             binarize="none", epochs=a.epochs, batch_size=100, lr=1e-3, nll_samples=0,
                             threads=a.threads, progress=False, overwrite=True, out=out, seed=0,
                             **({"likelihood": "bernoulli"} if model == "vae" else {}), **MODELS[model])
    vaelab.train(cfg, log=lambda m: None)
    hist = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    ev = vaelab.evaluate(out, k=1, data_dir=a.data_dir, save=False, sample_metrics=False) if model == "vae" else \
        vaelab.evaluate(out, data_dir=a.data_dir, save=False)
    row = {"model": model, "epochs": len(hist), "train_seconds": round(sum(h["seconds"] for h in hist), 1),
           "mse": ev["mse"]}
    if "psnr_gain" in ev:
        row.update(psnr_corrupted=ev["psnr_corrupted"], psnr_denoised=ev["psnr_denoised"],
                   psnr_gain=ev["psnr_gain"])
    for n in labels:
        row[f"probe_{n or 'all'}"] = linear_probe(out, n, a.data_dir)["accuracy"]
    for n in finetune_labels:
        ft = finetune(out, n, a.data_dir, epochs=a.finetune_epochs)
        row[f"finetune_{n}"], row[f"scratch_{n}"] = ft["accuracy"], ft["baseline_accuracy"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="mnist,fashion-mnist")
    ap.add_argument("--dims", default="10,32")
    ap.add_argument("--models", default="pca,ae,sparse-ae,dae,vae")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--labels", default="100,1000,all")
    ap.add_argument("--finetune-labels", default="100,1000")
    ap.add_argument("--finetune-epochs", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--out", default="runs/bench-representations")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    labels = [None if n == "all" else int(n) for n in a.labels.split(",")]
    ft_labels = [int(n) for n in a.finetune_labels.split(",") if n]
    for name in a.datasets.split(","):
        for d in (int(x) for x in a.dims.split(",")):
            for model in a.models.split(","):
                row = pca_row(name, d, a.data_dir, labels) if model == "pca" else \
                    model_row(model, name, d, a, labels, ft_labels)
                print(json.dumps({"benchmark": "representations", "data": name, "latent_dim": d, **row}), flush=True)


if __name__ == "__main__":
    main()
