"""Codes as features (lecture slide 15): how much of the label does an unsupervised code hold?

* :func:`linear_probe`: a logistic regression on the frozen codes (the posterior mean mu for a
  VAE, the code z for an autoencoder) of N labelled training images, scored on the test set.
* :func:`finetune`: the run's encoder with a linear classifier head, trained end to end on the
  same N labels, next to the same classifier trained from a random initialisation (the
  baseline that tells what the pretraining was worth).

The N labelled images are a class-balanced subset of the run's training split
(:func:`balanced_subset`); the inputs are binarized exactly as the run evaluates them
(:func:`vaelab.api.split_inputs`). Nothing is written to the run directory.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .api import load, split_inputs
from .data.datasets import whole_number as _whole
from .errors import VaelabError
from .training.classify import train_classifier
from .registry import get_model

MIN_STEPS = 200  # fine-tuning takes at least this many Adam steps, however few the labels
EVAL_BATCH = 500


def balanced_subset(y: torch.Tensor, n: int | None, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``n`` examples, as equal a number per class as possible.

    Args:
        y: int64 labels ``[N]`` in ``0..num_classes-1``.
        n: how many to pick; None means all of them (``--labels all``).
        num_classes: the number of classes; each gets ``n // num_classes`` examples and the
            first ``n % num_classes`` classes one more.
        seed: which examples of each class are picked (a seeded permutation per class).

    Returns:
        Sorted int64 indices into ``y``, ``[n]``.

    Raises:
        VaelabError: ``n`` is not a whole number, is below ``num_classes`` or above ``len(y)``,
            or some class has fewer examples than its share.
    """
    if n is None:
        return torch.arange(len(y))
    count = _whole(n)
    if count is None:
        raise VaelabError(f"--labels must be a whole number or all, got {n!r}.")
    if num_classes < 2:
        raise VaelabError("the run's data has no class labels to train a classifier on (probe and finetune need "
                          "a labelled dataset, e.g. an image folder with class subfolders).")
    if count < num_classes:
        raise VaelabError(f"--labels must be at least {num_classes} (one image per class), got {count}.")
    if count > len(y):
        raise VaelabError(f"--labels must be at most {len(y)} (the training split has {len(y)} labelled "
                          f"images), got {count}.")
    base, extra = divmod(count, num_classes)
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = y.cpu()
    picked = []
    for c in range(num_classes):
        share = base + (1 if c < extra else 0)
        members = (y == c).nonzero().flatten()  # [N_c], ascending
        if len(members) < share:
            raise VaelabError(f"--labels {count} asks for {share} images of class {c}, but the training split "
                              f"has only {len(members)}; ask for fewer labels or all.")
        # one permutation per class drawn from the one generator: the same seed, the same subset
        picked.append(members[torch.randperm(len(members), generator=g)[:share]])
    return torch.cat(picked).sort().values


def linear_probe(run_dir: str | Path, labels: int | None, data_dir: str | None = None, seed: int = 0,
                 device: str = "cpu", *, model: nn.Module | None = None) -> dict:
    """Accuracy on the test set of a logistic regression on the run's frozen codes.

    Args:
        run_dir: a trained run.
        labels: how many labelled training images (balanced per class); None means all.
        data_dir: where the dataset is, if not where the run found it.
        seed: which images make up the labelled subset.
        device: where the codes are computed.
        model: the run's model, if the caller has loaded it already; it is only read.

    Returns:
        ``{"task": "probe", "accuracy", "labels", "n_test", "latent_dim", "model"}``, JSON-able;
        ``labels`` is the number of labelled images actually used.
    """
    model = load(run_dir, "best", device) if model is None else model
    x_tr, y_tr = split_inputs(run_dir, "train", data_dir)
    idx = balanced_subset(y_tr, labels, model.data_spec.num_classes, seed)
    x_te, y_te = split_inputs(run_dir, "test", data_dir)
    f_tr, f_te = codes_of(model, x_tr[idx]), codes_of(model, x_te)  # [n, D], [N_test, D]
    return {"task": "probe", "accuracy": probe_accuracy(f_tr, y_tr[idx], f_te, y_te), "labels": len(idx),
            "n_test": len(y_te), "latent_dim": int(f_tr.shape[1]), "model": model.run_config.train.model}


def probe_accuracy(f_train, y_train, f_test, y_test) -> float:
    """Test accuracy of a logistic regression on standardised features ([n, D] arrays or tensors).
    The scaler sees only the labelled training features, never the test set."""
    from sklearn.linear_model import LogisticRegression  # slow to import; only the probe needs it
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.asarray(f_train))
    clf = LogisticRegression(max_iter=1000).fit(scaler.transform(np.asarray(f_train)), np.asarray(y_train))
    pred = clf.predict(scaler.transform(np.asarray(f_test)))
    return float((pred == np.asarray(y_test)).mean())


def finetune(run_dir: str | Path, labels: int | None, data_dir: str | None = None, seed: int = 0,
             epochs: int = 50, lr: float = 1e-3, batch_size: int = 64, device: str = "cpu", *,
             model: nn.Module | None = None) -> dict:
    """Test accuracy of the run's encoder + a linear head trained end to end on ``labels``
    labelled images, and of the same classifier trained from a random initialisation.

    Both classifiers start from the same head and see the same batches in the same order
    (cross-entropy, Adam); they differ only in where the encoder starts. Training runs whole
    epochs, at least ``epochs`` and enough for :data:`MIN_STEPS` steps when labels are few.

    Args:
        run_dir: a trained run.
        labels: how many labelled training images (balanced per class); None means all.
        data_dir: where the dataset is, if not where the run found it.
        seed: the labelled subset, the initialisation of the head and baseline, the batches.
        epochs, lr, batch_size: the fine-tuning schedule.
        device: where to train.
        model: the run's model, if the caller has loaded it already; it is left unchanged.

    Returns:
        ``{"task": "finetune", "accuracy", "baseline_accuracy", "labels", "n_test", "epochs",
        "steps"}``, JSON-able; ``epochs`` and ``steps`` are what was actually run.
    """
    _check_schedule(epochs, lr, batch_size)
    model = load(run_dir, "best", device) if model is None else model
    dev = next(model.parameters()).device
    run, spec = model.run_config, model.data_spec
    x_tr, y_tr = split_inputs(run_dir, "train", data_dir)
    idx = balanced_subset(y_tr, labels, spec.num_classes, seed)
    x_te, y_te = split_inputs(run_dir, "test", data_dir)
    x, y = x_tr[idx].to(dev), y_tr[idx].to(dev)  # [n, *shape], [n]

    latent_dim = codes_of(model, x[:1]).shape[1]
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, the caller's RNG untouched
        torch.manual_seed(seed)
        head = nn.Linear(latent_dim, spec.num_classes)
        fresh = get_model(run.train.model).model_cls(run.model)
    pretrained = _Classifier(copy.deepcopy(model.encoder), copy.deepcopy(head), latent_dim).to(dev)
    baseline = _Classifier(fresh.encoder, copy.deepcopy(head), latent_dim).to(dev)
    _check_features(pretrained, model, x[:8], run.train.model)

    per_epoch = math.ceil(len(idx) / batch_size)
    epochs_run = max(epochs, math.ceil(MIN_STEPS / per_epoch))
    accuracy = {}
    for name, clf in (("accuracy", pretrained), ("baseline_accuracy", baseline)):
        _train(clf, x, y, epochs_run, lr, batch_size, seed)
        accuracy[name] = _accuracy(clf, x_te.to(dev), y_te.to(dev))
    return {"task": "finetune", **accuracy, "labels": len(idx), "n_test": len(y_te), "epochs": epochs_run,
            "steps": epochs_run * per_epoch}


@torch.no_grad()
def codes_of(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """``model.codes`` of x in eval mode, in batches, on the CPU: ``[N, D]``."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = torch.cat([model.codes(x[i:i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


class _Classifier(nn.Module):
    """An encoder and a linear head on its codes: x [B, *shape] -> logits [B, num_classes].

    The encoder gives the code itself ([B, D], autoencoders) or (mu, logvar) ([B, 2D], the
    VAE); either way the features are its first D columns, the same ones ``model.codes`` gives.
    """

    def __init__(self, encoder: nn.Module, head: nn.Linear, latent_dim: int):
        super().__init__()
        self.encoder, self.head, self.latent_dim = encoder, head, latent_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[:, :self.latent_dim]  # [B, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def _check_features(clf: _Classifier, model: nn.Module, x: torch.Tensor, name: str) -> None:
    # The fine-tuned classifier must start from exactly the features the probe sees.
    clf.eval()
    if not torch.allclose(clf.features(x), model.codes(x), atol=1e-5):
        raise VaelabError(f"finetune needs a model whose encoder outputs its code first; --model {name} "
                          f"does not.")


def _train(clf: _Classifier, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int,
           seed: int) -> None:
    train_classifier(clf, x, y, epochs, lr, batch_size, seed)  # the same batches for every classifier


@torch.no_grad()
def _accuracy(clf: _Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    clf.eval()
    right = sum((clf(x[i:i + EVAL_BATCH]).argmax(1) == y[i:i + EVAL_BATCH]).sum().item()
                for i in range(0, len(x), EVAL_BATCH))
    return right / len(y)


def _check_schedule(epochs, lr, batch_size) -> None:
    if _whole(epochs) is None or epochs < 1:
        raise VaelabError(f"--epochs must be a whole number >= 1, got {epochs!r}.")
    if _whole(batch_size) is None or batch_size < 1:
        raise VaelabError(f"--batch-size must be a whole number >= 1, got {batch_size!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise VaelabError(f"--lr must be a positive number, got {lr!r}.")
