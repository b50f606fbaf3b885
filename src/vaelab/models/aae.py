"""The adversarial autoencoder (Makhzani et al. 2016, "Adversarial Autoencoders").

The deterministic autoencoder of ``ae.py``, z = enc(x), x^ = dec(z), whose aggregated posterior
q(z) = E_x q(z|x) is matched to the prior p(z) = N(0, I) by a GAN played on the codes, where
the VAE puts a KL term on each posterior instead:

    min_{enc,dec} E L(x, dec(enc(x)))                                      (reconstruction)
    min_D  -E_{z~p} log D(z) - E_x log(1 - D(enc(x)))                       (regularization, D)
    min_enc -E_x log D(enc(x))                                              (regularization, G)

Each training step is the paper's two phases on one minibatch (section 2): a reconstruction
update of the encoder and decoder (optimizer ``autoencoder``), then the regularization phase, a
discriminator update on prior draws (real) against the encoder's codes held fixed (fake,
optimizer ``discriminator``), and a generator update of the encoder alone to fool it (optimizer
``generator``, the non-saturating form). The game's losses are :mod:`vaelab.losses`'
(shared with ``gan.py``). Samples are decoded prior draws.

The paper reports a Parzen-window log-likelihood of 340 +- 2 nats on the MNIST test set
(Table 1), by the protocol of Goodfellow et al. 2014 (sigma chosen on validation data) that
``vaelab eval`` implements (:mod:`vaelab.evaluation.parzen`). Preset ``paper`` is its MNIST net:
a 784-1000-1000-8 ReLU encoder and its mirror as decoder, and a 1000-1000 ReLU discriminator on
the 8-dimensional codes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batch import Batch
from ..config import opt
from ..distributions import standard_normal
from ..errors import VaelabError
from ..losses import discriminator_loss, generator_loss
from ..nets import Discriminator, full_precision
from ..registry import register
from .ae import AE, AEConfig
from .base import ENCODE, SAMPLE, StepInfo, Update, adam


@dataclass(frozen=True)
class AAEConfig(AEConfig):
    d_hidden: tuple[int, ...] | None = opt(None, "hidden layer sizes of the discriminator on codes (default: --hidden)")
    reg_lr: float | None = opt(None, "learning rate of the regularization phase, discriminator and generator "
                                     "(default: --lr)")
    beta1: float = opt(0.5, "Adam's beta1 of the regularization phase's two optimizers (DCGAN: 0.5)")

    def check(self) -> None:
        super().check()
        if self.code_activation != "none":
            raise VaelabError(f"--code-activation must be none for aae: its codes are matched to a N(0, I) prior, "
                              f"got {self.code_activation}.")
        if self.d_hidden is not None and (not self.d_hidden or min(self.d_hidden) < 1):
            raise VaelabError(f"--d-hidden must list positive layer sizes, such as 1000,1000; got {self.d_hidden}.")
        if self.reg_lr is not None and self.reg_lr <= 0:
            raise VaelabError(f"--reg-lr must be positive, got {self.reg_lr}.")
        if not 0 <= self.beta1 < 1:
            raise VaelabError(f"--beta1 must be in [0, 1), got {self.beta1}.")


@register("aae")
class AAE(AE):
    """The autoencoder, its codes' distribution matched to N(0, I) by a discriminator on codes."""
    config_cls = AAEConfig
    capabilities = frozenset({ENCODE, SAMPLE})
    normal_prior = True
    # best = last: the reconstruction error it reports says nothing of how well the codes match
    # the prior, which sampling needs
    higher_is_better = None
    presets = {
        # Makhzani et al. 2016, MNIST (Table 1's Parzen figure): 784-1000-1000-8 ReLU autoencoder,
        # 1000-1000 ReLU discriminator
        "paper": {"arch": "mlp", "hidden": (1000, 1000), "activation": "relu", "latent_dim": 8,
                  "d_hidden": (1000, 1000)},
    }

    def __init__(self, cfg: AAEConfig):
        super().__init__(cfg)
        self.discriminator = Discriminator("mlp", (cfg.latent_dim,), cfg.d_hidden or cfg.hidden, (), cfg.activation)

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ p(z) = N(0, I): [n, latent_dim]."""
        return standard_normal((n, self.cfg.latent_dim), next(self.parameters()), generator)

    def discriminate(self, z: torch.Tensor) -> torch.Tensor:
        """The logit of D(z), "z is a prior draw", [B]."""
        return full_precision(self.discriminator(z)[0])

    # ---- training: the reconstruction phase, then the regularization phase -----------------

    def optimizers(self, train) -> dict[str, torch.optim.Optimizer]:
        """The reconstruction phase's Adam on encoder and decoder (--lr); the regularization
        phase's two, Adam(--beta1) on the discriminator and on the encoder (--reg-lr)."""
        reg_lr, betas = self.cfg.reg_lr or train.lr, (self.cfg.beta1, 0.999)
        return {"autoencoder": adam([*self.encoder.parameters(), *self.decoder.parameters()], train.lr),
                "discriminator": adam(self.discriminator.parameters(), reg_lr, betas),
                "generator": adam(self.encoder.parameters(), reg_lr, betas)}

    def d_objective(self, x: torch.Tensor):
        """The discriminator's loss, prior draws real and the codes of x fake (the encoder held
        fixed); with both logits, detached."""
        with torch.no_grad():
            fake = self.encode(x)  # [B, D]
        logits = self.discriminate(torch.cat([self.prior(len(x)), fake]))  # [2B]
        real_logits, fake_logits = logits.chunk(2)
        return discriminator_loss(real_logits, fake_logits), real_logits.detach(), fake_logits.detach()

    def g_objective(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's loss as the generator: -E log D(enc(x)) (its update moves the encoder only)."""
        return generator_loss(self.discriminate(self.encode(x)), "non-saturating")

    def step(self, batch: Batch, info: StepInfo):
        x = batch.x
        loss, metrics = info.compile(self.objective)(x)  # the autoencoder's reconstruction error
        yield Update("autoencoder", loss, metrics)
        d_loss, real_logits, fake_logits = info.compile(self.d_objective)(x)
        yield Update("discriminator", d_loss, {"d_loss": d_loss, "d_real": torch.sigmoid(real_logits).mean(),
                                               "d_fake": torch.sigmoid(fake_logits).mean()})
        g_loss = info.compile(self.g_objective)(x)
        yield Update("generator", g_loss, {"g_loss": g_loss})

    # ---- what evaluation and the pictures ask for --------------------------------------------

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Decoded prior draws: [n, *shape]."""
        return self.decode(self.prior(n))
