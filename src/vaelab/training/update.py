"""The one update path: every loss a model yields reaches its weights through
:func:`apply_update` (backward, loss scaling, the gradient's all-reduce under torchrun, the
non-finite guard, clipping), and a whole training step through :func:`take_step`. Nothing here
knows a model.

Under torchrun the gradients are averaged here, not by wrapping the model in
DistributedDataParallel: a model's ``step`` calls its sub-modules and parameters directly (a
GAN's generator loss runs through the discriminator, the VAE's ``log_scale`` lives outside its
sub-modules), which DDP's wrapper, hooked on one module's ``forward``, cannot follow without
per-model code. So each update does what DDP does, once the loss's backward is done: one
all-reduce of the optimizer's gradients in one flat buffer, weighted by each rank's share of the
global minibatch, with the loss-is-finite flag riding in the same buffer so that every rank
drops the same updates.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch

from .. import distributed as dist
from ..data.batch import as_batch
from ..models.base import StepInfo

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FastPaths:
    """``--precision``, ``--compile`` and ``--channels-last`` as the step applies them: the
    model's losses are computed under autocast, its objectives compiled, image batches laid
    out as the conv weights."""
    precision: str = "fp32"
    device_type: str = "cpu"
    compile: bool = False
    channels_last: bool = False
    grad_clip: float | None = None
    scalers: dict = field(default_factory=dict)  # fp16: a GradScaler per optimizer name
    _compiled: dict = field(default_factory=dict, repr=False)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AMP_DTYPES[self.precision])

    def compiled(self, fn):
        """``fn`` itself, or its ``torch.compile`` (made once per objective)."""
        if not self.compile:
            return fn
        # a bound method is a new object at each access: key it by its function and its model (an
        # objective is a method or a module-level function; a closure made anew each step would
        # compile anew each step)
        key = (fn.__func__, id(fn.__self__)) if hasattr(fn, "__func__") else fn
        if key not in self._compiled:
            self._compiled[key] = torch.compile(fn)
        return self._compiled[key]

    def inputs(self, batch):
        """A step's minibatch (or list of them) as the step takes it: each a Batch, its images in
        channels_last where that path is on."""
        if isinstance(batch, (list, tuple)):
            return [self.inputs(b) for b in batch]
        batch = as_batch(batch)
        if self.channels_last and batch.x.dim() == 4:
            part = batch.labelled_part
            batch = dataclasses.replace(batch, x=batch.x.contiguous(memory_format=torch.channels_last),
                                        labelled_part=None if part is None else self.inputs(part))
        return batch


def make_scalers(precision: str, device_type: str, names) -> dict:
    """fp16 needs loss scaling (its exponent range underflows small gradients); bf16 does not."""
    if precision != "fp16":
        return {}
    return {n: torch.amp.GradScaler(device_type) for n in names}


def apply_update(loss: torch.Tensor, opt: torch.optim.Optimizer, grad_clip: float | None,
                 scaler: torch.amp.GradScaler | None = None, skip: torch.Tensor | None = None,
                 shard: tuple[int, int] | None = None) -> torch.Tensor:
    """Backward and step, unless the loss or the gradient is NaN/Inf (or ``skip`` is set):
    then the update is dropped so a bad batch never reaches the weights. Returns a 0-dim
    tensor on the loss's device, 1.0 where the update was dropped.

    ``shard`` (torchrun): (images this rank's loss is a mean over, images of the global
    minibatch). The gradients are then the global minibatch's mean gradient on every rank
    (:func:`vaelab.distributed.weighted_mean_`, one collective) before anything reads them, and
    the update is dropped everywhere when a loss is non-finite on any rank, so the ranks' weights,
    optimizer and loss-scale states stay the same. (The same parameters get a gradient on every
    rank: which ones is the model's graph, not the data's.)

    The gradient reaches this optimizer's parameters only (``backward(inputs=...)``), so a GAN
    player's update leaves the other player's ``.grad`` untouched though its loss flows through
    both nets. The decision stays on the device: a fused optimizer (vaelab's Adam and SGD) takes
    it as ``found_inf``, the flag torch's GradScaler hands to it, and its kernel skips the update
    and leaves the step count, so no step waits for the host. Another optimizer reads the flag."""
    params = [p for g in opt.param_groups for p in g["params"] if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward(inputs=params)
    params = [p for p in params if p.grad is not None]
    finite = torch.isfinite(loss.detach().float())
    if shard is not None:  # before unscale_: every rank's scaler then finds the same overflow
        n, total = shard
        bad_losses = dist.weighted_mean_([p.grad for p in params], n, total,
                                         extra=(~finite).float().reshape(1) * (n > 0))
        finite = bad_losses[0] == 0
    if scaler:
        scaler.unscale_(opt)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    bad = ~(finite & torch.isfinite(norm))
    if skip is not None:
        bad = bad | skip
    if grad_clip:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm)
    if getattr(opt, "_step_supports_amp_scaling", False):
        opt.grad_scale, opt.found_inf = None, bad.to(torch.float32)
        opt.step()
        opt.found_inf = None
    elif not bad.item():
        opt.step()
    if scaler:
        _update_scale(scaler, skip)
    return bad.to(torch.float32)


def _update_scale(scaler: torch.amp.GradScaler, skip: torch.Tensor | None) -> None:
    """The loss scale's update after a step: backed off where this step's gradients overflowed,
    grown after enough good ones; left as it was for a step that ``skip`` masked (an update
    after a dropped one in the same step), so a masked update leaves no trace in the scale."""
    if skip is None:
        scaler.update()
        return
    old = scaler._scale.clone(), scaler._growth_tracker.clone()
    scaler.update()
    scaler._scale.copy_(torch.where(skip, old[0], scaler._scale))
    scaler._growth_tracker.copy_(torch.where(skip, old[1], scaler._growth_tracker))


def take_step(model, optimizers: dict, batch, info: StepInfo, fast: FastPaths) -> dict[str, torch.Tensor]:
    """One training step: each :class:`~vaelab.models.base.Update` the model yields is applied
    before the next is asked for. Returns each metric's mean over the updates reporting it
    (detached, on the device) and ``skipped`` = 1 where the step was dropped.

    An update whose loss or gradient is NaN/Inf is dropped and leaves no trace (the batch-norm
    statistics its forward passes moved are restored too), and so is the rest of the step; the
    updates taken before it stand. The later passes still run (the decision stays on the
    device, so no step waits for the host), but change nothing."""
    updates = model.step(fast.inputs(batch), info)
    reported: dict[str, list[torch.Tensor]] = {}
    dead = None  # set from the first dropped update on
    before = None  # the buffers as the step found them
    while True:
        saved = [(b, b.clone()) for b in model.buffers()]  # batch-norm statistics: small, cheap
        before = saved if before is None else before
        with fast.autocast():
            update = next(updates, None)
        if update is None:
            break
        dead = apply_update(update.loss, optimizers[update.optimizer], fast.grad_clip,
                            fast.scalers.get(update.optimizer), dead, info.shard).bool()
        _restore_if(dead, saved)
        for k, v in update.metrics.items():
            reported.setdefault(k, []).append(v.detach().float())
    if dead is None:
        raise RuntimeError(f"{type(model).__name__}.step yielded no update")
    if info.shard is not None:
        _average_moves(before, info.shard)
    out = {k: v[0] if len(v) == 1 else torch.stack(v).mean() for k, v in reported.items()}
    out["skipped"] = dead.float()
    return out


@torch.no_grad()
def _average_moves(before, shard: tuple[int, int]) -> None:
    """Under torchrun, the floating buffers (batch-norm statistics, a VQ-VAE's EMA codebook),
    which each rank's own images moved, become the step's value plus the ranks' mean move
    (weighted as the gradients; one collective, none for a model without such buffers), so they
    stay one model on every rank. The moves, not the values, are averaged, so a buffer the step
    left alone (a mask) keeps its exact value. For a running mean this is the global minibatch's
    update; for batch norm's running variance a close stand-in. A VQ-VAE's EMA codebook sums its
    counts over the ranks itself, so its moves are already the same on every rank."""
    moved = [(b, old) for b, old in before if b.is_floating_point()]
    if moved:
        deltas = [b - old for b, old in moved]
        dist.weighted_mean_(deltas, *shard)
        for (b, old), d in zip(moved, deltas):
            b.copy_(old + d)


@torch.no_grad()
def _restore_if(dead: torch.Tensor, saved) -> None:
    for b, old in saved:
        b.copy_(torch.where(dead, old, b))
