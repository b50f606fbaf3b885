"""Scores of a model's samples on one scale for every model that can sample (GAN, VAE):

* the Parzen-window log-likelihood of Goodfellow et al. 2014 (Table 1): a Gaussian kernel
  density on 10,000 samples, sigma chosen on 1,000 validation images, the mean log-likelihood
  of the test images with its standard error (:mod:`vaelab.evaluation.parzen`);
* the Fréchet distance between test images and samples in the features of a classifier
  vaelab trains on the dataset's training split and caches (:mod:`vaelab.evaluation.frechet`).

Both compare samples with the data's grey levels in [0, 1], whatever binarization the model was
trained with: a VAE trained on binarized pixels contributes the means of p(x|z), the images
its decoder stands for, as its samples; a Gaussian VAE on dequantized pixels (k + u) / L
contributes its means mapped back to the data's scale k / (L - 1).

Under torchrun the ranks share the samples: each draws its blocks of :data:`SAMPLE_BLOCK`
(each block from a seed of its own, so together they are the samples one process draws), the
Parzen window merges the ranks' log-sums per test image, and the Fréchet distance gathers the
features in order; rank 0 trains (or reads) the feature classifier and sends it to the others.
"""
from __future__ import annotations

import math
import time

import torch

from .. import distributed
from ..data import run_dataset
from ..data.transforms import from_dequantized_scale, to_unit
from ..errors import VaelabError
from ..limits import check_bytes
from ..models.base import Sampler
from .frechet import FEATURES, accuracy, feature_classifier, frechet_from_images
from .parzen import parzen_evaluate

PARZEN_VAL = 1000  # validation images that choose sigma (Goodfellow et al.'s parzen_ll.py)
# Memory per sample: 16 bytes a pixel (float32 batches, their concatenation, Parzen's float64 copy)
# and 20 bytes a feature (float32 features, the float64 copy and its centred copy in feature_stats).
BYTES_PER_PIXEL, BYTES_PER_FEATURE = 16, 20
SAMPLE_BLOCK = 1000  # samples drawn together from one seed (distributed.block_seed)


def check_samples(n_samples: int, shape) -> None:
    """Refuse a number of samples below 2, fewer blocks of them than processes, or one whose
    scoring would not fit in memory."""
    if n_samples < 2:
        raise VaelabError(f"--samples must be at least 2, got {n_samples}.")
    world = distributed.world_size()
    if -(-n_samples // SAMPLE_BLOCK) < world:
        raise VaelabError(f"--samples {n_samples} is fewer than one block of {SAMPLE_BLOCK} for each of the "
                          f"{world} processes; give at least {(world - 1) * SAMPLE_BLOCK + 1} or run fewer.")
    per_sample = BYTES_PER_PIXEL * math.prod(shape) + BYTES_PER_FEATURE * FEATURES
    check_bytes(f"--samples {n_samples} of {'x'.join(map(str, shape))} images", n_samples * per_sample)


@torch.no_grad()
def draw_samples(model: Sampler, n: int, seed: int = 0, batch_size: int = SAMPLE_BLOCK,
                 dequantized_levels: int | None = None, ranks_share: bool = False) -> tuple[torch.Tensor, float]:
    """n samples on the CPU, clamped to [0, 1], and the samples/s of drawing them. They are drawn in
    blocks of ``batch_size``, each from a seed of its own. ``ranks_share`` (under torchrun): this
    rank draws and returns its blocks alone (the ranks' parts in rank order are the samples one
    process draws), and the samples/s is all ranks' together. A model on dequantized pixels
    (``dequantized_levels``) has its samples mapped to the data's scale first."""
    dev = next(model.parameters()).device
    model.eval()
    mine = distributed.blocks(n, batch_size) if ranks_share else range(-(-n // batch_size))
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        t0 = time.perf_counter()
        out = []
        for b in mine:
            distributed.seed_block(seed, b, dev)
            out.append(model.sample(min(batch_size, n - b * batch_size)))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
    if ranks_share:  # the slowest rank's time is the time they all took
        seconds = max(distributed.gather([seconds]))
    x = torch.cat(out).float()
    if dequantized_levels is not None:
        x = from_dequantized_scale(x, dequantized_levels)
    return x.clamp(0, 1).cpu(), n / max(seconds, 1e-9)


def sample_metrics(model: Sampler, n_samples: int = 10_000, data_dir: str | None = None, seed: int = 0,
                   log=None, sampler: Sampler | None = None) -> dict:
    """Parzen log-likelihood and Fréchet distance of ``n_samples`` samples of a loaded run's
    model (:func:`vaelab.load`), against its dataset's test split. ``sampler``: what draws them,
    if not the model's own ``sample`` (a sampler fitted after training, :mod:`vaelab.samplers`).
    Under torchrun the ranks share the samples and all return the same scores."""
    run, spec = model.run_config, model.data_spec
    check_samples(n_samples, spec.shape)
    d = run.data
    # first where training found it (a model from vaelab.load knows); a rank that cannot read it says so
    ds = distributed.together(lambda: run_dataset(d, data_dir, found_at=getattr(model, "data_source", None)))
    unit = {s: to_unit(getattr(ds, s).x, ds.spec.levels) for s in ("train", "val", "test")}
    samples, per_s = draw_samples(model if sampler is None else sampler, n_samples, seed,
                                  dequantized_levels=spec.levels if run.model.dequantizes else None, ranks_share=True)
    x_val = unit["val"][:PARZEN_VAL] if len(unit["val"]) else unit["train"][:PARZEN_VAL]
    res = {"samples_per_s": per_s, **parzen_evaluate(samples, x_val, unit["test"], ranks_share=True)}
    if spec.num_classes >= 2:
        dev = next(model.parameters()).device  # the classifier trains where the model lives
        # rank 0 trains it or reads its cache; the others get its weights, not their own (a cache
        # on a disk the nodes do not share would have them train one each)
        net = distributed.from_main(lambda: feature_classifier(
            d.data, unit["train"].to(dev), ds.train.y, tuple(spec.shape), spec.num_classes, log=log,
            x_test=unit["test"], y_test=ds.test.y).cpu()).to(dev)
        res["frechet"] = frechet_from_images(net, unit["test"], samples, ranks_share=True)
        res["frechet_classifier_accuracy"] = net.accuracy
        if getattr(model, "samples_classes", False) and sampler in (None, model):  # samples of a chosen class
            res.update(class_metrics(model, net, unit["test"], ds.test.y, n_samples, seed, spec.num_classes,
                                     spec.levels if run.model.dequantizes else None))
    return res


class _OfClass(torch.nn.Module):
    """Draws of one class ``c`` of a model of labels (``sample_class``), as :func:`draw_samples`
    takes a sampler."""

    def __init__(self, model, c: int):
        super().__init__()
        self.model, self.c = model, c

    def sample(self, n: int) -> torch.Tensor:
        return self.model.sample_class(torch.full((n,), self.c, dtype=torch.long))


def class_metrics(model, net, x_test: torch.Tensor, y_test: torch.Tensor, n_samples: int, seed: int,
                  num_classes: int, dequantized_levels: int | None = None) -> dict:
    """How well a model of labels draws the class it is asked for: ``n_samples // num_classes``
    samples of each class c (seed ``seed + 1 + c``), and

    * ``class_accuracy``: ``{"overall", "per_class": {c: ...}}``, the share of the samples drawn
      for c that the Fréchet feature classifier ``net`` assigns to c;
    * ``frechet_per_class``: ``{c: ...}``, the Fréchet distance between the samples of c and the
      test images of class c.

    Every rank draws and scores them all (the same seeds: the same figures on every rank)."""
    per = max(2, n_samples // num_classes)
    acc, fd = {}, {}
    for c in range(num_classes):
        x, _ = draw_samples(_OfClass(model, c), per, seed + 1 + c, dequantized_levels=dequantized_levels)
        x = x.to(next(net.parameters()).device)
        acc[str(c)] = accuracy(net, x, torch.full((per,), c, dtype=torch.long))
        real = x_test[y_test == c]
        fd[str(c)] = frechet_from_images(net, real.to(x.device), x) if len(real) >= 2 else None
    return {"class_accuracy": {"overall": sum(acc.values()) / num_classes, "per_class": acc},
            "frechet_per_class": fd, "samples_per_class": per}
