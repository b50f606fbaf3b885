"""The VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation
Learning").

The encoder maps x to a grid of D-dim vectors z_e(x); each is replaced by its nearest entry of a
codebook of K, z_q = e_k with k = argmin_j ||z_e - e_j||^2, and the decoder maps the grid z_q to
p(x|z_q). The gradient of the reconstruction passes from z_q to z_e unchanged (straight-through).
What differs from the VAE is the objective: the posterior is one-hot, so under the uniform prior
of training its KL is the constant log K and drops out, and two terms train the codebook and hold
the encoder to it:

    L = -log p(x|z_q) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2,   beta = 0.25.

With ``--codebook-ema`` the codebook is not trained by its term but moved by exponential moving
averages (the paper's appendix A.1), kept as buffers: N_k <- g N_k + (1 - g) n_k,
m_k <- g m_k + (1 - g) sum of the z_e assigned to k, e_k = m_k / N_k, N Laplace-smoothed as in
the authors' code, g = ``--codebook-decay``.

New images come from a prior over the grid of indices fitted after training: a PixelCNN
(``--sampler pixelcnn``, this model's default; :mod:`vaelab.samplers`). The model's own
``sample`` draws each index uniformly, the prior it assumes in training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import distributed as dist
from ..data.batch import Batch
from ..config import opt
from ..errors import VaelabError
from ..losses import reconstruction_error
from ..nets import NetConfig, full_precision, grid_shape, make_grid_decoder, make_grid_encoder
from ..registry import register
from .base import ENCODE, GRID, SAMPLE, Model, StepInfo, Update

LAPLACE_EPS = 1e-5  # the smoothing of the EMA counts, so an unused entry never divides by 0


@dataclass(frozen=True)
class VQVAEConfig(NetConfig):
    channels: tuple[int, ...] = opt((32, 64), "channels of the conv encoder's stride-2 layers (the code grid is "
                                              "the image shrunk 2^layers times)")
    latent_dim: int = opt(16, "dimension D of each code vector z_e and of each codebook entry")
    codebook_size: int = opt(64, "entries K of the codebook")
    grid: int = opt(3, "side of the code grid of --arch mlp and linear (grid x grid vectors)")
    commitment: float = opt(0.25, "weight beta of the commitment loss ||z_e - sg[e]||^2")
    codebook_ema: bool = opt(False, "move the codebook by exponential moving averages of the vectors assigned "
                                    "to it (the paper's appendix) instead of by its loss")
    codebook_decay: float = opt(0.99, "decay of the averages of --codebook-ema")
    recon_loss: str = opt("bce", "reconstruction loss -log p(x|z_q): binary cross-entropy of logits, or squared "
                                 "error", ("bce", "l2"))

    def check(self) -> None:
        super().check()
        default = type(self)()
        if self.codebook_size < 2:
            raise VaelabError(f"--codebook-size must be at least 2, got {self.codebook_size}.")
        if self.grid < 1:
            raise VaelabError(f"--grid must be at least 1, got {self.grid}.")
        if self.grid != default.grid and self.arch == "conv":
            raise VaelabError("--grid applies to --arch mlp and linear; a conv encoder's grid is the image "
                              "shrunk by its --channels layers.")
        if self.commitment < 0:
            raise VaelabError(f"--commitment must be 0 or more, got {self.commitment}.")
        if not 0 < self.codebook_decay < 1:
            raise VaelabError(f"--codebook-decay must be in (0, 1), such as 0.99, got {self.codebook_decay}.")
        if self.codebook_decay != default.codebook_decay and not self.codebook_ema:
            raise VaelabError("--codebook-decay applies with --codebook-ema only.")


def nearest(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_k ||z_i - e_k||^2 for rows z [N, D] and entries [K, D]: [N]. ||z_i||^2 is the same
    for every k and is left out; float32 even under autocast, where a bf16 product would
    misplace near ties."""
    with torch.autocast(z.device.type, enabled=False):
        z, codebook = z.float(), codebook.float()
        return (codebook.pow(2).sum(1) - 2 * z @ codebook.T).argmin(1)


def straight_through(z_e: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """e in the forward pass; in the backward pass the gradient at e goes to z_e unchanged."""
    return z_e + (e - z_e).detach()


def squared(d: torch.Tensor) -> torch.Tensor:
    """||d||^2 per example, summed over the grid and the vectors: [B]."""
    return d.pow(2).flatten(1).sum(1)


@dataclass
class VQOutput:
    z_e: torch.Tensor    # the encoder's grid of vectors, [B, D, h, w]
    e: torch.Tensor      # their nearest codebook entries, [B, D, h, w]
    c: torch.Tensor      # the entries' indices, [B, h, w]
    recon: torch.Tensor  # the decoder's output on the straight-through z_q: logits (bce) or values (l2)


@register("vqvae")
class VQVAE(Model):
    """An encoder to a grid of vectors, each replaced by its nearest codebook entry, and a decoder
    trained on the reconstruction, the codebook and the commitment losses."""
    config_cls = VQVAEConfig
    capabilities = frozenset({ENCODE, SAMPLE})
    val_name, higher_is_better = "recon", False
    latent, default_sampler = GRID, "pixelcnn"

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.grid = grid_shape(cfg.arch, cfg.shape, cfg.channels, cfg.grid)  # (h, w)
        # flat z_e [B, D*h*w]: the code a probe reads is what the encoder outputs, so finetune trains it
        self.encoder = nn.Sequential(make_grid_encoder(cfg.arch, cfg.shape, cfg.hidden, cfg.channels,
                                                       cfg.activation, cfg.latent_dim, cfg.grid), nn.Flatten(1))
        self.decoder = make_grid_decoder(cfg.arch, cfg.latent_dim, cfg.hidden, cfg.channels, cfg.activation,
                                         cfg.shape, cfg.shape[0], cfg.grid)
        k = cfg.codebook_size
        init = torch.empty(k, cfg.latent_dim).uniform_(-1 / k, 1 / k)  # [K, D]
        if cfg.codebook_ema:
            self.register_buffer("codebook", init)
            # each entry starts as the average of one vector, itself: N_k = 1, m_k = e_k
            self.register_buffer("ema_count", torch.ones(k))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)

    @property
    def code_dim(self) -> int:
        return self.cfg.latent_dim * math.prod(self.grid)

    @property
    def num_codes(self) -> int:
        return self.cfg.codebook_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_e(x): [B, D, h, w]."""
        return full_precision(self.encoder(x)).unflatten(1, (self.cfg.latent_dim, *self.grid))

    def quantize(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The nearest entry of every vector of z_e [B, D, h, w]: indices [B, h, w] and the
        entries themselves [B, D, h, w] (differentiable in the codebook, not in z_e)."""
        b, d, h, w = z_e.shape
        c = nearest(z_e.detach().permute(0, 2, 3, 1).reshape(-1, d), self.codebook.detach()).view(b, h, w)
        return c, self.entries(c)

    def entries(self, c: torch.Tensor) -> torch.Tensor:
        """Indices [B, h, w] -> their codebook vectors [B, D, h, w]."""
        return nn.functional.embedding(c, self.codebook).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> VQOutput:
        z_e = self.encode(x)
        c, e = self.quantize(z_e)
        return VQOutput(z_e, e, c, full_precision(self.decoder(straight_through(z_e, e))))

    # ---- training --------------------------------------------------------------------------

    def objective(self, x: torch.Tensor):
        out = self(x)
        rec = reconstruction_error(out.recon, x, self.cfg.recon_loss).mean()
        commitment = squared(out.z_e - out.e.detach()).mean()
        loss = rec + self.cfg.commitment * commitment
        metrics = {"recon": rec, "commitment": commitment}
        if not self.cfg.codebook_ema:  # else the averages move the codebook, not a gradient
            metrics["codebook"] = squared(out.z_e.detach() - out.e).mean()
            loss = loss + metrics["codebook"]
        metrics["loss"] = loss
        return loss, metrics, out.z_e.detach(), out.c

    def step(self, batch: Batch, info: StepInfo):
        x = batch.x
        loss, metrics, z_e, c = info.compile(self.objective)(x)
        if self.cfg.codebook_ema:
            # before the yield: a step the non-finite guard drops has its buffers restored; a
            # rank's stand-in part (an empty share under torchrun) counts for nothing
            self.ema_update(z_e, c, counts=info.shard is None or info.shard[0] > 0)
        yield Update("model", loss, metrics)

    @torch.no_grad()
    def ema_update(self, z_e: torch.Tensor, c: torch.Tensor, counts: bool = True) -> None:
        """One step of the codebook's moving averages from a batch's z_e [B, D, h, w] and
        their assignments c [B, h, w]. Under torchrun the counts and sums are the global
        minibatch's, summed over the ranks' parts (``counts`` False: this rank's part is a
        stand-in and adds nothing): every rank then makes one process's update of the global
        minibatch, the same move on all of them (which the update path's averaging of the
        buffers' moves leaves as it is), where averaging each rank's own update would leave the
        codebook a mean of per-rank ratios."""
        k, g = self.cfg.codebook_size, self.cfg.codebook_decay
        flat, c = z_e.float().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]), c.flatten()  # [N, D], [N]
        n = torch.bincount(c, minlength=k).to(flat.dtype)                    # vectors assigned to each, [K]
        sums = torch.zeros_like(self.ema_sum).index_add_(0, c, flat)         # their sum, [K, D]
        if dist.active():  # one collective for both; one process does nothing more
            both = torch.cat([n[:, None], sums], 1)
            dist.all_reduce_(both if counts else both.zero_())
            n, sums = both[:, 0], both[:, 1:]
        self.ema_count.mul_(g).add_(n, alpha=1 - g)
        self.ema_sum.mul_(g).add_(sums, alpha=1 - g)
        total = self.ema_count.sum()
        count = (self.ema_count + LAPLACE_EPS) / (total + k * LAPLACE_EPS) * total
        self.codebook.copy_(self.ema_sum / count[:, None])

    def validation(self, batch: Batch) -> torch.Tensor:
        """The reconstruction loss per example (lower is better)."""
        x = batch.x
        return reconstruction_error(self(x).recon, x, self.cfg.recon_loss)

    @torch.no_grad()
    def metrics(self, batch: Batch) -> dict:
        """How much of the codebook the split uses: the entries used, and the perplexity
        exp(H(p)) of their frequencies p (K when all are used equally)."""
        x = batch.x
        c = torch.cat([self.code_grid(x[i:i + 1000]).flatten() for i in range(0, len(x), 1000)])
        p = torch.bincount(c, minlength=self.num_codes).double() / len(c)
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        return {"codebook_perplexity": entropy.exp().item(), "codebook_used": int((p > 0).sum())}

    # ---- what evaluation, the pictures and the samplers ask for -------------------------------

    def pixels(self, out: torch.Tensor) -> torch.Tensor:
        out = full_precision(out)
        return torch.sigmoid(out) if self.cfg.recon_loss == "bce" else out

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """z_e(x), flat: [B, D*h*w]."""
        return self.encode(x).flatten(1)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """The image of a flat grid z [..., D*h*w], each of its vectors quantized first."""
        grid = z.reshape(-1, self.cfg.latent_dim, *self.grid)
        out = self.pixels(self.decoder(self.quantize(grid)[1]))
        return out.view(*z.shape[:-1], *out.shape[1:])

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_mean(self.codes(x))

    @torch.no_grad()
    def code_grid(self, x: torch.Tensor) -> torch.Tensor:
        """The indices of x's nearest entries: [B, h, w]."""
        return self.quantize(self.encode(x))[0]

    @torch.no_grad()
    def decode_grid(self, c: torch.Tensor) -> torch.Tensor:
        """Index grids [B, h, w] -> images [B, *shape]."""
        return self.pixels(self.decoder(self.entries(c)))

    def uniform_grid(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n index grids, each index uniform: the prior of training, [n, h, w]."""
        dev = self.codebook.device
        if generator is None:
            return torch.randint(self.num_codes, (n, *self.grid), device=dev)
        return torch.randint(self.num_codes, (n, *self.grid), generator=generator).to(dev)

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes of n uniform index grids, flat like :meth:`codes`: [n, D*h*w]."""
        return self.entries(self.uniform_grid(n, generator)).flatten(1).detach()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Images of n uniform index grids (the training prior; `vaelab sample` uses the PixelCNN)."""
        return self.decode_grid(self.uniform_grid(n))
