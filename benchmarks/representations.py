"""PCA, AE, sparse AE, DAE and VAE side by side: what their codes are good for.

For each dataset and code size: reconstruction MSE per pixel on the test set and the DAE's PSNR
gain; at each label count and each label seed, the linear probe on the frozen codes, and for
the --finetune-models the fine-tuned encoder against the same classifier from scratch
(:func:`vaelab.evaluation.probe.finetune`: linear probe, then fine-tune, stopping on a held-out fifth of
the labels). Every model uses the same MLP (one hidden layer of 400 ReLU units), the same
epochs and Adam settings, on [0, 1] intensities (no binarization, so every model reconstructs
the same targets); one training run (seed 0) per model. One JSON line per (dataset, code size,
model), then one per label count with the mean over the label seeds and each seed's value.

    python benchmarks/representations.py --datasets mnist,fashion-mnist --dims 10,32 --epochs 10 \\
        --seeds 0,1,2 --finetune-labels 100,1000 --data-dir ../shared/data
    python benchmarks/representations.py --models ae,vae --labels all --finetune-labels all \\
        --seeds 0 --finetune-epochs 5 --reuse-runs --data-dir ../shared/data   # the costly cells
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

import vaelab
from _common import RESULTS, emit, machine
from vaelab.data import load_dataset
from vaelab.data.transforms import eval_inputs
from vaelab.evaluation.probe import balanced_subset, finetune, linear_probe, probe_accuracy

MODELS = {
    "ae": {},
    "sparse-ae": {"l1": 1e-3},
    "dae": {"corruption": "mask:0.25"},
    "vae": {},
}


def pca_rows(name: str, d: int, a, labels: list) -> list[dict]:
    from sklearn.decomposition import PCA
    ds = load_dataset(name, a.data_dir)
    flat = lambda s: eval_inputs(s.x, ds.spec.levels, "none").flatten(1).numpy()  # noqa: E731
    x_tr, x_te = flat(ds.train), flat(ds.test)
    t0 = time.perf_counter()
    pca = PCA(n_components=d, random_state=0).fit(x_tr)
    rows = [{"model": "pca", "train_seconds": round(time.perf_counter() - t0, 1),
             "mse": float(((pca.inverse_transform(pca.transform(x_te)) - x_te) ** 2).mean())}]
    f_tr, f_te, y_tr = pca.transform(x_tr), pca.transform(x_te), ds.train.y.numpy()
    for n in labels:
        probes = []
        for seed in a.seeds:
            idx = balanced_subset(ds.train.y, n, ds.spec.num_classes, seed=seed).numpy()
            probes.append(probe_accuracy(f_tr[idx], y_tr[idx], f_te, ds.test.y.numpy()))
        rows.append({"model": "pca", "labels": n or "all", **_summary("probe", probes)})
    return rows


def train_run(model: str, name: str, d: int, a) -> tuple[str, dict]:
    out = os.path.join(a.out, f"{name}-{d}-{model}")
    metrics = os.path.join(out, "metrics.jsonl")
    if not (a.reuse_runs and os.path.exists(metrics) and sum(1 for _ in open(metrics)) == a.epochs):
        cfg = vaelab.make_config(model=model, data=name, data_dir=a.data_dir, latent_dim=d, hidden=(400,),
                                 binarize="none", epochs=a.epochs, batch_size=100, lr=1e-3, nll_samples=0,
                                 threads=a.threads, progress=False, overwrite=True, out=out, seed=0,
                                 **({"likelihood": "bernoulli"} if model == "vae" else {}), **MODELS[model])
        vaelab.train(cfg, log=lambda m: None)
    hist = [json.loads(x) for x in open(metrics)]
    ev = vaelab.evaluate(out, k=1, data_dir=a.data_dir, save=False, sample_metrics=False) if model == "vae" else \
        vaelab.evaluate(out, data_dir=a.data_dir, save=False)
    row = {"model": model, "epochs": len(hist), "train_seconds": round(sum(h["seconds"] for h in hist), 1),
           "mse": ev["mse"]}
    if "psnr_gain" in ev:
        row.update(psnr_corrupted=ev["psnr_corrupted"], psnr_denoised=ev["psnr_denoised"],
                   psnr_gain=ev["psnr_gain"])
    return out, row


def label_row(run: str, model: str, n, a, tune: bool) -> dict:
    """Probe (and, with ``tune``, fine-tune and scratch) at ``n`` labels, for each label seed."""
    t0 = time.perf_counter()
    got = {k: [] for k in ("probe", "finetune", "scratch", "finetune_epochs", "scratch_epochs",
                           "finetune_encoder_lr", "scratch_encoder_lr")}
    for seed in a.seeds:
        got["probe"].append(linear_probe(run, n, a.data_dir, seed=seed)["accuracy"])
        if tune:
            ft = finetune(run, n, a.data_dir, seed=seed, epochs=a.finetune_epochs)
            for key, src in (("finetune", "accuracy"), ("scratch", "baseline_accuracy"), ("finetune_epochs", "epochs"),
                             ("scratch_epochs", "baseline_epochs"), ("finetune_encoder_lr", "encoder_lr"),
                             ("scratch_encoder_lr", "baseline_encoder_lr")):
                got[key].append(ft[src])
    row = {"model": model, "labels": n or "all", **_summary("probe", got["probe"])}
    if tune:
        row.update(**_summary("finetune", got["finetune"]), **_summary("scratch", got["scratch"]),
                   finetune_max_epochs=a.finetune_epochs,
                   **{k: v for k, v in got.items() if k.endswith(("_epochs", "_lr"))})
    return {**row, "seconds": round(time.perf_counter() - t0, 1)}


def _summary(name: str, values: list) -> dict:
    """The mean over the label seeds, and each seed's value."""
    return {name: float(np.mean(values)), f"{name}_seeds": values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="mnist,fashion-mnist")
    ap.add_argument("--dims", default="10,32")
    ap.add_argument("--models", default="pca,ae,sparse-ae,dae,vae")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--labels", default="100,1000,all", help="label counts of the probe")
    ap.add_argument("--finetune-labels", default="100,1000,all", help="label counts of fine-tune and scratch")
    ap.add_argument("--finetune-models", default="ae,vae")
    ap.add_argument("--finetune-epochs", type=int, default=50, help="the most epochs of a fine-tuning run")
    ap.add_argument("--seeds", default="0,1,2", help="label seeds: the labelled images, their validation part")
    ap.add_argument("--reuse-runs", action="store_true", help="keep a finished training run found in --out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("VAELAB_DATA"))
    ap.add_argument("--out", default="runs/bench-representations")
    ap.add_argument("--results", default=str(RESULTS / "representations.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.seeds = [int(s) for s in a.seeds.split(",")]
    count = lambda s: [None if n == "all" else int(n) for n in s.split(",") if n]  # noqa: E731
    labels, ft_labels = count(a.labels), count(a.finetune_labels)
    env = {"benchmark": "representations", **machine(a.threads)}
    for name in a.datasets.split(","):
        for d in (int(x) for x in a.dims.split(",")):
            for model in a.models.split(","):
                case = {**env, "data": name, "latent_dim": d}
                if model == "pca":
                    for row in pca_rows(name, d, a, labels):
                        emit(a.results, {**case, **row})
                    continue
                run, row = train_run(model, name, d, a)
                emit(a.results, {**case, **row})
                tune = model in a.finetune_models.split(",")
                for n in labels + [n for n in ft_labels if n not in labels]:
                    emit(a.results, {**case, **label_row(run, model, n, a, tune and n in ft_labels)})


if __name__ == "__main__":
    main()
