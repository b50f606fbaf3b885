"""Codes as features (lecture slide 15): how much of the label does an unsupervised code hold?

* :func:`linear_probe`: a logistic regression on the frozen codes (the posterior mean mu for a
  VAE, the code z for an autoencoder) of N labelled training images, scored on the test set.
* :func:`finetune`: the run's encoder with a linear classifier head that starts as that probe,
  fine-tuned on the same N labels with early stopping on a held-out part of them (linear probe,
  then fine-tune: Kumar et al. 2022), next to the same classifier from a random initialisation
  put through the same steps (the baseline that tells what the pretraining was worth).

The N labelled images are a class-balanced subset of the run's training split
(:func:`balanced_subset`); the inputs are binarized exactly as the run evaluates them
(:func:`vaelab.loading.split_inputs`). These functions write nothing; `vaelab probe` keeps its result
in the run directory (probe-labels<N>-seed<S>.json), for the report and compare.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.datasets import whole_number as _whole
from ..data.labels import balanced_subset
from ..errors import VaelabError
from ..models import get_model
from ..loading import load, split_inputs
from .classify import train_classifier

MIN_STEPS = 200  # a fine-tuning run may take this many steps at least, however few the labels
VAL_FRACTION = 0.2  # of the labelled images, per class, held out to choose when to stop fine-tuning
PATIENCE = 10  # epochs without a better validation score before a fine-tuning run stops
WEIGHT_DECAY = 1e-2  # AdamW's, on every weight of encoder and head
ENCODER_LR_SCALES = (0.1, 1.0)  # encoder lr / head lr; each classifier chooses one on validation
EVAL_BATCH = 500


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
    scaler, clf = _fit_probe(f_train, y_train)
    pred = clf.predict(scaler.transform(np.asarray(f_test)))
    return float((pred == np.asarray(y_test)).mean())


def _fit_probe(f_train, y_train):
    """The linear probe: (StandardScaler, LogisticRegression) fitted on [n, D] features."""
    from sklearn.linear_model import LogisticRegression  # slow to import; only the probe needs it
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.asarray(f_train))
    return scaler, LogisticRegression(max_iter=1000).fit(scaler.transform(np.asarray(f_train)), np.asarray(y_train))


def validation_split(y: torch.Tensor, num_classes: int, seed: int = 0,
                     fraction: float = VAL_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out about ``fraction`` of each class of a labelled budget to choose when to stop.

    Args:
        y: int64 labels ``[n]`` of the labelled images.
        num_classes: every class ``0..num_classes-1`` must have two images at least.
        seed: which images of each class are held out.
        fraction: each class gives ``round(fraction * n_c)`` images, at least one, and keeps
            one at least to train on.

    Returns:
        ``(train, val)``: sorted int64 positions into ``y``, disjoint, together all of them.

    Raises:
        VaelabError: some class has fewer than two labelled images.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = y.cpu()
    train, val = [], []
    for c in range(num_classes):
        members = (y == c).nonzero().flatten()  # [n_c], ascending
        if len(members) < 2:
            raise VaelabError(f"finetune needs two labelled images of each class at least (one to train on, one "
                              f"to choose when to stop), but class {c} has {len(members)}; ask for more --labels.")
        k = min(len(members) - 1, max(1, math.floor(fraction * len(members) + 0.5)))
        members = members[torch.randperm(len(members), generator=g)]
        val.append(members[:k])
        train.append(members[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def finetune(run_dir: str | Path, labels: int | None, data_dir: str | None = None, seed: int = 0,
             epochs: int = 50, lr: float = 1e-3, batch_size: int = 64, device: str = "cpu", *,
             weight_decay: float = WEIGHT_DECAY, patience: int = PATIENCE, model: nn.Module | None = None) -> dict:
    """Test accuracy of the run's encoder + a linear head fine-tuned on ``labels`` labelled
    images (linear probe, then fine-tune: Kumar et al. 2022), and of the same classifier from a
    random initialisation, trained the same way.

    Each classifier is the encoder, a fixed standardisation of its codes and a linear head. The
    head starts as the linear probe of those codes (:func:`linear_probe`'s logistic regression,
    so the classifier starts at exactly the probe's predictions); then encoder and head train
    together, AdamW with ``weight_decay``, the head at ``lr`` and the encoder at ``lr`` times a
    scale from :data:`ENCODER_LR_SCALES`. The scale and the number of epochs (0 keeps the
    probe) are chosen on a class-balanced :data:`VAL_FRACTION` of the labelled images held out
    (:func:`validation_split`): a run per scale trains on the rest, at most ``epochs`` epochs
    (and enough for :data:`MIN_STEPS` steps), stopping ``patience`` epochs after the best
    validation accuracy (ties: the lower validation loss, then the earlier). Then the classifier
    starts again from the probe, now fitted on all the labelled images, and trains on all of
    them for the chosen epochs at the chosen scale. Both classifiers go through the same steps
    with the same batches; they differ only in where the encoder starts.

    Args:
        run_dir: a trained run.
        labels: how many labelled training images (balanced per class); None means all.
        data_dir: where the dataset is, if not where the run found it.
        seed: the labelled subset, its validation part, the baseline's initialisation, the batches.
        epochs, lr, batch_size, weight_decay, patience: the fine-tuning schedule.
        device: where to train.
        model: the run's model, if the caller has loaded it already; it is left unchanged.

    Returns:
        ``{"task": "finetune", "accuracy", "baseline_accuracy", "probe_accuracy", "labels",
        "n_val", "n_test", "epochs", "encoder_lr", "baseline_epochs", "baseline_encoder_lr"}``,
        JSON-able: ``probe_accuracy`` is the pretrained classifier before fine-tuning (the
        linear probe on all the labels), ``epochs`` and ``encoder_lr`` what was chosen.
    """
    _check_schedule(epochs, lr, batch_size, weight_decay, patience)
    model = load(run_dir, "best", device) if model is None else model
    dev = next(model.parameters()).device
    run, spec = model.run_config, model.data_spec
    x_tr, y_tr = split_inputs(run_dir, "train", data_dir)
    idx = balanced_subset(y_tr, labels, spec.num_classes, seed)
    x_te, y_te = split_inputs(run_dir, "test", data_dir)
    x, y = x_tr[idx].to(dev), y_tr[idx].to(dev)  # [n, *shape], [n]
    tr, va = (p.to(dev) for p in validation_split(y, spec.num_classes, seed))
    x_te, y_te = x_te.to(dev), y_te.to(dev)

    latent_dim = codes_of(model, x[:1]).shape[1]
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, the caller's RNG untouched
        torch.manual_seed(seed)
        fresh = get_model(run.train.model)(run.model)
    _check_features(_Classifier(copy.deepcopy(model.encoder), latent_dim), model, x[:8], run.train.model)
    recipe = dict(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, patience=patience,
                  seed=seed)
    out = {"task": "finetune"}
    for name, encoder in (("", model.encoder), ("baseline_", fresh.encoder.to(dev))):
        chosen = _choose(encoder, latent_dim, spec.num_classes, x, y, tr, va, recipe)
        clf = _Classifier(copy.deepcopy(encoder), latent_dim)
        clf.start_at_probe(x, y, spec.num_classes)
        if not name:
            out["probe_accuracy"] = _accuracy(clf, x_te, y_te)
        _train(clf, x, y, chosen["epochs"], lr * chosen["scale"], recipe)
        out.update({f"{name}accuracy": _accuracy(clf, x_te, y_te), f"{name}epochs": chosen["epochs"],
                    f"{name}encoder_lr": lr * chosen["scale"]})
    return {**out, "labels": len(idx), "n_val": len(va), "n_test": len(y_te)}


def _choose(encoder: nn.Module, latent_dim: int, num_classes: int, x, y, tr, va, recipe: dict) -> dict:
    """The encoder learning-rate scale and number of epochs with the best validation score,
    ``{"scale", "epochs", "score"}``: a run per scale from the probe on ``x[tr]``, scored on
    ``x[va]`` before its first epoch and after each."""
    per_epoch = math.ceil(len(tr) / recipe["batch_size"])
    most = max(recipe["epochs"], math.ceil(MIN_STEPS / per_epoch))
    best = None
    for scale in ENCODER_LR_SCALES:
        clf = _Classifier(copy.deepcopy(encoder), latent_dim)
        clf.start_at_probe(x[tr], y[tr], num_classes)
        scores = [_score(clf, x[va], y[va])]  # scores[e]: after e epochs; scores[0] is the probe

        def on_epoch(epoch: int, _loss: float) -> bool:
            scores.append(_score(clf, x[va], y[va]))
            return len(scores) - 1 - _best(scores) >= recipe["patience"]  # stop: no gain for a while
        _train(clf, x[tr], y[tr], most, recipe["lr"] * scale, recipe, on_epoch)
        e = _best(scores)
        if best is None or scores[e] > best["score"]:  # ties: the first scale (the smaller step)
            best = {"scale": scale, "epochs": e, "score": scores[e]}
    return best


def _best(scores: list) -> int:
    """The first epoch with the highest score."""
    return max(range(len(scores)), key=scores.__getitem__)


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
    """An encoder, a fixed standardisation of its codes and a linear head: x [B, *shape] ->
    logits [B, num_classes].

    The encoder gives the code itself ([B, D], autoencoders) or (mu, logvar) ([B, 2D], the
    VAE); either way the features are its first D columns, the same ones ``model.codes`` gives.
    The standardisation is the probe's scaler, kept fixed (buffers) so that the head trains on
    features of unit scale, as the probe's logistic regression did.
    """

    def __init__(self, encoder: nn.Module, latent_dim: int):
        super().__init__()
        # every weight of the encoder trains, also one its model kept frozen (M1+M2's M1)
        self.encoder, self.latent_dim = encoder.requires_grad_(True), latent_dim
        dev = next(encoder.parameters()).device
        self.register_buffer("mean", torch.zeros(latent_dim, device=dev))
        self.register_buffer("scale", torch.ones(latent_dim, device=dev))
        self.head: nn.Linear | None = None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[:, :self.latent_dim]  # [B, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.features(x) - self.mean) / self.scale)

    @torch.no_grad()
    def start_at_probe(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        """Scaler and head from the linear probe of the encoder's features of (x, y)."""
        self.eval()
        f = torch.cat([self.features(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)]).cpu()
        scaler, clf = _fit_probe(f, y.cpu())
        w, b = clf.coef_, clf.intercept_  # [C, D], [C]
        if num_classes == 2:  # scikit-learn keeps one row for two classes: logit of class 1
            w, b = np.concatenate([-w / 2, w / 2]), np.concatenate([-b / 2, b / 2])
        dev = self.mean.device
        self.mean.copy_(torch.as_tensor(scaler.mean_))
        self.scale.copy_(torch.as_tensor(scaler.scale_))
        self.head = nn.utils.skip_init(nn.Linear, self.latent_dim, num_classes, device=dev)  # no RNG drawn
        self.head.weight.copy_(torch.as_tensor(w))
        self.head.bias.copy_(torch.as_tensor(b))


@torch.no_grad()
def _check_features(clf: _Classifier, model: nn.Module, x: torch.Tensor, name: str) -> None:
    # The fine-tuned classifier must start from exactly the features the probe sees, up to one
    # constant vector, which its standardisation takes out (a VampPrior's codes are its
    # encoder's means less the mean at a fixed image).
    clf.eval()
    f, c = clf.features(x), model.codes(x)
    if f.shape != c.shape or not torch.allclose(f - f.mean(0), c - c.mean(0), atol=1e-5):
        raise VaelabError(f"finetune needs a model whose encoder outputs its code first; --model {name} "
                          f"does not.")


def _train(clf: _Classifier, x: torch.Tensor, y: torch.Tensor, epochs: int, lr_encoder: float, recipe: dict,
           on_epoch=None) -> None:
    """AdamW, the head at the recipe's lr and the encoder at ``lr_encoder``; the same batches
    for every classifier."""
    opt = torch.optim.AdamW([{"params": clf.head.parameters(), "lr": recipe["lr"]},
                             {"params": clf.encoder.parameters(), "lr": lr_encoder}],
                            weight_decay=recipe["weight_decay"])
    train_classifier(clf, x, y, epochs, recipe["lr"], recipe["batch_size"], recipe["seed"], on_epoch=on_epoch,
                     opt=opt)


@torch.no_grad()
def _logits(clf: _Classifier, x: torch.Tensor) -> torch.Tensor:
    clf.eval()
    return torch.cat([clf(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])  # [N, C]


def _accuracy(clf: _Classifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return (_logits(clf, x).argmax(1) == y).sum().item() / len(y)


def _score(clf: _Classifier, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Validation score, higher is better: (accuracy, minus the mean cross-entropy)."""
    logits = _logits(clf, x)
    return (logits.argmax(1) == y).float().mean().item(), -nn.functional.cross_entropy(logits, y).item()


def _check_schedule(epochs, lr, batch_size, weight_decay, patience) -> None:
    if _whole(epochs) is None or epochs < 1:
        raise VaelabError(f"--epochs must be a whole number >= 1, got {epochs!r}.")
    if _whole(batch_size) is None or batch_size < 1:
        raise VaelabError(f"--batch-size must be a whole number >= 1, got {batch_size!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise VaelabError(f"--lr must be a positive number, got {lr!r}.")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or \
            not math.isfinite(weight_decay) or weight_decay < 0:
        raise VaelabError(f"--weight-decay must be a number >= 0, got {weight_decay!r}.")
    if _whole(patience) is None or patience < 1:
        raise VaelabError(f"--patience must be a whole number >= 1, got {patience!r}.")
