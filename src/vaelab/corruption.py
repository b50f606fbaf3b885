"""Corruptions for the denoising autoencoder: x~ ~ C(x~ | x), drawn afresh on every use.

Specs as typed on the command line: ``gaussian:SIGMA`` (add N(0, SIGMA^2) noise),
``mask:P`` (zero each pixel with probability P), ``salt-pepper:P`` (set each pixel, with
probability P, to 0 or 1 with equal odds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import VaelabError

KINDS = ("gaussian", "mask", "salt-pepper")


@dataclass(frozen=True)
class Corruption:
    kind: str
    amount: float  # sigma for gaussian, probability P otherwise

    def __str__(self) -> str:
        return f"{self.kind}:{self.amount:g}"


def parse_corruption(spec: str) -> Corruption:
    kind, _, value = str(spec).partition(":")
    try:
        amount = float(value)
    except ValueError:
        amount = float("nan")
    ok = kind in KINDS and math.isfinite(amount) and amount >= 0 and (kind == "gaussian" or amount <= 1)
    if not ok:
        raise VaelabError(f"--corruption expects gaussian:SIGMA, mask:P or salt-pepper:P with P in [0, 1], "
                          f"got {spec!r}.")
    return Corruption(kind, amount)


def corrupt(x: torch.Tensor, c: Corruption) -> torch.Tensor:
    """A corrupted copy of x (same shape); the noise comes from the global RNG."""
    if c.kind == "gaussian":
        return x + c.amount * torch.randn_like(x)
    hit = torch.rand_like(x) < c.amount
    if c.kind == "mask":
        return x.masked_fill(hit, 0.0)
    salt = (torch.rand_like(x) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)
