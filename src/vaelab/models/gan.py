"""The generative adversarial net of the lecture (Goodfellow et al. 2014).

A generator G(z), z from a fixed prior, and a discriminator D(x) that outputs the logit of
"x is data", as two separate modules of one ``GAN`` so one checkpoint holds both. The game and
Algorithm 1 live in :mod:`vaelab.losses` and :func:`vaelab.training.steps.gan_step`.

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

import torch
from torch import nn

from ..config import opt
from ..errors import VaelabError
from ..nets import full_precision


@dataclass(frozen=True)
class GANConfig:
    shape: tuple[int, ...] = opt((1, 28, 28), "image shape C,H,W (taken from the data)", flag=False)
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


class GAN(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.arch == "conv":
            self.generator, self.discriminator = ConvGenerator(cfg), ConvDiscriminator(cfg)
            if not self.generator.fc.weight.is_meta:  # a size check's shapes only: normal_ there costs seconds
                self.apply(_dcgan_init)
        else:
            self.generator, self.discriminator = _mlp_generator(cfg), _mlp_discriminator(cfg)

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

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The image G(z) (the same interface as the VAE's decoder mean)."""
        return self.generate(z)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.generate(self.prior(n))
