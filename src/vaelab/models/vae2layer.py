"""``--model vae-2layer``: the VAE with two stochastic layers, the IWAE paper's second
architecture (Burda et al. 2016, section 5), 784-(200-200)-100-(100-100)-50 with tanh units
under ``--preset iwae``. Formerly ``--model hvae``, a name runs saved then still hold (an alias);
it is not the Hamiltonian VAE that Pythae calls HVAE.

    q(z1, z2 | x) = q(z1|x) q(z2|z1),    p(x, z1, z2) = p(x|z1) p(z1|z2) p(z2),    p(z2) = N(0, I)

with every conditional a diagonal Gaussian (p(x|z1) the configured likelihood). What differs
from the VAE is the importance weight, whose KL part has no closed form:

    log w = log p(x|z1) + log p(z1|z2) + log p(z2) - log q(z1|x) - log q(z2|z1)

trained on the k-sample bound log (1/k) sum_i w_i, as the IWAE is: k = 1 is the ELBO (the
paper's VAE), k > 1 the IWAE bound. The paper's test NLL on MNIST (Table 1, two stochastic
layers, 5000 importance samples): 85.33 nats trained with k = 1, 82.90 with the IWAE bound at
k = 50. The codes, the reconstructions and the decoder read z1; a prior draw is z2 ~ N(0, I),
then z1 ~ p(z1|z2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import opt
from ..distributions import DiagonalGaussian, standard_normal, standard_normal_log_prob
from ..errors import VaelabError
from ..nets import full_precision, mlp
from ..registry import register
from .iwae import IWAE, IWAEConfig
from .vae import IWAE_RECIPE


@dataclass(frozen=True)
class TwoLayerVAEConfig(IWAEConfig):
    k: int = opt(1, "importance samples of the training bound (1: the ELBO, the paper's VAE; more: the IWAE bound)")
    top_hidden: tuple[int, ...] = opt((100, 100), "hidden layer sizes of q(z2|z1) (p(z1|z2) mirrors them)")
    top_latent_dim: int = opt(10, "dimension of z2, the top stochastic layer (--latent-dim is z1's)")

    def check(self) -> None:
        super().check()
        if self.top_latent_dim < 1:
            raise VaelabError(f"--top-latent-dim must be at least 1, got {self.top_latent_dim}.")


def _gaussian(params: torch.Tensor) -> DiagonalGaussian:
    """A net's output [..., 2 D] as mu and log sigma^2, [..., D] each."""
    mu, logvar = full_precision(params).chunk(2, dim=-1)
    return DiagonalGaussian(mu, logvar)


@register("vae-2layer", formerly=("hvae",))
class TwoLayerVAE(IWAE):
    """Burda et al.'s VAE with two stochastic layers, z1 and z2: the VAE's encoder and decoder
    between x and z1, and two small nets between z1 and z2 (formerly --model hvae; not Pythae's
    Hamiltonian VAE)."""
    config_cls = TwoLayerVAEConfig
    size_fields = ("top_hidden", "top_latent_dim")
    normal_prior = False  # p(z1) is the marginal of p(z1|z2) p(z2)
    presets = {
        # Burda et al. 2016, 2 stochastic layers: 784-(200-200)-100-(100-100)-50, tanh
        "iwae": {"arch": "mlp", "hidden": (200, 200), "latent_dim": 100, "top_hidden": (100, 100),
                 "top_latent_dim": 50, "activation": "tanh", "likelihood": "bernoulli", **IWAE_RECIPE},
    }

    def __init__(self, cfg: TwoLayerVAEConfig):
        super().__init__(cfg)
        d1, d2 = cfg.latent_dim, cfg.top_latent_dim
        self.top_encoder = mlp([d1, *cfg.top_hidden, 2 * d2], cfg.activation)            # z1 -> q(z2|z1)
        self.top_decoder = mlp([d2, *reversed(cfg.top_hidden), 2 * d1], cfg.activation)  # z2 -> p(z1|z2)

    def top_posterior(self, z1: torch.Tensor) -> DiagonalGaussian:
        """q(z2|z1) for z1 [..., D1]: [..., D2]."""
        return _gaussian(self.top_encoder(z1))

    def top_prior(self, z2: torch.Tensor) -> DiagonalGaussian:
        """p(z1|z2) for z2 [..., D2]: [..., D1]."""
        return _gaussian(self.top_decoder(z2))

    def _log_ratio(self, q1: DiagonalGaussian, z1: torch.Tensor) -> torch.Tensor:
        """log q(z1, z2|x) - log p(z1, z2) at z1 [..., B, D1] and one z2 ~ q(z2|z1): [..., B]."""
        q2 = self.top_posterior(z1)
        z2 = q2.rsample()  # [..., B, D2]
        return q1.log_prob(z1) + q2.log_prob(z2) - self.top_prior(z2).log_prob(z1) - standard_normal_log_prob(z2)

    def log_weights(self, x: torch.Tensor, k: int, q: DiagonalGaussian | None = None) -> torch.Tensor:
        """log w for k draws (z1, z2) ~ q(z1|x) q(z2|z1): [k, B]. ``q``: q(z1|x), if at hand."""
        q = self.encode(x) if q is None else q
        z1 = q.rsample(k)  # [k, B, D1]
        return self.decode(z1).log_prob(x) - self._log_ratio(q, z1)

    def kl(self, x: torch.Tensor, q: DiagonalGaussian, z: torch.Tensor | None = None) -> torch.Tensor:
        """log q(z1, z2|x) - log p(z1, z2) at z1 = ``z`` (else a draw of q(z1|x)) and a draw of
        q(z2|z1): a one-sample estimate of the KL term, [B]."""
        return self._log_ratio(q, q.rsample() if z is None else z)

    @torch.no_grad()
    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of z1 from p(z1) = E_{z2 ~ N(0, I)} p(z1|z2): [n, D1]."""
        like = next(self.parameters())
        z2 = standard_normal((n, self.cfg.top_latent_dim), like, generator)
        eps = standard_normal((n, self.cfg.latent_dim), like, generator)
        p1 = self.top_prior(z2)
        return p1.mu + p1.std * eps
