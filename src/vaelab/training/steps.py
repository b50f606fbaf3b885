"""One optimisation step per model family. The trainer loop calls these and knows nothing of
models; each step owns its optimizers, so a GAN step can take k discriminator steps."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ..corruption import corrupt, parse_corruption
from ..losses import (discriminator_loss, elbo, generator_loss, iwae_bound, kl_sparsity, l1_penalty,
                      reconstruction_error)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepContext:
    """What a step needs besides the model, its optimizers and the data: the objective's
    weights and the fast paths (``--precision``, ``--compile``, ``--channels-last``)."""
    kl_weight: float = 1.0        # beta times the warm-up factor
    iw_samples: int = 1
    grad_clip: float | None = None
    precision: str = "fp32"       # bf16 / fp16: the forward passes and losses under autocast
    device_type: str = "cpu"
    compile: bool = False         # the objectives through torch.compile (the module is untouched)
    channels_last: bool = False   # image batches in NHWC, as the conv nets' weights
    scalers: dict = field(default_factory=dict)  # fp16: a GradScaler per optimizer name
    _compiled: dict = field(default_factory=dict, repr=False)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AMP_DTYPES[self.precision])

    def objective(self, fn):
        """``fn`` itself, or its ``torch.compile`` (made once per context)."""
        if not self.compile:
            return fn
        if fn not in self._compiled:
            self._compiled[fn] = torch.compile(fn)
        return self._compiled[fn]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def run(self, fn, *args):
        """The objective ``fn(*args)`` under this context's precision and compilation."""
        with self.autocast():
            return self.objective(fn)(*args)


def make_scalers(precision: str, device_type: str, names) -> dict:
    """fp16 needs loss scaling (its exponent range underflows small gradients); bf16 does not."""
    if precision != "fp16":
        return {}
    return {n: torch.amp.GradScaler(device_type) for n in names}


def apply_update(loss: torch.Tensor, params, opt: torch.optim.Optimizer, grad_clip: float | None,
                 scaler: torch.amp.GradScaler | None = None, skip: torch.Tensor | None = None) -> torch.Tensor:
    """Backward and step, unless the loss or the gradient is NaN/Inf (or ``skip`` is set):
    then the update is dropped so a bad batch never reaches the weights. Returns a 0-dim
    tensor on the loss's device, 1.0 where the update was dropped.

    The decision stays on the device: a fused optimizer (vaelab's Adam and SGD) takes it as
    ``found_inf``, the flag torch's GradScaler hands to it, and its kernel skips the update and
    leaves the step count, so no step waits for the host. Another optimizer reads the flag."""
    opt.zero_grad(set_to_none=True)
    # gradients of these parameters only: a GAN player's step leaves the other player's
    # .grad untouched even though its loss flows through both nets
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(scaler.scale(loss) if scaler else loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g
    params = [p for p in params if p.grad is not None]
    if scaler:
        scaler.unscale_(opt)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    bad = ~(torch.isfinite(loss.detach().float()) & torch.isfinite(norm))
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
    grown after enough good ones; left as it was for a step that ``skip`` masked (a GAN step
    after a dropped one), so a masked step leaves no trace in the scale either."""
    if skip is None:
        scaler.update()
        return
    old = scaler._scale.clone(), scaler._growth_tracker.clone()
    scaler.update()
    scaler._scale.copy_(torch.where(skip, old[0], scaler._scale))
    scaler._growth_tracker.copy_(torch.where(skip, old[1], scaler._growth_tracker))


def _update(model, optimizers: dict, loss: torch.Tensor, metrics: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
    """Take the step and return the detached metrics, with ``skipped`` = 1 for a dropped update."""
    out = {k: v.detach().float() for k, v in metrics.items()}
    out["skipped"] = apply_update(loss, model.parameters(), optimizers["model"], ctx.grad_clip,
                                  ctx.scalers.get("model"))
    return out


def vae_objective(model, x: torch.Tensor, kl_weight, iw_samples: int):
    """The loss to minimise and the metrics: the negative ELBO (k = 1) or IWAE bound (k > 1)."""
    if iw_samples > 1:
        bound = iwae_bound(model.log_weights(x, iw_samples))
        loss = -bound.mean()
        return loss, {"loss": loss, "bound": bound.mean()}
    t = elbo(model(x), x, beta=kl_weight)
    return t.loss, {"loss": t.loss, "elbo": t.elbo.mean(), "kl": t.kl.mean()}


def vae_step(model, optimizers: dict, x: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
    """ELBO (k = 1) or IWAE-bound (k > 1) step. Returns per-batch means (detached)."""
    # compiled, the warm-up's changing weight is a tensor, so it does not recompile each step
    kl_weight = torch.tensor(ctx.kl_weight) if ctx.compile else ctx.kl_weight
    loss, metrics = ctx.run(vae_objective, model, ctx.inputs(x), kl_weight, ctx.iw_samples)
    return _update(model, optimizers, loss, metrics, ctx)


@torch.no_grad()
def vae_val(model, x: torch.Tensor) -> torch.Tensor:
    """Validation metric per example (higher is better): the ELBO, closed-form KL, one z."""
    return elbo(model(x), x).elbo


def ae_objective(model, x: torch.Tensor):
    """Plain, sparse or denoising autoencoder loss, by the model's config:
    L(x, g(f(x~))) + lambda * sum|z| + beta * sum_j KL(rho || rho_hat_j)."""
    cfg = model.cfg
    corruption = getattr(cfg, "corruption", None)
    x_in = corrupt(x, parse_corruption(corruption)) if corruption else x
    out = model(x_in)
    rec = reconstruction_error(out.recon, x, cfg.loss).mean()
    loss = rec
    metrics = {"recon": rec}
    if getattr(cfg, "l1", 0.0):
        metrics["l1"] = l1_penalty(out.z).mean()
        loss = loss + cfg.l1 * metrics["l1"]
    if getattr(cfg, "sparsity_weight", 0.0):
        metrics["kl_sparsity"] = kl_sparsity(out.z, cfg.sparsity_target)
        loss = loss + cfg.sparsity_weight * metrics["kl_sparsity"]
    metrics["loss"] = loss
    return loss, metrics


def ae_step(model, optimizers: dict, x: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
    """One step of :func:`ae_objective`."""
    loss, metrics = ctx.run(ae_objective, model, ctx.inputs(x))
    return _update(model, optimizers, loss, metrics, ctx)


@torch.no_grad()
def ae_val(model, x: torch.Tensor) -> torch.Tensor:
    """Validation metric per example (lower is better): the reconstruction loss of clean x."""
    return reconstruction_error(model(x).recon, x, model.cfg.loss)


def _with_base_lr(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    # the trainer's schedule multiplies each group's own base rate (a GAN's players may differ)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return opt


def _adam(params, lr: float, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    # The fused kernel is ~15% faster per step on a small MLP on CPU (measured) and is
    # numerically the same algorithm; fall back where this torch/device lacks it.
    params = list(params)
    try:
        return _with_base_lr(torch.optim.Adam(params, lr=lr, betas=betas, fused=True))
    except (RuntimeError, TypeError):
        return _with_base_lr(torch.optim.Adam(params, lr=lr, betas=betas))


def adam(model, tcfg) -> dict[str, torch.optim.Optimizer]:
    return {"model": _adam(model.parameters(), tcfg.lr)}


# --------------------------------------------------------------------------------------------
# the GAN: Algorithm 1 of Goodfellow et al. 2014
# --------------------------------------------------------------------------------------------

def gan_optimizers(model, tcfg) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per player: Adam(beta1) as DCGAN, or SGD with momentum as the paper.
    The generator uses --lr, the discriminator --d-lr (default --lr)."""
    cfg = model.cfg

    def make(params, lr):
        if cfg.optimizer == "sgd":
            params = list(params)
            try:  # fused: the NaN guard then needs no host synchronisation (apply_update)
                opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, fused=True)
            except (RuntimeError, TypeError):
                return _with_base_lr(torch.optim.SGD(params, lr=lr, momentum=cfg.momentum))
            # Fused SGD makes its momentum buffers with empty_like on its first step, and a first
            # step dropped by found_inf would keep that uninitialised memory: start them at zero
            # (the first update is then 0.9 * 0 + g = g, as SGD's own first step).
            if cfg.momentum:
                for p in params:
                    opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
            return _with_base_lr(opt)
        return _adam(params, lr, (cfg.beta1, 0.999))

    return {"d": make(model.discriminator.parameters(), cfg.d_lr or tcfg.lr),
            "g": make(model.generator.parameters(), tcfg.lr)}


def gan_d_objective(model, x: torch.Tensor):
    """The discriminator's loss on real x and G(z) for fresh noise, G(z) held fixed; with the
    logits of both (detached), for D(x) and D(G(z))."""
    with torch.no_grad():
        fake = model.generate(model.prior(len(x)))
    real_logits, fake_logits = model.discriminate(x), model.discriminate(fake)
    return discriminator_loss(real_logits, fake_logits), real_logits.detach(), fake_logits.detach()


def gan_g_objective(model, n: int) -> torch.Tensor:
    """The generator's loss on n fresh noise draws."""
    return generator_loss(model.discriminate(model.generate(model.prior(n))), model.cfg.g_loss)


def gan_step(model, optimizers: dict, xs: torch.Tensor | list[torch.Tensor],
             ctx: StepContext) -> dict[str, torch.Tensor]:
    """One iteration of Algorithm 1: for each of the k data minibatches in ``xs``, one
    discriminator step on it and a fresh noise minibatch, ascending log D(x) + log(1 - D(G(z)))
    with G(z) detached; then one generator step on fresh noise. Returns means over the k
    discriminator steps of its loss and of D(x), D(G(z)), and the generator's loss.

    A step whose loss or gradient is NaN/Inf is dropped and leaves no trace (its forward
    passes' batch-norm statistics are restored too), and so is the rest of the iteration,
    reported as ``skipped``; the steps taken before it stand. The later passes still run (the
    decision stays on the device, so no step waits for the host), but change nothing."""
    if torch.is_tensor(xs):  # k = 1: the trainer hands over the one minibatch itself
        xs = [xs]
    d_params, g_params = list(model.discriminator.parameters()), list(model.generator.parameters())
    d_loss, d_real, d_fake = [], [], []
    dead = None  # set from the first dropped step on
    for x in xs:
        saved = _buffers(model)
        loss, real_logits, fake_logits = ctx.run(gan_d_objective, model, ctx.inputs(x))
        dead = apply_update(loss, d_params, optimizers["d"], ctx.grad_clip, ctx.scalers.get("d"), dead).bool()
        _restore_if(dead, saved)
        d_loss.append(loss.detach().float())
        d_real.append(torch.sigmoid(real_logits).mean())
        d_fake.append(torch.sigmoid(fake_logits).mean())
    saved = _buffers(model)
    g_loss = ctx.run(gan_g_objective, model, len(xs[-1]))
    dead = apply_update(g_loss, g_params, optimizers["g"], ctx.grad_clip, ctx.scalers.get("g"), dead).bool()
    _restore_if(dead, saved)
    mean = lambda v: torch.stack(v).mean()  # noqa: E731
    return {"loss": mean(d_loss), "d_loss": mean(d_loss), "g_loss": g_loss.detach().float(), "d_real": mean(d_real),
            "d_fake": mean(d_fake), "skipped": dead.float()}


def _buffers(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # batch-norm statistics move in every forward pass (small tensors: cheap to keep)
    return [(b, b.clone()) for b in model.buffers()]


@torch.no_grad()
def _restore_if(dead: torch.Tensor, saved) -> None:
    for b, old in saved:
        b.copy_(torch.where(dead, old, b))


@torch.no_grad()
def gan_val(model, x: torch.Tensor) -> torch.Tensor:
    """D(x) per held-out image: next to the training D(x), it shows a discriminator that
    memorises its training data."""
    return torch.sigmoid(model.discriminate(x))
