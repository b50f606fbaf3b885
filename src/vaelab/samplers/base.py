"""What every sampler is to the rest of vaelab: its name (and argument), what it says of itself
for a figure's caption, which models it refuses, how it is fitted and rebuilt from its cache.

A sampler file holds a :class:`BaseSampler` subclass, its fitted stage (an ``nn.Module`` whose
buffers and weights are its cache file) and one ``@register_sampler("name")`` line. The package
(:mod:`vaelab.samplers`) parses ``--sampler`` against the registry, caches what a sampler fits
and trains any stage that learns by gradient through one loop of its own; a sampler says only
what is fitted, to what, and how it is rebuilt.
"""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn

from ..errors import VaelabError
from ..models.base import ENCODE, GRID, VECTOR

SEED = 0  # every fit: the mixture's EM, the second stages' weights and batches

# the package's loop for a stage fitted by gradient (:func:`vaelab.samplers._train`):
# (stage, data of epoch e, recipe) -> the last epoch's mean loss
Train = Callable[[nn.Module, Callable[[int], torch.Tensor], dict], float]


class BaseSampler:
    """A way of drawing a model's images, named on the command line as ``name`` or, for one that
    takes a whole number, ``name:ARG`` (``gmm:10``). An instance is one such spec: ``arg`` holds
    its number (None for a sampler that takes none), ``str()`` gives it back as it is written."""

    name: ClassVar[str]                         # set by @register_sampler
    # what a report says of it: a title, and a caption that completes "samples drawn from ..."
    # (lower case, no final stop); in both, {K} (the argument's letter) stands for the argument
    title: ClassVar[str]
    caption: ClassVar[str]
    argument: ClassVar[str | None] = None       # the argument's letter (gmm:K), None if it takes none
    bounds: ClassVar[tuple[int, int]] = (1, 1)  # the whole numbers the argument may be
    example: ClassVar[int] = 1                  # an argument to suggest for a mistyped name
    order: ClassVar[int] = 100                  # where --sampler's choices list it
    fitted: ClassVar[bool] = True               # False: the model draws by itself, nothing is cached
    recipe: ClassVar[dict] = {}                 # a stage trained by gradient: its fixed recipe

    def __init__(self, arg: int | None = None):
        self.arg = arg

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"

    @classmethod
    def usage(cls) -> str:
        """How ``--sampler`` takes it: ``gmm:K (K a whole number from 1 to 1000)``."""
        if cls.argument is None:
            return cls.name
        a, (lo, hi) = cls.argument, cls.bounds
        return f"{cls.name}:{a} ({a} a whole number from {lo} to {hi})"

    @classmethod
    def fill(cls, text: str, arg: int | None = None) -> str:
        """``text`` (its title or caption) with the argument in place of {K}; the letter itself
        where no argument is given."""
        if cls.argument is None:
            return text
        return text.format(**{cls.argument: cls.argument if arg is None else arg})

    def check(self, model_cls, where) -> None:
        """Refuse, in one sentence, a model class it cannot draw for (``where``: the run directory
        the message names)."""

    def fit(self, model, x: torch.Tensor, train: Train) -> tuple[nn.Module, dict, str]:
        """Its stage fitted to the codes of the training images x (on the model's device, the
        global RNG seeded by the caller), the settings that rebuild it (:meth:`build`, saved in
        the cache file), and what to log of the fit. ``train`` is the package's loop for a stage
        that learns by gradient."""
        raise NotImplementedError(f"--sampler {self} fits nothing")

    def build(self, settings: dict) -> nn.Module:
        """An unfitted stage of the shape ``settings`` (a cache file's) describe, to load into."""
        raise NotImplementedError(f"--sampler {self} fits nothing")

    def drawer(self, model: nn.Module, stage: nn.Module | None) -> nn.Module:
        """What draws the images: ``sample(n)`` -> [n, *shape]."""
        return model if stage is None else FittedSampler(model, stage)


class VectorSampler(BaseSampler):
    """A density fitted to vectors, ``codes(x)`` [N, D], whose draws ``decode_mean`` maps to
    images: any model with an encoder whose latent is a VECTOR."""

    def check(self, model_cls, where) -> None:
        if ENCODE not in model_cls.capabilities:
            raise VaelabError(f"--sampler {self} is fitted to the codes of the training images, and {where} holds "
                              f"a {model_cls.name}, which has no encoder.")
        if model_cls.latent != VECTOR:
            raise VaelabError(f"--sampler {self} fits vectors, but the codes of a {model_cls.name} are grids of "
                              "codebook indices: use --sampler pixelcnn.")

    def codes(self, model, x: torch.Tensor) -> torch.Tensor:
        """The codes of the training images x, [N, D] float32, refused if any is not finite."""
        z = of_all(model.codes, x, device_of(model)).float()
        if not torch.isfinite(z).all():
            raise VaelabError(f"--sampler {self} cannot be fitted: the codes of the training images are not all "
                              "finite (a diverged run?).")
        return z


class FittedSampler(nn.Module):
    """A model's decoder fed by a fitted stage: ``sample(n)`` -> images [n, *shape], as a model's own."""

    def __init__(self, model: nn.Module, stage: nn.Module):
        super().__init__()
        self.model, self.stage = model, stage

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        z = self.stage.sample(n)
        return self.model.decode_grid(z) if self.model.latent == GRID else self.model.decode_mean(z)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def of_all(fn, x: torch.Tensor, dev: torch.device, batch_size: int = 500) -> torch.Tensor:
    """``fn`` of every row of x, in batches on ``dev``."""
    return torch.cat([fn(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])
