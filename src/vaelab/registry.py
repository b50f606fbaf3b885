"""Models by name. A new model is a model file, a loss, a step and one entry here: the CLI,
the trainer and the checkpoint loader all look models up in :data:`MODELS`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .diagnostics import (denoising_metrics, denoising_pictures, gan_epoch_pictures, gan_pictures, sparsity_metrics,
                          sparsity_pictures)
from .errors import VaelabError
from .models.ae import AE, AEConfig, DAEConfig, SparseAEConfig
from .models.gan import GAN, GANConfig
from .models.vae import VAE, VAEConfig
from .training.steps import adam, ae_step, ae_val, gan_optimizers, gan_step, gan_val, vae_step, vae_val


@dataclass(frozen=True)
class ModelEntry:
    config_cls: type
    model_cls: type
    make_optimizers: Callable   # (model, TrainConfig) -> {name: optimizer}
    train_step: Callable        # (model, optimizers, x, StepContext) -> {metric: tensor}
    val_metric: Callable        # (model, x) -> [B] validation metric per example
    val_name: str               # what val_metric is, for logs and the training-set fallback
    higher_is_better: bool | None  # direction of val_metric for the best checkpoint (None: best = last)
    has_likelihood: bool        # ELBO / NLL / bits-per-dim apply
    can_sample: bool            # has a prior to draw new images from
    can_reconstruct: bool = True  # has an encoder: reconstructions, codes, probe, interpolation of inputs
    extra_metrics: Callable | None = None   # (model, x) -> {metric: value} for eval
    extra_pictures: Callable | None = None  # (model, x, run_dir) -> [paths] after training
    epoch_pictures: Callable | None = None  # (model, run_dir, epoch) -> path, after every epoch
    data_per_step: Callable = lambda cfg: 1  # training minibatches one step consumes (a GAN's k)
    defaults: dict = field(default_factory=dict)  # this model's defaults for data/train fields
    drop_last: bool = False     # drop an epoch's last, smaller minibatch (batch norm on one image fails)


_AE = dict(make_optimizers=adam, train_step=ae_step, val_metric=ae_val, val_name="recon", higher_is_better=False,
           has_likelihood=False, can_sample=False)

MODELS: dict[str, ModelEntry] = {
    "vae": ModelEntry(VAEConfig, VAE, adam, vae_step, vae_val, "elbo", True, True, True),
    "ae": ModelEntry(AEConfig, AE, **_AE),
    "sparse-ae": ModelEntry(SparseAEConfig, AE, **_AE, extra_metrics=sparsity_metrics,
                            extra_pictures=sparsity_pictures),
    "dae": ModelEntry(DAEConfig, AE, **_AE, extra_metrics=denoising_metrics, extra_pictures=denoising_pictures),
    # best = last: no held-out score ranks a GAN's epochs cheaply (D(x) on held-out data is logged)
    "gan": ModelEntry(GANConfig, GAN, gan_optimizers, gan_step, gan_val, "d_real", None, False, True,
                      can_reconstruct=False, extra_pictures=gan_pictures, epoch_pictures=gan_epoch_pictures,
                      data_per_step=lambda cfg: cfg.k, drop_last=True,
                      # DCGAN's learning rate; GANs model the grey levels, not binarized pixels
                      defaults={"lr": 2e-4, "binarize": "none"}),
}


def get_model(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise VaelabError(f"--model must be one of {', '.join(sorted(MODELS))}, got {name!r}.") from None
