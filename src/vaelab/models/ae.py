"""Deterministic autoencoders: plain, sparse and denoising (and linear = PCA with ``--arch linear``).

One module serves all three; what differs is the config (penalty weights, corruption) that
:func:`vaelab.training.steps.ae_step` reads. The decoder emits logits for a ``bce`` loss and
pixel values for ``l2``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import opt
from ..nets import NetConfig, full_precision, make_decoder, make_encoder


@dataclass(frozen=True)
class AEConfig(NetConfig):
    recon_loss: str | None = opt(None, "reconstruction loss (default: l2 for --arch linear, bce otherwise)",
                                 ("bce", "l2"))
    code_activation: str = opt("none", "non-linearity on the code z", ("none", "sigmoid", "relu"))

    @property
    def loss(self) -> str:
        return self.recon_loss or ("l2" if self.arch == "linear" else "bce")


@dataclass(frozen=True)
class SparseAEConfig(AEConfig):
    l1: float = opt(0.0, "weight lambda of the L1 penalty lambda * sum |z_i| on the code")
    sparsity_target: float | None = opt(None, "target mean activation rho of sigmoid code units")
    sparsity_weight: float = opt(0.0, "weight beta of the KL sparsity penalty toward --sparsity-target")


@dataclass(frozen=True)
class DAEConfig(AEConfig):
    corruption: str = opt("mask:0.25", "gaussian:SIGMA, mask:P or salt-pepper:P, drawn afresh each use")


@dataclass
class AEOutput:
    z: torch.Tensor      # the code, [B, D]
    recon: torch.Tensor  # logits (bce) or values (l2), [B, *shape]


CODE_ACTIVATIONS = {"none": nn.Identity, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class AE(nn.Module):
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

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The image a code stands for (the same interface as the VAE's)."""
        return self.decode(z)

    def forward(self, x: torch.Tensor) -> AEOutput:
        z = self.encode(x)
        return AEOutput(z, full_precision(self.decoder(z)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)
