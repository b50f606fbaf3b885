"""The importance-weighted autoencoder (Burda et al. 2016): the VAE's networks trained on a
tighter bound.

    L_k(x) = E_{z_1..z_k ~ q(z|x)} log (1/k) sum_i p(x, z_i) / q(z_i|x)

L_1 is the ELBO; L_k rises towards log p(x) as k grows. Only the objective differs from the
VAE: the networks, the likelihoods and everything evaluation asks of the model are the VAE's.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..data.batch import Batch
from ..config import opt
from ..errors import VaelabError
from ..losses import iwae_bound
from ..registry import register
from .base import StepInfo, Update
from .vae import LatentGaussianConfig, LatentGaussianModel


@dataclass(frozen=True)
class IWAEConfig(LatentGaussianConfig):
    k: int = opt(5, "importance samples of the training bound (k = 1 is the ELBO)")

    def check(self) -> None:
        super().check()
        if self.k < 1:
            raise VaelabError(f"--k must be at least 1 (importance samples), got {self.k}.")


@register("iwae")
class IWAE(LatentGaussianModel):
    """The VAE's networks trained on the k-sample importance-weighted bound (Burda et al. 2016)."""
    config_cls = IWAEConfig

    @classmethod
    def floats_per_draw(cls, cfg: IWAEConfig) -> int:
        """The numbers the model's modules output for each further draw of z: log_weights(x, k)
        run on the meta device (shapes, no storage) at k = 2 and k = 1, its modules' outputs
        summed and subtracted, so what is computed once per image (the encoder) drops out."""
        with torch.device("meta"):
            net = cls(dataclasses.replace(cfg, k=1))
            x = torch.zeros(1, *cfg.shape)
            out = []
            hooks = [m.register_forward_hook(lambda m, i, o: out.append(o.numel() if torch.is_tensor(o) else 0))
                     for m in net.modules() if not any(m.children())]
            totals = []
            for k in (1, 2):
                out.clear()
                net.log_weights(x, k)
                totals.append(sum(out))
            for h in hooks:
                h.remove()
        return totals[1] - totals[0]

    @classmethod
    def step_memory(cls, cfg: IWAEConfig, batch_size: int) -> tuple[str, int]:
        """A step decodes k draws of each image, and keeps for the backward pass what its modules
        output for each draw (:meth:`floats_per_draw`) and the likelihood's terms on every
        sub-pixel, float32, each with a gradient. A floor (elementwise temporaries add more),
        which refuses a --k that cannot fit before the allocator meets it (--k 10^9 asked 8 TB)."""
        per_draw = cls.floats_per_draw(cfg) + 2 * math.prod(cfg.shape) * cfg.decoder_params
        draws = cfg.k * batch_size
        return (f"--k {cfg.k} with --batch-size {batch_size}, {draws:,} draws of the code a step, each with "
                f"{per_draw:,} numbers and their gradients to keep,", 2 * 4 * draws * per_draw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log w_i = log p(x, z_i) - log q(z_i|x) for k draws z_i ~ q(z|x): [k, B]."""
        return self.log_weights(x, self.cfg.k)

    def objective(self, x: torch.Tensor):
        bound = iwae_bound(self(x))  # [B]
        loss = -bound.mean()
        return loss, {"loss": loss, "bound": bound.mean()}

    def step(self, batch: Batch, info: StepInfo):
        x = batch.x
        loss, metrics = info.compile(self.objective)(x)
        yield Update("model", loss, metrics)
