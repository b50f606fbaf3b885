"""Which training labels a run may use: the class-balanced labelled subset that ``train
--labels N``, ``probe --labels N`` and ``finetune --labels N`` all pick alike for one seed, so
that the three compare like with like."""
from __future__ import annotations

import torch

from ..errors import VaelabError
from .datasets import whole_number as _whole


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
        raise VaelabError("--labels needs class labels, and the run's data has none (probe, finetune and train "
                          "--labels take a labelled dataset, e.g. an image folder with class subfolders).")
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
