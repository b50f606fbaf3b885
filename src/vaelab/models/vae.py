"""The variational autoencoder of the lecture (Kingma & Welling 2014).

q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(x|z) Bernoulli (logits), Gaussian
(fixed or learned variance) or a discretized logistic (mixture) on the data's pixel levels.
Trained on the ELBO with a closed-form KL, weighted by beta (beta-VAE) and, during a warm-up,
by a factor rising linearly from 0 to 1 over ``--warmup-epochs``. The maths shared with other
models lives in :mod:`vaelab.distributions` and :mod:`vaelab.losses`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import opt
from ..data.batch import Batch
from ..data.datasets import is_colour
from ..distributions import (Bernoulli, DiagonalGaussian, DiscretizedLogistic, Gaussian, standard_normal,
                             standard_normal_log_prob)
from ..errors import VaelabError
from ..losses import elbo
from ..nets import NetConfig, full_precision, make_decoder, make_encoder
from ..registry import register
from .base import ENCODE, LIKELIHOOD, SAMPLE, Model, StepInfo, Update


@dataclass(frozen=True)
class LatentGaussianConfig(NetConfig):
    """What every model with a Gaussian posterior and a likelihood decoder shares (VAE, IWAE)."""
    likelihood: str = opt("auto", "decoder likelihood p(x|z): bernoulli (binary pixels), gaussian "
                                  "(density; 8-bit data is dequantized), logistic or logistic-mixture "
                                  "(discretized on the data's levels); auto: logistic for colour images, "
                                  "bernoulli for single-channel ones or with --binarize static or dynamic",
                          ("auto", "bernoulli", "gaussian", "logistic", "logistic-mixture"))
    gaussian_std: float | None = opt(None, "fixed std of the Gaussian likelihood (default: learned, one per pixel)")
    mixtures: int = opt(5, "components of --likelihood logistic-mixture")
    levels: int = opt(256, "pixel levels of the data (taken from the data)", flag=False)

    def settled(self) -> tuple["LatentGaussianConfig", str | None]:
        """This config with the settings left to the data (``auto``) chosen from its image shape
        and levels, and one line that says what was chosen and why (None: nothing was left).

        Colour images on more than two levels (:func:`vaelab.data.datasets.is_colour`) get the
        discretized logistic on their levels, unbinarized: a Bernoulli on binarized photographs
        models colour noise. Other images keep the lecture's Bernoulli on pixels binarized afresh
        at each use; a --binarize static or dynamic given asks for it too. --binarize auto is
        dynamic for a Bernoulli and none for a likelihood of grey levels. A value given wins."""
        likelihood, binarize = self.likelihood, self.binarize
        if "auto" not in (likelihood, binarize):
            return self, None
        colour = is_colour(self.shape, self.levels)
        if likelihood == "auto":
            likelihood = "logistic" if colour and binarize in ("auto", "none") else "bernoulli"
        if binarize == "auto":
            binarize = "dynamic" if likelihood == "bernoulli" else "none"
        pixels = {"dynamic": "pixels binarized afresh at each use (--binarize dynamic)",
                  "static": "pixels binarized once (--binarize static)",
                  "none": "the intensities as they are (--binarize none)"}[binarize]
        if self.likelihood != "auto":
            line = (f"--binarize {binarize}: --likelihood {likelihood} "
                    f"{'takes binary pixels' if likelihood == 'bernoulli' else 'models the grey levels'}.")
        else:
            kind = "in colour" if colour else "single-channel" if self.shape[0] == 1 else "binary"
            why = (f"--binarize {binarize} asks for binary pixels" if colour and likelihood == "bernoulli" else
                   f"the images are {kind} ({self.shape[0]} channel{'s' if self.shape[0] > 1 else ''}, "
                   f"{self.levels} levels)")
            what = (f"logistic, discretized on the {self.levels} levels," if likelihood == "logistic" else "bernoulli")
            line = f"likelihood {what} on {pixels}: {why}; --likelihood and --binarize choose others."
        return dataclasses.replace(self, likelihood=likelihood, binarize=binarize), line

    @property
    def decoder_params(self) -> int:
        """Numbers the decoder emits per sub-pixel."""
        return {"logistic": 2, "logistic-mixture": 3 * self.mixtures}.get(self.settled()[0].likelihood, 1)

    def check(self) -> None:
        super().check()
        default = type(self)()
        if self.likelihood.startswith("logistic") and self.binarize not in ("none", "auto"):
            raise VaelabError(f"--likelihood {self.likelihood} models the grey levels: use it with --binarize none.")
        if self.mixtures < 1:
            raise VaelabError(f"--mixtures must be at least 1, got {self.mixtures}.")
        if self.mixtures != default.mixtures and self.likelihood != "logistic-mixture":
            raise VaelabError("--mixtures applies with --likelihood logistic-mixture only.")
        if self.gaussian_std is not None:
            if self.gaussian_std <= 0:
                raise VaelabError(f"--gaussian-std must be positive, got {self.gaussian_std}.")
            if self.likelihood != "gaussian":
                raise VaelabError(f"--gaussian-std applies to --likelihood gaussian, not {self.likelihood}.")

    @property
    def dequantizes(self) -> bool:
        """Whether the model sees dequantized pixels: a Gaussian density on grey levels, trained
        and scored on (k + u) / levels, u ~ U(0, 1), so its log-density plus D log(levels)
        bounds the log-probability of the 8-bit image (Theis et al. 2016)."""
        cfg = self.settled()[0]
        return cfg.binarize == "none" and cfg.likelihood == "gaussian"


@dataclass(frozen=True)
class VAEConfig(LatentGaussianConfig):
    beta: float = opt(1.0, "weight of the KL term (beta-VAE)")
    warmup_epochs: float = opt(0.0, "epochs over which the KL weight rises linearly from 0 to beta")

    def check(self) -> None:
        super().check()
        for name in ("beta", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise VaelabError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}.")


@dataclass
class VAEOutput:
    posterior: DiagonalGaussian  # q(z|x), [B, D]
    z: torch.Tensor              # reparameterised sample, [B, D]
    likelihood: Bernoulli | Gaussian | DiscretizedLogistic  # p(x|z), event shape = image shape


# How the IWAE paper's nets are trained under --preset iwae (the one-layer net here, the two-layer
# one in vae2layer.py): the recipe that measured best in minutes, see LatentGaussianModel.presets
IWAE_RECIPE = {"binarize": "dynamic", "batch_size": 100, "lr": 1e-3, "lr_schedule": "cosine", "ema": 0.999}


class LikelihoodDecoder(Model):
    """A decoder to p(x|z) on the data's pixels (``self.decoder``, ``self.cfg`` a
    :class:`LatentGaussianConfig`) and what evaluation asks of its likelihood: no encoder, no
    objective. The VAE's family and the models of labels (cvae.py) build on it."""

    # A constant pixel would drive a learned std to 0 and the density to infinity: floor it.
    MIN_LOG_SCALE = math.log(1e-3)

    def build_decoder(self, arch: str, in_dim: int) -> None:
        """``self.decoder`` from ``in_dim`` inputs to the likelihood's parameters of each pixel, and
        a Gaussian's learned per-pixel log std where its std is not fixed."""
        cfg = self.cfg
        self.decoder = make_decoder(arch, in_dim, cfg.hidden, cfg.channels, cfg.activation, cfg.shape,
                                    cfg.shape[0] * cfg.decoder_params)
        if cfg.likelihood == "gaussian" and cfg.gaussian_std is None:
            # Learned per-pixel log std, independent of z: stable where a z-dependent variance
            # collapses on always-black MNIST pixels.
            self.log_scale = nn.Parameter(torch.zeros(cfg.shape))

    @property
    def decoder_params(self) -> int:
        return self.cfg.decoder_params

    def discrete(self, levels: int) -> bool:
        """Whether log p(x|z), as evaluation scores it, is a probability mass of the data (so its
        NLL is a code length and bits/dim apply): a discretized logistic; a Bernoulli on binary
        pixels (binarized, or binary already: 2 levels); a Gaussian on dequantized pixels, whose
        density bounds the mass once D log(levels) is added."""
        lik = self.cfg.likelihood
        binary = self.cfg.binarize != "none" or levels == 2
        return lik.startswith("logistic") or self.cfg.dequantizes or (lik == "bernoulli" and binary)

    # The metrics that hold log p(x|z) once, by its sign in them: bounds on log p(x) (+1), and
    # losses holding -log p(x|z) (-1) beside terms of z alone (KL, MMD, TC), which no scale moves
    LOG_LIKELIHOOD_SIGNS = {"elbo": 1, "bound": 1, "loss": -1, "example_loss": -1}

    def data_scale(self) -> dict[str, float]:
        """What to add to each metric named here (training's, and validation's
        :attr:`val_name`) to have it in nats per example of the data's discrete pixels, the
        scale evaluation reports: on dequantized pixels the density of (k + u) / levels is
        D log(levels) above the log-probability of the image it bounds (Theis et al. 2016), so a
        bound falls by that much and a loss rises; on any other likelihood, nothing."""
        if not self.cfg.dequantizes:
            return {}
        d_log_levels = math.prod(self.cfg.shape) * math.log(self.cfg.levels)
        return {name: -sign * d_log_levels for name, sign in self.LOG_LIKELIHOOD_SIGNS.items()}

    def decode(self, z: torch.Tensor):
        """p(x|z) for z [..., D]; its parameters have shape [..., *image shape]."""
        out = full_precision(self.decoder(z))
        if self.cfg.likelihood == "bernoulli":
            return Bernoulli(out, self.event_ndim)
        if self.cfg.likelihood.startswith("logistic"):
            # [..., P * C, H, W] -> P parameter maps of [..., C, H, W] (a mixture: M each)
            p = out.unflatten(-self.event_ndim, (self.cfg.decoder_params, self.cfg.shape[0]))
            d = -1 - self.event_ndim
            if self.cfg.likelihood == "logistic":
                loc, log_scale = p.unbind(d)
                return DiscretizedLogistic(loc + 0.5, log_scale, self.event_ndim, self.cfg.levels)
            w, loc, log_scale = p.split(self.cfg.mixtures, dim=d)
            return DiscretizedLogistic(loc + 0.5, log_scale, self.event_ndim, self.cfg.levels, w)
        if self.cfg.gaussian_std is not None:
            log_scale = torch.full((), math.log(self.cfg.gaussian_std), device=out.device, dtype=out.dtype)
        else:
            log_scale = self.log_scale.clamp(min=self.MIN_LOG_SCALE)
        return Gaussian(out, log_scale, self.event_ndim)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Means of p(x|z) for n draws z ~ N(0, I): [n, *shape]."""
        return self.decode_mean(self.prior(n))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The image a code stands for: the mean of p(x|z), [..., *shape]."""
        return self.decode(z).mean


class LatentGaussianModel(LikelihoodDecoder):
    """Encoder to q(z|x), decoder to p(x|z), prior N(0, I): all a VAE computes, no objective."""
    capabilities = frozenset({ENCODE, SAMPLE, LIKELIHOOD})
    val_name, higher_is_better = "elbo", True
    normal_prior = True
    presets = {
        # Burda et al. 2016 (IWAE), 1 stochastic layer: 784-200-200-50, tanh, dynamic binarization;
        # with the recipe that measured best in minutes (benchmarks/time_to_quality.py): batch 100,
        # Adam 1e-3 on a cosine schedule to lr/10 over the epochs (or the --time-budget), and the
        # weights averaged (--ema 0.999: 0.10 nats of test NLL after 20 minutes, K = 200)
        "iwae": {"arch": "mlp", "hidden": (200, 200), "activation": "tanh", "latent_dim": 50,
                 "likelihood": "bernoulli", **IWAE_RECIPE},
        # Kingma & Welling 2014 (AEVB), MNIST: one hidden layer of 500 tanh units.
        "aevb": {"arch": "mlp", "hidden": (500,), "activation": "tanh", "latent_dim": 20, "likelihood": "bernoulli"},
        # pytorch/examples vae/main.py: 784-400-20, ReLU.
        "pytorch-examples": {"arch": "mlp", "hidden": (400,), "activation": "relu", "latent_dim": 20,
                             "likelihood": "bernoulli"},
    }

    def __init__(self, cfg: LatentGaussianConfig):
        super().__init__()
        # a config built by hand may leave its likelihood to the data: its own shape and levels
        # decide, as the trainer's would (LatentGaussianConfig.settled; VAE-GAN's has none)
        self.cfg = cfg = cfg.settled()[0] if hasattr(cfg, "settled") else cfg
        self.event_ndim = len(cfg.shape)
        self.encoder = make_encoder(cfg.arch, cfg.shape, cfg.hidden, cfg.channels, cfg.activation, 2 * cfg.latent_dim)
        self.build_decoder(cfg.arch, cfg.latent_dim)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        mu, logvar = full_precision(self.encoder(x)).chunk(2, dim=-1)  # [B, D] each
        return DiagonalGaussian(mu, logvar)

    def posterior_and_likelihood(self, x: torch.Tensor) -> VAEOutput:
        q = self.encode(x)
        z = q.rsample()
        return VAEOutput(q, z, self.decode(z))

    def log_weights(self, x: torch.Tensor, k: int, q: DiagonalGaussian | None = None) -> torch.Tensor:
        """Importance log-weights log p(x,z_i) - log q(z_i|x) for k samples z_i ~ q: [k, B]."""
        q = self.encode(x) if q is None else q
        z = q.rsample(k)  # [k, B, D]
        return self.decode(z).log_prob(x) + self.prior_log_prob(z) - q.log_prob(z)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) summed over the last dim, [...]: here N(0, I)."""
        return standard_normal_log_prob(z)

    def kl(self, x: torch.Tensor, q: DiagonalGaussian, z: torch.Tensor | None = None) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per example, [B]: here the closed form to N(0, I). A model with
        another prior or posterior estimates it as log q(z|x) - log p(z) at ``z``, a draw of
        ``q`` (a fresh one when not given)."""
        return q.kl_to_standard_normal()

    def validation(self, batch: Batch) -> torch.Tensor:
        """The ELBO per example (one z): the quantity the best checkpoint ranks."""
        x = batch.x
        return self.elbo_terms(x).elbo

    def elbo_terms(self, x: torch.Tensor):
        out = self.posterior_and_likelihood(x)
        return elbo(out, x, kl=self.kl(x, out.posterior, out.z))

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ N(0, I): [n, D]."""
        return standard_normal((n, self.cfg.latent_dim), next(self.parameters()), generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z) at the code z of x (:meth:`codes`: the posterior mean mu(x))."""
        return self.decode_mean(self.codes(x))

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The representation used as features: the posterior mean mu(x), [B, D]."""
        return self.encode(x).mode()


@register("vae")
class VAE(LatentGaussianModel):
    """Trained on the ELBO: one loss per step, E_q log p(x|z) - w KL(q || p), w = beta times
    the warm-up factor of this step."""
    config_cls = VAEConfig

    def forward(self, x: torch.Tensor) -> VAEOutput:
        return self.posterior_and_likelihood(x)

    @classmethod
    def upgrade_format1(cls, old: dict, model: dict) -> tuple[str, dict]:
        # format 1 trained the IWAE bound as --model vae --iw-samples K > 1
        if old.get("iw_samples", 1) > 1:
            return "iwae", {**model, "k": old["iw_samples"]}
        return cls.name, {**model, **{n: old[n] for n in ("beta", "warmup_epochs") if n in old}}

    def kl_weight(self, info: StepInfo) -> float:
        """beta, ramped linearly from 0 over the first ``warmup_epochs`` epochs of steps."""
        if self.cfg.warmup_epochs <= 0:
            return self.cfg.beta
        return self.cfg.beta * min(1.0, info.step / (self.cfg.warmup_epochs * info.steps_per_epoch))

    def objective(self, x: torch.Tensor, kl_weight: torch.Tensor):
        out = self(x)
        t = elbo(out, x, beta=kl_weight, kl=self.kl(x, out.posterior, out.z))
        return t.loss, {"loss": t.loss, "elbo": t.elbo.mean(), "kl": t.kl.mean()}

    def step(self, batch: Batch, info: StepInfo):
        x = batch.x
        # the weight goes in as a tensor, so a compiled objective does not recompile each step
        loss, metrics = info.compile(self.objective)(x, torch.tensor(self.kl_weight(info)))
        yield Update("model", loss, metrics)
