"""WAE-MMD: the Wasserstein autoencoder with an MMD penalty (Tolstikhin et al. 2018, Algorithm 2).

The deterministic autoencoder of ``ae.py`` (encoder Q, decoder G) whose codes are pushed, as a
whole, towards the prior p(z) = N(0, I). Where the VAE's KL(q(z|x) || p(z)) acts on each
example's posterior, the WAE penalises a divergence between the aggregate q(z) of the codes and
p(z), estimated on the minibatch:

    1/n sum_i c(x_i, G(Q(x_i))) + lambda * MMD_k({Q(x_i)}, {z~_i}),   z~_i ~ N(0, I), n of each,

MMD_k the unbiased U-statistic (:func:`vaelab.losses.mmd`) with the inverse multiquadratic
kernel k(x, y) = C / (C + ||x - y||^2), C = 2 d sigma_z^2 s (sigma_z^2 = 1), summed over the
scales s in {.1, .2, .5, 1, 2, 5, 10} as the authors' code (tolstikhin/wae) does;
``--kernel-scales 1`` is the paper's single C = 2 d. Codes need no noise, and new images are
G(z), z ~ N(0, I).

Defaults are the paper's MNIST setup: d = 8, lambda = 10, c(x, y) = ||x - y||^2 on grey levels
(``--binarize none``). The authors' code scales that cost by 0.05, so ``--lam 200`` is its
balance of the two terms; ``--recon-loss bce`` takes Bernoulli cross-entropy (binarized data).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import opt
from ..errors import VaelabError
from ..losses import MMD_KERNELS, mmd
from ..registry import register
from .ae import AE, AEConfig, AEOutput
from .base import ENCODE, SAMPLE
from .vae import LatentGaussianModel

WAE_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # tolstikhin/wae's sum of IMQ kernels


def check_kernel(cfg) -> None:
    """The MMD kernel fields (``kernel``, ``kernel_scales``) a config shares with the WAE's."""
    if not cfg.kernel_scales or min(cfg.kernel_scales) <= 0:
        raise VaelabError(f"--kernel-scales must list positive numbers, such as 1 or 0.5,1,2; "
                          f"got {','.join(map(str, cfg.kernel_scales)) or 'none'}.")


MMD_PART = 2, "the MMD compares pairs of codes"  # a minibatch MMD's min_part, min_part_why (WAE, InfoVAE)


@dataclass(frozen=True)
class WAEConfig(AEConfig):
    recon_loss: str = opt("l2", "reconstruction cost c(x, G(z)): squared error (the paper) or Bernoulli "
                                "cross-entropy (binarized data)", ("l2", "bce"))
    binarize: str = opt("none", "how the model takes [0, 1] intensities (the paper: grey levels)",
                        ("none", "static", "dynamic"))
    latent_dim: int = opt(8, "dimension of z (the paper's MNIST: 8)")
    lam: float = opt(10.0, "lambda, the weight of the MMD penalty (the paper's MNIST: 10)")
    kernel: str = opt("imq", "MMD kernel: inverse multiquadratic C/(C + |x-y|^2) or Gaussian exp(-|x-y|^2/C)",
                      tuple(MMD_KERNELS))
    kernel_scales: tuple[float, ...] = opt(WAE_SCALES, "scales s of the kernel, C = 2 * latent-dim * s, "
                                                       "the MMDs summed (1: the paper's single C)")

    def check(self) -> None:
        super().check()
        check_kernel(self)
        if self.lam < 0:
            raise VaelabError(f"--lam must be 0 or more, got {self.lam}.")
        if self.code_activation != "none":
            raise VaelabError(f"--code-activation must be none for wae (its codes are matched to N(0, I)), "
                              f"got {self.code_activation}.")


@register("wae")
class WAE(AE):
    """The autoencoder with lambda * MMD(codes, N(0, I)) added to its reconstruction cost."""
    config_cls = WAEConfig
    capabilities = frozenset({ENCODE, SAMPLE})
    normal_prior = True
    drop_last = True  # the MMD of a one-code minibatch is undefined
    min_part, min_part_why = MMD_PART

    # z ~ N(0, I) on the model's device, and G of such draws: the VAE's, which read only
    # cfg.latent_dim and decode_mean
    prior = LatentGaussianModel.prior
    sample = LatentGaussianModel.sample

    def penalties(self, out: AEOutput) -> dict[str, tuple[float, torch.Tensor]]:
        """lambda and the MMD between the minibatch's codes and as many draws of N(0, I)."""
        z = out.z  # [B, D]
        return {"mmd": (self.cfg.lam, mmd(z, torch.randn_like(z), self.cfg.kernel, self.cfg.kernel_scales))}
