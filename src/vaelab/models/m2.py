"""The semi-supervised VAE, M2 of Kingma, Rezende, Mohamed & Welling (2014): a classifier that
learns from a few labels, helped by every unlabelled image.

The generative model is p(y) p(z) p(x|y,z), with p(y) uniform over the C classes and
p(z) = N(0, I); the inference model q(y|x) q(z|x,y). An image whose label the run may use
contributes the labelled bound

    L(x, y) = E_q(z|x,y)[log p(x|y,z)] + log p(y) - KL(q(z|x,y) || p(z)),

and every training image (labelled or not, as in the authors' code) the unlabelled bound with
y summed out exactly over the classes, not sampled (their Eq. 7, :func:`vaelab.losses.class_summed_bound`):

    U(x) = sum_y q(y|x) L(x, y) + H(q(y|x)).

q(y|x) learns from the labels through the classification term alpha * N_tot / N_l * log q(y|x) of
each labelled image (their Eq. 9; alpha = 0.1 and N_tot = N + N_l in the authors' code). Each step
takes a minibatch of the training images for U and one of the labelled images beside it
(:attr:`~vaelab.data.Batch.labelled_part`); per example of the whole objective, as the authors
scale theirs,

    loss = - N/N_tot mean U(x) - N_l/N_tot mean L(x, y) - alpha mean log q(y|x).

The codes of an image (what a probe reads, what interpolations and fitted samplers use) are
[mu(x, p), p] with p = q(y|x): the posterior mean of z given the class probabilities, and the
probabilities themselves; the decoder takes any such [z, y] (a one-hot y for a class).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import opt
from ..data.batch import Batch
from ..distributions import DiagonalGaussian, standard_normal_log_prob
from ..errors import VaelabError
from ..losses import class_summed_bound
from ..nets import ACTIVATIONS, full_precision, make_encoder
from ..registry import register
from .base import ENCODE, LIKELIHOOD, SAMPLE, StepInfo, Update
from .cvae import CVAEConfig, LabelledModel, Posterior

EVAL_CHUNK = 1000  # images per pass when a whole split is scored


@dataclass(frozen=True)
class M2Config(CVAEConfig):
    hidden: tuple[int, ...] = opt((500,), "hidden layer sizes of each mlp: q(y|x), q(z|x,y) and p(x|y,z)")
    activation: str = opt("softplus", "non-linearity of the hidden layers", tuple(ACTIVATIONS))
    latent_dim: int = opt(50, "dimension of z")
    alpha: float = opt(0.1, "weight of the classification term: alpha * N_tot / N_labelled per labelled image "
                            "(Kingma et al. 2014: 0.1)")

    def check(self) -> None:
        super().check()
        if not self.alpha >= 0:
            raise VaelabError(f"--alpha must be 0 or more, got {self.alpha}.")


class _Encoders(nn.Module):
    """q(y|x) (``classify``: x -> logits [B, C]) and q(z|x,y) (``z``); called on x alone, the
    codes [mu(x, p), p] with p = q(y|x), [B, D + C] (what a probe and fine-tuning read)."""

    def __init__(self, cfg: M2Config):
        super().__init__()
        self.classify = make_encoder("mlp", cfg.shape, cfg.hidden, cfg.channels, cfg.activation, cfg.num_classes)
        self.z = Posterior(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(full_precision(self.classify(x)), -1)  # [B, C]
        return torch.cat([self.z(x, p).mu, p], -1)


@register("m2")
class M2(LabelledModel):
    """q(y|x), q(z|x,y), p(x|y,z): trained on the labelled bound, the unlabelled bound with y
    summed out, and the classification term (see the module's docstring)."""
    config_cls = M2Config
    capabilities = frozenset({ENCODE, SAMPLE, LIKELIHOOD})
    val_name = "bound"  # U(x): it needs no validation labels
    labelled_part = True

    def __init__(self, cfg: M2Config):
        super().__init__(cfg)
        self.encoder = _Encoders(self.cfg)

    @property
    def decoder_params(self) -> int:
        # the importance-sampled NLL decodes every class for each draw: its chunks count them all
        return self.cfg.decoder_params * self.num_classes

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> DiagonalGaussian:
        return self.encoder.z(x, y)

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        """q(y|x)'s logits, [B, C]."""
        return full_precision(self.encoder.classify(x))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z|x,y) for every class y: mu, logvar [B, C, D]."""
        return self.posterior(x, self.every_class(x, len(x)))

    def labelled_elbo(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L(x, y) per example, one z: [B]."""
        return self.class_elbo(x, y) + self.log_prior_y()

    def every_class_elbo(self, x: torch.Tensor, q: DiagonalGaussian | None = None) -> torch.Tensor:
        """L(x, y) for every class y, one z each: [B, C]."""
        q = self.encode(x) if q is None else q
        z = q.rsample()  # [B, C, D]
        lik = self.decode_y(z, self.every_class(x, len(x)))  # batch [B, C]
        return lik.log_prob(x.unsqueeze(1)) + self.log_prior_y() - q.kl_to_standard_normal()

    def unlabelled_bound(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) per example, y summed out over the classes: [B]."""
        return class_summed_bound(self.class_logits(x), self.every_class_elbo(x))

    def log_weights(self, x: torch.Tensor, k: int, q: DiagonalGaussian | None = None) -> torch.Tensor:
        """Importance log-weights with y summed out exactly: log sum_y p(y) p(x, z_y|y) / q(z_y|x,y)
        for k draws z_y ~ q(z|x,y) of every class, [k, B]. Each is an unbiased estimate of p(x),
        whatever q(y|x) says (it is not used)."""
        q = self.encode(x) if q is None else q
        z = q.rsample(k)  # [k, B, C, D]
        lik = self.decode_y(z, self.every_class(x, *z.shape[:-2]))  # batch [k, B, C]
        lw = lik.log_prob(x.unsqueeze(1)) + standard_normal_log_prob(z) - q.log_prob(z)  # [k, B, C]
        return torch.logsumexp(lw, -1) + self.log_prior_y()

    def kl(self, x: torch.Tensor, q: DiagonalGaussian, z: torch.Tensor | None = None) -> torch.Tensor:
        """The KL part of U(x): sum_y q(y|x) KL(q(z|x,y) || p(z)) + KL(q(y|x) || p(y)), [B]."""
        log_qy = torch.log_softmax(self.class_logits(x), -1)  # [B, C]
        qy = log_qy.exp()
        return (qy * q.kl_to_standard_normal()).sum(-1) + (qy * (log_qy - self.log_prior_y())).sum(-1)

    # ---- training --------------------------------------------------------------------------

    def step(self, batch: Batch, info: StepInfo):
        x, part = batch.x, batch.labelled_part
        if part is None:
            raise VaelabError("m2 trains on minibatches that carry a labelled part (Batch.labelled_part).")
        n = info.dataset_size
        n_l = info.labels if info.labels is not None else n
        n_tot = n + n_l
        bound = self.unlabelled_bound(x)  # [B]
        elbo_l = self.labelled_elbo(part.x, part.y)  # [B_l]
        log_q = -F.cross_entropy(self.class_logits(part.x), part.y, reduction="none")  # [B_l]
        loss = -(n / n_tot) * bound.mean() - (n_l / n_tot) * elbo_l.mean() - self.cfg.alpha * log_q.mean()
        yield Update("model", loss, {"loss": loss, "bound": bound.mean(), "labelled_elbo": elbo_l.mean(),
                                     "class_loss": -log_q.mean()})

    def validation(self, batch: Batch) -> torch.Tensor:
        """U(x) per held-out image: the bound on log p(x) with y summed out (no labels read)."""
        x = batch.x
        return self.unlabelled_bound(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y|x), [B]."""
        return torch.cat([self.class_logits(x[i:i + EVAL_CHUNK]).argmax(-1) for i in range(0, len(x), EVAL_CHUNK)])

    @torch.no_grad()
    def metrics(self, batch: Batch) -> dict:
        """The accuracy and error of q(y|x) as a classifier on the split (where it has labels)."""
        if batch.y is None:
            return {}
        acc = (self.predict(batch.x) == batch.y).double().mean().item()
        return {"accuracy": acc, "error": 1.0 - acc}

    # ---- codes ------------------------------------------------------------------------------

    @property
    def code_dim(self) -> int:
        return self.cfg.latent_dim + self.num_classes

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """[mu(x, p), p], p = q(y|x): [B, D + C]."""
        return self.encoder(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|y,z) at the codes [mu(x, p), p] of x."""
        return self.decode_mean(self.codes(x))
