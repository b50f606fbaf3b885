"""Fréchet distance between real and generated images in the features of a classifier that
vaelab trains itself: FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium") with a small per-dataset network instead of Inception.

Both image sets are summarised by the mean and covariance of their features, and

    FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}),

the 2-Wasserstein distance between the two Gaussians. S1 S2 is similar to the symmetric PSD
matrix sqrt(S1) S2 sqrt(S1), so Tr (S1 S2)^{1/2} = sum of the square roots of its eigenvalues:
two symmetric eigendecompositions in float64, tiny negative eigenvalues clamped at 0. No scipy.

The numbers are comparable only between runs that use the same classifier: it is trained once
per dataset with a fixed recipe (:data:`RECIPE_VERSION`) and seed, and cached as safetensors
under ``$VAELAB_CACHE/classifiers`` (default ``~/.cache/vaelab``), keyed by the dataset name, a
hash of the training data and the recipe version. They are not comparable with Inception FIDs.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..errors import VaelabError
from ..io import load_weights, read_metadata, save_weights
from .classify import train_classifier

RECIPE_VERSION = 1   # bump when FeatureNet or train_feature_net changes: old caches retrain
FEATURES = 128       # width of the penultimate layer, the feature space
MIN_UPDATES = 800    # train_feature_net's default length: at least this many Adam steps, and 2 epochs
CACHE_ENV = "VAELAB_CACHE"


# ---------------------------------------------------------------------------------- distance

def feature_stats(features) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, F] (N >= 2) -> (mean [F], covariance [F, F] with 1/(N-1)), float64."""
    f = torch.as_tensor(features).detach().to(torch.float64)
    if f.dim() != 2 or f.shape[0] < 2:
        raise VaelabError(f"Fréchet statistics need features [N, F] with N >= 2, got shape {tuple(f.shape)}.")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) between N(mu1, S1) and N(mu2, S2)."""
    mu1, mu2, s1, s2 = (torch.as_tensor(t).to(torch.float64) for t in (mu1, mu2, cov1, cov2))
    f = mu1.shape[0] if mu1.dim() == 1 else -1
    if any(t.shape != (f,) for t in (mu1, mu2)) or any(t.shape != (f, f) for t in (s1, s2)):
        raise VaelabError(f"Fréchet distance needs means [F] and covariances [F, F] of one F; got "
                          f"{[tuple(t.shape) for t in (mu1, s1, mu2, s2)]}.")
    r = _sqrt_psd(s1)
    m = r @ s2 @ r
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * tr_sqrt)


# -------------------------------------------------------------------------------- classifier

class FeatureNet(nn.Module):
    """A small classifier of images [B, C, H, W] in [0, 1]; its penultimate layer is the feature space.

    Images with H, W >= 8: blocks of 3x3 conv + ReLU + 2x2 max-pool (two blocks, 16 and 32
    channels; a third of 64 when H, W >= 32), then Linear -> ReLU (FEATURES wide) -> logits.
    Anything smaller: flatten -> Linear(256) -> ReLU -> the same head.
    """

    def __init__(self, shape: tuple[int, ...], num_classes: int):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if not shape or min(shape) < 1 or num_classes < 2:
            raise VaelabError(f"a feature classifier needs a positive image shape and >= 2 classes, "
                              f"got shape {shape} and {num_classes} classes.")
        self.shape, self.num_classes = shape, int(num_classes)
        self.accuracy: float | None = None  # test accuracy, when it was measured
        if len(shape) == 3 and min(shape[1:]) >= 8:
            c, h, w = shape
            chans = (16, 32, 64) if min(h, w) >= 32 else (16, 32)
            layers: list[nn.Module] = []
            for c_in, c_out in zip((c, *chans[:-1]), chans):
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
                h, w = h // 2, w // 2
            # state size: chans[-1] x h x w
            self.body = nn.Sequential(*layers, nn.Flatten())
            width = chans[-1] * h * w
        else:
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 256), nn.ReLU())
            width = 256
        self.hidden = nn.Sequential(nn.Linear(width, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, *shape] -> [B, FEATURES]: the penultimate activations."""
        return self.hidden(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, *shape] -> logits [B, num_classes]."""
        return self.head(self.features(x))


def _check_images(x: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if (not torch.is_tensor(x) or not x.is_floating_point() or tuple(x.shape[1:]) != tuple(shape) or len(x) == 0
            or x.min() < 0 or x.max() > 1):
        got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise VaelabError(f"{what} must be a non-empty float tensor [N, {', '.join(map(str, shape))}] "
                          f"in [0, 1], got {got}.")


def _check_labels(x: torch.Tensor, y, num_classes: int) -> torch.Tensor:
    y = torch.as_tensor(y).to(x.device).long()
    if y.shape != (len(x),) or y.min() < 0 or y.max() >= num_classes:
        raise VaelabError(f"the classifier's labels must be {len(x)} integers in 0..{num_classes - 1}.")
    return y


def train_feature_net(x_train: torch.Tensor, y_train, shape: tuple[int, ...], num_classes: int,
                      epochs: int | None = None, seed: int = 0, batch_size: int = 128,
                      progress: bool = False) -> FeatureNet:
    """Train a :class:`FeatureNet`, deterministically for a given seed, on x_train's device.

    Adam (lr 2e-3, decayed linearly to 0). ``epochs=None`` picks enough epochs for at least
    MIN_UPDATES updates and at least 2 epochs (2 on MNIST, 73 on the 1,317 training digits).

    Args:
        x_train: float images [N, *shape] in [0, 1].
        y_train: labels [N] in 0..num_classes-1.
    Returns:
        the trained net, in eval mode.
    """
    _check_images(x_train, shape, "the classifier's training images")
    y_train = _check_labels(x_train, y_train, num_classes)
    if (epochs is not None and epochs < 1) or batch_size < 1:
        raise VaelabError(f"the classifier needs epochs >= 1 and batch_size >= 1, got {epochs} and {batch_size}.")
    n = len(x_train)
    steps_per_epoch = -(-n // batch_size)
    epochs = max(2, -(-MIN_UPDATES // steps_per_epoch)) if epochs is None else int(epochs)
    cuda = [x_train.device] if x_train.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        net = FeatureNet(shape, num_classes).to(x_train.device)
    # a bar on a terminal only (tqdm's disable=None): a log file or a pipe stays clean
    with tqdm(total=epochs, desc="Fréchet classifier", leave=False, file=sys.stderr,
              disable=None if progress else True) as bar:
        def on_epoch(e: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        train_classifier(net, x_train, y_train, epochs, 2e-3, batch_size, seed, decay=True, on_epoch=on_epoch)
    return net.eval()


@torch.no_grad()
def _batched(fn, net: FeatureNet, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    dev = next(net.parameters()).device
    return torch.cat([fn(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])


def accuracy(net: FeatureNet, x: torch.Tensor, y, batch_size: int = 1000) -> float:
    """Fraction of ``x`` [N, *shape] that ``net`` classifies as ``y``."""
    _check_images(x, net.shape, "the classifier's test images")
    y = _check_labels(x, y, net.num_classes)
    pred = _batched(lambda b: net(b).argmax(1), net.eval(), x, batch_size)
    return float((pred.to(y.device) == y).double().mean())


# ------------------------------------------------------------------------------------- cache

def cache_dir_default() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vaelab") / "classifiers"


def _content_key(name: str, x: torch.Tensor, y: torch.Tensor, shape, num_classes: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((name, tuple(shape), int(num_classes), RECIPE_VERSION, str(x.dtype))).encode())
    h.update(np.ascontiguousarray(x.detach().cpu().numpy()).tobytes())
    h.update(np.ascontiguousarray(y.cpu().numpy().astype(np.int64)).tobytes())
    return h.hexdigest()


def feature_classifier(name: str, x_train: torch.Tensor, y_train, shape: tuple[int, ...], num_classes: int,
                       cache_dir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
                       x_test: torch.Tensor | None = None, y_test=None) -> FeatureNet:
    """The feature classifier of a dataset: trained once with :func:`train_feature_net`, then cached.

    The cache file ``<cache_dir>/<name>-v<RECIPE_VERSION>-<key>.safetensors`` (``key``: a hash
    of the name, shape, classes, recipe version and the training bytes) holds the weights and,
    as metadata, name, shape, num_classes, recipe, key and the test accuracy when ``x_test`` and
    ``y_test`` were given at training time. Changed data or recipe -> another file, a new training;
    an unreadable or mismatched file is retrained and replaced.

    Args:
        name: the dataset's name (part of the file name).
        x_train, y_train: float images [N, *shape] in [0, 1] and their labels.
        cache_dir: folder of the cache (default ``$VAELAB_CACHE/classifiers`` or
            ``~/.cache/vaelab/classifiers``).
        log: called with one line when the classifier is (re)trained or loaded.
    Returns:
        the net in eval mode; ``net.accuracy`` is its test accuracy or None.
    """
    _check_images(x_train, shape, "the classifier's training images")
    y_train = _check_labels(x_train, y_train, num_classes)
    folder = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    key = _content_key(name, x_train, y_train, shape, num_classes)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}-v{RECIPE_VERSION}-{key[:16]}.safetensors"
    say = log or (lambda _msg: None)
    net = FeatureNet(shape, num_classes)
    if path.is_file():
        try:
            md = read_metadata(path)
            if md.get("key") != key:
                raise VaelabError(f"{path} belongs to other data.")
            load_weights(net, path)
            net.accuracy = md.get("accuracy")
            say(f"feature classifier for {name}: loaded {path}")
            return net.to(x_train.device).eval()
        except VaelabError as e:
            say(f"feature classifier for {name}: retraining, the cache is unusable ({e})")
    say(f"feature classifier for {name}: training on {len(x_train)} images (cached in {path})")
    t0 = time.perf_counter()
    net = train_feature_net(x_train, y_train, shape, num_classes, progress=log is not None)
    if x_test is not None and y_test is not None:
        net.accuracy = accuracy(net, x_test, y_test)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaelabError(f"cannot create the classifier cache {folder}: {e.strerror or e}.") from None
    save_weights(net, path, {"name": name, "shape": list(shape), "num_classes": int(num_classes),
                             "recipe": RECIPE_VERSION, "key": key, "accuracy": net.accuracy,
                             "train_seconds": round(time.perf_counter() - t0, 1)})
    say(f"feature classifier for {name}: trained in {time.perf_counter() - t0:.1f}s"
        + (f", test accuracy {net.accuracy:.4f}" if net.accuracy is not None else ""))
    return net


def frechet_from_images(net: FeatureNet, x_real: torch.Tensor, x_fake: torch.Tensor, batch_size: int = 500,
                        ranks_share: bool = False) -> float:
    """The Fréchet distance between two image sets [N, *shape] in ``net``'s feature space.
    ``ranks_share`` (under torchrun): ``x_fake`` is this rank's part of the generated images and
    each rank takes whole batches of ``x_real``; the features are gathered in order, so every
    rank computes the one-process statistics from the same rows, to the last bit."""
    for x, what in ((x_real, "the real images"), (x_fake, "the generated images")):
        _check_images(x, net.shape, what)
    net.eval()
    if ranks_share:
        mine = distributed.blocks(len(x_real), batch_size)
        x_real = x_real[mine.start * batch_size:mine.stop * batch_size]
    stats = []
    for x in (x_real, x_fake):
        f = _batched(net.features, net, x, batch_size).cpu() if len(x) else torch.zeros(0, FEATURES)
        stats.append(feature_stats(torch.cat(distributed.gather([f])) if ranks_share else f))
    return frechet_distance(*stats[0], *stats[1])
