"""The generative adversarial net of the lecture (Goodfellow et al. 2014).

A generator G(z), z from a fixed prior, and a discriminator D(x) that outputs the logit of
"x is data", as two separate modules of one ``GAN`` so one checkpoint holds both, each with its
own optimizer. A training step is Algorithm 1: k discriminator updates, each on a data minibatch
and fresh noise with G(z) held fixed, then one generator update on fresh noise. The game's
losses live in :mod:`vaelab.losses`.

``mlp``: fully connected nets as in the 2014 paper: a ReLU generator with batch norm on its
hidden layers (without it, the same net collapsed to a few modes within 3 MNIST epochs, with
D(x) -> 0.99; with it, varied digits; measured), a LeakyReLU(0.2) discriminator with optional
dropout. ``conv``: the DCGAN recipe (Radford et al. 2016) derived from the data's
shape: stride-2 4x4 (transposed) convolutions that halve (double) the sides exactly, from a 4x4
start for 32x32 and 64x64, 7x7 for 28x28; batch norm everywhere but the generator's output and
the discriminator's input; ReLU in G, LeakyReLU(0.2) in D; weights drawn from N(0, 0.02).
Samples live in [0, 1] like the data; inside, the nets work as DCGAN's do on [-1, 1]: G's
output is tanh mapped to [0, 1], and D sees 2x - 1. (The affine maps matter in practice: a
sigmoid output layer and uncentred inputs train markedly worse, measured on MNIST.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data.batch import Batch
from ..config import ModelConfig, opt
from ..errors import VaelabError
from ..images import Figure, plot_game, progress_strip
from ..losses import discriminator_loss, generator_loss
from ..nets import check_latent_and_hidden, full_precision
from ..registry import register
from ..rundir import METRICS, PNG, epoch_of, progress_pictures, read_jsonl
from .base import SAMPLE, Model, StepInfo, Update, adam, with_base_lr


@dataclass(frozen=True)
class GANConfig(ModelConfig):
    arch: str = opt("mlp", "generator/discriminator architecture", ("mlp", "conv"))
    hidden: tuple[int, ...] = opt((512, 512), "hidden layer sizes of the mlp generator (the discriminator mirrors them)")
    width: int = opt(64, "channels of the conv nets' widest-resolution layer (DCGAN's ngf = ndf)")
    latent_dim: int = opt(100, "dimension of z")
    prior: str = opt("normal", "noise prior p(z): N(0, I) or U(-1, 1)^d", ("normal", "uniform"))
    k: int = opt(1, "discriminator steps per generator step (Algorithm 1's k)")
    g_loss: str = opt("non-saturating", "generator loss: descend log(1 - D(G(z))) or ascend log D(G(z))",
                      ("minimax", "non-saturating"))
    optimizer: str = opt("adam", "optimizer of both players", ("adam", "sgd"))
    d_lr: float | None = opt(None, "discriminator learning rate (default: --lr)")
    beta1: float = opt(0.5, "Adam's beta1 (DCGAN: 0.5)")
    momentum: float = opt(0.5, "SGD momentum (--optimizer sgd)")
    dropout: float = opt(0.0, "dropout on the mlp discriminator's hidden units")
    binarize: str = opt("none", "how the model takes [0, 1] intensities (a GAN models the grey levels)",
                        ("none", "static", "dynamic"))

    def check(self) -> None:
        check_latent_and_hidden(self)
        if self.k < 1:
            raise VaelabError(f"--k must be at least 1 (discriminator steps per generator step), got {self.k}.")
        if self.width < 1:
            raise VaelabError(f"--width must be at least 1, got {self.width}.")
        if self.d_lr is not None and self.d_lr <= 0:
            raise VaelabError(f"--d-lr must be positive, got {self.d_lr}.")
        for name in ("beta1", "momentum", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise VaelabError(f"--{name} must be in [0, 1), got {getattr(self, name)}.")
        default = type(self)()
        for name, applies, where in (("dropout", self.arch == "mlp", "--arch mlp"),
                                     ("hidden", self.arch == "mlp", "--arch mlp"),
                                     ("width", self.arch == "conv", "--arch conv"),
                                     ("momentum", self.optimizer == "sgd", "--optimizer sgd"),
                                     ("beta1", self.optimizer == "adam", "--optimizer adam")):
            if getattr(self, name) != getattr(default, name) and not applies:
                raise VaelabError(f"--{name} applies with {where} only.")


def conv_plan(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(halvings n, start height, start width) of the DCGAN nets for ``shape``: halve while
    both sides are even and stay >= 4, at most 4 times (64 -> 4, 32 -> 4, 28 -> 7)."""
    if len(shape) != 3:
        raise VaelabError(f"--arch conv needs images of shape C,H,W; the data has shape {shape}.")
    _, h, w = shape
    n = 0
    while n < 4 and h % 2 == 0 and w % 2 == 0 and h >= 8 and w >= 8:
        h, w, n = h // 2, w // 2, n + 1
    if n == 0:
        raise VaelabError(f"--arch conv for a GAN needs even image sides of 8 or more; the data is "
                          f"{shape[1]}x{shape[2]}: use --arch mlp.")
    return n, h, w


class ConvGenerator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        n, h, w = conv_plan(cfg.shape)
        chans = [cfg.width * 2 ** i for i in reversed(range(n))]  # e.g. 512, 256, 128, 64
        self.start = (chans[0], h, w)
        self.fc = nn.Linear(cfg.latent_dim, math.prod(self.start), bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(chans[0]), nn.ReLU()]
        for c_in, c_out in zip(chans, chans[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(chans[-1], cfg.shape[0], 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # logits of the pixels
        return self.net(self.fc(z).view(-1, *self.start))


class ConvDiscriminator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        n, h, w = conv_plan(cfg.shape)
        chans = [cfg.width * 2 ** i for i in range(n)]  # e.g. 64, 128, 256, 512
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip((cfg.shape[0], *chans), chans)):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(chans[-1] * h * w, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _dcgan_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _mlp_generator(cfg: GANConfig) -> nn.Module:
    sizes = [cfg.latent_dim, *cfg.hidden]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], math.prod(cfg.shape)), nn.Unflatten(1, cfg.shape))


def _mlp_discriminator(cfg: GANConfig) -> nn.Module:
    sizes = [math.prod(cfg.shape), *reversed(cfg.hidden)]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)] + ([nn.Dropout(cfg.dropout)] if cfg.dropout else [])
    return nn.Sequential(*layers, nn.Linear(sizes[-1], 1), nn.Flatten(0))


@register("gan")
class GAN(Model):
    """The generative adversarial net (Goodfellow et al. 2014), trained by Algorithm 1."""
    config_cls = GANConfig
    capabilities = frozenset({SAMPLE})
    # best = last: no held-out score ranks a GAN's epochs cheaply (D(x) on held-out data is logged)
    val_name, higher_is_better = "d_real", None
    drop_last = True  # batch norm fails on a one-image last minibatch
    min_part, min_part_why = 2, "batch norm needs two images"
    train_defaults = {"lr": 2e-4}  # DCGAN's learning rate

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.arch == "conv":
            self.generator, self.discriminator = ConvGenerator(cfg), ConvDiscriminator(cfg)
            if not self.generator.fc.weight.is_meta:  # a size check's shapes only: normal_ there costs seconds
                self.apply(_dcgan_init)
        else:
            self.generator, self.discriminator = _mlp_generator(cfg), _mlp_discriminator(cfg)

    @property
    def normal_prior(self) -> bool:
        return self.cfg.prior == "normal"

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws z ~ p(z) on the model's device: [n, latent_dim]. ``generator`` (on the CPU)
        draws a fixed batch without touching the global RNG."""
        p = next(self.parameters())
        where = dict(device="cpu" if generator is not None else p.device, dtype=p.dtype, generator=generator)
        shape = (n, self.cfg.latent_dim)
        z = torch.randn(shape, **where) if self.cfg.prior == "normal" else torch.rand(shape, **where) * 2 - 1
        return z.to(p.device)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """G(z) in [0, 1] for z [..., D], with gradients (the generator's step)."""
        lead = z.shape[:-1]
        x = (torch.tanh(full_precision(self.generator(z.reshape(-1, z.shape[-1])))) + 1) / 2
        return x.reshape(*lead, *self.cfg.shape)

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        """The logit of D(x), [B]: D(x) = sigmoid of it."""
        return full_precision(self.discriminator(2 * x - 1))

    # ---- training: Algorithm 1 -------------------------------------------------------------

    def optimizers(self, train) -> dict[str, torch.optim.Optimizer]:
        """One optimizer per player: Adam(beta1) as DCGAN, or SGD with momentum as the paper.
        The generator uses --lr, the discriminator --d-lr (default --lr)."""
        d_lr = self.cfg.d_lr or train.lr
        if self.cfg.optimizer == "adam":
            betas = (self.cfg.beta1, 0.999)
            return {"d": adam(self.discriminator.parameters(), d_lr, betas),
                    "g": adam(self.generator.parameters(), train.lr, betas)}
        return {"d": self._sgd(self.discriminator.parameters(), d_lr),
                "g": self._sgd(self.generator.parameters(), train.lr)}

    def _sgd(self, params, lr: float) -> torch.optim.Optimizer:
        params, momentum = list(params), self.cfg.momentum
        try:  # fused: the non-finite guard then needs no host synchronisation
            opt = torch.optim.SGD(params, lr=lr, momentum=momentum, fused=True)
        except (RuntimeError, TypeError):
            return with_base_lr(torch.optim.SGD(params, lr=lr, momentum=momentum))
        # Fused SGD makes its momentum buffers with empty_like on its first step, and a first
        # step dropped by the non-finite guard would keep that uninitialised memory: start them
        # at zero (the first update is then 0.9 * 0 + g = g, as SGD's own first step).
        if momentum:
            for p in params:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return with_base_lr(opt)

    @property
    def batches_per_step(self) -> int:
        return self.cfg.k

    def d_objective(self, x: torch.Tensor):
        """The discriminator's loss on real x and G(z) for fresh noise, G(z) held fixed; with the
        logits of both (detached), for D(x) and D(G(z))."""
        with torch.no_grad():
            fake = self.generate(self.prior(len(x)))
        real_logits, fake_logits = self.discriminate(x), self.discriminate(fake)
        return discriminator_loss(real_logits, fake_logits), real_logits.detach(), fake_logits.detach()

    def g_objective(self, n: int) -> torch.Tensor:
        """The generator's loss on n fresh noise draws (its update moves G only)."""
        return generator_loss(self.discriminate(self.generate(self.prior(n))), self.cfg.g_loss)

    def step(self, batches, info: StepInfo):
        """k discriminator updates, one per data minibatch in ``batches`` (Batches), descending
        -(log D(x) + log(1 - D(G(z)))); then one generator update on fresh noise."""
        if isinstance(batches, Batch):  # k = 1: the trainer hands over the one minibatch itself
            batches = [batches]
        for x in (b.x for b in batches):
            loss, real_logits, fake_logits = info.compile(self.d_objective)(x)
            yield Update("d", loss, {"loss": loss, "d_loss": loss, "d_real": torch.sigmoid(real_logits).mean(),
                                     "d_fake": torch.sigmoid(fake_logits).mean()})
        g_loss = info.compile(self.g_objective)(len(batches[-1]))
        yield Update("g", g_loss, {"g_loss": g_loss})

    def validation(self, batch: Batch) -> torch.Tensor:
        """D(x) per held-out image: next to the training D(x), it shows a discriminator that
        memorises its training data."""
        x = batch.x
        return torch.sigmoid(self.discriminate(x))

    # ---- what evaluation and the pictures ask for --------------------------------------------

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The image G(z) (the same interface as the VAE's decoder mean)."""
        return self.generate(z)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.generate(self.prior(n))

    def pictures(self, x: torch.Tensor, run_dir: Path) -> list[Figure]:
        """progress.png (the fixed-noise grids' first rows down the epochs) and game.png (D(x),
        D(G(z)) and both losses per epoch)."""
        out, grids = [], progress_pictures(run_dir)
        strip = progress_strip(grids, self.cfg.shape, Path(run_dir) / PNG.progress,
                               epochs=[epoch_of(g) for g in grids])
        if strip:
            out.append(Figure(strip, "Progress", "The first row of the generator's images of one fixed noise batch "
                              "after each epoch (up to 10 epochs spread over the run, labelled on the left), earliest "
                              "at the top."))
        hist = read_jsonl(Path(run_dir) / METRICS)
        if hist:
            out.append(Figure(plot_game(hist, Path(run_dir) / PNG.game), "The game",
                              "Left: the discriminator's mean output on training images, D(x), and on the generator's "
                              "samples, D(G(z)), per epoch; at the game's equilibrium p_g = p_data both are 1/2 "
                              "(dashed). Right: both players' losses; the discriminator's is log 4 there (dashed)."))
        return out
