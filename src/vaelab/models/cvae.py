"""The conditional VAE (Sohn, Lee & Yan 2015, in its image form): a VAE of x given its class y.

q(z|x,y) = N(mu(x, y), diag sigma^2(x, y)), p(z) = N(0, I), p(x|y,z) with the likelihoods of the
VAE (:mod:`vaelab.models.vae`), the one-hot y concatenated to the encoder's input and to z.
Trained on the labelled bound

    L(x, y) = E_q(z|x,y)[log p(x|y,z)] - KL(q(z|x,y) || p(z)) <= log p(x|y),

so its NLL is -log p(x|y), importance-sampled with q(z|x,y) as the proposal. Every training image
needs its label (it learns from labelled images only; the semi-supervised M2 in m2.py builds on
this file and also learns from unlabelled ones). Samples are drawn for a chosen class y
(``vaelab sample --class``) or for one drawn uniformly; its codes are [z, y], so a fitted sampler
or an interpolation decodes them alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import opt
from ..data.batch import Batch
from ..distributions import DiagonalGaussian, standard_normal, standard_normal_log_prob
from ..nets import full_precision, mlp
from ..images import Figure, save_grid
from ..registry import register
from ..rundir import PNG
from .base import FIXED_NOISE_SEED, LIKELIHOOD, SAMPLE, Model, StepInfo, Update
from .vae import LatentGaussianConfig, LikelihoodDecoder


PER_CLASS = 10  # samples a row in the run's picture of each class


@dataclass(frozen=True)
class CVAEConfig(LatentGaussianConfig):
    arch: str = opt("mlp", "encoder/decoder architecture, the class concatenated to the input of each",
                    ("mlp",))
    num_classes: int = opt(10, "classes of the data (taken from the data)", flag=False)


class Posterior(nn.Module):
    """q(z|x,y): an mlp of [flattened x, y] to [mu, logvar].

    Its first layer is linear, so W [x, y] + b = (W_x x + b) + W_y y: the image's part is computed
    once however many class vectors it is paired with (M2 pairs each image with every class), and
    only the small W_y y per class vector."""

    def __init__(self, cfg: CVAEConfig):
        super().__init__()
        self.net = mlp([math.prod(cfg.shape) + cfg.num_classes, *cfg.hidden, 2 * cfg.latent_dim], cfg.activation)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> DiagonalGaussian:
        """x [B, *shape] and class vectors y [B, ..., C] (one-hot, or probabilities): mu, logvar
        [B, ..., D]."""
        first, rest = self.net[0], self.net[1:]
        flat = x.flatten(1)  # [B, P]
        p = flat.shape[1]
        h_x = F.linear(flat, first.weight[:, :p], first.bias)  # [B, H]: once per image
        h_y = F.linear(y.to(h_x.dtype), first.weight[:, p:])  # [B, ..., H]
        h = h_x.view(h_x.shape[0], *([1] * (y.dim() - 2)), h_x.shape[1]) + h_y
        mu, logvar = full_precision(rest(h)).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)


class LabelledModel(LikelihoodDecoder):
    """What the conditional VAE and M2 share: q(z|x,y), p(x|y,z) = the decoder of [z, y], a
    uniform p(y), and prior draws [z, y]."""
    val_name, higher_is_better = "elbo", True
    normal_prior = False  # its prior draws are [z, one-hot y]
    needs_labels = True
    samples_classes = True
    codes_posterior = False  # encode(x) is over z alone (given y), not over the codes [z, y]
    presets: dict = {}
    # the labelled bound holds log p(x|y,z) once (on dequantized pixels it moves as the ELBO does)
    LOG_LIKELIHOOD_SIGNS = {**LikelihoodDecoder.LOG_LIKELIHOOD_SIGNS, "labelled_elbo": 1}

    def __init__(self, cfg):
        Model.__init__(self)
        self.cfg = cfg = cfg.settled()[0]
        self.event_ndim = len(cfg.shape)
        self.build_decoder("mlp", cfg.latent_dim + cfg.num_classes)  # p(x|y,z): the decoder of [z, y], [..., D + C]

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def one_hot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.num_classes).to(like.dtype)

    def every_class(self, like: torch.Tensor, *lead: int) -> torch.Tensor:
        """Every class as a one-hot row, [*lead, C, C]."""
        return torch.eye(self.num_classes, device=like.device, dtype=like.dtype).expand(*lead, -1, -1)

    def log_prior_y(self) -> float:
        return -math.log(self.num_classes)  # p(y) uniform

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> DiagonalGaussian:
        """q(z|x,y) for class vectors y [B, ..., C]."""
        raise NotImplementedError

    def decode_y(self, z: torch.Tensor, y: torch.Tensor):
        """p(x|y,z) for z [..., D] and class vectors y [..., C]."""
        return self.decode(torch.cat([z, y.to(z.dtype)], -1))

    def class_elbo(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E log p(x|y,z) - KL(q(z|x,y) || p(z)) per example, one z: [B] (log p(y) not included)."""
        y1 = self.one_hot(y, x)
        q = self.posterior(x, y1)
        return self.decode_y(q.rsample(), y1).log_prob(x) - q.kl_to_standard_normal()

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws [z, y] of p(z) p(y): z ~ N(0, I), y a one-hot class drawn uniformly, [n, D + C]
        (what the inherited ``sample`` and ``decode_mean`` take)."""
        return self.class_prior(torch.randint(self.num_classes, (n,), generator=generator), generator)

    def class_prior(self, classes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws [z, y] with z ~ N(0, I) and y the given classes [n]: [n, D + C]."""
        like = next(self.parameters())
        z = standard_normal((len(classes), self.cfg.latent_dim), like, generator)
        return torch.cat([z, self.one_hot(classes.to(like.device), z)], -1)

    @torch.no_grad()
    def sample_class(self, classes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Means of p(x|y,z) for z ~ N(0, I) and the given classes [n]: [n, *shape]."""
        return self.decode_mean(self.class_prior(classes, generator))

    @torch.no_grad()
    def class_grid(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A row of n samples for each class: n draws of z ~ N(0, I), the same in every row, each
        decoded with the row's class, [C * n, *shape] (class 0's row first)."""
        z = standard_normal((n, self.cfg.latent_dim), next(self.parameters()), generator).repeat(self.num_classes, 1)
        y = self.one_hot(torch.arange(self.num_classes, device=z.device).repeat_interleave(n), z)
        return self.decode_mean(torch.cat([z, y], -1))

    @torch.no_grad()
    def pictures(self, x: torch.Tensor, run_dir: Path) -> list[Figure]:
        """samples-by-class.png: a row of samples for each class (:meth:`class_grid`, one noise
        batch of seed :data:`~vaelab.models.base.FIXED_NOISE_SEED`)."""
        n = PER_CLASS
        grid = self.class_grid(n, torch.Generator().manual_seed(FIXED_NOISE_SEED))
        path = save_grid(grid.cpu(), Path(run_dir) / PNG.samples_by_class,
                         nrow=n, row_labels=[f"class {c}" for c in range(self.num_classes)])
        return [Figure(path, "Samples by class", f"Each row decodes the same {n} draws of z ~ N(0, I) with the class "
                       "on its left: the decoder's mean of p(x|y,z), so a column keeps its style (z) across the "
                       "classes (y), as vaelab sample RUN --per-class draws them.")]


@register("cvae")
class CVAE(LabelledModel):
    """Trained on the labelled bound L(x, y) of every training image: one loss per step."""
    config_cls = CVAEConfig
    capabilities = frozenset({SAMPLE, LIKELIHOOD})  # no codes without the label
    conditional = True  # its likelihood is of x given y: evaluation passes the labels

    def __init__(self, cfg: CVAEConfig):
        super().__init__(cfg)
        self.encoder = Posterior(self.cfg)

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> DiagonalGaussian:
        return self.encoder(x, y)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> DiagonalGaussian:
        """q(z|x,y) for labels y [B]: mu, logvar [B, D]."""
        return self.encoder(x, self.one_hot(y, x))

    def kl(self, x: torch.Tensor, q: DiagonalGaussian, z: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(z|x,y) || p(z)) per example, the closed form: [B]."""
        return q.kl_to_standard_normal()

    def log_weights(self, x: torch.Tensor, k: int, q: DiagonalGaussian | None = None,
                    y: torch.Tensor | None = None) -> torch.Tensor:
        """Importance log-weights log p(x, z_i|y) - log q(z_i|x,y) for k draws z_i ~ q(z|x,y): [k, B]."""
        q = self.encode(x, y) if q is None else q
        z = q.rsample(k)  # [k, B, D]
        y1 = self.one_hot(y, x).expand(k, -1, -1)
        return self.decode_y(z, y1).log_prob(x) + standard_normal_log_prob(z) - q.log_prob(z)

    def step(self, batch: Batch, info: StepInfo):
        elbo = self.class_elbo(batch.x, batch.y)  # [B]
        loss = -elbo.mean()
        yield Update("model", loss, {"loss": loss, "elbo": elbo.mean()})

    def validation(self, batch: Batch) -> torch.Tensor:
        """The bound on log p(x|y) per held-out image (one z)."""
        return self.class_elbo(batch.x, batch.y)
