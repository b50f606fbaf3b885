"""Weight averaging (``--ema DECAY``): an exponential moving average of a model's parameters,
kept beside the trained ones and used wherever the run is measured or saved.

    theta_ema <- theta_ema + (1 - d_t) (theta - theta_ema),  d_t = min(DECAY, (1 + t) / (10 + t))

after every training step t (Polyak & Juditsky 1992; the warm-up of d_t, from TensorFlow's
ExponentialMovingAverage with num_updates, keeps the average from being dominated by the random
initial weights in a short run). Buffers (batch-norm statistics) are copied, not averaged. A
step the non-finite guard dropped leaves the average as it was. Everything stays on the device.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)  # the averaged model
        self.updates = 0  # steps averaged so far (the warm-up of the decay reads it)
        self._pairs = ([p for p in self.model.parameters()], [p.detach() for p in model.parameters()],
                       list(zip(self.model.buffers(), model.buffers())))

    @torch.no_grad()
    def update(self, skipped: torch.Tensor) -> None:
        """Average in the trained model's weights after a step; ``skipped`` (0-dim, 1.0 for a
        dropped step) masks the update on the device, so no step waits for the host."""
        averaged, trained, buffers = self._pairs
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        weight = (1 - d) * (1 - skipped)  # 0 for a dropped step
        torch._foreach_lerp_(averaged, trained, weight.to(averaged[0].dtype))
        for b_avg, b in buffers:
            b_avg.copy_(b)
        self.updates += 1
