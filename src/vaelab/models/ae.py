"""The deterministic autoencoder of the lecture: z = f(x), x^ = g(z), trained on the
reconstruction error L(x, g(f(x))), binary cross-entropy or squared error; with ``--arch linear``
and an L2 loss it is the linear autoencoder, whose optimum spans the PCA subspace.

The sparse and denoising autoencoders (``sparse_ae.py``, ``dae.py``) are this model with a
penalty on the code or a corrupted input. The decoder emits logits for ``bce`` and pixel values
for ``l2``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.batch import Batch
from ..config import opt
from ..losses import reconstruction_error
from ..nets import NetConfig, full_precision, make_decoder, make_encoder
from ..registry import register
from .base import ENCODE, Model, StepInfo, Update


@dataclass(frozen=True)
class AEConfig(NetConfig):
    recon_loss: str | None = opt(None, "reconstruction loss (default: l2 for --arch linear, bce otherwise)",
                                 ("bce", "l2"))
    code_activation: str = opt("none", "non-linearity on the code z", ("none", "sigmoid", "relu"))

    @property
    def loss(self) -> str:
        return self.recon_loss or ("l2" if self.arch == "linear" else "bce")


@dataclass
class AEOutput:
    z: torch.Tensor      # the code, [B, D]
    recon: torch.Tensor  # logits (bce) or values (l2), [B, *shape]


CODE_ACTIVATIONS = {"none": nn.Identity, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


@register("ae")
class AE(Model):
    """The deterministic autoencoder, trained on the reconstruction error."""
    config_cls = AEConfig
    capabilities = frozenset({ENCODE})
    val_name, higher_is_better = "recon", False

    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Sequential(
            make_encoder(cfg.arch, cfg.shape, cfg.hidden, cfg.channels, cfg.activation, cfg.latent_dim),
            CODE_ACTIVATIONS[cfg.code_activation]())
        self.decoder = make_decoder(cfg.arch, cfg.latent_dim, cfg.hidden, cfg.channels, cfg.activation,
                                    cfg.shape, cfg.shape[0])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return full_precision(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction in pixel space (probabilities for bce, values for l2)."""
        out = full_precision(self.decoder(z))
        return torch.sigmoid(out) if self.cfg.loss == "bce" else out

    def forward(self, x: torch.Tensor) -> AEOutput:
        z = self.encode(x)
        return AEOutput(z, full_precision(self.decoder(z)))

    # ---- training --------------------------------------------------------------------------

    def corrupted(self, x: torch.Tensor) -> torch.Tensor:
        """The input the encoder sees in training (the denoising autoencoder corrupts it)."""
        return x

    def penalties(self, out: AEOutput) -> dict[str, tuple[float, torch.Tensor]]:
        """Named (weight, value) terms added to the loss (the sparse autoencoder's)."""
        return {}

    def objective(self, x: torch.Tensor):
        """L(x, g(f(x~))) + sum of the weighted penalties; the terms reported separately."""
        out = self(self.corrupted(x))
        rec = reconstruction_error(out.recon, x, self.cfg.loss).mean()
        loss, metrics = rec, {"recon": rec}
        for name, (weight, value) in self.penalties(out).items():
            metrics[name] = value
            loss = loss + weight * value
        metrics["loss"] = loss
        return loss, metrics

    def step(self, batch: Batch, info: StepInfo):
        x = batch.x
        loss, metrics = info.compile(self.objective)(x)
        yield Update("model", loss, metrics)

    def validation(self, batch: Batch) -> torch.Tensor:
        """The reconstruction loss of clean x, per example (lower is better)."""
        x = batch.x
        return reconstruction_error(self(x).recon, x, self.cfg.loss)

    # ---- what evaluation and the pictures ask for --------------------------------------------

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The image a code stands for (the same interface as the VAE's)."""
        return self.decode(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)
