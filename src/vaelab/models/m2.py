"""The semi-supervised VAE, M2 of Kingma, Rezende, Mohamed & Welling (2014): a classifier that
learns from a few labels, helped by every unlabelled image.

The generative model is p(y) p(z) p(x|y,z), with p(y) uniform over the C classes and
p(z) = N(0, I); the inference model q(y|x) q(z|x,y). An image whose label the run may use
contributes the labelled bound

    L(x, y) = E_q(z|x,y)[log p(x|y,z)] + log p(y) - KL(q(z|x,y) || p(z)),

and every other training image the unlabelled bound with y summed out exactly over the classes,
not sampled (their Eq. 7, :func:`vaelab.losses.class_summed_bound`):

    U(x) = sum_y q(y|x) L(x, y) + H(q(y|x)).

q(y|x) learns from the labels through the classification term alpha * N / N_l * log q(y|x) of each
labelled image (their Eq. 9; alpha = 0.1 in the authors' code, N = N_l + N_u the training images).
Each step takes a minibatch of the training images, whose unlabelled ones give U, and one of the
labelled images beside it (:attr:`~vaelab.data.Batch.labelled_part`); per example of the whole
objective, as the authors' code scales theirs (its sum over the data divided by N),

    loss = - (1/B) sum_u U(x) - N_l/N mean L(x, y) - alpha mean log q(y|x),

the sum over the B-image minibatch's unlabelled images (an unbiased estimate of (1/N) sum_u U).
There the labels weigh little: at 100 labels of 55,000 images, as terms of the loss (each a mean
over its minibatch), the labelled ELBO weighs 0.0018 and the classification term 0.1 against U's
1, so q(y|x) follows the clusters the generative model makes of the unlabelled images.
``--labelled-weight balanced`` multiplies both labelled terms by N_u/N_l (at least 1), as if the
labelled minibatch drawn beside each step (the labelled images oversampled N_u/N_l times an
epoch) were data like the unlabelled one: its ELBO then weighs as U does, as in public
reimplementations that average each minibatch, and the classification term alpha * N_u/N_l.

The codes of an image (what a probe reads, what interpolations and fitted samplers use) are
[mu(x, p), p] with p = q(y|x): the posterior mean of z given the class probabilities, and the
probabilities themselves; the decoder takes any such [z, y] (a one-hot y for a class).

M1+M2 (``--features RUN``, their stacked model): M2 learns on the codes z1 ~ q(z1|x) of a trained
VAE, M1, drawn afresh at each use as the authors' code draws them, with a Gaussian p(z1|y,z2) of
learned per-dimension scale. M1 is frozen; its weights are copied into this run when training
starts, and its settings recorded in the config (``features_model``), so the run stands alone.
The generative model is then p(y) p(z2) p(z1|y,z2) p(x|z1): samples and reconstructions are
images through M1's decoder, and the NLL is of x (:class:`M1M2`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import from_dict, opt
from ..data.batch import Batch
from ..distributions import DiagonalGaussian, standard_normal_log_prob
from ..errors import VaelabError, quote
from ..io import load_weights
from ..losses import class_summed_bound
from ..nets import ACTIVATIONS, full_precision, make_encoder
from ..registry import MODELS, register
from ..rundir import CHECKPOINTS, read_run_config
from .base import ENCODE, LIKELIHOOD, SAMPLE, Model, StepInfo, Update, adam
from .cvae import CVAEConfig, LabelledModel, Posterior
from .iwae import IWAE
from .vae import VAE

EVAL_CHUNK = 1000  # images per pass when a whole split is scored


@dataclass(frozen=True)
class M2Config(CVAEConfig):
    hidden: tuple[int, ...] = opt((500,), "hidden layer sizes of each mlp: q(y|x), q(z|x,y) and p(x|y,z)")
    activation: str = opt("softplus", "non-linearity of the hidden layers", tuple(ACTIVATIONS))
    latent_dim: int = opt(50, "dimension of z")
    alpha: float = opt(0.1, "weight of the classification term: alpha * N / N_labelled per labelled image, N the "
                            "training images (Kingma et al. 2014: 0.1); --labelled-weight balanced multiplies it by "
                            "N_u/N_labelled")
    labelled_weight: str = opt("paper", "how much the labelled minibatch beside each step counts: paper, the "
                                        "authors' objective over the data set (its ELBO N_l/N, the classification term "
                                        "alpha); balanced, both times N_u/N_l (at least 1), as if the labelled images "
                                        "were as many as the unlabelled ones (their oversampling counted as data)",
                               ("paper", "balanced"))
    features: str | None = opt(None, "M1+M2: the run directory of a trained VAE (M1), on whose codes M2 then learns "
                                     "(its weights are copied into this run when training starts)")
    features_model: str | None = opt(None, "M1's model and settings, as JSON (read from --features)", flag=False)
    features_min_std: float = opt(0.1, "M1+M2: M1's latent dimensions whose posterior means vary less than this (their "
                                       "std over 1,000 training images) are left out of what M2 reads, as in Kingma et "
                                       "al.'s code; 0 keeps every one")
    features_keep: str | None = opt(None, "M1+M2: the latent dimensions of M1 that M2 reads, as JSON (chosen from the "
                                          "training images when training starts)", flag=False)

    def check(self) -> None:
        super().check()
        if not self.alpha >= 0:
            raise VaelabError(f"--alpha must be 0 or more, got {self.alpha}.")
        if not self.features_min_std >= 0:
            raise VaelabError(f"--features-min-std must be 0 or more, got {self.features_min_std}.")

    def settled(self) -> tuple["M2Config", str | None]:
        """Without --features, the VAE's choice of likelihood. With it, M1's settings recorded
        (read from its run once) and its likelihood and binarization taken: the stacked model's
        p(x|z1) is M1's."""
        if self.features is None:
            return super().settled()
        cfg = self if self.features_model is not None else dataclasses.replace(
            self, features=str(Path(self.features).absolute()),
            features_model=json.dumps(read_features(self.features, self.shape), sort_keys=True))
        m1 = features_config(cfg.features_model)
        taken = {k: getattr(m1, k) for k in ("likelihood", "binarize", "gaussian_std", "mixtures")}
        cfg = dataclasses.replace(cfg, **taken)
        line = None if cfg == self else (f"M1+M2: M2 learns on the {m1.latent_dim}-dimensional codes of "
                                         f"{self.features}; --likelihood {cfg.likelihood} and --binarize "
                                         f"{cfg.binarize} are M1's.")
        return cfg, line


    def settled_on_images(self, images) -> tuple["M2Config", str | None]:
        """M1+M2 starting: the latent dimensions of M1 that M2 reads, recorded (``features_keep``).
        As the authors' code chooses them, those whose posterior means over the first
        :data:`KEEP_IMAGES` training images (``images(n)``, floats in [0, 1]) have a standard
        deviation above ``features_min_std``: the others are the units M1 left inactive, whose
        codes are noise about the prior, which M2's classifier would only have to learn to ignore."""
        if self.features is None or self.features_keep is not None:
            return self, None
        m1 = MODELS[json.loads(self.features_model)["model"]](features_config(self.features_model))
        load_weights(m1, Path(self.features) / CHECKPOINTS["best"])
        with torch.no_grad():
            mu = full_precision(m1.eval().encode(images(KEEP_IMAGES)).mu).double()  # [n, D1]
        std = mu.std(0, correction=0).tolist()  # over the images, as numpy's std
        keep = [i for i, s in enumerate(std) if s > self.features_min_std]
        if not keep:
            raise VaelabError(f"--features {self.features}: none of M1's {len(std)} latent dimensions has posterior "
                              f"means that vary by more than --features-min-std {self.features_min_std:g} (the "
                              f"largest std is {max(std):.3g}); give a smaller one, or 0 to keep them all.")
        line = (f"M1+M2: M2 reads {len(keep)} of M1's {len(std)} latent dimensions, those whose posterior means vary "
                f"by more than {self.features_min_std:g} (their std over {len(mu):,} training images; "
                "--features-min-std).")
        return dataclasses.replace(self, features_keep=json.dumps(keep)), line


KEEP_IMAGES = 1000  # the training images M1's active units are found on, as in the authors' code


def kept_dims(text: str | None, d1: int) -> list[int]:
    """``features_keep`` read and checked: distinct indices of M1's ``d1`` latent dimensions, in
    order (None: every one)."""
    if text is None:
        return list(range(d1))
    try:
        keep = json.loads(text)
    except (TypeError, ValueError):
        keep = None
    if not (isinstance(keep, list) and keep and all(type(i) is int and 0 <= i < d1 for i in keep)
            and keep == sorted(set(keep))):
        raise VaelabError(f"features_keep must list distinct latent dimensions of M1, in order, each in 0..{d1 - 1}; "
                          f"got {quote(text)}.")
    return keep


def read_features(run_dir: str, shape: tuple[int, ...]) -> dict:
    """``{"model": name, "settings": {...}, "run": path}`` of the VAE trained in ``run_dir``
    (--features), checked: a ``vae`` or an ``iwae`` (a Gaussian posterior q(z1|x) whose draws its
    decoder was trained on), with a best checkpoint, trained on images of ``shape``."""
    try:
        doc = read_run_config(Path(run_dir))
    except VaelabError as e:
        raise VaelabError(f"--features: {e}") from None
    try:
        name, settings = doc["run"]["train"]["model"], dict(doc["run"]["model"])
    except (KeyError, TypeError, ValueError):
        raise VaelabError(f"--features {run_dir}: its config.json does not describe a vaelab run.") from None
    if MODELS.get(name) not in (VAE, IWAE):
        raise VaelabError(f"--features {run_dir} is a run of {name}: M1 must be a vae or an iwae.")
    if tuple(settings.get("shape", ())) != tuple(shape):
        raise VaelabError(f"--features {run_dir} was trained on images of shape {tuple(settings.get('shape', ()))}, "
                          f"but this run's are {tuple(shape)}.")
    if not (Path(run_dir) / CHECKPOINTS["best"]).is_file():
        raise VaelabError(f"--features {run_dir} has no {CHECKPOINTS['best']}: train M1 first.")
    return {"model": name, "settings": settings, "run": str(Path(run_dir).absolute())}


def features_config(text: str):
    """M1's model config from ``features_model``."""
    try:
        d = json.loads(text)
        cls = MODELS[d["model"]]
        return from_dict(cls.config_cls, d["settings"], "the M1 settings of features_model")
    except (KeyError, TypeError, ValueError):
        raise VaelabError("features_model does not describe a VAE: it must be what --features recorded.") from None


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
    epoch_metrics = True  # the classifier's validation accuracy after each epoch (logged, not selected on)
    labelled_part = True

    def __new__(cls, cfg=None, *args, **kwargs):
        # M1+M2 is M2 with --features: the same name and flags, the stacked model's class
        if cls is M2 and getattr(cfg, "features", None) is not None:
            cls = M1M2
        return super().__new__(cls)

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
        part = batch.labelled_part
        if part is None:
            raise VaelabError("m2 trains on minibatches that carry a labelled part (Batch.labelled_part).")
        n = info.dataset_size
        n_l = min(info.labels, n) if info.labels is not None else n
        # U over the minibatch's unlabelled images (a labelled one counts in the labelled part). With
        # every label kept there are none and the U term drops out; a minibatch built without its
        # mask is taken as all unlabelled.
        if info.labels is None:
            unlabelled = batch.x[:0]
        else:
            unlabelled = batch.x if batch.labelled is None else batch.x[~batch.labelled]
        bound = self.unlabelled_bound(unlabelled)  # [B_u]
        # (1/N) sum_u U(x) over the training set, estimated without bias by the sum over the
        # minibatch's unlabelled images divided by its size: 0 where it holds none, and under
        # torchrun the ranks' parts, weighted by their shares, add up to the global minibatch's
        u_term = bound.sum() / len(batch.x)
        elbo_l = self.labelled_elbo(part.x, part.y)  # [B_l]
        log_q = -F.cross_entropy(self.class_logits(part.x), part.y, reduction="none")  # [B_l]
        # the labelled part's weight: the authors' objective per example (paper), or, balanced, times
        # N_u/N_l (1 where every label is kept), so that the labelled minibatch counts as the unlabelled one
        scale = max(1.0, (n - n_l) / n_l) if self.cfg.labelled_weight == "balanced" else 1.0
        loss = -u_term - scale * ((n_l / n) * elbo_l.mean() + self.cfg.alpha * log_q.mean())
        metrics = {"loss": loss, "labelled_elbo": elbo_l.mean(), "class_loss": -log_q.mean()}
        if info.labels is not None:  # the mean U of the unlabelled images (0 in a minibatch of none)
            metrics["bound"] = bound.sum() / max(len(bound), 1)
        yield Update("model", loss, metrics)

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
        return {"classifier_accuracy": acc, "classifier_error": 1.0 - acc}

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


class M1M2(M2):
    """M2 on the codes of a frozen VAE, M1 (``--model m2 --features RUN``): ``m1`` the VAE, ``inner``
    an M2 over its latent vectors z1 [D1] with a Gaussian p(z1|y,z2). What takes images here (the
    step, validation, codes, samples, the NLL) maps them through M1 and back."""

    def __init__(self, cfg: M2Config):
        Model.__init__(self)
        self.cfg = cfg = cfg.settled()[0]
        m1 = features_config(cfg.features_model)
        self.m1 = MODELS[json.loads(cfg.features_model)["model"]](m1)
        self.m1.requires_grad_(False)
        # M1's latent dimensions that M2 reads (settled_on_images); the others are 0 where M1 decodes
        self.register_buffer("keep", torch.tensor(kept_dims(cfg.features_keep, m1.latent_dim)), persistent=False)
        inner = M2Config(shape=(len(self.keep),), hidden=cfg.hidden, activation=cfg.activation,
                         latent_dim=cfg.latent_dim, alpha=cfg.alpha, labelled_weight=cfg.labelled_weight,
                         num_classes=cfg.num_classes,
                         likelihood="gaussian", binarize="none")
        self.inner = M2(inner)
        self.data_init = 1  # a fresh run starts by copying M1's weights in (init_from_data)

    def init_from_data(self, x: torch.Tensor) -> None:
        """M1's weights, from the best checkpoint of the --features run."""
        path = Path(self.cfg.features) / CHECKPOINTS["best"]
        load_weights(self.m1, path)

    def optimizers(self, train) -> dict[str, torch.optim.Optimizer]:
        return {"model": adam(self.inner.parameters(), train.lr)}  # M1 stays as it was trained

    @property
    def decoder_params(self) -> int:
        return self.m1.decoder_params

    def discrete(self, levels: int) -> bool:
        return self.m1.discrete(levels)

    def data_scale(self) -> dict[str, float]:
        return {}  # its training figures are of M1's codes, not of images

    @torch.no_grad()
    def features(self, x: torch.Tensor, draw: bool = True) -> torch.Tensor:
        """M1's code of x in the dimensions M2 reads: a draw of q(z1|x) (training), or its mean:
        [B, D1 kept]."""
        q = self.encode(x)
        return q.rsample() if draw else q.mu

    def full_code(self, z1: torch.Tensor) -> torch.Tensor:
        """M1's latent vector of the kept dimensions' values z1 [..., D1 kept], the others 0 (an
        inactive unit's posterior mean sits at the prior's): what M1's decoder takes, [..., D1]."""
        full = z1.new_zeros(*z1.shape[:-1], self.m1.cfg.latent_dim)
        return full.index_copy(-1, self.keep, z1)

    # ---- M2 on the codes ----------------------------------------------------------------------

    def step(self, batch: Batch, info: StepInfo):
        part = batch.labelled_part
        if part is None:
            raise VaelabError("m2 trains on minibatches that carry a labelled part (Batch.labelled_part).")
        # the minibatch's labels and mask go with its codes: its labelled images are not in U
        codes = Batch(self.features(batch.x), batch.y, batch.labelled,
                      labelled_part=Batch(self.features(part.x), part.y))
        yield from self.inner.step(codes, info)

    def validation(self, batch: Batch) -> torch.Tensor:
        """U(z1) per held-out image, at a draw z1 ~ q(z1|x): M2's bound on M1's code."""
        return self.inner.unlabelled_bound(self.features(batch.x))

    def class_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.class_logits(self.features(x, draw=False))

    def unlabelled_bound(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.unlabelled_bound(self.features(x))

    # ---- the stacked model's likelihood of x ----------------------------------------------------

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """q(z1|x), M1's posterior, in the dimensions M2 reads: [B, D1 kept]."""
        q = self.m1.encode(x)
        return DiagonalGaussian(q.mu[..., self.keep], q.logvar[..., self.keep])

    def log_weights(self, x: torch.Tensor, k: int, q: DiagonalGaussian | None = None) -> torch.Tensor:
        """log p(x|z1) + log p_M2(z1) - log q(z1|x) for k draws z1 ~ q(z1|x), with p_M2(z1) one
        draw of M2's own weights (y summed out): an unbiased estimate of p(x) under
        p(y) p(z2) p(z1|y,z2) p(x|z1), [k, B]; z1 is the kept dimensions, which M1 decodes with
        the others at 0."""
        q = self.encode(x) if q is None else q
        z1 = q.rsample(k)  # [k, B, D1 kept]
        inner = self.inner.log_weights(z1.flatten(0, 1), 1)[0].view(k, -1)  # [k, B]
        return self.m1.decode(self.full_code(z1)).log_prob(x) + inner - q.log_prob(z1)

    def kl(self, x: torch.Tensor, q: DiagonalGaussian, z: torch.Tensor | None = None) -> torch.Tensor:
        """log q(z1|x) - log p(z1) at one draw z1 (``z``, or a fresh one), p(z1) estimated by
        one draw of M2's weights: [B]. The log of an unbiased estimate of p(z1) is below log p(z1)
        on average (Jensen), so this is above the KL on average: eval's ``kl`` of M1+M2 is an
        upper estimate, and its ``elbo`` a bound below the ELBO of the exact p(z1)."""
        z = q.rsample() if z is None else z
        return q.log_prob(z) - self.inner.log_weights(z, 1)[0]

    # ---- codes and images -----------------------------------------------------------------------

    @property
    def encoder(self) -> nn.Module:
        """What maps an image to its codes (fine-tuning trains a copy): M1's mean code, then
        M2's encoders. Not a submodule of its own: its weights are M1's and M2's."""
        return _Stacked(self.m1, self.inner.encoder, self.keep)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """M2's codes of M1's mean code of x: [B, D2 + C]."""
        return self.inner.codes(self.features(x, draw=False))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The image of M2's codes [z2, y]: M1's mean at M2's mean z1."""
        return self.m1.decode_mean(self.full_code(self.inner.decode_mean(z)))

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.inner.prior(n, generator)

    def class_prior(self, classes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.inner.class_prior(classes, generator)


class _Stacked(nn.Module):
    """x -> M2's codes of M1's mean code of x, [B, D2 + C]."""

    def __init__(self, m1: nn.Module, encoders: nn.Module, keep: torch.Tensor):
        super().__init__()
        self.m1, self.encoders = m1, encoders
        self.register_buffer("keep", keep.clone(), persistent=False)  # the dimensions M2 reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoders(self.m1.encode(x).mu[..., self.keep])
