"""What every model is to the rest of vaelab: the step protocol the trainer drives, and the
capabilities evaluation and the pictures ask for.

A model file holds a config dataclass (its fields, defaults and its own checks), a module
subclassing :class:`Model`, and one ``@register("name")`` line. The trainer knows no model: each
step it hands the model its minibatch(es) and a :class:`StepInfo`, and the model yields
:class:`Update` s, losses for its named optimizers, in the order they are to be applied (a VAE
one, a GAN k for the discriminator then one for the generator). The trainer applies each through
one update path (backward, loss scaling, the non-finite guard, clipping) before asking for the
next, so a later loss sees the weights the earlier update made.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Protocol

import torch
from torch import nn

from ..data.batch import Batch
from ..errors import VaelabError

# what a model can be asked for (:attr:`Model.capabilities`)
ENCODE = "encode"          # codes(x), reconstruct(x): an encoder, so probes, interpolations of inputs
SAMPLE = "sample"          # sample(n), prior(n), decode_mean(z): new images
LIKELIHOOD = "likelihood"  # elbo_terms(x), log_weights(x, k): ELBO, IS-NLL, bits/dim
FIXED_NOISE_SEED = 4321     # the noise batch decoded after every epoch (Model.epoch_grid), its own generator

# what a model's latent is (:attr:`Model.latent`), so a sampler fitted after training on the codes
# of the training images (:mod:`vaelab.samplers`) knows what it can fit
VECTOR = "vector"  # codes(x) [B, D] and decode_mean(z): a density on vectors (gmm:K, two-stage)
GRID = "grid"      # code_grid(x) [B, h, w] of indices and decode_grid(c) (:class:`GridCoder`): pixelcnn


class Encoder(Protocol):
    """What a model that declares ENCODE offers."""
    def codes(self, x: torch.Tensor) -> torch.Tensor: ...        # [B, D], the features a probe reads
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor: ...  # [B, *shape]
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor: ...  # [..., *shape]


class Sampler(Protocol):
    """What a model that declares SAMPLE offers."""
    normal_prior: bool
    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...  # [n, D]
    def sample(self, n: int) -> torch.Tensor: ...                # [n, *shape]
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor: ...  # [..., *shape]


class GridCoder(Protocol):
    """What a model whose :attr:`~Model.latent` is GRID offers: its codes as grids of indices
    into a codebook of ``num_codes`` entries."""
    num_codes: int
    def code_grid(self, x: torch.Tensor) -> torch.Tensor: ...    # [B, h, w], int64 in [0, num_codes)
    def decode_grid(self, c: torch.Tensor) -> torch.Tensor: ...  # [B, h, w] -> [B, *shape]


class HasLikelihood(Protocol):
    """What a model that declares LIKELIHOOD offers: a posterior q(z|x) and importance weights."""
    def encode(self, x: torch.Tensor): ...  # q(z|x), a DiagonalGaussian
    def log_weights(self, x: torch.Tensor, k: int, q=None) -> torch.Tensor: ...  # [k, B]
    def kl(self, x: torch.Tensor, q, z=None) -> torch.Tensor: ...  # KL(q(z|x) || p(z)), [B]: closed form or at a draw z
    def discrete(self, levels: int) -> bool: ...  # whether the NLL is a code length of the data
    decoder_params: int  # numbers the decoder emits per sub-pixel (the IS-NLL's chunks count them)


@dataclass(frozen=True)
class StepInfo:
    """Where a step stands in the run: what a schedule inside a model (a KL warm-up) reads."""
    epoch: int            # 0-based epoch of this step
    step: int             # steps taken before this one, over the whole run
    steps_per_epoch: int
    dataset_size: int     # training images
    compile: Callable = lambda fn: fn  # torch.compile under --compile: wrap an objective in it
    # under torchrun: (images of this rank's part, images of the global minibatch), which the
    # update path weights this rank's gradients by; None in one process
    shard: tuple[int, int] | None = None
    labels: int | None = None  # training images whose labels the run may use (--labels N); None: all


@dataclass
class Update:
    """One loss for one of the model's named optimizers, and what to log of it (per-batch
    means; the trainer averages each metric over the updates of a step that report it)."""
    optimizer: str
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


class Model(nn.Module):
    """The base of every model: the defaults of the protocol."""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    val_name: ClassVar[str] = "loss"                 # what :meth:`validation` measures
    higher_is_better: ClassVar[bool | None] = False  # its direction; None: best = last epoch
    drop_last: ClassVar[bool] = False                # drop an epoch's last, smaller minibatch
    min_part: ClassVar[int] = 1                      # the fewest images a step may compute over (each rank's)
    min_part_why: ClassVar[str] = ""                 # why, for --batch-size's message (min_part > 1)
    train_defaults: ClassVar[dict] = {}              # this model's defaults for run-wide fields
    presets: ClassVar[dict[str, dict]] = {}          # --preset NAME: settings of a published net
    latent: ClassVar[str] = VECTOR                   # VECTOR or GRID: what a fitted sampler models
    default_sampler: ClassVar[str] = "prior"         # what `vaelab sample` and `eval` draw from (--sampler)
    # a model that reads the labels: the data must have classes, and its config's ``num_classes``
    # is taken from the data as its ``shape`` is
    needs_labels: ClassVar[bool] = False
    # a model that learns from a few labels (M2): each minibatch carries a minibatch of labelled
    # images beside it (Batch.labelled_part); one that does not may not hide labels (--labels N)
    labelled_part: ClassVar[bool] = False
    # a model whose :meth:`metrics` on the validation split are cheap and worth watching (M2's
    # classifier): after each epoch they go into its record as ``val_<name>``
    epoch_metrics: ClassVar[bool] = False
    # a model whose likelihood is of x given its label (cvae): evaluation passes the labels to
    # encode(x, y) and log_weights(x, k, q, y)
    conditional: ClassVar[bool] = False
    # a model that samples a chosen class: sample_class(classes) and class_grid(n) (cvae, m2)
    samples_classes: ClassVar[bool] = False
    # whether encode(x), where the model has one, is a posterior over codes(x) (the VAE family: a
    # fitted sampler may draw from it); a model of labels' encode is over another variable
    codes_posterior: ClassVar[bool] = True

    size_fields: ClassVar[tuple[str, ...]] = ()     # config fields besides the nets' widths that size it

    @classmethod
    def count_parameters(cls, cfg) -> int:
        """The numbers (parameters and buffers) the model ``cfg`` describes holds, counted before
        any memory is taken: the model built on the meta device, where tensors have shapes and no
        storage. A model that repeats a net many times (a flow's steps) counts one and multiplies,
        since building each one, even there, takes time (10^6 flow steps: 40 minutes)."""
        with torch.device("meta"):
            net = cls(cfg)
        return sum(t.numel() for t in (*net.parameters(), *net.buffers()))

    @classmethod
    def step_memory(cls, cfg, batch_size: int) -> tuple[str, int] | None:
        """What a training step on ``batch_size`` images holds beyond the minibatch and the nets,
        when a setting multiplies it (an IWAE's k copies): a phrase that names the flags, and its
        bytes (a floor); None where nothing does."""
        return None

    @classmethod
    def upgrade_format1(cls, old: dict, model: dict) -> tuple[str, dict]:
        """A format-1 run (:func:`vaelab.run.migrate`): its model name and model settings today,
        given the fields ``old`` its train section held (beta, warmup_epochs, iw_samples)."""
        return cls.name, model

    @classmethod
    def check_train(cls, train) -> None:
        """Checks of the run's TrainConfig that this model needs (raised before any data loads):
        here, --batch-size in one process (:meth:`check_batch`; an override calls this too)."""
        cls.check_batch(train.batch_size)

    @classmethod
    def check_batch(cls, batch_size: int, world: int = 1) -> None:
        """--batch-size against :attr:`min_part`: under torchrun (``world`` ranks) the global
        minibatch is split, and its smallest part, ``batch_size // world`` images, must hold that
        many (a model with ``min_part > 1`` drops an epoch's last, smaller minibatch)."""
        need = cls.min_part * world
        if batch_size >= need:
            return
        a_rank = f"{cls.min_part} images a rank: " if world > 1 else ""
        why = f" for {cls.name} ({a_rank}{cls.min_part_why})" if cls.min_part > 1 else ""
        if world == 1:
            raise VaelabError(f"--batch-size must be at least {need}{why}, got {batch_size}.")
        raise VaelabError(f"--batch-size {batch_size} is the global minibatch, split across the {world} ranks: it "
                          f"must be at least {need}{why}.")

    normal_prior: bool = False  # a model that samples draws z ~ N(0, I) (the manifold maps through its CDF)
    data_init: int = 0  # training images the model starts from: a fresh run passes that many to init_from_data

    def init_from_data(self, x: torch.Tensor) -> None:
        """Set parameters from ``x`` [n, *shape], n = min(:attr:`data_init`, training images),
        pixels in [0, 1]: a seeded draw of the training split, given once, before a fresh run's
        first step (not on --resume). Called only when :attr:`data_init` > 0."""

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def code_dim(self) -> int:
        """The width of ``codes(x)`` (ENCODE): the latent dimension, unless the codes are more
        than one vector (a VQ-VAE's grid of them)."""
        return self.cfg.latent_dim

    @property
    def batches_per_step(self) -> int:
        """Training minibatches one step consumes (a GAN's k)."""
        return 1

    def optimizers(self, train) -> dict[str, torch.optim.Optimizer]:
        """The named optimizers (``train`` is the run's TrainConfig): one Adam by default."""
        return {"model": adam(self.parameters(), train.lr)}

    def step(self, batch, info: StepInfo) -> Iterator[Update]:
        """The losses of one training step on ``batch``, a :class:`vaelab.data.Batch` (images
        ``batch.x``, labels ``batch.y`` where the data has them; a list of :attr:`batches_per_step`
        of them where that is more than one), in the order they are applied. A generator: the
        trainer applies each yielded loss before it resumes the generator for the next. Yield
        outside any ``torch.no_grad()`` or autocast block of your own: grad and autocast modes
        belong to the thread, so a yield inside one would carry it into the update."""
        raise NotImplementedError

    def validation(self, batch: Batch) -> torch.Tensor:
        """:attr:`val_name` per held-out example, [B] (called under no_grad, in eval mode), of
        the images ``batch.x`` and, where the data has them, their labels ``batch.y`` (all shown)."""
        raise NotImplementedError

    def metrics(self, batch: Batch) -> dict:
        """Extra evaluation numbers of this model on a split (``batch``: all of its images, and
        their labels where the data has them)."""
        return {}

    def pictures(self, x: torch.Tensor, run_dir: Path) -> list:
        """Extra pictures after training, each a :class:`vaelab.images.Figure` (its file, title
        and caption, for the report)."""
        return []

    @torch.no_grad()
    def epoch_grid(self, n: int = 64) -> torch.Tensor | None:
        """The images drawn after every epoch (the progress grids, TensorBoard's): decoded
        means of one fixed noise batch of the prior, drawn from a generator of its own so the
        training RNG (and exact resume) is untouched; None for a model that does not sample."""
        if not self.can(SAMPLE):
            return None
        z = self.prior(n, torch.Generator().manual_seed(FIXED_NOISE_SEED))
        return self.decode_mean(z).cpu()


def with_base_lr(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    # the trainer's schedule multiplies each group's own base rate (a GAN's players may differ)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return opt


def adam(params, lr: float, betas=(0.9, 0.999)) -> torch.optim.Optimizer:
    # The fused kernel is ~15% faster per step on a small MLP on CPU (measured) and is
    # numerically the same algorithm; fall back where this torch/device lacks it.
    params = list(params)
    try:
        return with_base_lr(torch.optim.Adam(params, lr=lr, betas=betas, fused=True))
    except (RuntimeError, TypeError):
        return with_base_lr(torch.optim.Adam(params, lr=lr, betas=betas))
