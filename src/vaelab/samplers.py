"""Samplers fitted after training to the codes of the training images: the second stage that any
model with an encoder shares, whatever its objective.

    vaelab sample RUN_DIR --sampler prior | gmm:K | two-stage | pixelcnn
    vaelab eval RUN_DIR --sampler ...

* ``prior``: the model's own ``sample``, z ~ p(z) (a model that declares SAMPLE).
* ``gmm:K``: a Gaussian mixture of K full-covariance components fitted by EM (scikit-learn, a
  fixed seed) to ``codes(x)`` of the training images; images are ``decode_mean(z)`` of its draws.
  It suits any model whose latent is a VECTOR, a deterministic autoencoder too.
* ``two-stage``: Dai & Wipf 2019: a second, small VAE (vaelab's own, an MLP with a learned
  Gaussian likelihood) trained on standardised draws z ~ q(z|x) of the training images, drawn
  afresh each epoch (the aggregate posterior the decoder was trained on, as Dai & Wipf's code
  does; a deterministic autoencoder's codes are its draws); u ~ N(0, I) -> z -> image.
* ``pixelcnn``: for a model whose latent is a GRID of codebook indices (the VQ-VAE): a PixelCNN
  over the grid (:class:`vaelab.nets.PixelCNN`), sampled cell by cell -> ``decode_grid``.

The model says which kind its latent is (:attr:`vaelab.models.base.Model.latent`) and which
sampler it uses by default (``default_sampler``); a sampler it cannot have is refused in one
sentence. A fitted sampler is cached in ``RUN_DIR/samplers/<name>-<checkpoint>.safetensors``, its
metadata holding the sampler, its settings and the MD5 of the checkpoint it was fitted on; a
checkpoint changed since (a resumed run) is fitted afresh. Fitting draws from its own seeded
generator, so the caller's random state, and so the samples of a seed, do not depend on whether
the sampler was fitted now or read from the cache.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .data.download import file_md5
from .data.transforms import to_dequantized_scale
from .distributions import DiagonalGaussian
from .errors import VaelabError, did_you_mean, quote
from .io import load_weights, read_metadata, run_subfolder, save_weights
from .limits import check_bytes
from .models.base import ENCODE, GRID, SAMPLE, VECTOR, adam
from .models.vae import VAE, VAEConfig
from .nets import PixelCNN
from .loading import split_inputs
from .rundir import CHECKPOINTS, sampler_cache

MAX_COMPONENTS = 1000  # gmm:K: more components than any image set has clusters worth fitting
SEED = 0               # every fit: the mixture's EM, the second stages' weights and batches
# of the cache files; 2: the two-stage sampler fitted to draws of q(z|x), no longer to its means
FORMAT = 2
# the fixed recipes of the fitted stages (recorded in each cache file)
TWO_STAGE = {"hidden": [256, 256], "epochs": 20, "batch_size": 100, "lr": 1e-3}
PIXELCNN = {"channels": 32, "blocks": 2, "kernel": 3, "epochs": 10, "batch_size": 128, "lr": 3e-3}
USAGE = f"prior, gmm:K (K a whole number from 1 to {MAX_COMPONENTS}), two-stage or pixelcnn"


@dataclass(frozen=True)
class SamplerSpec:
    kind: str            # prior, gmm, two-stage or pixelcnn
    k: int | None = None  # gmm:K's components

    def __str__(self) -> str:
        return f"{self.kind}:{self.k}" if self.k is not None else self.kind

    @property
    def slug(self) -> str:
        """The spec as a file name: gmm-10."""
        return str(self).replace(":", "-")


def parse_sampler(text: str) -> SamplerSpec:
    """``prior``, ``gmm:K``, ``two-stage`` or ``pixelcnn`` -> a :class:`SamplerSpec`."""
    kind, colon, arg = str(text).partition(":")
    if kind == "gmm" and arg.isdigit() and 1 <= int(arg) <= MAX_COMPONENTS:
        return SamplerSpec("gmm", int(arg))
    if kind in ("prior", "two-stage", "pixelcnn") and not colon:
        return SamplerSpec(kind)
    # a mistyped kind ("gmn:10", "two-stag"), compared with the kinds, its K kept
    kinds = ("prior", "two-stage", "pixelcnn", "gmm")
    guess = "" if kind in kinds else did_you_mean(str(text), [*kinds[:3], f"gmm:{arg}" if colon else "gmm:10"])
    raise VaelabError(f"--sampler must be {USAGE}, got {quote(text)}{guess}.")


def resolve_sampler(text: str | None, cls, where) -> SamplerSpec:
    """The sampler ``text`` names (None: the model's default), refused in one sentence where the
    model class ``cls`` cannot have it (``where``: the run directory the message names)."""
    spec = parse_sampler(cls.default_sampler if text is None else text)
    name = cls.name
    if spec.kind == "prior" and SAMPLE not in cls.capabilities:
        fit = ", or --sampler gmm:K to fit a mixture to its codes" if ENCODE in cls.capabilities else ""
        raise VaelabError(f"{where} holds a {name}, which has no prior to sample from; try vaelab reconstruct "
                          f"or interpolate{fit}.")
    if spec.kind in ("gmm", "two-stage"):
        if ENCODE not in cls.capabilities:
            raise VaelabError(f"--sampler {spec} is fitted to the codes of the training images, and {where} holds "
                              f"a {name}, which has no encoder.")
        if cls.latent != VECTOR:
            raise VaelabError(f"--sampler {spec} fits vectors, but the codes of a {name} are grids of codebook "
                              "indices: use --sampler pixelcnn.")
    if spec.kind == "pixelcnn" and cls.latent != GRID:
        raise VaelabError(f"--sampler pixelcnn fits grids of codebook indices, but the codes of a {name} are "
                          "vectors: use --sampler gmm:K or two-stage.")
    return spec


# --------------------------------------------------------------------------------------------
# the fitted stages: each an nn.Module whose buffers and weights are its cache file
# --------------------------------------------------------------------------------------------

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


class TwoStage(nn.Module):
    """Dai & Wipf's second stage: a VAE on the standardised codes; z ~ p(z|u), u ~ N(0, I), and
    z = mean + std * that.

    Its decoder's std (learned, one per dimension) starts at 0.3 and the KL term's weight rises
    from 0 to 1 over the first half of the fit. From a std of 1, on codes of unit variance, the
    VAE's trivial optimum (decoder mean 0, std 1, nothing in u, KL 0) holds it, and the second
    stage is the single Gaussian it was to improve on. Measured, negative ELBO in nats a code:
    2.84 (from 1) against 2.36 on two narrow modes (tests/test_samplers.py), 10.7 against 10.2 on
    the 8-D codes of a digits VAE (a single Gaussian: 11.4), both fitted to codes without noise.
    On draws of q(z|x) of an 8-D digits VAE (20 epochs) the start at 0.3 measured worse: 11.94
    against 11.37 nats a held-out draw, a single Gaussian 11.25 (the noise of q leaves a second
    stage little to find there)."""
    START_STD, WARMUP = 0.3, 0.5

    def __init__(self, d: int, hidden):
        super().__init__()
        self.vae = VAE(VAEConfig(shape=(d,), arch="mlp", hidden=tuple(hidden), latent_dim=d,
                                 likelihood="gaussian", binarize="none"))
        with torch.no_grad():
            self.vae.log_scale.fill_(math.log(self.START_STD))
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))

    def loss(self, z: torch.Tensor, done: float = 1.0) -> torch.Tensor:
        """The negative ELBO of standardised codes z [B, D] (its KL weighted by the warm-up at
        ``done``, the fraction of the fit done), per batch."""
        return self.vae.objective(z, torch.tensor(min(1.0, done / self.WARMUP)))[0]

    def sample(self, n: int) -> torch.Tensor:
        return self.vae.decode(self.vae.prior(n)).sample() * self.std + self.mean


class GridPrior(nn.Module):
    """A PixelCNN over a model's grids of codebook indices."""

    def __init__(self, num_codes: int, grid, channels: int, blocks: int, kernel: int):
        super().__init__()
        self.grid = tuple(grid)
        self.net = PixelCNN(num_codes, channels, blocks, kernel)

    def loss(self, c: torch.Tensor, done: float = 1.0) -> torch.Tensor:
        """Cross-entropy of index grids c [B, h, w], nats per cell."""
        return nn.functional.cross_entropy(self.net.logits(c), c)

    def sample(self, n: int) -> torch.Tensor:
        return self.net.sample(n, self.grid)


class FittedSampler(nn.Module):
    """A model's decoder fed by a fitted stage: ``sample(n)`` -> images [n, *shape], as a model's own."""

    def __init__(self, model: nn.Module, stage: nn.Module):
        super().__init__()
        self.model, self.stage = model, stage

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        z = self.stage.sample(n)
        return self.model.decode_grid(z) if self.model.latent == GRID else self.model.decode_mean(z)


def _build(spec: SamplerSpec, settings: dict) -> nn.Module:
    if spec.kind == "gmm":
        return GaussianMixture(spec.k, settings["dim"])
    if spec.kind == "two-stage":
        return TwoStage(settings["dim"], settings["hidden"])
    return GridPrior(settings["num_codes"], settings["grid"], settings["channels"], settings["blocks"],
                     settings["kernel"])


# --------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------

def _train(stage: nn.Module, epoch_data: Callable[[int], torch.Tensor], recipe: dict) -> float:
    """Adam on ``stage.loss`` over shuffled minibatches of ``epoch_data(epoch)``, the data of each
    epoch (the same N rows each time; the two-stage sampler's are drawn afresh); the last
    epoch's mean loss."""
    opt = adam(stage.parameters(), recipe["lr"])
    stage.train()
    for epoch in range(recipe["epochs"]):
        data = epoch_data(epoch)
        per_epoch = math.ceil(len(data) / recipe["batch_size"])
        perm, total = torch.randperm(len(data), device=data.device), 0.0
        for step, i in enumerate(range(0, len(data), recipe["batch_size"])):
            batch = data[perm[i:i + recipe["batch_size"]]]
            loss = stage.loss(batch, (epoch * per_epoch + step) / (recipe["epochs"] * per_epoch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(batch)
    return float(total) / len(data)


@torch.no_grad()
def _of_all(fn, x: torch.Tensor, dev: torch.device, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size].to(dev)) for i in range(0, len(x), batch_size)])


def _posterior_draws(model, x: torch.Tensor, z: torch.Tensor, dev: torch.device
                     ) -> tuple[Callable[[int], torch.Tensor], torch.Tensor, torch.Tensor]:
    """What the two-stage sampler is fitted to: the aggregate posterior of the training images x
    (z, their codes, [N, D]). Returns ``draws``, which gives for each epoch one fresh z ~ q(z|x)
    per image, [N, D], and that distribution's per-dimension mean and std, [D] each.

    Dai & Wipf's second stage models the codes the decoder was trained on, z = mu(x) +
    sigma(x) eps, drawn anew each epoch. The means alone are narrower, and so was the prior
    fitted to them: measured, Var[mu_d] / Var_q[z_d] runs from 0.007 to 0.98 (median 0.05: most
    of its 50 dimensions unused, sigma ~ 1) for the MNIST VAE of benchmarks/variants.py, and from
    0.05 to 0.78 for an 8-D digits VAE. Three kinds of posterior:

    * a flow (``posterior_sample``: the IAF, whose codes are T(mu(x); h)): z_T drawn through it;
      the moments are those of the first draw;
    * a diagonal Gaussian q(z|x) whose mean is the code (the VAE family): mu + sigma eps, and the
      moments in closed form, mean E[mu] and variance Var[mu] + E[sigma^2] (total variance);
    * no sigma (``encode`` gives the code itself: ae, dae, sparse-ae, wae, aae): q(z|x) is a point
      at the code, so the codes are their own draws, as before.
    """
    if hasattr(model, "posterior_sample"):
        draw = lambda: _of_all(lambda b: model.posterior_sample(b, None)[0], x, dev).float()  # noqa: E731
        first = draw()
        return (lambda epoch: first if epoch == 0 else draw()), first.mean(0), first.std(0)
    probe = model.encode(x[:1].to(dev)) if hasattr(model, "encode") else None
    if not isinstance(probe, DiagonalGaussian):
        return (lambda epoch: z), z.mean(0), z.std(0)
    std = _of_all(lambda b: model.encode(b).std, x, dev).float()  # sigma(x), [N, D]; z is mu(x)
    if not torch.isfinite(std).all():
        raise VaelabError("--sampler two-stage cannot be fitted: the posterior's scales of the training images are "
                          "not all finite (a diverged run?).")
    # Var_q[z] = Var[mu] + E[sigma^2], with Var[mu] unbiased as z.std(0) is
    var = z.var(0) + (std ** 2).mean(0)
    return (lambda epoch: z + std * torch.randn_like(z)), z.mean(0), var.sqrt()


def _fit(spec: SamplerSpec, model, x: torch.Tensor) -> tuple[nn.Module, dict, str]:
    """The stage of ``spec`` fitted to the codes of the training images x, its settings, and what
    to log of the fit."""
    dev = next(model.parameters()).device
    n = len(x)
    if spec.kind == "pixelcnn":
        c = _of_all(model.code_grid, x, dev)  # [N, h, w]
        settings = {"num_codes": model.num_codes, "grid": list(c.shape[1:]), **PIXELCNN}
        stage = _build(spec, settings).to(dev)
        return stage, settings, f"{_train(stage, lambda epoch: c, PIXELCNN):.4g} nats a cell"
    d = model.code_dim
    if spec.kind == "gmm":
        if n < spec.k:
            raise VaelabError(f"--sampler {spec} fits {spec.k} components to the codes of {n} training images: "
                              f"give K of at most {n}.")
        # EM holds the responsibilities [N, K], a centred copy of the codes per component and the
        # covariances [K, D, D], in float64
        check_bytes(f"--sampler {spec} on {n:,} codes of {d} dimensions",
                    8 * (n * spec.k + 2 * n * d + 3 * spec.k * d * d))
    z = _of_all(model.codes, x, dev).float()  # [N, D]
    if not torch.isfinite(z).all():
        raise VaelabError(f"--sampler {spec} cannot be fitted: the codes of the training images are not all "
                          "finite (a diverged run?).")
    if spec.kind == "gmm":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture as SkMixture
        codes = z.double().cpu().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # said in the log line below
            try:
                gm = SkMixture(spec.k, covariance_type="full", random_state=SEED).fit(codes)
            except ValueError:  # a component's covariance collapsed onto too few codes
                raise VaelabError(f"--sampler {spec} cannot be fitted: a component collapsed onto too few codes; "
                                  "give a smaller K.") from None
        stage = GaussianMixture(spec.k, d)
        stage.weights.copy_(torch.from_numpy(gm.weights_))
        stage.means.copy_(torch.from_numpy(gm.means_))
        stage.scale_tril.copy_(torch.linalg.cholesky(torch.from_numpy(gm.covariances_)))
        note = "" if gm.converged_ else " (EM stopped at its iteration limit before converging)"
        return stage.to(dev), {"dim": d}, f"log-likelihood {gm.score(codes):.4g} a code{note}"
    settings = {"dim": d, **TWO_STAGE}
    stage = _build(spec, settings).to(dev)
    draws, mean, std = _posterior_draws(model, x, z, dev)
    stage.mean.copy_(mean)
    stage.std.copy_(std.clamp_min(1e-6))  # a constant code (a collapsed unit) stays constant
    loss = _train(stage, lambda epoch: (draws(epoch) - stage.mean) / stage.std, TWO_STAGE)
    return stage, settings, f"negative ELBO {loss:.4g} a standardised draw of q(z|x)"


def _cached(path: Path, spec: SamplerSpec, digest: str, log) -> nn.Module | None:
    """The stage in ``path`` if it was fitted for ``spec`` on the checkpoint of ``digest``."""
    if not path.is_file():
        return None
    try:
        meta = read_metadata(path)
        fits = meta.get("sampler") == str(spec) and meta.get("checkpoint_md5") == digest
        if meta.get("format") == FORMAT and fits:
            stage = _build(spec, meta["settings"])
            load_weights(stage, path)
            return stage
        why = "on another checkpoint" if meta.get("format") == FORMAT else "by an older vaelab"
        log(f"{path} was fitted {why}: fitting it again")
    except (VaelabError, KeyError, TypeError, ValueError) as e:
        log(f"cannot read {path} ({e}): fitting it again")
    return None


def sampler_for(run_dir, model, spec: SamplerSpec | str | None = None, checkpoint: str = "best",
                data_dir: str | None = None, log=None) -> nn.Module:
    """What draws a loaded run's images for ``spec`` (None: the model's default): the model itself
    for ``prior``, else a :class:`FittedSampler`, read from the run's cache or fitted now (on the
    training split of the run's data) and cached. ``checkpoint`` names the weights ``model`` holds."""
    log = log or (lambda m: None)
    if not isinstance(spec, SamplerSpec):
        spec = resolve_sampler(spec, type(model), run_dir)
    if spec.kind == "prior":
        return model
    dev = next(model.parameters()).device
    digest = file_md5(Path(run_dir) / CHECKPOINTS[checkpoint])
    path = sampler_cache(run_dir, spec.slug, checkpoint)
    stage = _cached(path, spec, digest, log)
    if stage is None:
        model.eval()
        run = model.run_config
        x = split_inputs(run_dir, "train", data_dir)[0]
        if run.model.dequantizes:  # the model sees (k + u) / levels: its codes of the bins' centres
            x = to_dequantized_scale(x, model.data_spec.levels)
        log(f"fitting --sampler {spec} to the codes of {len(x):,} training images")
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(SEED)
            stage, settings, how = _fit(spec, model, x)
        log(f"fitted --sampler {spec} in {time.perf_counter() - t0:.1f} s: {how}")
        meta = {"format": FORMAT, "sampler": str(spec), "checkpoint": checkpoint, "checkpoint_md5": digest,
                "settings": settings, "fitted_on": len(x)}
        try:
            run_subfolder(path.parent)
            save_weights(stage, path, meta)
        except (OSError, VaelabError) as e:
            log(f"warning: --sampler {spec} is not cached, {path} cannot be written ({e})")
    return FittedSampler(model, stage.to(dev).eval())
