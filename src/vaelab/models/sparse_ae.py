"""The sparse autoencoder: the autoencoder's reconstruction error plus a penalty that drives
most code units to zero (lecture; Ng's CS294A notes for the KL form).

    L(x, g(f(x))) + lambda * sum_i |z_i|                            (--l1 LAMBDA)
                  + beta * sum_j KL(Bernoulli(rho) || Bernoulli(rho_hat_j))   (--sparsity-weight BETA)

rho_hat_j is unit j's mean activation over the minibatch, so the KL form needs codes in (0, 1)
(``--code-activation sigmoid``). Reported beside the reconstruction error: how sparse the codes
are, and a histogram of their values.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import opt
from ..data.batch import Batch
from ..errors import VaelabError
from ..images import Figure, save_figure
from ..losses import kl_sparsity, l1_penalty
from ..registry import register
from ..rundir import PNG
from .ae import AE, AEConfig, AEOutput

NEAR_ZERO = 1e-2  # |z_i| below this counts as an inactive code unit


@dataclass(frozen=True)
class SparseAEConfig(AEConfig):
    l1: float = opt(0.0, "weight lambda of the L1 penalty lambda * sum |z_i| on the code")
    sparsity_target: float | None = opt(None, "target mean activation rho of sigmoid code units")
    sparsity_weight: float = opt(0.0, "weight beta of the KL sparsity penalty toward --sparsity-target")

    def check(self) -> None:
        super().check()
        if self.l1 < 0:
            raise VaelabError(f"--l1 must be 0 or more, got {self.l1}.")
        if self.sparsity_weight:
            rho = self.sparsity_target
            if rho is None or not 0 < rho < 1:
                raise VaelabError(f"--sparsity-weight needs --sparsity-target RHO with 0 < RHO < 1, got {rho}.")
            if self.code_activation != "sigmoid":
                raise VaelabError("the KL sparsity penalty needs codes in (0, 1): add --code-activation sigmoid.")
            if self.sparsity_weight < 0:
                raise VaelabError(f"--sparsity-weight must be 0 or more, got {self.sparsity_weight}.")


@register("sparse-ae")
class SparseAE(AE):
    """The autoencoder with an L1 or KL sparsity penalty on its code."""
    config_cls = SparseAEConfig

    def penalties(self, out: AEOutput) -> dict[str, tuple[float, torch.Tensor]]:
        terms = {}
        if self.cfg.l1:
            terms["l1"] = (self.cfg.l1, l1_penalty(out.z).mean())
        if self.cfg.sparsity_weight:
            terms["kl_sparsity"] = (self.cfg.sparsity_weight, kl_sparsity(out.z, self.cfg.sparsity_target))
        return terms

    @torch.no_grad()
    def _all_codes(self, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        return torch.cat([self.codes(x[i:i + batch]) for i in range(0, len(x), batch)])

    def metrics(self, batch: Batch) -> dict:
        """The fraction of code values with |z_i| < 1e-2, the mean |z_i|, and the mean
        activation of each unit averaged over units."""
        x = batch.x
        z = self._all_codes(x)
        return {"near_zero_fraction": (z.abs() < NEAR_ZERO).float().mean().item(),
                "mean_abs_code": z.abs().mean().item(), "mean_activation": z.mean().item()}

    def pictures(self, x: torch.Tensor, run_dir: Path) -> list[Figure]:
        """codes_histogram.png: the distribution of code values over the split."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        z = self._all_codes(x).flatten().cpu().numpy()
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(z, bins=100, log=True)
        frac = float((abs(z) < NEAR_ZERO).mean())
        ax.set(xlabel="code value z_i", ylabel="count (log)",
               title=f"code values: {100 * frac:.1f}% with |z| < {NEAR_ZERO:g}")
        path = save_figure(fig, Path(run_dir) / PNG.codes_histogram)
        return [Figure(path, "Code values", f"A histogram (log counts) of every code value z_i of the {len(x):,} "
                       f"test images; the sparsity penalty pushes them to 0 ({100 * frac:.1f}% have |z_i| < "
                       f"{NEAR_ZERO:g}).")]
