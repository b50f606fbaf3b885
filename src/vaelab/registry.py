"""Models by name. A new model is a model file, a loss, a step and one entry here: the CLI,
the trainer and the checkpoint loader all look models up in :data:`MODELS`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .diagnostics import denoising_metrics, denoising_pictures, sparsity_metrics, sparsity_pictures
from .errors import VaelabError
from .models.ae import AE, AEConfig, DAEConfig, SparseAEConfig
from .models.vae import VAE, VAEConfig
from .training.steps import adam, ae_step, ae_val, vae_step, vae_val


@dataclass(frozen=True)
class ModelEntry:
    config_cls: type
    model_cls: type
    make_optimizers: Callable   # (model, TrainConfig) -> {name: optimizer}
    train_step: Callable        # (model, optimizers, x, StepContext) -> {metric: tensor}
    val_metric: Callable        # (model, x) -> [B] validation metric per example
    val_name: str               # what val_metric is, for logs and the training-set fallback
    higher_is_better: bool      # direction of val_metric, for the best checkpoint
    has_likelihood: bool        # ELBO / NLL / bits-per-dim apply
    can_sample: bool            # has a prior to draw new images from
    extra_metrics: Callable | None = None   # (model, x) -> {metric: value} for eval
    extra_pictures: Callable | None = None  # (model, x, run_dir) -> [paths] after training


_AE = dict(make_optimizers=adam, train_step=ae_step, val_metric=ae_val, val_name="recon", higher_is_better=False,
           has_likelihood=False, can_sample=False)

MODELS: dict[str, ModelEntry] = {
    "vae": ModelEntry(VAEConfig, VAE, adam, vae_step, vae_val, "elbo", True, True, True),
    "ae": ModelEntry(AEConfig, AE, **_AE),
    "sparse-ae": ModelEntry(SparseAEConfig, AE, **_AE, extra_metrics=sparsity_metrics,
                            extra_pictures=sparsity_pictures),
    "dae": ModelEntry(DAEConfig, AE, **_AE, extra_metrics=denoising_metrics, extra_pictures=denoising_pictures),
}


def get_model(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise VaelabError(f"--model must be one of {', '.join(sorted(MODELS))}, got {name!r}.") from None
