"""Turning raw uint8 splits into model inputs, and batching them by index.

Data lives as one tensor in memory (on the training device); a batch is ``x[idx]`` for a
slice of a seeded permutation, never a per-item collate. Binarization:

* ``none``: intensities scaled to [0, 1];
* ``static``: one Bernoulli draw per pixel with a fixed seed, the same every epoch;
* ``dynamic``: a fresh Bernoulli draw each time an image is used (the IWAE-paper protocol).

Evaluation splits (validation, test) are binarized once with a fixed seed in both the static
and dynamic cases, so every evaluation of every run sees the same binary images.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import torch

from ..distributed import shard as rank_part
from .batch import Batch

BINARIZE_SEED = 1234  # fixed seed of every static/evaluation binarization


def to_unit(x: torch.Tensor, levels: int) -> torch.Tensor:
    """uint8 raw values 0..levels-1 -> float32 in [0, 1]."""
    return x.to(torch.float32) / (levels - 1)


def binarize_fixed(x: torch.Tensor, seed: int = BINARIZE_SEED) -> torch.Tensor:
    """One Bernoulli draw of x in [0, 1] with a fixed seed (independent of the global RNG)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.bernoulli(x.cpu(), generator=g).to(x.device)


def dequantize_fixed(x_unit: torch.Tensor, levels: int, seed: int = BINARIZE_SEED) -> torch.Tensor:
    """Inputs k / (levels - 1) -> (k + u) / levels with u ~ U(0, 1) drawn once from a fixed seed."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.rand(x_unit.shape, generator=g).to(x_unit.device)
    return ((x_unit * (levels - 1)).round() + u) / levels


# A dequantized model lives on another scale than the data: it sees x = (k + u) / L, u ~ U(0, 1),
# where the data and every image metric use k / (L - 1). Since u is independent of k with mean
# 1/2, E[x | z] = (E[k | z] + 1/2) / L: the model's mean m stands for the grey level L m - 1/2,
# which is (L m - 1/2) / (L - 1) on the data's scale. The two maps below are that affine map and
# its inverse, which takes k / (L - 1) to (k + 1/2) / L, the centre of k's dequantization bin
# (the noise-free input that stands for k). Not clamped: a model's mean may leave [0, 1] on
# either scale, and an error metric should see by how much.

def to_dequantized_scale(x_unit: torch.Tensor, levels: int) -> torch.Tensor:
    """Data k / (levels - 1) -> the centre of its dequantization bin, (k + 1/2) / levels."""
    return (x_unit * (levels - 1) + 0.5) / levels


def from_dequantized_scale(x: torch.Tensor, levels: int) -> torch.Tensor:
    """A dequantized model's image on the (k + u) / levels scale -> the data's k / (levels - 1)."""
    return (x * levels - 0.5) / (levels - 1)


def eval_inputs(x: torch.Tensor, levels: int, binarize: str) -> torch.Tensor:
    """The fixed float inputs for an evaluation split."""
    u = to_unit(x, levels)
    return u if binarize == "none" else binarize_fixed(u)


class Batches:
    """Minibatches of a training split, each a :class:`~vaelab.data.batch.Batch`: shuffled by
    index each epoch, binarized per mode, with their labels ``y`` and the ``labelled`` mask where
    given (indexed and sharded as the images are; they draw nothing from the generator).

    The shuffling and dynamic binarization draw from ``generator`` (a CPU generator whose
    state is checkpointed for exact resume).

    ``shard = (rank, world)`` (torchrun): ``batch_size`` is the global minibatch, and this rank
    keeps its contiguous part of each (:func:`vaelab.distributed.shard`). Every rank draws the
    same permutation and the same noise for the whole global minibatch, so the ranks' parts
    together are exactly what one process sees, and the generator stays in step on every rank.
    A rank whose part of a (last, small) minibatch is empty gets the minibatch's first image as
    a stand-in, so it still takes the step and joins its collectives; :meth:`shares` says its
    part counts for 0 images.

    ``with_labelled`` (a model that learns from a few labels: M2): each minibatch also carries
    ``labelled_part``, a minibatch of the same global size drawn afresh from the images whose
    labels the run may use (without replacement within it where there are as many; where there
    are fewer, shuffled copies of all of them one after another), binarized alike, and sharded as
    the minibatch is, so each rank's two parts hold the same share of their global minibatches. It draws from ``generator`` after the minibatch's
    own draws, so its stream is checkpointed with theirs; without it nothing more is drawn.
    """

    def __init__(self, x: torch.Tensor, levels: int, binarize: str, batch_size: int,
                 generator: torch.Generator, device: torch.device | str = "cpu", dequantize: bool = False,
                 drop_last: bool = False, shard: tuple[int, int] | None = None, y: torch.Tensor | None = None,
                 labelled: torch.Tensor | None = None, with_labelled: bool = False):
        self.dequantize, self.levels, self.drop_last, self.shard = dequantize, levels, drop_last, shard
        # the labels travel with their images: indexed, sharded and moved alike ([N] each); a
        # hidden one is -1, so no model can read what --labels hid
        if y is not None and labelled is not None:
            y = torch.where(labelled, y, torch.full_like(y, -1))
        self.y = y.to(device) if y is not None else None
        self.labelled = labelled.to(device) if labelled is not None else None
        if dequantize:  # raw values 0..levels-1; each batch gets fresh uniform noise
            u = x.to(torch.float32)
        else:
            u = to_unit(x, levels)
            if binarize == "static":
                u = binarize_fixed(u)
        self.x = u.to(device)  # [N, *shape], float32
        self.dynamic = binarize == "dynamic"
        self.batch_size = batch_size
        self.generator = generator
        # the images whose labels the run may use, [N_l] indices (with_labelled only)
        self.labelled_idx = None
        if with_labelled:
            if self.y is None:
                raise ValueError("with_labelled needs the labels y")
            mask = self.labelled if self.labelled is not None else torch.ones_like(self.y, dtype=torch.bool)
            self.labelled_idx = mask.nonzero().squeeze(1)

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _sizes(self) -> list[int]:
        """The global minibatches' sizes, in order."""
        n = self.x.shape[0]
        return [min(self.batch_size, n - i) for i in range(0, len(self) * self.batch_size, self.batch_size)]

    def _part(self, size: int) -> slice:
        """This rank's part of a global minibatch of ``size`` (its stand-in's, where empty)."""
        if self.shard is None:
            return slice(None)
        part = rank_part(size, *self.shard)
        return part if part.stop > part.start else slice(0, 1)

    def shares(self) -> list[tuple[int, int]]:
        """(images this rank's part holds, images of the global minibatch) of each minibatch."""
        parts = [rank_part(size, *(self.shard or (0, 1))) for size in self._sizes()]
        return [(part.stop - part.start, size) for part, size in zip(parts, self._sizes())]

    def _take(self, idx: torch.Tensor) -> Batch:
        """This rank's part of the global minibatch of images ``idx``, with its noise drawn for the
        whole of it [len(idx), *shape] (from the checkpointed generator, so the draw is
        reproducible), of which this rank keeps its part."""
        part = self._part(len(idx))
        rows = idx[part]
        xb = self.x[rows]
        if self.dynamic:
            u = torch.rand((len(idx), *xb.shape[1:]), generator=self.generator)[part].to(xb.device)
            xb = (u < xb).to(xb.dtype)
        elif self.dequantize:
            u = torch.rand((len(idx), *xb.shape[1:]), generator=self.generator)[part].to(xb.device)
            xb = (xb + u) / self.levels
        return Batch(xb, self.y[rows] if self.y is not None else None,
                     self.labelled[rows] if self.labelled is not None else None)

    def _labelled_part(self, size: int) -> Batch:
        """A global minibatch of ``size`` labelled images, drawn afresh (this rank's part)."""
        n_l = len(self.labelled_idx)
        pick = torch.cat([torch.randperm(n_l, generator=self.generator) for _ in range(-(-size // n_l))])[:size]
        pick = pick.to(self.labelled_idx.device)
        return self._take(self.labelled_idx[pick])

    def __iter__(self) -> Iterator[Batch]:
        n = self.x.shape[0]
        perm = torch.randperm(n, generator=self.generator).to(self.x.device)
        for i in range(0, len(self) * self.batch_size, self.batch_size):
            b = self._take(perm[i:i + self.batch_size])
            if self.labelled_idx is not None:
                b = dataclasses.replace(b, labelled_part=self._labelled_part(min(self.batch_size, n - i)))
            yield b
