"""``gmm:K``: a Gaussian mixture of K full-covariance components fitted by EM (scikit-learn, a
fixed seed) to ``codes(x)`` of the training images; images are ``decode_mean(z)`` of its draws.
It suits any model whose latent is a VECTOR, a deterministic autoencoder too."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import VaelabError
from ..limits import check_bytes
from ..registry import register_sampler
from .base import SEED, VectorSampler, device_of

MAX_COMPONENTS = 1000  # gmm:K: more components than any image set has clusters worth fitting


class GaussianMixture(nn.Module):
    """sum_k w_k N(mu_k, L_k L_k^T): weights [K], means [K, D], Cholesky factors [K, D, D]."""

    def __init__(self, k: int, d: int):
        super().__init__()
        self.register_buffer("weights", torch.full((k,), 1 / k))
        self.register_buffer("means", torch.zeros(k, d))
        self.register_buffer("scale_tril", torch.eye(d).repeat(k, 1, 1))

    def sample(self, n: int) -> torch.Tensor:
        """n draws [n, D] (the global RNG)."""
        j = torch.multinomial(self.weights, n, replacement=True)                     # components, [n]
        eps = torch.randn(n, self.means.shape[1], 1, device=self.means.device)      # [n, D, 1]
        return self.means[j] + (self.scale_tril[j] @ eps).squeeze(-1)


@register_sampler("gmm")
class MixtureSampler(VectorSampler):
    title = "Gaussian mixture of {K} components"
    caption = ("a Gaussian mixture of {K} full-covariance components fitted by EM to the codes of the training "
               "images, its draws decoded by the model's decoder")
    argument, bounds, example, order = "K", (1, MAX_COMPONENTS), 10, 1

    def fit(self, model, x, train):
        k, n, d = self.arg, len(x), model.code_dim
        if n < k:
            raise VaelabError(f"--sampler {self} fits {k} components to the codes of {n} training images: "
                              f"give K of at most {n}.")
        # EM holds the responsibilities [N, K], a centred copy of the codes per component and the
        # covariances [K, D, D], in float64
        check_bytes(f"--sampler {self} on {n:,} codes of {d} dimensions", 8 * (n * k + 2 * n * d + 3 * k * d * d))
        z = self.codes(model, x)  # [N, D]
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture as SkMixture
        codes = z.double().cpu().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # said in the log line below
            try:
                gm = SkMixture(k, covariance_type="full", random_state=SEED).fit(codes)
            except ValueError:  # a component's covariance collapsed onto too few codes
                raise VaelabError(f"--sampler {self} cannot be fitted: a component collapsed onto too few codes; "
                                  "give a smaller K.") from None
        stage = self.build({"dim": d})
        stage.weights.copy_(torch.from_numpy(gm.weights_))
        stage.means.copy_(torch.from_numpy(gm.means_))
        stage.scale_tril.copy_(torch.linalg.cholesky(torch.from_numpy(gm.covariances_)))
        note = "" if gm.converged_ else " (EM stopped at its iteration limit before converging)"
        return stage.to(device_of(model)), {"dim": d}, f"log-likelihood {gm.score(codes):.4g} a code{note}"

    def build(self, settings):
        return GaussianMixture(self.arg, settings["dim"])
