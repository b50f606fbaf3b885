"""The VAE with an inverse autoregressive flow on its posterior (Kingma et al. 2016).

The encoder emits q0(z0|x) = N(mu, diag sigma^2) and a context vector h. T steps, each a MADE
(masked linear layers, autoregressive in z, conditioned on h), map z0 to z_T in the
numerically stable form of the paper:

    [m_t, s_t] = MADE_t(z_{t-1}, h),   sigma_t = sigmoid(s_t),   z_t = sigma_t * z_{t-1} + (1 - sigma_t) * m_t

with the order of z reversed between steps. Each Jacobian dz_t/dz_{t-1} is triangular with
diagonal sigma_t, so

    log q(z_T|x) = log q0(z0|x) - sum_t sum_i log sigma_t,i

replaces log q(z|x) in the importance weights and in the KL term, which has no closed form:
the ELBO takes log q(z_T|x) - log p(z_T) at the z_T that feeds the decoder. Trained on the
k-sample bound as the IWAE is (k = 1, the default, is the ELBO). ``--flow-steps 0`` is the
VAE with the same nets and the same sampled KL: the baseline of the flow's NLL gain.

The codes, the reconstructions and the interpolations use the flow's image of the posterior
mean, T(mu; h): a point in the space the decoder and the prior N(0, I) live in.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import opt
from ..distributions import DiagonalGaussian
from ..errors import VaelabError
from ..losses import elbo_from_terms
from ..nets import MADE, add_outputs, full_precision
from ..registry import register
from .iwae import IWAE, IWAEConfig


@dataclass(frozen=True)
class IAFConfig(IWAEConfig):
    k: int = opt(1, "importance samples of the training bound (1: the ELBO; more: the IWAE bound)")
    flow_steps: int = opt(2, "IAF steps T on the posterior (0: the plain diagonal Gaussian)")
    flow_hidden: tuple[int, ...] = opt((320, 320), "hidden layer sizes of each step's MADE")
    context_dim: int = opt(50, "size of the context h the encoder emits for the flow (0: none)")

    def check(self) -> None:
        super().check()
        for name in ("flow_steps", "context_dim"):
            if getattr(self, name) < 0:
                raise VaelabError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}.")


class IAFStep(nn.Module):
    """z -> sigma * z + (1 - sigma) * m, [m, s] = MADE(z, h), sigma = sigmoid(s); and sum log sigma."""

    # s starts near +2, sigma near 0.88: each step starts close to the identity (the paper's advice)
    FORGET_BIAS = 2.0

    def __init__(self, dim: int, hidden: tuple[int, ...], act: str, context_dim: int):
        super().__init__()
        self.made = MADE(dim, hidden, act, n_out=2, context_dim=context_dim)
        with torch.no_grad():
            self.made.out.bias[dim:].fill_(self.FORGET_BIAS)  # the s outputs

    def forward(self, z: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """z [..., B, D], h [B, C] -> z' [..., B, D] and log det dz'/dz = sum log sigma, [..., B]."""
        m, s = full_precision(self.made(z, h)).unbind(-2)
        sigma = torch.sigmoid(s)
        return sigma * z + (1 - sigma) * m, F.logsigmoid(s).sum(-1)


@register("iaf")
class IAF(IWAE):
    """The VAE's nets, a context h from the encoder, and T IAF steps on z."""
    config_cls = IAFConfig
    size_fields = ("flow_steps", "flow_hidden", "context_dim")

    @classmethod
    def _per_step(cls, count, cfg: IAFConfig) -> int:
        """``count(cfg)`` of the model without its flow, plus T times one step's: every step is
        the same MADE, and building T of them, even on the meta device, takes 2.5 ms each."""
        without = count(dataclasses.replace(cfg, flow_steps=0))
        if cfg.flow_steps == 0:
            return without
        return without + cfg.flow_steps * (count(dataclasses.replace(cfg, flow_steps=1)) - without)

    @classmethod
    def count_parameters(cls, cfg: IAFConfig) -> int:
        return cls._per_step(super().count_parameters, cfg)

    @classmethod
    def floats_per_draw(cls, cfg: IAFConfig) -> int:
        return cls._per_step(super().floats_per_draw, cfg)

    def __init__(self, cfg: IAFConfig):
        super().__init__(cfg)
        # the encoder emits h after mu and log sigma^2; its rows are drawn after the decoder's
        # weights, so the encoder's first outputs and the decoder start as the VAE's of the seed
        add_outputs(self.encoder, cfg.context_dim)
        self.steps = nn.ModuleList(IAFStep(cfg.latent_dim, cfg.flow_hidden, cfg.activation, cfg.context_dim)
                                   for _ in range(cfg.flow_steps))

    def encode_with_context(self, x: torch.Tensor) -> tuple[DiagonalGaussian, torch.Tensor | None]:
        """q0(z0|x), [B, D], and the context h, [B, C] (None when C = 0)."""
        d = self.cfg.latent_dim
        mu, logvar, h = full_precision(self.encoder(x)).split([d, d, self.cfg.context_dim], dim=-1)
        return DiagonalGaussian(mu, logvar), (h if self.cfg.context_dim else None)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q0(z0|x), the flow's base distribution (evaluation's importance sampling starts there)."""
        return self.encode_with_context(x)[0]

    def flow(self, z: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """z0 [..., B, D] -> z_T [..., B, D] and sum_t log det dz_t/dz_{t-1}, [..., B]."""
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for t, step in enumerate(self.steps):
            if t:
                z = z.flip(-1)  # reverse the order: a permutation, log det 0
            z, ld = step(z, h)
            log_det = log_det + ld
        return z, log_det

    def posterior_sample(self, x: torch.Tensor, k: int | None, q: DiagonalGaussian | None = None,
                         z0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """z_T ~ q(z_T|x) and log q(z_T|x): [k, B, D] and [k, B] (no k dim when k is None).
        ``q``: q0(z0|x) if at hand (h is recomputed from x); ``z0``: its draw, if made."""
        q0, h = self.encode_with_context(x)
        q0 = q0 if q is None else q
        z0 = q0.rsample(k) if z0 is None else z0
        z, log_det = self.flow(z0, h)
        return z, q0.log_prob(z0) - log_det

    def log_weights(self, x: torch.Tensor, k: int, q: DiagonalGaussian | None = None) -> torch.Tensor:
        """log p(x|z_T) + log p(z_T) - log q(z_T|x) for k draws: [k, B]."""
        z, log_q = self.posterior_sample(x, k, q)
        return self.decode(z).log_prob(x) + self.prior_log_prob(z) - log_q

    def kl(self, x: torch.Tensor, q: DiagonalGaussian, z: torch.Tensor | None = None) -> torch.Tensor:
        """log q(z_T|x) - log p(z_T) with z0 = ``z`` (else a draw of q0) pushed through the flow: [B]."""
        z_t, log_q = self.posterior_sample(x, None, q, z)
        return log_q - self.prior_log_prob(z_t)

    def elbo_terms(self, x: torch.Tensor):
        """One z_T ~ q(z_T|x): log p(x|z_T) and log q(z_T|x) - log p(z_T)."""
        z, log_q = self.posterior_sample(x, None)
        return elbo_from_terms(self.decode(z).log_prob(x), log_q - self.prior_log_prob(z))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """T(mu(x); h(x)), the flow's image of the base posterior's mean: [B, D]."""
        q0, h = self.encode_with_context(x)
        return self.flow(q0.mode(), h)[0]
