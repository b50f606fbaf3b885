"""The VAE with a VampPrior (Tomczak & Welling 2018): the prior is the mixture of the
variational posteriors at K learned pseudo-inputs u_k,

    p(z) = (1/K) sum_k q(z | u_k),

in place of N(0, I). The KL term then has no closed form: the ELBO takes the one-sample
estimate log q(z|x) - log p(z) at the z that also feeds the decoder, and the importance
weights use log p(z) as written. The networks, the likelihoods, beta and the KL warm-up are
the VAE's. A pseudo-input is u_k = hardtanh(v_k), so that its pixels stay in [0, 1] as the
data's do (the paper's code). A prior draw picks a component uniformly and draws from q(z|u_k).
The paper's test NLL for the one-layer VAE with a VampPrior (K = 500) on dynamically binarized
MNIST is 85.57 nats (Table 1; its nets are gated 300-300 MLPs with a 40-D z, warmed up over 100
epochs).

Two choices make it train from the first epoch with the VAE's nets (``benchmarks/vamp_start.py``:
MNIST, the IWAE paper's tanh 784-200-200-50 net, batch 100, Adam 1e-3; without them the training
loss sat at ~206 nats, an independent-pixel model's, for three epochs):

* The codes are measured from a fixed image: the encoder's mean at x is mu(x) - mu(x0), with
  x0 the mean of the K training images drawn when the run starts (a buffer; grey until then).
  The VampPrior moves with the encoder, so the ELBO does not change when every code shifts by
  the same vector (the decoder's first affine layer takes the shift back): nothing holds the
  codes near 0, as N(0, I) does in the VAE. Without an origin, the decoder's first steps, which
  learn the mean image while z is still noise, shift the codes by 2-3 (averaged over the
  dimensions) until most of a tanh decoder's first units saturate; a saturated unit passes
  no noise and no signal, and the codes stay unused. Measuring the codes from mu(x0) removes that freedom (a
  choice of coordinates: the models it can represent are the same). An origin the optimizer
  can move freely does not: centred on the mean code of the learned pseudo-inputs, the codes
  drifted as before, the pseudo-inputs moving instead (measured).
* ``--pseudo-init data`` (the default) starts the pseudo-inputs at K random training images (the
  paper's code has this as an option; their pixels are pulled to [0.01, 0.99], inside the
  hardtanh, so that every pixel keeps its gradient); ``grey`` is the paper's default start,
  v_k ~ N(0.05, 0.01), where the K components start as one.
"""
from __future__ import annotations

import contextlib
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
    pseudo_init: str = opt("data", "where the pseudo-inputs start: data (K random training images) or grey "
                                   "(pixels ~ N(0.05, 0.01), the paper's default)", ("data", "grey"))

    def check(self) -> None:
        super().check()
        if self.pseudo_init not in ("data", "grey"):
            raise VaelabError(f"--pseudo-init must be data or grey, got {self.pseudo_init!r}.")
        if self.components < 1:
            raise VaelabError(f"--components must be at least 1 (pseudo-inputs), got {self.components}.")


@register("vamp")
class VampPrior(VAE):
    """The VAE with p(z) the mixture of its posteriors at learned pseudo-inputs."""
    config_cls = VampConfig
    normal_prior = False
    PSEUDO_MEAN, PSEUDO_STD = 0.05, 0.01  # the initial v_k (Tomczak & Welling's experiments)
    DATA_MARGIN = 0.01  # a data-started v_k lies in [0.01, 0.99]: at 0 or 1 the hardtanh passes no gradient

    def __init__(self, cfg: VampConfig):
        super().__init__(cfg)
        # v_k, [K, *shape]: named apart from the uncentred model's "pseudo_inputs", so that a
        # checkpoint of that model is refused rather than read into these coordinates
        self.pseudo_params = nn.Parameter(self.PSEUDO_MEAN + self.PSEUDO_STD * torch.randn(cfg.components, *cfg.shape))
        # x0, the image the codes are measured from: the training images' mean once a run starts
        self.register_buffer("origin_image", torch.full(cfg.shape, self.PSEUDO_MEAN))
        self.data_init = cfg.components  # for x0 always; for the pseudo-inputs under --pseudo-init data
        self._fixed: tuple[DiagonalGaussian, torch.Tensor] | None = None  # held by fixed_prior()

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """x0 = the mean of the training images x [n, *shape] (pixels in [0, 1]); under
        --pseudo-init data the pseudo-inputs start at them too (cycled when n < K), pulled into
        [0.01, 0.99]."""
        self.origin_image.copy_(x.mean(0).to(self.origin_image))
        if self.cfg.pseudo_init == "data":
            k = torch.arange(self.cfg.components, device=x.device) % len(x)
            m = self.DATA_MARGIN
            self.pseudo_params.copy_(m + (1 - 2 * m) * x[k].to(self.pseudo_params))

    def _mixture_and_origin(self) -> tuple[DiagonalGaussian, torch.Tensor]:
        """q(z|u_k) at the K pseudo-inputs measured from mu(x0), [K, D], and mu(x0), the origin
        of the codes in the encoder's own coordinates, [D]: one encoder pass (none inside
        :meth:`fixed_prior`, which holds them)."""
        if self._fixed is not None:
            return self._fixed
        u = torch.cat([F.hardtanh(self.pseudo_params, 0.0, 1.0), self.origin_image[None].to(self.pseudo_params)])
        both = super().encode(u)
        k, c = self.cfg.components, both.mu[-1]
        return DiagonalGaussian(both.mu[:k] - c, both.logvar[:k]), c

    @contextlib.contextmanager
    def fixed_prior(self):
        """Within: the mixture and the origin computed once, on entry, and read by every
        :meth:`encode`, :meth:`prior_log_prob` and :meth:`prior` after, for an evaluation, whose
        weights do not change. The importance-sampled NLL otherwise encodes the K pseudo-inputs
        again for each chunk of samples. Computed without gradients and outside autocast (fp32, as
        the posterior of the images is); nested, the outermost one's is kept."""
        if self._fixed is not None:
            yield
            return
        with torch.no_grad(), torch.autocast(self.pseudo_params.device.type, enabled=False):
            self._fixed = self._mixture_and_origin()
        try:
            yield
        finally:
            self._fixed = None

    def mixture(self) -> DiagonalGaussian:
        """q(z|u_k) of the K pseudo-inputs, measured from mu(x0): [K, D]."""
        return self._mixture_and_origin()[0]

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x) with its mean measured from mu(x0), mu(x) - mu(x0), carrying the mixture
        computed in the same pass (``.components``), which :meth:`kl` then reuses."""
        mixture, c = self._mixture_and_origin()
        q = super().encode(x)
        out = DiagonalGaussian(q.mu - c, q.logvar)
        out.components = mixture
        return out

    def prior_log_prob(self, z: torch.Tensor, components: DiagonalGaussian | None = None) -> torch.Tensor:
        """log p(z) = logsumexp_k log q(z|u_k) - log K for z [..., D]: [...].

        Each component's quadratic form sum_d (z_d - mu_kd)^2 / s_kd^2 is expanded into two
        matrix products, z^2 @ (1 / s^2)^T - 2 z @ (mu / s^2)^T + sum_d mu_kd^2 / s_kd^2, instead
        of a [..., K, D] difference: 10x faster for the IS-NLL's [26, 100] draws with K = 500
        (measured, CPU). The expansion subtracts large terms where s is small, so it runs in
        float64 (and outside autocast), exact to float32's precision. ``components``: the
        mixture, when the caller has it (else computed)."""
        c = self.mixture() if components is None else components
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
        return q.log_prob(z) - self.prior_log_prob(z, getattr(q, "components", None))

    @torch.no_grad()
    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ p(z): a component k uniformly, then z ~ q(z|u_k): [n, D]."""
        c = self.mixture()
        k = torch.randint(self.cfg.components, (n,), generator=generator).to(c.mu.device)
        return c.mu[k] + c.std[k] * standard_normal((n, self.cfg.latent_dim), c.mu, generator)
