"""VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric").

The VAE's encoder q(z|x) and decoder, with a GAN discriminator Dis whose l-th layer replaces the
pixel likelihood: the reconstruction error is measured in Dis's features, a Gaussian there,

    L_llike = -E_q log N(Dis_l(x); Dis_l(x~), I),   x~ = Dec(z), z ~ q(z|x),

and the decoder is also a GAN generator, its fakes both the reconstructions x~ and decoded prior
draws x_p = Dec(z_p), z_p ~ N(0, I):

    L_GAN = log Dis(x) + log(1 - Dis(x~)) + log(1 - Dis(x_p)).

Each player descends its own loss (the paper's Algorithm 1), one optimizer each, in this order
on one minibatch:

    encoder:        KL(q(z|x) || N(0, I)) + L_llike
    decoder:        gamma * L_llike + L_GAN  (only its two fake terms depend on the decoder)
    discriminator:  -L_GAN  (the cross-entropy of real x against both kinds of fakes)

(With L_GAN the discriminator's log-likelihood as written here, the decoder descends its fake
terms, so that it plays against the discriminator; a text that writes the decoder's term as
-L_GAN takes L_GAN to be the discriminator's loss.) Its GAN term is the generator loss of
:mod:`vaelab.losses` on both fakes: by default the non-saturating form, -log Dis(.); the
minimax form, log(1 - Dis(.)), with --g-loss minimax.
The GAN loss never reaches the encoder, nor L_llike the discriminator. The networks are the
VAE's (``vae.py``): --arch, --hidden, --channels for the encoder, its mirror the decoder (its
images the sigmoid of its output) and the discriminator (LeakyReLU(0.2) as in ``gan.py``, fed 2x
- 1), Dis_l its last hidden layer. Larsen et al. report CelebA images, no likelihood; the model
has none either (ENCODE and SAMPLE only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..data.batch import Batch
from ..config import opt
from ..distributions import DiagonalGaussian, Gaussian
from ..errors import VaelabError
from ..losses import discriminator_loss, generator_loss
from ..nets import Discriminator, NetConfig, full_precision
from ..registry import register
from .base import ENCODE, SAMPLE, StepInfo, Update, adam
from .vae import LatentGaussianModel


@dataclass(frozen=True)
class VAEGANConfig(NetConfig):
    gamma: float = opt(1.0, "weight of the feature reconstruction error in the decoder's loss (the paper's gamma)")
    d_hidden: tuple[int, ...] | None = opt(None, "hidden layer sizes of the mlp discriminator (default: --hidden)")
    g_loss: str = opt("non-saturating", "the decoder's GAN loss: descend log(1 - Dis(.)) (minimax, the paper's) "
                                        "or ascend log Dis(.)", ("minimax", "non-saturating"))
    d_lr: float | None = opt(None, "discriminator learning rate (default: --lr)")
    beta1: float = opt(0.5, "Adam's beta1 of the three optimizers (DCGAN: 0.5)")
    binarize: str = opt("none", "how the model takes [0, 1] intensities (VAE-GAN models the grey levels)",
                        ("none", "static", "dynamic"))
    # what the VAE's networks (LatentGaussianModel) read: the decoder emits one logit a pixel,
    # its image the sigmoid of it; no pixel likelihood enters the objective
    likelihood: ClassVar[str] = "bernoulli"
    decoder_params: ClassVar[int] = 1

    def check(self) -> None:
        super().check()
        if self.gamma < 0:
            raise VaelabError(f"--gamma must be 0 or more, got {self.gamma}.")
        if self.d_hidden is not None and (not self.d_hidden or min(self.d_hidden) < 1):
            raise VaelabError(f"--d-hidden must list positive layer sizes, such as 400; got {self.d_hidden}.")
        if self.d_hidden is not None and self.arch != "mlp":
            raise VaelabError(f"--d-hidden applies with --arch mlp only (--arch {self.arch} mirrors the encoder).")
        if self.d_lr is not None and self.d_lr <= 0:
            raise VaelabError(f"--d-lr must be positive, got {self.d_lr}.")
        if not 0 <= self.beta1 < 1:
            raise VaelabError(f"--beta1 must be in [0, 1), got {self.beta1}.")


def feature_nll(real: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """L_llike per example: -log N(Dis_l(x); Dis_l(x~), I) for features [B, F], summed over F: [B]."""
    return -Gaussian(recon, torch.zeros((), dtype=recon.dtype, device=recon.device), 1).log_prob(real)


@register("vaegan")
class VAEGAN(LatentGaussianModel):
    """The VAE with its pixel likelihood replaced by a Gaussian in a discriminator's features."""
    config_cls = VAEGANConfig
    capabilities = frozenset({ENCODE, SAMPLE})
    # the encoder's loss, KL + L_llike, per held-out example; best = last: it is measured in the
    # discriminator's features, which move from epoch to epoch
    val_name, higher_is_better = "enc_loss", None
    presets = {}

    def __init__(self, cfg: VAEGANConfig):
        super().__init__(cfg)
        self.discriminator = Discriminator(cfg.arch, cfg.shape, cfg.d_hidden or cfg.hidden, cfg.channels, "leaky-relu")

    def forward(self, x: torch.Tensor) -> tuple[DiagonalGaussian, torch.Tensor]:
        """q(z|x) and the reconstruction x~ = Dec(z) for one z ~ q(z|x): [B, *shape]."""
        q = self.encode(x)
        return q, self.decode(q.rsample()).mean

    def discriminate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dis's logits [B] and its features Dis_l [B, F] for images x in [0, 1]."""
        logits, features = self.discriminator(2 * x - 1)
        return full_precision(logits), full_precision(features)

    # ---- training: Algorithm 1, one loss per player ------------------------------------------

    def optimizers(self, train) -> dict[str, torch.optim.Optimizer]:
        """Adam(--beta1) for each player: encoder and decoder at --lr, the discriminator at --d-lr."""
        betas = (self.cfg.beta1, 0.999)
        return {"encoder": adam(self.encoder.parameters(), train.lr, betas),
                "decoder": adam(self.decoder.parameters(), train.lr, betas),
                "discriminator": adam(self.discriminator.parameters(), self.cfg.d_lr or train.lr, betas)}

    def encoder_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(q(z|x) || N(0, I)) and L_llike per example, [B] each, with gradients to the encoder."""
        q, recon = self(x)
        with torch.no_grad():
            real = self.discriminate(x)[1]
        return q.kl_to_standard_normal(), feature_nll(real, self.discriminate(recon)[1])

    def encoder_objective(self, x: torch.Tensor):
        kl, llike = self.encoder_terms(x)
        loss = (kl + llike).mean()
        return loss, {"loss": loss, "kl": kl.mean(), "llike": llike.mean()}

    def decoder_objective(self, x: torch.Tensor):
        """gamma L_llike + the generator loss on the reconstructions and on decoded prior draws,
        the encoder held fixed."""
        with torch.no_grad():
            z, real = self.encode(x).rsample(), self.discriminate(x)[1]
        fakes = self.decode(torch.cat([z, self.prior(len(x))])).mean  # [2B, *shape]: x~, then x_p
        logits, features = self.discriminate(fakes)
        rec_logits, prior_logits = logits.chunk(2)
        llike = feature_nll(real, features[:len(x)]).mean()
        gan = generator_loss(rec_logits, self.cfg.g_loss) + generator_loss(prior_logits, self.cfg.g_loss)
        loss = self.cfg.gamma * llike + gan
        return loss, {"dec_loss": loss, "dec_gan": gan}

    def d_objective(self, x: torch.Tensor):
        """The discriminator's loss: x real, its reconstructions and decoded prior draws fake
        (encoder and decoder held fixed)."""
        with torch.no_grad():
            fakes = torch.cat([self(x)[1], self.decode_mean(self.prior(len(x)))])  # [2B, *shape]
        real_logits, rec_logits, prior_logits = self.discriminate(torch.cat([x, fakes]))[0].split(len(x))
        loss = discriminator_loss(real_logits, rec_logits, prior_logits)
        return loss, {"d_loss": loss, "d_real": torch.sigmoid(real_logits).mean(),
                      "d_recon": torch.sigmoid(rec_logits).mean(), "d_fake": torch.sigmoid(prior_logits).mean()}

    def step(self, batch: Batch, info: StepInfo):
        x = batch.x
        for name, objective in (("encoder", self.encoder_objective), ("decoder", self.decoder_objective),
                                ("discriminator", self.d_objective)):
            loss, metrics = info.compile(objective)(x)
            yield Update(name, loss, metrics)

    def validation(self, batch: Batch) -> torch.Tensor:
        """KL + L_llike per held-out example (the encoder's loss), [B]."""
        x = batch.x
        kl, llike = self.encoder_terms(x)
        return kl + llike
