"""One optimisation step per model family. The trainer loop calls these and knows nothing of
models; each step owns its optimizers, so a GAN step can take k discriminator steps."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..corruption import corrupt, parse_corruption
from ..losses import (discriminator_loss, elbo, generator_loss, iwae_bound, kl_sparsity, l1_penalty,
                      reconstruction_error)


@dataclass
class StepContext:
    kl_weight: float = 1.0        # beta times the warm-up factor
    iw_samples: int = 1
    grad_clip: float | None = None


def apply_update(loss: torch.Tensor, params, opt: torch.optim.Optimizer, grad_clip: float | None) -> bool:
    """Backward and step, unless the loss or the gradient is NaN/Inf: then the update is
    dropped so a bad batch never reaches the weights. Returns whether the step was taken."""
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return False
    # gradients of these parameters only: a GAN player's step leaves the other player's
    # .grad untouched even though its loss flows through both nets
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = g
    params = [p for p in params if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf"))
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def _update(model, opt, loss: torch.Tensor, metrics: dict, ctx: StepContext) -> dict[str, torch.Tensor]:
    """Take the step and return the detached metrics, with ``skipped`` = 1 for a dropped update."""
    ok = apply_update(loss, model.parameters(), opt, ctx.grad_clip)
    out = {k: v.detach() for k, v in metrics.items()}
    out["skipped"] = torch.tensor(0.0 if ok else 1.0)
    return out


def vae_step(model, optimizers: dict, x: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
    """ELBO (k = 1) or IWAE-bound (k > 1) step. Returns per-batch means (detached)."""
    if ctx.iw_samples > 1:
        bound = iwae_bound(model.log_weights(x, ctx.iw_samples))
        loss = -bound.mean()
        metrics = {"loss": loss, "bound": bound.mean()}
    else:
        t = elbo(model(x), x, beta=ctx.kl_weight)
        loss = t.loss
        metrics = {"loss": loss, "elbo": t.elbo.mean(), "kl": t.kl.mean()}
    return _update(model, optimizers["model"], loss, metrics, ctx)


@torch.no_grad()
def vae_val(model, x: torch.Tensor) -> torch.Tensor:
    """Validation metric per example (higher is better): the ELBO, closed-form KL, one z."""
    return elbo(model(x), x).elbo


def ae_step(model, optimizers: dict, x: torch.Tensor, ctx: StepContext) -> dict[str, torch.Tensor]:
    """Plain, sparse or denoising autoencoder step, by the model's config:
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
    return _update(model, optimizers["model"], loss, metrics, ctx)


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
            return _with_base_lr(torch.optim.SGD(list(params), lr=lr, momentum=cfg.momentum))
        return _adam(params, lr, (cfg.beta1, 0.999))

    return {"d": make(model.discriminator.parameters(), cfg.d_lr or tcfg.lr),
            "g": make(model.generator.parameters(), tcfg.lr)}


def gan_step(model, optimizers: dict, xs: torch.Tensor | list[torch.Tensor],
             ctx: StepContext) -> dict[str, torch.Tensor]:
    """One iteration of Algorithm 1: for each of the k data minibatches in ``xs``, one
    discriminator step on it and a fresh noise minibatch, ascending log D(x) + log(1 - D(G(z)))
    with G(z) detached; then one generator step on fresh noise. Returns means over the k
    discriminator steps of its loss and of D(x), D(G(z)), and the generator's loss.

    A step whose loss or gradient is NaN/Inf is dropped and leaves no trace (its forward
    passes' batch-norm statistics are restored too); the iteration ends there, reported as
    ``skipped``, and the steps taken before it stand."""
    if torch.is_tensor(xs):  # k = 1: the trainer hands over the one minibatch itself
        xs = [xs]
    d_params, g_params = list(model.discriminator.parameters()), list(model.generator.parameters())
    d_loss, d_real, d_fake = [], [], []
    g_loss = torch.tensor(float("nan"))
    ok = True
    for x in xs:
        saved = _buffers(model)
        with torch.no_grad():
            fake = model.generate(model.prior(len(x)))
        real_logits, fake_logits = model.discriminate(x), model.discriminate(fake)
        loss = discriminator_loss(real_logits, fake_logits)
        ok = _step_or_restore(loss, d_params, optimizers["d"], ctx, saved)
        d_loss.append(loss.detach())
        d_real.append(torch.sigmoid(real_logits.detach()).mean())
        d_fake.append(torch.sigmoid(fake_logits.detach()).mean())
        if not ok:
            break
    if ok:
        saved = _buffers(model)
        g_loss = generator_loss(model.discriminate(model.generate(model.prior(len(xs[-1])))), model.cfg.g_loss)
        ok = _step_or_restore(g_loss, g_params, optimizers["g"], ctx, saved)
    mean = lambda v: torch.stack(v).mean()  # noqa: E731
    return {"loss": mean(d_loss), "d_loss": mean(d_loss), "g_loss": g_loss.detach(), "d_real": mean(d_real),
            "d_fake": mean(d_fake), "skipped": torch.tensor(0.0 if ok else 1.0)}


def _buffers(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # batch-norm statistics move in every forward pass (small tensors: cheap to keep)
    return [(b, b.clone()) for b in model.buffers()]


def _step_or_restore(loss, params, opt, ctx: StepContext, saved) -> bool:
    ok = apply_update(loss, params, opt, ctx.grad_clip)
    if not ok:
        with torch.no_grad():
            for b, old in saved:
                b.copy_(old)
    return ok


@torch.no_grad()
def gan_val(model, x: torch.Tensor) -> torch.Tensor:
    """D(x) per held-out image: next to the training D(x), it shows a discriminator that
    memorises its training data."""
    return torch.sigmoid(model.discriminate(x))
