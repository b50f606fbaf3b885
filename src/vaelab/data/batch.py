"""A minibatch as a model's training step receives it: the images, and where the data has them
their class labels and which of those labels the run may use."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Batch:
    """One minibatch.

    Attributes:
        x: the images, ``[B, *shape]`` float32 as the model trains on them (binarized or
            dequantized by :class:`~vaelab.data.transforms.Batches`).
        y: their class labels ``[B]`` (int64, ``0..num_classes-1``), or None where the data has
            none.
        labelled: ``[B]`` bool, which of ``y`` the run may use (``train --labels N`` hides the
            others: their ``y`` is -1), or None: all of them. A model that ignores labels reads
            ``x`` alone.
        labelled_part: for a model that learns from a few labels (``Model.labelled_part``), a
            minibatch of as many images whose labels the run may use, drawn alongside this one
            (its own ``labelled_part`` None); else None.
    """
    x: torch.Tensor
    y: torch.Tensor | None = None
    labelled: torch.Tensor | None = None
    labelled_part: "Batch | None" = None

    def __len__(self) -> int:
        return self.x.shape[0]


def as_batch(b) -> "Batch | list[Batch]":
    """``b`` as a :class:`Batch` (a list of them for a step of several minibatches): a tensor is
    a batch of images without labels, so a step can be called with images alone."""
    if isinstance(b, Batch):
        return b
    if isinstance(b, (list, tuple)):
        return [as_batch(v) for v in b]
    return Batch(b)
