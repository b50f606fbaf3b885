"""The VAE with a VampPrior (Tomczak & Welling 2018): the prior is the mixture of the
variational posteriors at K learned pseudo-inputs u_k,

    p(z) = (1/K) sum_k q(z | u_k),

in place of N(0, I). The KL term then has no closed form: the ELBO takes the one-sample
estimate log q(z|x) - log p(z) at the z that also feeds the decoder, and the importance
weights use log p(z) as written. The networks, the likelihoods, beta and the KL warm-up are
the VAE's. A pseudo-input is hardtanh(v_k), v_k ~ N(0.05, 0.01) at the start, so that its
pixels stay in [0, 1] as the data's do (the paper's code). A prior draw picks a component
uniformly and draws from q(z|u_k). The paper's test NLL for the one-layer VAE with a
VampPrior (K = 500) on dynamically binarized MNIST is 85.57 nats (Table 1; its nets are gated
300-300 MLPs with a 40-D z, warmed up over 100 epochs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import opt
from ..distributions import LOG_2PI, DiagonalGaussian, standard_normal
from ..errors import VaelabError
from ..registry import register
from .vae import VAE, VAEConfig


@dataclass(frozen=True)
class VampConfig(VAEConfig):
    components: int = opt(500, "pseudo-inputs K: the prior is the mixture of q(z|u_k) over them")

    def check(self) -> None:
        super().check()
        if self.components < 1:
            raise VaelabError(f"--components must be at least 1 (pseudo-inputs), got {self.components}.")


@register("vamp")
class VampPrior(VAE):
    """The VAE with p(z) the mixture of its posteriors at learned pseudo-inputs."""
    config_cls = VampConfig
    normal_prior = False
    PSEUDO_MEAN, PSEUDO_STD = 0.05, 0.01  # the initial v_k (Tomczak & Welling's experiments)

    def __init__(self, cfg: VampConfig):
        super().__init__(cfg)
        self.pseudo_inputs = nn.Parameter(self.PSEUDO_MEAN + self.PSEUDO_STD * torch.randn(cfg.components, *cfg.shape))

    def mixture(self) -> DiagonalGaussian:
        """q(z|u_k) of the K pseudo-inputs: [K, D]."""
        return self.encode(F.hardtanh(self.pseudo_inputs, 0.0, 1.0))

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) = logsumexp_k log q(z|u_k) - log K for z [..., D]: [...].

        Each component's quadratic form sum_d (z_d - mu_kd)^2 / s_kd^2 is expanded into two
        matrix products, z^2 @ (1 / s^2)^T - 2 z @ (mu / s^2)^T + sum_d mu_kd^2 / s_kd^2, instead
        of a [..., K, D] difference: 10x faster for the IS-NLL's [26, 100] draws with K = 500
        (measured, CPU). The expansion subtracts large terms where s is small, so it runs in
        float64 (and outside autocast), exact to float32's precision."""
        c = self.mixture()
        with torch.autocast(z.device.type, enabled=False):
            zd, mu, logvar = z.double(), c.mu.double(), c.logvar.double()  # [..., D], [K, D], [K, D]
            prec = torch.exp(-logvar)
            const = (mu ** 2 * prec + logvar + LOG_2PI).sum(-1)  # [K]
            quad = (zd ** 2) @ prec.T - 2 * (zd @ (mu * prec).T) + const  # [..., K]
            log_p = torch.logsumexp(-0.5 * quad, -1) - math.log(self.cfg.components)
        return log_p.to(z.dtype)

    def kl(self, x: torch.Tensor, q: DiagonalGaussian, z: torch.Tensor | None = None) -> torch.Tensor:
        """log q(z|x) - log p(z) at ``z`` (a fresh draw of q when not given): [B]."""
        z = q.rsample() if z is None else z
        return q.log_prob(z) - self.prior_log_prob(z)

    @torch.no_grad()
    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ p(z): a component k uniformly, then z ~ q(z|u_k): [n, D]."""
        c = self.mixture()
        k = torch.randint(self.cfg.components, (n,), generator=generator).to(c.mu.device)
        return c.mu[k] + c.std[k] * standard_normal((n, self.cfg.latent_dim), c.mu, generator)
