"""MNIST with a few labels: M2, M1+M2, the probe and the fine-tuned encoder of a VAE, and a
classifier trained on the labelled images alone, beside Kingma et al. 2014's Table 1.

Every model gets the same wall-clock training budget (``--minutes``, each; for ``m1+m2`` it covers
M1 and M2 together, ``--m1-share`` of it for M1) on the same class-balanced labels: the subset
``--labels N`` keeps for the seed, which ``probe`` and ``finetune`` pick too. The unlabelled images
are all 55,000 training images (the other 5,000 are vaelab's validation split, whose labels no
model reads: M2's best checkpoint is ranked by its unlabelled bound). The test error is on all
10,000 test images. One JSON line per model, labels and seed:

    python benchmarks/semisupervised.py --models m2,m1+m2,probe,finetune,supervised \\
        --labels 100,1000 --seeds 0,1,2 --minutes 10 --data-dir ../shared/data

``probe`` and ``finetune`` share one VAE per seed (trained for ``--minutes``); their minutes are the
VAE's plus their own. Finetune's row also gives its baseline (``baseline_error``): the same net from
a random start put through the same steps on the labels alone. ``supervised`` is the classifier of
the labelled images alone: the linear probe's logistic regression on their pixels (binarized as
the runs evaluate them), which no VAE precedes. ``m1+m2`` trains one M1 per seed, which
every label count's M2 reads (M1 reads no labels).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, emit, machine, names, shown  # noqa: E402

import vaelab  # noqa: E402

# Kingma et al. 2014, Table 1 (arXiv:1406.5298v2, p. 6): % test error on MNIST at 100 / 600 / 1000 /
# 3000 labels
PAPER = {"m1+tsvm": {100: 11.82, 600: 5.72, 1000: 4.24, 3000: 3.49},
         "m2": {100: 11.97, 600: 4.94, 1000: 3.60, 3000: 3.92},
         "m1+m2": {100: 3.33, 600: 2.59, 1000: 2.40, 3000: 2.18}}
MODELS = ("m2", "m1+m2", "probe", "finetune", "supervised")
# M1 as in the authors' code: 784-500-500-50, softplus, Bernoulli on dynamically binarized pixels
M1 = dict(model="vae", hidden=(500, 500), activation="softplus", latent_dim=50)
M2 = dict(model="m2", hidden=(500,), activation="softplus", latent_dim=50)


def _train(out: Path, minutes: float, seed: int, data_dir: str | None, threads: int, **settings) -> tuple[Path, float]:
    cfg = vaelab.make_config(data="mnist", data_dir=data_dir, seed=seed, epochs=100_000, time_budget=minutes,
                             nll_samples=0, report=False, progress=False, threads=threads, out=str(out),
                             overwrite=True, **settings)
    t0 = time.perf_counter()
    run = vaelab.train(cfg, log=lambda m: None)
    return run, (time.perf_counter() - t0) / 60


def _error(run: Path) -> float:
    res = vaelab.evaluate(run, k=1, sample_metrics=False, save=False)
    return res["classifier_error"]


def _pixels_error(labels: int, seed: int, data_dir: str | None) -> float:
    """Test error of the linear probe's logistic regression on the pixels of the ``labels``
    labelled images (the subset every model here gets for the seed), binarized as the runs
    evaluate them: the classifier of the labelled images alone."""
    from vaelab.data import balanced_subset, load_dataset
    from vaelab.data.transforms import eval_inputs
    from vaelab.evaluation.probe import probe_accuracy
    ds = load_dataset("mnist", data_dir)
    idx = balanced_subset(ds.train.y, labels, ds.spec.num_classes, seed)

    def pixels(x):
        return eval_inputs(x, ds.spec.levels, "dynamic").flatten(1)
    # the whole split binarized, then indexed: the fixed noise is drawn for the split, as the runs' is
    return 1 - probe_accuracy(pixels(ds.train.x)[idx], ds.train.y[idx], pixels(ds.test.x), ds.test.y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--labels", default="100,1000")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--minutes", type=float, default=10.0, help="each model's whole training budget")
    p.add_argument("--m1-share", type=float, default=0.4, help="the part of m1+m2's budget that trains M1")
    p.add_argument("--labelled-weight", default="paper", choices=("paper", "balanced"),
                   help="m2's and m1+m2's --labelled-weight")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/vaelab-semisupervised", help="where the runs are written")
    p.add_argument("--out", default=str(RESULTS / "semisupervised.jsonl"))
    a = p.parse_args()
    models = names(p, "--models", a.models, MODELS)
    labels = [int(n) for n in a.labels.split(",")]
    seeds = [int(s) for s in a.seeds.split(",")]
    work = Path(a.work)
    base = {"machine": machine(a.threads), "command": shown(sys.argv), "budget_minutes": a.minutes}
    vaes: dict[int, tuple[Path, float]] = {}  # the probe's and finetune's VAE, per seed
    m1s: dict[int, tuple[Path, float]] = {}  # m1+m2's M1, per seed
    for seed in seeds:
        for n in labels:
            for name in models:
                row = {"model": name, "labels": n, "seed": seed}
                if name == "m2":
                    run, minutes = _train(work / f"m2-{n}-{seed}", a.minutes, seed, a.data_dir, a.threads,
                                          labels=n, labelled_weight=a.labelled_weight, **M2)
                    row.update(test_error=_error(run), minutes=minutes, labelled_weight=a.labelled_weight)
                elif name == "m1+m2":
                    if seed not in m1s:  # one M1 per seed, whatever the labels: it reads none
                        m1s[seed] = _train(work / f"m1-{seed}-{a.minutes * a.m1_share:g}", a.minutes * a.m1_share,
                                           seed, a.data_dir, a.threads, **M1)
                    m1, m1_min = m1s[seed]
                    run, m2_min = _train(work / f"m1m2-{n}-{seed}", a.minutes * (1 - a.m1_share), seed, a.data_dir,
                                         a.threads, labels=n, features=str(m1), labelled_weight=a.labelled_weight,
                                         **M2)
                    row.update(test_error=_error(run), minutes=m1_min + m2_min, m1_minutes=m1_min,
                               labelled_weight=a.labelled_weight)
                elif name == "supervised":
                    t0 = time.perf_counter()
                    err = _pixels_error(n, seed, a.data_dir)
                    own = (time.perf_counter() - t0) / 60
                    row.update(test_error=err, minutes=own, own_minutes=own)
                else:
                    if seed not in vaes:
                        vaes[seed] = _train(work / f"vae-{seed}", a.minutes, seed, a.data_dir, a.threads, **M1)
                    vae, vae_min = vaes[seed]
                    t0 = time.perf_counter()
                    if name == "probe":
                        from vaelab.evaluation.probe import linear_probe
                        res = linear_probe(vae, n, a.data_dir, seed)
                        acc = res["accuracy"]
                    else:  # the tuned encoder, and its from-scratch baseline through the same steps
                        from vaelab.evaluation.probe import finetune
                        res = finetune(vae, n, a.data_dir, seed)
                        acc = res["accuracy"]
                        row["baseline_error"] = 1 - res["baseline_accuracy"]
                    own = (time.perf_counter() - t0) / 60
                    row.update(test_error=1 - acc, minutes=own + vae_min, own_minutes=own)
                paper = PAPER.get(name, {}).get(n)
                emit(a.out, {**row, "paper_error": None if paper is None else paper / 100, **base})


if __name__ == "__main__":
    main()
