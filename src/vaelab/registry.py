"""Models by name. A new model is a model file, a loss, a step and one entry here: the CLI,
the trainer and the checkpoint loader all look models up in :data:`MODELS`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


MODELS: dict[str, ModelEntry] = {
    "vae": ModelEntry(VAEConfig, VAE, adam, vae_step, vae_val, "elbo", True, True, True),
    "ae": ModelEntry(AEConfig, AE, adam, ae_step, ae_val, "recon", False, False, False),
    "sparse-ae": ModelEntry(SparseAEConfig, AE, adam, ae_step, ae_val, "recon", False, False, False),
    "dae": ModelEntry(DAEConfig, AE, adam, ae_step, ae_val, "recon", False, False, False),
}


def get_model(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise VaelabError(f"--model must be one of {', '.join(sorted(MODELS))}, got {name!r}.") from None
