"""Samplers fitted after training to the codes of the training images: the second stage that any
model with an encoder shares, whatever its objective.

    vaelab sample RUN_DIR --sampler prior | gmm:K | two-stage | pixelcnn
    vaelab eval RUN_DIR --sampler ...

One file per sampler, each a :class:`~vaelab.samplers.base.BaseSampler` registered by one line
(``@register_sampler("name")``, :mod:`vaelab.registry`); importing this package imports them all:

* ``prior`` (prior.py): the model's own ``sample``, z ~ p(z) (a model that declares SAMPLE).
* ``gmm:K`` (gmm.py): a Gaussian mixture of K full-covariance components fitted by EM to
  ``codes(x)`` of the training images; images are ``decode_mean(z)`` of its draws.
* ``two-stage`` (two_stage.py): Dai & Wipf 2019, a second, small VAE trained on draws
  z ~ q(z|x) of the training images; u ~ N(0, I) -> z -> image.
* ``pixelcnn`` (pixelcnn.py): for a model whose latent is a GRID of codebook indices (the
  VQ-VAE): a PixelCNN over the grid, sampled cell by cell -> ``decode_grid``.

The model says which kind its latent is (:attr:`vaelab.models.base.Model.latent`) and which
sampler it uses by default (``default_sampler``); a sampler it cannot have is refused in one
sentence (each sampler's ``check``). This module is what they share: ``--sampler`` parsed against
the registry (:func:`parse_sampler`, :func:`resolve_sampler`), the one loop that trains a stage
by gradient (:func:`_train`), and the cache (:func:`sampler_for`). A fitted sampler is cached in
``RUN_DIR/samplers/<name>-<checkpoint>.safetensors`` (:func:`vaelab.rundir.sampler_cache`), its
metadata holding the sampler, its settings and the MD5 of the checkpoint it was fitted on; a
checkpoint changed since (a resumed run) is fitted afresh. Fitting draws from its own seeded
generator, so the caller's random state, and so the samples of a seed, do not depend on whether
the sampler was fitted now or read from the cache.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.download import file_md5
from ..data.transforms import to_dequantized_scale
from ..errors import VaelabError, did_you_mean, quote
from ..io import load_weights, read_metadata, run_subfolder, save_weights
from ..loading import split_inputs
from ..models.base import adam
from ..registry import SAMPLERS, get_sampler, register_sampler
from ..rundir import CHECKPOINTS, sampler_cache
from .base import SEED, BaseSampler, FittedSampler
# the names other modules and the tests import from here
from .gmm import MAX_COMPONENTS, GaussianMixture, MixtureSampler
from .pixelcnn import GridPrior, PixelCNNSampler
from .prior import PriorSampler
from .two_stage import TwoStage, TwoStageSampler, _posterior_draws  # noqa: F401

# every sampler file registers itself on import: a new one needs no line here
for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

# of the cache files; 2: the two-stage sampler fitted to draws of q(z|x), no longer to its means
FORMAT = 2
# the fixed recipes of the stages trained by gradient (recorded in each cache file): each is its
# sampler's own ``recipe``, named here for importers; rebinding a name here changes no fit
TWO_STAGE = TwoStageSampler.recipe
PIXELCNN = PixelCNNSampler.recipe


def _listed() -> list[type]:
    return sorted(SAMPLERS.values(), key=lambda c: (c.order, c.name))


def usage() -> str:
    """What ``--sampler`` may be, from the registry: ``prior, gmm:K (K a whole number from 1 to
    1000), two-stage or pixelcnn``."""
    names = [c.usage() for c in _listed()]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


USAGE = usage()  # as the samplers registered with the package have it


@dataclass(frozen=True)
class SamplerSpec:
    """A parsed ``--sampler``: a registered sampler's name and its argument (gmm:10's 10, None for
    a sampler that takes none). ``str()`` gives it back as written, ``slug`` as a file name."""
    name: str             # prior, gmm, two-stage, pixelcnn, or any other registered
    arg: int | None = None

    def __str__(self) -> str:
        return f"{self.name}:{self.arg}" if self.arg is not None else self.name

    @property
    def slug(self) -> str:
        """The spec as a file name: gmm-10."""
        return str(self).replace(":", "-")

    @property
    def sampler_class(self) -> type[BaseSampler]:
        return get_sampler(self.name)

    @property
    def sampler(self) -> BaseSampler:
        """The sampler this spec names, its argument given."""
        return self.sampler_class(self.arg)

    @property
    def title(self) -> str:
        """A title for a report: ``Gaussian mixture of 10 components``."""
        cls = self.sampler_class
        return cls.fill(cls.title, self.arg)

    @property
    def caption(self) -> str:
        """How its samples are drawn, to complete "samples drawn from ...": ``a Gaussian mixture
        of 10 full-covariance components fitted by EM to the codes of the training images, ...``."""
        cls = self.sampler_class
        return cls.fill(cls.caption, self.arg)


def parse_sampler(text: str) -> SamplerSpec:
    """``prior``, ``gmm:K``, ``two-stage``, ``pixelcnn`` (any registered sampler) -> a
    :class:`SamplerSpec`."""
    name, colon, arg = str(text).partition(":")
    cls = SAMPLERS.get(name)
    if cls is not None:
        lo, hi = cls.bounds
        if cls.argument is None and not colon:
            return SamplerSpec(name)
        if cls.argument is not None and arg.isdecimal() and lo <= int(arg) <= hi:
            return SamplerSpec(name, int(arg))
    # a mistyped name ("gmn:10", "two-stag"), compared with the names, its argument kept
    examples = [c.name if c.argument is None else f"{c.name}:{arg if colon else c.example}" for c in _listed()]
    guess = "" if cls is not None else did_you_mean(str(text), examples)
    raise VaelabError(f"--sampler must be {usage()}, got {quote(text)}{guess}.")


def resolve_sampler(text: str | None, cls, where) -> SamplerSpec:
    """The sampler ``text`` names (None: the model's default), refused in one sentence where the
    model class ``cls`` cannot have it (``where``: the run directory the message names)."""
    spec = parse_sampler(cls.default_sampler if text is None else text)
    spec.sampler.check(cls, where)
    return spec


# --------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------

def _train(stage: nn.Module, epoch_data: Callable[[int], torch.Tensor], recipe: dict) -> float:
    """Adam on ``stage.loss`` over shuffled minibatches of ``epoch_data(epoch)``, the data of each
    epoch (the same N rows each time; the two-stage sampler's are drawn afresh); the last
    epoch's mean loss."""
    opt = adam(stage.parameters(), recipe["lr"])
    stage.train()
    for epoch in range(recipe["epochs"]):
        data = epoch_data(epoch)
        per_epoch = math.ceil(len(data) / recipe["batch_size"])
        perm, total = torch.randperm(len(data), device=data.device), 0.0
        for step, i in enumerate(range(0, len(data), recipe["batch_size"])):
            batch = data[perm[i:i + recipe["batch_size"]]]
            loss = stage.loss(batch, (epoch * per_epoch + step) / (recipe["epochs"] * per_epoch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(batch)
    return float(total) / len(data)


def _fit(spec: SamplerSpec, model, x: torch.Tensor) -> tuple[nn.Module, dict, str]:
    """The stage of ``spec`` fitted to the codes of the training images x, its settings, and what
    to log of the fit."""
    return spec.sampler.fit(model, x, _train)


def _cached(path: Path, spec: SamplerSpec, digest: str, log) -> nn.Module | None:
    """The stage in ``path`` if it was fitted for ``spec`` on the checkpoint of ``digest``."""
    if not path.is_file():
        return None
    try:
        meta = read_metadata(path)
        fits = meta.get("sampler") == str(spec) and meta.get("checkpoint_md5") == digest
        if meta.get("format") == FORMAT and fits:
            stage = spec.sampler.build(meta["settings"])
            load_weights(stage, path)
            return stage
        why = "on another checkpoint" if meta.get("format") == FORMAT else "by an older vaelab"
        log(f"{path} was fitted {why}: fitting it again")
    except (VaelabError, KeyError, TypeError, ValueError) as e:
        log(f"cannot read {path} ({e}): fitting it again")
    return None


def sampler_for(run_dir, model, spec: SamplerSpec | str | None = None, checkpoint: str = "best",
                data_dir: str | None = None, log=None) -> nn.Module:
    """What draws a loaded run's images for ``spec`` (None: the model's default): the model itself
    for ``prior``, else a :class:`FittedSampler`, read from the run's cache or fitted now (on the
    training split of the run's data) and cached. ``checkpoint`` names the weights ``model`` holds."""
    log = log or (lambda m: None)
    if not isinstance(spec, SamplerSpec):
        spec = resolve_sampler(spec, type(model), run_dir)
    sampler = spec.sampler
    if not sampler.fitted:
        return sampler.drawer(model, None)
    dev = next(model.parameters()).device
    digest = file_md5(Path(run_dir) / CHECKPOINTS[checkpoint])
    path = sampler_cache(run_dir, spec.slug, checkpoint)
    stage = _cached(path, spec, digest, log)
    if stage is None:
        model.eval()
        run = model.run_config
        x = split_inputs(run_dir, "train", data_dir)[0]
        if run.model.dequantizes:  # the model sees (k + u) / levels: its codes of the bins' centres
            x = to_dequantized_scale(x, model.data_spec.levels)
        log(f"fitting --sampler {spec} to the codes of {len(x):,} training images")
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(SEED)
            stage, settings, how = _fit(spec, model, x)
        log(f"fitted --sampler {spec} in {time.perf_counter() - t0:.1f} s: {how}")
        meta = {"format": FORMAT, "sampler": str(spec), "checkpoint": checkpoint, "checkpoint_md5": digest,
                "settings": settings, "fitted_on": len(x)}
        try:
            run_subfolder(path.parent)
            save_weights(stage, path, meta)
        except (OSError, VaelabError) as e:
            log(f"warning: --sampler {spec} is not cached, {path} cannot be written ({e})")
    return sampler.drawer(model, stage.to(dev).eval())


__all__ = ["FORMAT", "MAX_COMPONENTS", "SAMPLERS", "SEED", "USAGE", "BaseSampler", "FittedSampler", "GaussianMixture",
           "GridPrior", "MixtureSampler", "PixelCNNSampler", "PriorSampler", "SamplerSpec", "TwoStage",
           "TwoStageSampler", "get_sampler", "parse_sampler", "register_sampler", "resolve_sampler", "sampler_for",
           "usage"]
