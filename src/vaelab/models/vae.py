"""The variational autoencoder of the lecture (Kingma & Welling 2014).

q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) Bernoulli (logits), Gaussian
(fixed or learned variance) or a discretized logistic (mixture) on the data's pixel levels. The model only computes distributions; the objectives (ELBO,
IWAE bound) are pure functions in :mod:`vaelab.losses`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import opt
from ..distributions import Bernoulli, DiagonalGaussian, DiscretizedLogistic, Gaussian, standard_normal_log_prob
from ..nets import NetConfig, full_precision, make_decoder, make_encoder


@dataclass(frozen=True)
class VAEConfig(NetConfig):
    likelihood: str = opt("bernoulli", "decoder likelihood p(x|z): bernoulli (binary pixels), gaussian "
                                       "(density; 8-bit data is dequantized), logistic or logistic-mixture "
                                       "(discretized on the data's levels)",
                          ("bernoulli", "gaussian", "logistic", "logistic-mixture"))
    gaussian_std: float | None = opt(None, "fixed std of the Gaussian likelihood (default: learned, one per pixel)")
    mixtures: int = opt(5, "components of --likelihood logistic-mixture")
    levels: int = opt(256, "pixel levels of the data (taken from the data)", flag=False)

    @property
    def decoder_params(self) -> int:
        """Numbers the decoder emits per sub-pixel."""
        return {"logistic": 2, "logistic-mixture": 3 * self.mixtures}.get(self.likelihood, 1)


@dataclass
class VAEOutput:
    posterior: DiagonalGaussian  # q(z|x), [B, D]
    z: torch.Tensor              # reparameterised sample, [B, D]
    likelihood: Bernoulli | Gaussian  # p(x|z), event shape = image shape


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.event_ndim = len(cfg.shape)
        self.encoder = make_encoder(cfg.arch, cfg.shape, cfg.hidden, cfg.channels, cfg.activation, 2 * cfg.latent_dim)
        self.decoder = make_decoder(cfg.arch, cfg.latent_dim, cfg.hidden, cfg.channels, cfg.activation,
                                    cfg.shape, cfg.shape[0] * cfg.decoder_params)
        if cfg.likelihood == "gaussian" and cfg.gaussian_std is None:
            # Learned per-pixel log std, independent of z: stable where a z-dependent variance
            # collapses on always-black MNIST pixels.
            self.log_scale = nn.Parameter(torch.zeros(cfg.shape))

    # A constant pixel would drive a learned std to 0 and the density to infinity: floor it.
    MIN_LOG_SCALE = math.log(1e-3)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mu, logvar = full_precision(self.encoder(x)).chunk(2, dim=-1)  # [B, D] each
        return DiagonalGaussian(mu, logvar)

    def decode(self, z: torch.Tensor):
        """p(x|z) for z [..., D]; its parameters have shape [..., *image shape]."""
        out = full_precision(self.decoder(z))
        if self.cfg.likelihood == "bernoulli":
            return Bernoulli(out, self.event_ndim)
        if self.cfg.likelihood.startswith("logistic"):
            # [..., P * C, H, W] -> P parameter maps of [..., C, H, W] (a mixture: M each)
            p = out.unflatten(-self.event_ndim, (self.cfg.decoder_params, self.cfg.shape[0]))
            d = -1 - self.event_ndim
            if self.cfg.likelihood == "logistic":
                loc, log_scale = p.unbind(d)
                return DiscretizedLogistic(loc + 0.5, log_scale, self.event_ndim, self.cfg.levels)
            m = self.cfg.mixtures
            w, loc, log_scale = p.split(m, dim=d)
            return DiscretizedLogistic(loc + 0.5, log_scale, self.event_ndim, self.cfg.levels, w)
        if self.cfg.gaussian_std is not None:
            log_scale = torch.full((), math.log(self.cfg.gaussian_std), device=out.device, dtype=out.dtype)
        else:
            log_scale = self.log_scale.clamp(min=self.MIN_LOG_SCALE)
        return Gaussian(out, log_scale, self.event_ndim)

    def forward(self, x: torch.Tensor) -> VAEOutput:
        q = self.encode(x)
        z = q.rsample()
        return VAEOutput(q, z, self.decode(z))

    def log_weights(self, x: torch.Tensor, k: int, q: DiagonalGaussian | None = None) -> torch.Tensor:
        """Importance log-weights log p(x,z_i) - log q(z_i|x) for k samples z_i ~ q: [k, B]."""
        q = self.encode(x) if q is None else q
        z = q.rsample(k)  # [k, B, D]
        return self.decode(z).log_prob(x) + standard_normal_log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Means of p(x|z) for n draws z ~ N(0, I): [n, *shape]."""
        p = next(self.parameters())
        z = torch.randn(n, self.cfg.latent_dim, device=p.device, dtype=p.dtype)
        return self.decode_mean(z)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The image a code stands for: the mean of p(x|z), [..., *shape]."""
        return self.decode(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) at the posterior mean z = mu(x)."""
        return self.decode_mean(self.encode(x).mode())

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The representation used as features: the posterior mean mu(x), [B, D]."""
        return self.encode(x).mode()
