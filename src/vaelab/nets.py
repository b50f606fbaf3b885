"""Encoders and decoders derived from the data's shape: never hard-coded to 28x28.

``linear``: one affine map each way, no non-linearity (the linear autoencoder, whose optimum
under an L2 loss spans the PCA subspace). As a Gaussian VAE, x = W z + b + e, it is factor
analysis: e ~ N(0, diag(psi)) with the learned per-pixel std; only with one std shared by every
pixel, as ``--gaussian-std`` fixes it, is it probabilistic PCA.

``mlp``: flatten -> hidden layers -> linear head. ``conv``: four stride-2 3x3 convolutions
(each halves H and W, rounding up, so any size >= 1 works) and the mirror image of four
transposed convolutions whose output padding is chosen to land exactly on the encoder's sizes.
Decoders accept any leading dims on z (e.g. ``[K, B, D]`` importance samples).

Grids of codes (VQ-VAE): :func:`make_grid_encoder` maps x to a grid of vectors ``[B, D, h, w]``,
the conv stack's last feature map or, for ``mlp`` and ``linear``, a grid x grid reshape of the
MLP's output; :func:`make_grid_decoder` maps such a grid back to an image. :class:`PixelCNN` is an
autoregressive distribution over grids of indices, built of :class:`MaskedConv2d`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import ModelConfig, opt
from .errors import VaelabError


ACTIVATIONS = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU,
    "leaky-relu": lambda: nn.LeakyReLU(0.2), "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
}


@dataclass(frozen=True)
class NetConfig(ModelConfig):
    """The network fields every encoder/decoder model shares; a model's config extends it."""
    arch: str = opt("mlp", "encoder/decoder architecture", ("mlp", "conv", "linear"))
    hidden: tuple[int, ...] = opt((400,), "hidden layer sizes of the mlp encoder (the decoder mirrors them)")
    activation: str = opt("relu", "non-linearity of the hidden layers", tuple(ACTIVATIONS))
    channels: tuple[int, ...] = opt((32, 32, 64, 64), "channels of the conv encoder's stride-2 layers")
    latent_dim: int = opt(20, "dimension of z")

    def check(self) -> None:
        check_latent_and_hidden(self, "; for none, use --arch linear")
        if self.arch == "conv" and not self.channels:
            raise VaelabError("--channels must list at least one channel count for --arch conv, e.g. 32,32,64,64.")



def check_latent_and_hidden(cfg, no_hidden_hint: str = "") -> None:
    """The --latent-dim and --hidden checks of every config with an mlp (``cfg.arch``): a code
    of at least one dimension, an mlp of at least one hidden layer."""
    if cfg.latent_dim < 1:
        raise VaelabError(f"--latent-dim must be at least 1, got {cfg.latent_dim}.")
    if cfg.arch == "mlp" and not cfg.hidden:
        raise VaelabError(f"--hidden must list at least one layer size, such as "
                          f"{','.join(map(str, type(cfg)().hidden))}{no_hidden_hint}.")


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """A network's output in float32 where autocast (--precision bf16/fp16) made it half
    precision, so the distributions and every sum of log-probabilities are float32; float32
    and float64 pass through untouched."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise VaelabError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}.") from None


def mlp(sizes: list[int], act: str, last_act: bool = False) -> nn.Sequential:
    """Linear layers of the given sizes with ``act`` between them (none after the last unless
    ``last_act``): any leading dims pass through, [..., sizes[0]] -> [..., sizes[-1]]."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_act:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class MaskedLinear(nn.Linear):
    """A linear map whose weight is multiplied by a fixed 0/1 mask [out, in], so output i sees
    only the inputs j with mask[i, j] = 1 (the mask follows from the sizes: not saved)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """An autoregressive network (Germain et al. 2015): z [..., D], and a context h [..., C] that
    every output may see, -> ``n_out`` numbers per dimension, [..., n_out, D], where column d
    depends on z_1..z_{d-1} only. Input d has degree d; hidden units cycle through the degrees
    1..D-1 and see the inputs of degree <= theirs; output d sees the hidden units (or, without
    any, the inputs) of degree < d. With a context (or D = 1) the cycle starts at 0: units that
    see the context alone, through which it reaches output 1 too."""

    def __init__(self, dim: int, hidden: tuple[int, ...], act: str, n_out: int = 1, context_dim: int = 0):
        super().__init__()
        self.dim, self.n_out = dim, n_out
        degrees = [torch.arange(1, dim + 1)]
        layers: list[nn.Module] = []
        low = 0 if context_dim or dim == 1 else 1
        for width in hidden:
            d = torch.arange(width) % (dim - low) + low
            layers.append(MaskedLinear(len(degrees[-1]), width, d[:, None] >= degrees[-1][None, :]))
            degrees.append(d)
        out = degrees[0].repeat(n_out)  # unit o * D + d has degree d + 1
        self.out = MaskedLinear(len(degrees[-1]), n_out * dim, out[:, None] > degrees[-1][None, :])
        self.hidden = nn.ModuleList(layers)
        self.act = activation(act)
        # the context joins the first layer's pre-activation
        first = hidden[0] if hidden else n_out * dim
        self.context = nn.Linear(context_dim, first, bias=False) if context_dim else None

    def forward(self, z: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        layers = [*self.hidden, self.out]
        a = layers[0](z)
        if self.context is not None:
            a = a + self.context(h)  # h [..., C] broadcasts against z's leading dims
        for layer in layers[1:]:
            a = layer(self.act(a))
        return a.unflatten(-1, (self.n_out, self.dim))


class MLPEncoder(nn.Module):
    """x [B, *shape] -> [B, out_dim]."""

    def __init__(self, shape: tuple[int, ...], hidden: tuple[int, ...], act: str, out_dim: int):
        super().__init__()
        self.net = mlp([math.prod(shape), *hidden, out_dim], act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class MLPDecoder(nn.Module):
    """z [..., D] -> [..., *shape] (unnormalised parameters, e.g. logits)."""

    def __init__(self, latent_dim: int, hidden: tuple[int, ...], act: str, shape: tuple[int, ...], out_channels: int):
        super().__init__()
        self.shape = (out_channels, *shape[1:])
        self.net = mlp([latent_dim, *reversed(hidden), math.prod(self.shape)], act)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).unflatten(-1, self.shape)


def conv_sizes(h: int, w: int, layers: int = 4) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2, k=3, p=1 conv: ceil(n / 2)."""
    sizes = [(h, w)]
    for _ in range(layers):
        h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


def conv_stack(c_in: int, channels: tuple[int, ...], act: str) -> nn.Sequential:
    """Stride-2 3x3 convolutions, each followed by the activation: [B, c_in, H, W] ->
    [B, channels[-1], *conv_sizes(H, W, len(channels))[-1]]."""
    layers: list[nn.Module] = []
    for a, b in zip((c_in, *channels[:-1]), channels):
        layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), activation(act)]
    return nn.Sequential(*layers)


def deconv_stack(channels: tuple[int, ...], act: str, sizes: list[tuple[int, int]], out_channels: int) -> nn.Sequential:
    """The mirror image of :func:`conv_stack`: [B, channels[-1], *sizes[-1]] -> [B, out_channels,
    *sizes[0]], transposed convolutions whose output padding lands on each of ``sizes``."""
    rev = tuple(reversed(channels))
    layers: list[nn.Module] = []
    outs = (*rev[1:], out_channels)
    for i, (c_in, c_out) in enumerate(zip(rev, outs)):
        (hi, wi), (ho, wo) = sizes[-1 - i], sizes[-2 - i]
        # a k=3, s=2, p=1 transposed conv gives 2n - 1 + output_padding
        pad = (ho - (2 * hi - 1), wo - (2 * wi - 1))
        layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad))
        if i < len(rev) - 1:
            layers.append(activation(act))
    return nn.Sequential(*layers)


def _need_image(shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise VaelabError(f"--arch conv needs images of shape C,H,W; the data has shape {shape}.")


class ConvEncoder(nn.Module):
    """x [B, C, H, W] -> [B, out_dim] through four stride-2 convolutions."""

    def __init__(self, shape: tuple[int, ...], channels: tuple[int, ...], act: str, out_dim: int):
        super().__init__()
        _need_image(shape)
        c, h, w = shape
        sizes = conv_sizes(h, w, len(channels))
        self.conv = conv_stack(c, channels, act)
        # state size: channels[-1] x sizes[-1]
        self.head = nn.Linear(channels[-1] * sizes[-1][0] * sizes[-1][1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


class ConvDecoder(nn.Module):
    """z [..., D] -> [..., out_channels, H, W], mirroring :class:`ConvEncoder`."""

    def __init__(self, latent_dim: int, channels: tuple[int, ...], act: str, shape: tuple[int, ...], out_channels: int):
        super().__init__()
        _need_image(shape)
        _, h, w = shape
        sizes = conv_sizes(h, w, len(channels))
        rev = tuple(reversed(channels))
        self.start = (rev[0], *sizes[-1])
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), activation(act))
        self.deconv = deconv_stack(channels, act, sizes, out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, *self.start)
        out = self.deconv(h)
        return out.view(*lead, *out.shape[1:])


def add_outputs(net: nn.Module, extra: int) -> None:
    """Give a net ``extra`` more outputs after its own: rows added to its last linear layer,
    initialised afresh, while the other rows keep their values. Called once a model's other
    modules are made, it leaves every initial weight they and the net's first outputs had."""
    name, last = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    wider = nn.Linear(last.in_features, last.out_features + extra, device=last.weight.device, dtype=last.weight.dtype)
    with torch.no_grad():
        wider.weight[:last.out_features] = last.weight
        wider.bias[:last.out_features] = last.bias
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent), child, wider)


def make_encoder(arch: str, shape, hidden, channels, act: str, out_dim: int) -> nn.Module:
    if arch == "linear":  # one affine map, no non-linearity: the linear autoencoder / PCA
        return MLPEncoder(shape, (), act, out_dim)
    if arch == "mlp":
        return MLPEncoder(shape, hidden, act, out_dim)
    if arch == "conv":
        return ConvEncoder(shape, channels, act, out_dim)
    raise VaelabError(f"--arch must be mlp, conv or linear, got {arch!r}.")


def make_decoder(arch: str, latent_dim: int, hidden, channels, act: str, shape, out_channels: int) -> nn.Module:
    if arch == "linear":
        return MLPDecoder(latent_dim, (), act, shape, out_channels)
    if arch == "mlp":
        return MLPDecoder(latent_dim, hidden, act, shape, out_channels)
    if arch == "conv":
        return ConvDecoder(latent_dim, channels, act, shape, out_channels)
    raise VaelabError(f"--arch must be mlp, conv or linear, got {arch!r}.")


class Discriminator(nn.Module):
    """The logit of "x is real" from :func:`make_encoder`'s net with one output, cut before its
    last (linear) layer so a model can read the last hidden layer too (VAE-GAN measures its
    reconstruction error there): x -> (logits [B], features [B, F]). ``linear`` has no hidden
    layer: its features are the flattened input."""

    def __init__(self, arch: str, shape, hidden, channels, act: str):
        super().__init__()
        net = make_encoder(arch, shape, hidden, channels, act, 1)
        if isinstance(net, ConvEncoder):
            self.features, self.head = nn.Sequential(net.conv, nn.Flatten()), net.head
        else:
            self.features, self.head = nn.Sequential(nn.Flatten(), *net.net[:-1]), net.net[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)  # [B, F]
        return self.head(h).squeeze(-1), h


# --------------------------------------------------------------------------------------------
# grids of codes (VQ-VAE) and an autoregressive prior over them
# --------------------------------------------------------------------------------------------

def grid_shape(arch: str, shape, channels, grid: int) -> tuple[int, int]:
    """(h, w) of the code grid: the conv stack's last feature map, or grid x grid for an MLP."""
    if arch == "conv":
        _need_image(shape)
        return conv_sizes(shape[1], shape[2], len(channels))[-1]
    return grid, grid


def make_grid_encoder(arch: str, shape, hidden, channels, act: str, dim: int, grid: int) -> nn.Module:
    """x [B, *shape] -> a grid of dim-vectors [B, dim, h, w] (:func:`grid_shape`)."""
    h, w = grid_shape(arch, shape, channels, grid)
    if arch == "conv":  # the conv stack, then a 1x1 convolution to dim channels
        return nn.Sequential(conv_stack(shape[0], channels, act), nn.Conv2d(channels[-1], dim, 1))
    return nn.Sequential(make_encoder(arch, shape, hidden, channels, act, dim * h * w), nn.Unflatten(1, (dim, h, w)))


def make_grid_decoder(arch: str, dim: int, hidden, channels, act: str, shape, out_channels: int,
                      grid: int) -> nn.Module:
    """A grid of dim-vectors [B, dim, h, w] -> [B, out_channels, *shape[1:]], the mirror image of
    :func:`make_grid_encoder`."""
    h, w = grid_shape(arch, shape, channels, grid)
    if arch == "conv":
        sizes = conv_sizes(shape[1], shape[2], len(channels))
        return nn.Sequential(nn.Conv2d(dim, channels[-1], 1), activation(act),
                             deconv_stack(channels, act, sizes, out_channels))
    return nn.Sequential(nn.Flatten(1), make_decoder(arch, dim * h * w, hidden, channels, act, shape, out_channels))


class MaskedConv2d(nn.Conv2d):
    """A k x k convolution that sees, of the cells of a grid in raster order, only those before
    its centre (type ``A``) or those and the centre (type ``B``) (van den Oord et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, mask_type: str):
        super().__init__(c_in, c_out, kernel, padding=kernel // 2)
        c = kernel // 2
        mask = torch.ones(kernel, kernel)
        mask[c, c + (mask_type == "B"):] = 0  # the centre row: the centre (A) and what is right of it
        mask[c + 1:] = 0                      # every row below
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class PixelCNN(nn.Module):
    """p(c) = prod_i p(c_i | c_<i) over grids c [B, h, w] of indices in 0..K-1, in raster order
    (van den Oord et al. 2016): each index embedded as a vector, a type-A masked convolution (cell i
    sees cells < i), residual type-B ones (cell i sees what cells <= i computed) and 1x1
    convolutions to K logits a cell. A masked stack has a blind spot above and to the right; on
    the small grids of a VQ-VAE's codes the gated two-stack network is not needed."""

    def __init__(self, num_codes: int, channels: int = 32, blocks: int = 2, kernel: int = 3):
        super().__init__()
        self.num_codes = num_codes
        self.embed = nn.Embedding(num_codes, channels)
        self.first = MaskedConv2d(channels, channels, kernel, "A")
        self.blocks = nn.ModuleList(MaskedConv2d(channels, channels, 3, "B") for _ in range(blocks))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(),
                                  nn.Conv2d(channels, num_codes, 1))
        self.reach = kernel // 2 + blocks  # rows above a cell that its logits depend on

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Embedded grids [B, C, h, w] -> logits [B, K, h, w]."""
        h = self.first(h)
        for block in self.blocks:
            h = h + block(torch.relu(h))
        return self.head(h)

    def logits(self, c: torch.Tensor) -> torch.Tensor:
        """Index grids [B, h, w] -> logits [B, K, h, w]."""
        return self(self.embed(c).permute(0, 3, 1, 2))

    @torch.no_grad()
    def sample(self, n: int, grid: tuple[int, int]) -> torch.Tensor:
        """n grids [n, h, w], cell by cell (the global RNG)."""
        h, w = grid
        c = torch.zeros(n, h, w, dtype=torch.long, device=self.embed.weight.device)
        for i in range(h):
            # row i depends on rows i - reach .. i alone (each masked layer reaches one row up, the
            # first kernel // 2): the rest of the grid is left out, exactly
            top = max(0, i - self.reach)
            for j in range(w):
                p = self.logits(c[:, top: i + 1])[:, :, i - top, j].float().softmax(1)  # [n, K]
                c[:, i, j] = torch.multinomial(p, 1)[:, 0]
        return c
