"""The minibatch cross-entropy loop shared by the classifiers vaelab trains (the fine-tune
classifiers, the Fréchet distance's feature net)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def train_classifier(net: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch_size: int,
                     seed: int, decay: bool = False, on_epoch: Callable[[int, float], bool | None] | None = None,
                     opt: torch.optim.Optimizer | None = None) -> None:
    """Adam on the cross-entropy of ``net(x)`` against ``y``, batches from a seeded permutation
    per epoch (the same batches for every net given the same seed); ``decay``: the learning
    rate falls linearly to 0 over the run. ``on_epoch(epoch, mean loss)`` after each epoch;
    when it returns True, training stops there. ``opt``: an optimizer over ``net``'s
    parameters to use instead of Adam at ``lr`` (``decay`` then sets every group to ``lr``).
    Leaves ``net`` in eval mode."""
    opt = torch.optim.Adam(net.parameters(), lr=lr) if opt is None else opt
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = len(x)
    total, t = epochs * -(-n // batch_size), 0
    for epoch in range(epochs):
        net.train()  # each epoch: on_epoch may have evaluated the net
        perm = torch.randperm(n, generator=g).to(x.device)
        loss_sum = torch.zeros((), device=x.device)  # a tensor: no device sync per step
        for i in range(0, n, batch_size):
            b = perm[i:i + batch_size]
            if decay:
                for group in opt.param_groups:
                    group["lr"] = lr * (1 - t / total)
            loss = nn.functional.cross_entropy(net(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t += 1
            loss_sum += loss.detach() * len(b)
        if on_epoch and on_epoch(epoch, float(loss_sum) / n):
            break
    net.eval()
