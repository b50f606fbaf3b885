"""Models by name. A new model is a model file, a loss, a step and one entry here: the CLI,
the trainer and the checkpoint loader all look models up in :data:`MODELS`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import VaelabError
from .models.vae import VAE, VAEConfig
from .training.steps import adam, vae_step, vae_val


@dataclass(frozen=True)
class ModelEntry:
    config_cls: type
    model_cls: type
    make_optimizers: Callable   # (model, TrainConfig) -> {name: optimizer}
    train_step: Callable        # (model, optimizers, x, StepContext) -> {metric: tensor}
    val_score: Callable         # (model, x) -> [B] score per example, higher is better
    val_name: str               # what val_score is, for logs
    has_likelihood: bool        # ELBO / NLL / bits-per-dim apply


MODELS: dict[str, ModelEntry] = {
    "vae": ModelEntry(VAEConfig, VAE, adam, vae_step, vae_val, "elbo", True),
}


def get_model(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise VaelabError(f"--model must be one of {', '.join(sorted(MODELS))}, got {name!r}.") from None
