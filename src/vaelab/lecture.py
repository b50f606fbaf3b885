"""``vaelab figures --out DIR``: the lecture's five figures, each from a real (small) training run.

    from vaelab.lecture import write_figures
    page = write_figures(Path("figures"), seed=0)        # DIR/figures.html
    write_figures(Path("figures"), only=["gan-1d"])      # one figure (names: FIGURES)

Each figure is one function here that trains its model, draws ``DIR/<name>.png`` and writes
``DIR/<name>.json``, the numbers the picture draws (and the one number a test checks). The page,
``DIR/figures.html``, shows them with captions that say what was trained, on what and for how
long; ``DIR/index.json`` records each figure's files and seconds. The MNIST figures keep their
vaelab runs in ``DIR/runs/`` (``vaelab report DIR/runs/<name>`` shows one).

The same seed gives the same JSON numbers in one process on one CPU: every draw is seeded, and
each figure forks torch's RNG so that it neither reads nor moves the caller's.

1. ``gan-1d``: Goodfellow et al. (2014), Figure 1: a GAN on a 1-D Gaussian, trained by Algorithm 1.
2. ``dae-field``: Alain & Bengio (2014): a denoising autoencoder's r(x) - x on 2-D points near a circle.
3. ``linear-ae-pca``: a linear autoencoder on MNIST against PCA: principal angles over training.
4. ``aevb-manifold``: Kingma & Welling (2014), Figure 4: a 2-D VAE's decoder over Phi^-1 of a grid.
5. ``gan-game``: an MNIST GAN's D(x) and D(G(z)) over training, beside 1/2 and log 4.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import DataConfig
from .data import locate_dataset, run_dataset
from .errors import VaelabError, clip, did_you_mean
from .evaluation.pca import pca_report, principal_angles
from .images import manifold_codes, save_figure
from .io import atomic_write, write_json
from .loading import load
from .losses import discriminator_loss, generator_loss
from .models.ae import AE, AEConfig
from .run import make_config
from .rundir import METRICS, STEPS, read_jsonl, read_run_config
from .training.trainer import train
from .version import __version__
from .report.page import data_uri, write_page

PAGE = "figures.html"
INDEX = "index.json"  # which figures were made, their files and seconds
RUNS = "runs"         # DIR/runs/<name>: the vaelab runs of the MNIST figures

# colours of Goodfellow et al.'s Figure 1: data black dots, generator green, discriminator blue dashes
DATA_COLOUR, G_COLOUR, D_COLOUR = "black", "#2e8b2e", "#1f5fbf"


@dataclass
class Figure:
    """One figure of the page: its files, its caption's parts and the numbers it draws."""
    name: str
    title: str
    alt: str
    caption: str      # plain text: what it shows and how it was made
    paper: str        # the paper it comes from, as cited
    url: str          # where the paper is (arXiv)
    numbers: dict     # what DIR/<name>.json holds
    png: Path = Path()
    json: Path = Path()
    seconds: float = 0.0
    runs: list[str] = field(default_factory=list)  # vaelab run directories it trained, if any


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _r(a, digits: int = 6):
    """Numbers for JSON, rounded (a float32 computation has no more digits worth keeping)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    if isinstance(a, np.ndarray):
        return np.round(a.astype(np.float64), digits).tolist()
    if isinstance(a, (list, tuple)):
        return [_r(v, digits) for v in a]
    return round(float(a), digits)


def _finish(fig: Figure, plot, out_dir: Path, layout: bool = True, grey: bool = False) -> Figure:
    """Write the figure's PNG (the matplotlib figure ``plot``, laid out tight unless ``layout``
    is False: its axes are placed by hand; one grey channel where ``grey``: a picture drawn in
    greys only, stored in a third of the bytes and nothing lost) and its JSON."""
    fig.png, fig.json = out_dir / f"{fig.name}.png", out_dir / f"{fig.name}.json"
    if layout and not grey:
        save_figure(plot, fig.png)
    else:
        import matplotlib.pyplot as plt
        from PIL import Image
        if layout:
            plot.tight_layout()
        buf = io.BytesIO()
        plot.savefig(buf, format="png")
        plt.close(plot)
        with Image.open(buf) as im:
            im = im.convert("L") if grey else im.copy()
        atomic_write(fig.png, lambda p: im.save(p, format="PNG", optimize=True))
    write_json(fig.json, {"figure": fig.name, "title": fig.title, "paper": fig.paper, "url": fig.url,
                          **fig.numbers})
    return fig


def _cosine_factor(step: int, steps: int, floor: float = 0.01) -> float:
    """The learning rate's factor at ``step`` of ``steps``: cosine from 1 down to ``floor``."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / steps))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# torch's CPU threads for every figure's training. One: these nets are small, so a second thread
# saves a third at best (an MNIST epoch of the 2-D VAE: 3.1 s with 2 threads, 4.8 s with 1, on an
# idle 2-core AMD EPYC), and two stall whenever other work shares the cores (the same VAE epoch
# took 75-118 s with 2 threads on that machine busy with a test suite; a GAN epoch 53 s against
# 14 s with 1), which would break the figures' 10-minute budget.
THREADS = 1


@contextlib.contextmanager
def _threads(n: int | None = THREADS):
    """torch's CPU threads set to ``n`` (None: left alone) for the block, then put back."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# 1. Goodfellow et al. 2014, Figure 1: the GAN's game in one dimension
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gan1D:
    """The 1-D GAN's settings: data N(mu, sigma^2), noise z ~ N(0, 1), Algorithm 1."""
    mu: float = 2.0
    sigma: float = 0.5
    hidden: int = 32
    steps: int = 2500
    k: int = 1               # discriminator steps per generator step (Algorithm 1's k)
    batch: int = 512
    lr_d: float = 4e-3       # D learns faster than G: each panel shows a D close to its best response
    lr_g: float = 1e-3
    g_loss: str = "non-saturating"
    panels: tuple[int, ...] = (10, 100, 500, 2500)
    every: int = 10          # steps between the records of mean |D - 1/2|
    samples: int = 20_000    # draws of G(z) behind each panel's histogram and KDE
    grid: tuple[float, float, int] = (-1.0, 4.0, 201)


def _gan_1d_nets(c: Gan1D) -> tuple[nn.Module, nn.Module]:
    h = c.hidden
    # one hidden layer for G: a deeper tanh net folds z's line more, and each fold is a spike in
    # p_g that the game takes long to iron out (measured over 6 seeds: 2 of 6 runs ended > 0.2 in
    # total variation with two layers, 1 of 6 with one)
    g = nn.Sequential(nn.Linear(1, h), nn.Tanh(), nn.Linear(h, 1))
    d = nn.Sequential(nn.Linear(1, h), nn.LeakyReLU(0.2), nn.Linear(h, h), nn.LeakyReLU(0.2), nn.Linear(h, 1))
    return g, d


def train_gan_1d(c: Gan1D, seed: int, threads: int | None = THREADS) -> dict:
    """Train the 1-D GAN by Algorithm 1 and record each panel: the x grid, p_data(x), the density
    of G(z) (a histogram and a Gaussian KDE of ``c.samples`` draws), D(x), and
    E_{x ~ p_data} |D(x) - 1/2| (on the grid, weighted by p_data), with its record every
    ``c.every`` steps. Deterministic given ``seed``; the global RNG is left as it was."""
    from scipy.stats import gaussian_kde

    with _threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G, D = _gan_1d_nets(c)
        gen = torch.Generator().manual_seed(seed + 1)  # data and noise draws
        panel_noise = torch.randn(c.samples, 1, generator=torch.Generator().manual_seed(seed + 2))
        opt_d = torch.optim.Adam(D.parameters(), c.lr_d, betas=(0.5, 0.999))
        opt_g = torch.optim.Adam(G.parameters(), c.lr_g, betas=(0.5, 0.999))
        lo, hi, n = c.grid
        xs = torch.linspace(lo, hi, n, dtype=torch.float64)
        p_data = torch.exp(-0.5 * ((xs - c.mu) / c.sigma) ** 2) / (c.sigma * math.sqrt(2 * math.pi))
        weight = p_data / p_data.sum()  # E_{p_data} on the grid
        xs_in = xs.float()[:, None]

        def flatness() -> tuple[float, torch.Tensor]:
            with torch.no_grad():
                d = torch.sigmoid(D(xs_in)).squeeze(1).double()
            return float((weight * (d - 0.5).abs()).sum()), d

        edges = np.linspace(lo, hi, 51)
        panels, trace = [], []
        for step in range(1, c.steps + 1):
            f = _cosine_factor(step - 1, c.steps)
            _set_lr(opt_d, c.lr_d * f)
            _set_lr(opt_g, c.lr_g * f)
            for _ in range(c.k):  # k steps of D on fresh data and noise, G(z) held fixed
                x = c.mu + c.sigma * torch.randn(c.batch, 1, generator=gen)
                with torch.no_grad():
                    fake = G(torch.randn(c.batch, 1, generator=gen))
                d_loss = discriminator_loss(D(x).squeeze(1), D(fake).squeeze(1))
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
            g_loss = generator_loss(D(G(torch.randn(c.batch, 1, generator=gen))).squeeze(1), c.g_loss)
            opt_g.zero_grad()
            g_loss.backward()
            opt_g.step()
            if step % c.every == 0 or step == 1:
                trace.append((step, flatness()[0]))
            if step in c.panels:
                m, d = flatness()
                with torch.no_grad():
                    s = G(panel_noise).squeeze(1).double().numpy()
                kde = gaussian_kde(s)(xs.numpy())
                hist, _ = np.histogram(s, bins=edges, density=True)
                # how far p_g is from p_data: half the L1 distance of the densities on the grid
                tv = 0.5 * float(np.abs(kde - p_data.numpy()).sum() * (xs[1] - xs[0]))
                panels.append({"step": step, "mean_abs_d_minus_half": m, "d_loss": d_loss.item(),
                               "g_mean": float(s.mean()), "g_std": float(s.std()), "tv_distance": tv,
                               "d": d, "p_g_kde": kde, "p_g_hist": hist})
    return {"x": xs.numpy(), "p_data": p_data.numpy(), "hist_edges": edges, "panels": panels, "trace": trace}


def gan_1d(out_dir: Path, seed: int = 0, data_dir: str | None = None, log=print, settings: Gan1D = Gan1D(),
           threads: int | None = THREADS) -> Figure:
    """Figure 1 of Goodfellow et al. (2014), from a GAN trained on a 1-D Gaussian: per panel the
    data's density, the generator's and D(x); D flattens towards 1/2 as p_g approaches p_data."""
    c = settings
    r = train_gan_1d(c, seed, threads)
    plt = _plt()
    n = len(r["panels"])
    fig, axes = plt.subplots(1, n + 1, figsize=(2.5 * n + 2.9, 2.8),
                             gridspec_kw={"width_ratios": [1] * n + [1.15]})
    x = r["x"]
    for ax, p in zip(axes, r["panels"]):
        ax.hist(r["hist_edges"][:-1], r["hist_edges"], weights=p["p_g_hist"], color=G_COLOUR, alpha=0.18)
        ax.plot(x, r["p_data"], ls=":", lw=2.0, color=DATA_COLOUR, label="p_data")
        ax.plot(x, p["p_g_kde"], lw=1.6, color=G_COLOUR, label="p_g (KDE of G(z))")
        ax.plot(x, p["d"].numpy(), ls="--", lw=1.6, color=D_COLOUR, label="D(x)")
        ax.axhline(0.5, color="grey", lw=0.6)
        ax.set(xlim=(x[0], x[-1]), ylim=(0, 1.05), xlabel="x",
               title=f"step {p['step']}: E|D − ½| = {p['mean_abs_d_minus_half']:.3f}")
        ax.title.set_fontsize(8.5)
    axes[0].legend(fontsize=7, loc="upper left")
    steps, vals = zip(*r["trace"])
    ax = axes[-1]
    ax.plot(steps, vals, color=D_COLOUR, lw=1.2)
    for p in r["panels"]:
        ax.plot(p["step"], p["mean_abs_d_minus_half"], "o", color=D_COLOUR, ms=4)
    ax.set(xscale="log", yscale="log", xlabel="step", title="E over p_data of |D(x) − ½|")
    ax.title.set_fontsize(8.5)
    panels = [{"step": p["step"], "mean_abs_d_minus_half": _r(p["mean_abs_d_minus_half"]),
               "tv_distance": _r(p["tv_distance"]), "g_mean": _r(p["g_mean"]), "g_std": _r(p["g_std"]),
               "d_loss": _r(p["d_loss"]), "d": _r(p["d"]), "p_g_kde": _r(p["p_g_kde"]), "p_g_hist": _r(p["p_g_hist"])}
              for p in r["panels"]]
    first, last = panels[0], panels[-1]
    numbers = {
        "seed": seed, "settings": dataclasses.asdict(c),
        "protocol": (f"p_data = N({c.mu:g}, {c.sigma:g}^2); z ~ N(0, 1); G: 1-{c.hidden}-1 tanh MLP; "
                     f"D: 1-{c.hidden}-{c.hidden}-1 LeakyReLU(0.2) MLP, sigmoid output; Algorithm 1 with "
                     f"k = {c.k}, minibatches of {c.batch}, {c.steps} generator steps, {c.g_loss} G loss; "
                     f"Adam (beta1 0.5), lr D {c.lr_d:g}, G {c.lr_g:g}, cosine decay to 1%"),
        "mean_abs_d_minus_half_means": "E_{x ~ p_data} |D(x) - 1/2|, on the x grid weighted by p_data",
        "x": _r(x), "p_data": _r(r["p_data"]), "hist_edges": _r(r["hist_edges"]), "panels": panels,
        "trace": {"step": list(steps), "mean_abs_d_minus_half": _r(vals)},
        "first_mean_abs_d_minus_half": first["mean_abs_d_minus_half"],
        "last_mean_abs_d_minus_half": last["mean_abs_d_minus_half"],
        "last_tv_distance": last["tv_distance"],
    }
    log(f"gan-1d: E|D - 1/2| {first['mean_abs_d_minus_half']:.3f} at step {first['step']} -> "
        f"{last['mean_abs_d_minus_half']:.4f} at step {last['step']}; p_g ~ N({last['g_mean']:.2f}, "
        f"{last['g_std']:.2f}^2), TV to p_data {last['tv_distance']:.3f}")
    caption = (f"A GAN trained on a 1-D distribution, drawn at steps {', '.join(str(p['step']) for p in panels)}: "
               f"the data's density p_data = N({c.mu:g}, {c.sigma:g}²) (black dots), the generator's density "
               f"(green: a histogram and a Gaussian KDE of {c.samples:,} draws of G(z)) and the discriminator "
               f"D(x) (blue dashes). As p_g approaches p_data, D flattens towards ½: the mean over p_data of "
               f"|D(x) − ½| falls from {first['mean_abs_d_minus_half']:.3f} to {last['mean_abs_d_minus_half']:.3f} "
               f"(right: every {c.every} steps; at step 1, D is flat only because it has learnt nothing yet), "
               f"and p_g ends at N({last['g_mean']:.2f}, {last['g_std']:.2f}²) in mean and spread, a total "
               f"variation distance of {last['tv_distance']:.3f} from p_data. Where p_data has little mass, as in "
               f"its tails, nothing holds D near ½. Trained here by Algorithm 1: z ~ N(0, 1); G an MLP with one "
               f"hidden layer of {c.hidden} tanh units, D one with two of {c.hidden} LeakyReLU units; k = {c.k} "
               f"discriminator step{'s' if c.k > 1 else ''} per generator step; the {c.g_loss} generator loss; "
               f"minibatches of {c.batch}; {c.steps:,} steps of Adam (β1 0.5; learning rates {c.lr_d:g} for D and "
               f"{c.lr_g:g} for G, cosine-decayed); seed {seed}. After Figure 1 of")
    f = Figure("gan-1d", "Goodfellow's 1-D intuition",
               f"{len(panels)} panels of a 1-D GAN over training: the data's density, the generator's density and "
               "D(x), which flattens towards 1/2; and the mean of |D - 1/2| against the step.",
               caption, "Goodfellow et al. (2014), Generative adversarial nets", "https://arxiv.org/abs/1406.2661",
               numbers)
    return _finish(f, fig, out_dir)


# --------------------------------------------------------------------------------------------
# 2. Alain & Bengio 2014: the denoising autoencoder's reconstruction field
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DAEField:
    """The 2-D denoising autoencoder's settings: points near the unit circle, Gaussian corruption."""
    points: int = 1000
    data_noise: float = 0.05   # std of the points around the circle
    corruption: float = 0.3    # std of the Gaussian corruption x~ = x + noise
    hidden: int = 64
    steps: int = 2000
    batch: int = 256
    lr: float = 3e-3
    grid: int = 17             # arrows on a grid x grid square
    extent: float = 1.6        # ... over [-extent, extent]^2
    on_curve: float = 0.1      # grid points nearer the circle than this are on it (no direction to judge)
    shown_points: int = 300    # data points drawn (and kept in the JSON)
    shrink: float = 3.0        # arrows drawn at 1/shrink of their length (the corners' would overlap)


class _DAE(nn.Module):
    """r(x~) = g(f(x~)): a code of ``hidden`` units, softplus MLPs each way."""

    def __init__(self, hidden: int):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(2, hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Softplus())
        self.g = nn.Sequential(nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(self.f(x))


def train_dae_field(c: DAEField, seed: int, threads: int | None = THREADS) -> dict:
    """Train the DAE on points near the unit circle (squared error of r(x + noise) against x,
    fresh noise every step) and measure r(x) - x on the grid, with the cosine between each arrow
    and the direction to the nearest point of the circle. Deterministic given ``seed``."""
    with _threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        theta = 2 * math.pi * torch.rand(c.points, generator=gen)
        data = torch.stack([theta.cos(), theta.sin()], 1) + c.data_noise * torch.randn(c.points, 2, generator=gen)
        net = _DAE(c.hidden)
        opt = torch.optim.Adam(net.parameters(), c.lr)
        losses = []
        for step in range(c.steps):
            _set_lr(opt, c.lr * _cosine_factor(step, c.steps))
            x = data[torch.randint(c.points, (c.batch,), generator=gen)]
            noisy = x + c.corruption * torch.randn(c.batch, 2, generator=gen)
            loss = ((net(noisy) - x) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if (step + 1) % 100 == 0:
                losses.append((step + 1, loss.item()))
        ticks = torch.linspace(-c.extent, c.extent, c.grid)
        gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)  # [grid^2, 2]
        with torch.no_grad():
            vec = net(pts) - pts
        shown = data[torch.randperm(c.points, generator=gen)[:c.shown_points]]
    # the nearest point of the unit circle to p is p / |p|: the way there is sign(1 - |p|) p / |p|
    radius = pts.double().norm(dim=1)
    dist = (radius - 1).abs()
    toward = torch.sign(1 - radius)[:, None] * pts.double() / radius.clamp_min(1e-12)[:, None]
    v = vec.double()
    cos = (v * toward).sum(1) / (v.norm(dim=1) * toward.norm(dim=1)).clamp_min(1e-12)
    off = (dist > c.on_curve) & (radius > 1e-9)  # the centre has no nearest point
    near = off & (dist <= 2 * c.corruption)      # where training's corrupted points reach
    return {"data": data, "shown": shown, "points": pts, "vectors": v, "cosine": cos, "distance": dist,
            "off": off, "near": near, "losses": losses}


def dae_field(out_dir: Path, seed: int = 0, data_dir: str | None = None, log=print,
              settings: DAEField = DAEField(), threads: int | None = THREADS) -> Figure:
    """Alain & Bengio (2014): a DAE's r(x) - x on a grid points back to the data's manifold."""
    c = settings
    r = train_dae_field(c, seed, threads)
    cos, off, near = r["cosine"], r["off"], r["near"]
    mean_cos, near_cos = float(cos[off].mean()), float(cos[near].mean())
    frac_pos = float((cos[off] > 0).double().mean())
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 6.0))
    t = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(t), np.sin(t), color="grey", lw=0.8, ls="--", label="the curve (unit circle)")
    ax.scatter(*r["shown"].numpy().T, s=5, color="#d0842b", alpha=0.7, label=f"data ({c.shown_points} of {c.points})")
    p, v = r["points"].numpy(), r["vectors"].float().numpy()
    ax.quiver(p[:, 0], p[:, 1], v[:, 0], v[:, 1], cos.numpy(), cmap="coolwarm_r", clim=(-1, 1), angles="xy",
              scale_units="xy", scale=c.shrink, width=0.004)
    ax.set(xlim=(-c.extent - 0.15, c.extent + 0.15), ylim=(-c.extent - 0.15, c.extent + 0.15), aspect="equal",
           xlabel="x₁", ylabel="x₂",
           title=f"r(x) − x: mean cosine with the way to the curve {mean_cos:.2f}")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8, loc="upper right")
    numbers = {
        "seed": seed, "settings": dataclasses.asdict(c),
        "protocol": (f"{c.points} points at uniform angles on the unit circle plus N(0, {c.data_noise:g}^2 I); "
                     f"r(x~) = g(f(x~)), f: 2-{c.hidden}-{c.hidden}, g: {c.hidden}-{c.hidden}-2, softplus; "
                     f"x~ = x + N(0, {c.corruption:g}^2 I) drawn afresh; squared error against x; {c.steps} Adam "
                     f"steps of {c.batch} points, lr {c.lr:g} cosine-decayed"),
        "cosine_means": ("cosine between r(x) - x and the direction from x to the nearest point of the circle, "
                         f"over the grid points more than {c.on_curve:g} from it (the centre left out)"),
        "mean_cosine": _r(mean_cos), "mean_cosine_within_2_sigma": _r(near_cos),
        "fraction_positive": _r(frac_pos), "off_curve_points": int(off.sum()),
        "within_2_sigma_points": int(near.sum()),
        "grid_points": _r(r["points"]), "vectors": _r(r["vectors"]), "cosines": _r(cos),
        "distance_to_curve": _r(r["distance"]), "data_points": _r(r["shown"]),
        "loss": {"step": [s for s, _ in r["losses"]], "value": _r([v for _, v in r["losses"]])},
    }
    log(f"dae-field: mean cosine {mean_cos:.3f} over {int(off.sum())} off-curve grid points "
        f"({near_cos:.3f} within 2 sigma of the curve; {100 * frac_pos:.0f}% positive)")
    caption = (f"A denoising autoencoder r(x̃) = g(f(x̃)) trained on {c.points:,} 2-D points near the unit circle "
               f"(orange, {c.shown_points} shown; std {c.data_noise:g} around it) to undo Gaussian corruption "
               f"x̃ = x + N(0, {c.corruption:g}² I). The arrows are r(x) − x on a {c.grid}×{c.grid} grid, drawn at "
               f"1/{c.shrink:g} of their length and coloured by their cosine with the way to the nearest point of "
               f"the circle (blue 1, red −1): they point back to the manifold, as r(x) − x ≈ σ² ∂log p(x)/∂x "
               f"for small σ. Over the {int(off.sum())} grid points more than {c.on_curve:g} off the curve the "
               f"mean cosine is {mean_cos:.2f} "
               f"({near_cos:.2f} within 2σ = {2 * c.corruption:g} of it, where the corrupted training points "
               f"reach; {100 * frac_pos:.0f}% of the arrows point towards the curve). f and g: softplus MLPs "
               f"with {c.hidden}-unit layers; {c.steps:,} Adam steps of {c.batch} points, seed {seed}. After")
    f = Figure("dae-field", "The denoising autoencoder's vector field",
               "Arrows r(x) - x of a denoising autoencoder on a grid around a circle of data points, pointing "
               "back to the circle.",
               caption, "Alain & Bengio (2014), What regularized auto-encoders learn from the data-generating "
               "distribution", "https://arxiv.org/abs/1211.4246", numbers)
    return _finish(f, fig, out_dir)


# --------------------------------------------------------------------------------------------
# 3. The linear autoencoder spans PCA's subspace
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearAEPCA:
    """The linear autoencoder's settings: vaelab's ``ae`` with ``--arch linear``, L2 loss."""
    images: int = 10_000     # the first images of vaelab's MNIST training split
    latent_dim: int = 10
    epochs: int = 50
    batch: int = 100
    lr: float = 1e-2         # cosine-decayed to 1%: 5,000 steps take the largest angle below 1 degree
    every: int = 25          # steps between the principal angles' records


def _mnist(data_dir: str | None):
    """vaelab's MNIST splits (the default validation split, as the trainer reads them); read
    once per process, the loader keeps the arrays."""
    return run_dataset(DataConfig(data="mnist", data_dir=data_dir))


def linear_ae_pca(out_dir: Path, seed: int = 0, data_dir: str | None = None, log=print,
                  settings: LinearAEPCA = LinearAEPCA(), threads: int | None = THREADS) -> Figure:
    """The principal angles between a linear autoencoder's decoder columns and PCA's top-d
    subspace of the same images, over training: they fall towards 0."""
    c = settings
    from sklearn.decomposition import PCA
    ds = _mnist(data_dir)
    x = ds.train.x[:c.images].float() / 255  # [N, 1, 28, 28] intensities in [0, 1]
    flat = x.flatten(1).double().numpy()
    with _threads(threads), torch.random.fork_rng(devices=[]):
        # the reference: PCA of the same images (the exact eigendecomposition of their covariance)
        pca = PCA(n_components=c.latent_dim, svd_solver="covariance_eigh").fit(flat)
        top = pca.components_.T  # [784, d]
        pca_mse = float(np.mean((pca.inverse_transform(pca.transform(flat)) - flat) ** 2))
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed + 1)
        model = AE(AEConfig(shape=tuple(x.shape[1:]), arch="linear", latent_dim=c.latent_dim, recon_loss="l2"))
        opt = torch.optim.Adam(model.parameters(), c.lr)
        decoder = model.decoder.net[0].weight  # [784, d]: z -> pixels; its columns span what it decodes

        def mse() -> float:
            with torch.no_grad():
                return float(((model.reconstruct(x) - x) ** 2).mean())
        steps_per_epoch = len(x) // c.batch
        total = c.epochs * steps_per_epoch
        record, errors = [(0, principal_angles(decoder, top))], [(0, mse())]
        step = 0
        for _ in range(c.epochs):
            order = torch.randperm(len(x), generator=gen)
            for b in range(steps_per_epoch):
                _set_lr(opt, c.lr * _cosine_factor(step, total))
                loss, _ = model.objective(x[order[b * c.batch:(b + 1) * c.batch]])
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if step % c.every == 0 or step in (1, 2, 5, 10):
                    record.append((step, principal_angles(decoder, top)))
            errors.append((step, mse()))
        model.eval()
        test = pca_report(model, x, ds.test.x.float() / 255)  # the check `vaelab eval` makes of a linear AE
    steps = [s for s, _ in record]
    angles = np.stack([a for _, a in record])  # [records, d], ascending in each record
    start_max, end_max = float(angles[0].max()), float(angles[-1].max())
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10.5, 3.7), gridspec_kw={"width_ratios": [1.25, 1]})
    d = angles.shape[1]
    for j in range(d):
        largest = j == d - 1
        ax[0].plot(np.maximum(steps, 0.7), angles[:, j], lw=2.0 if largest else 0.8, color="C3" if largest else "C0",
                   alpha=1 if largest else 0.55, label="the largest" if largest else ("the others" if j == 0 else None))
    ax[0].axhline(90, color="grey", lw=0.6, ls="--")
    ax[0].set(xscale="log", yscale="log", xlabel="Adam step (step 0 drawn at 0.7)", ylabel="degrees",
              title=f"principal angles to PCA's top-{d} subspace")
    ax[0].legend(fontsize=8, loc="lower left")
    es, ev = zip(*errors)
    ax[1].plot(es, ev, "o-", ms=2.5, lw=1, label="linear AE, per epoch")
    ax[1].axhline(pca_mse, color="black", ls="--", lw=0.9, label=f"PCA, d = {d}")
    ax[1].set(xlabel="Adam step", ylabel="mean squared error per pixel", yscale="log",
              title="reconstruction error, the training images")
    ax[1].legend(fontsize=8)
    numbers = {
        "seed": seed, "settings": dataclasses.asdict(c),
        "protocol": (f"the first {len(x):,} images of vaelab's MNIST training split (of {len(ds.train):,}; "
                     f"intensities in [0, 1]); vaelab's ae, --arch linear (affine maps 784-{d}-784), L2 loss; "
                     f"{c.epochs} epochs of minibatches of {c.batch} ({total:,} Adam steps, lr {c.lr:g} "
                     f"cosine-decayed to 1%); PCA: scikit-learn on the same images"),
        "angles_mean": ("principal angles in degrees, ascending, between the decoder weight's column space and "
                        "PCA's top-d subspace (vaelab.evaluation.pca.principal_angles)"),
        "steps": steps, "angles_deg": _r(angles), "start_max_angle_deg": _r(start_max),
        "final_max_angle_deg": _r(end_max), "final_angles_deg": _r(angles[-1]),
        "train_mse": {"step": list(es), "ae": _r(ev), "pca": _r(pca_mse)},
        "test": {k: _r(v) for k, v in test.items() if k not in ("angles_deg", "max_angle_deg", "d")},
    }
    log(f"linear-ae-pca: largest principal angle {start_max:.1f} -> {end_max:.2f} degrees after {total:,} steps; "
        f"test MSE AE/PCA {test['mse_ratio']:.4f}")
    caption = (f"A linear autoencoder (vaelab's ae with --arch linear: affine maps 784 → {d} → 784, squared "
               f"error) trained on the first {len(x):,} images of MNIST's training split for {c.epochs} epochs "
               f"({total:,} Adam steps of {c.batch} images, learning rate {c.lr:g} cosine-decayed, seed {seed}). "
               f"Left: the {d} principal angles between the decoder's column space and the span of PCA's top "
               f"{d} components of the same images (scikit-learn), over training; the largest falls from "
               f"{start_max:.1f}° to {end_max:.2f}°. The optimum spans the principal subspace, though its weights "
               f"are any invertible mix of the components, so subspaces are compared, not weights; the last "
               f"directions to settle are those of nearly equal eigenvalues. Right: the reconstruction error "
               f"approaches PCA's, the least any rank-{d} linear map reaches; on MNIST's {len(ds.test):,} "
               f"test images the AE's is {test['mse_ratio']:.4f} times PCA's. See")
    f = Figure("linear-ae-pca", "The linear autoencoder and PCA",
               "Principal angles in degrees between a linear autoencoder's decoder and PCA's subspace, falling "
               "towards zero over training; and its reconstruction error against PCA's.",
               caption, "Baldi & Hornik (1989), Neural networks and principal component analysis: learning from "
               "examples without local minima", "https://doi.org/10.1016/0893-6080(89)90014-2", numbers)
    return _finish(f, fig, out_dir)


# --------------------------------------------------------------------------------------------
# 4. Kingma & Welling 2014, Figure 4: the learned MNIST manifold of a 2-D VAE
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AEVBManifold:
    """The 2-D VAE's run: vaelab's ``vae`` at ``--preset aevb`` (784-500-2, tanh, Bernoulli)."""
    epochs: int = 10
    n: int = 20              # the grid is n x n


def _train_run(out_dir: Path, name: str, log, threads: int | None, device: str, **flags) -> Path:
    """A vaelab run in DIR/runs/<name> (replaced if there), trained by vaelab's trainer; torch's
    RNG and threads are the caller's again afterwards."""
    cfg = make_config(out=str(out_dir / RUNS / name), overwrite=True, progress=False, threads=threads, device=device,
                      **flags)
    with _threads(threads), torch.random.fork_rng(devices=[]):
        return train(cfg, log=log)


def aevb_manifold(out_dir: Path, seed: int = 0, data_dir: str | None = None, log=print,
                  settings: AEVBManifold = AEVBManifold(), threads: int | None = THREADS,
                  device: str = "auto") -> Figure:
    """Figure 4 of Kingma & Welling (2014): a 2-D latent VAE's decoded means over z = Phi^-1(u),
    u on a regular grid of the unit square, with the z values on the axes."""
    c = settings
    run = _train_run(out_dir, "aevb-manifold", log, threads, device, data="mnist", data_dir=data_dir, model="vae",
                     preset="aevb", latent_dim=2, epochs=c.epochs, seed=seed)
    model = load(run, "last", "cpu")
    codes = manifold_codes(c.n)  # [n*n, 2], row-major, the top row the largest z2
    with _threads(threads), torch.no_grad():
        images = model.decode_mean(codes).float()  # [n*n, 1, 28, 28]
    hist = read_jsonl(run / METRICS)
    t = model.run_config.train
    n_train, n_val = _split_sizes(data_dir)
    h, w = images.shape[-2:]
    tiles = images[:, 0].reshape(c.n, c.n, h, w).permute(0, 2, 1, 3).reshape(c.n * h, c.n * w).numpy()
    z1 = codes[:c.n, 0].double().numpy()   # the columns' z1, left to right
    z2 = codes[::c.n, 1].double().numpy()  # the rows' z2, top to bottom
    plt = _plt()
    # the grid at one screen pixel per image pixel: axes placed in pixels, no resampling
    dpi, left, bottom, pad = 100, 62, 78, 12
    width, height = left + tiles.shape[1] + pad, bottom + tiles.shape[0] + pad
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes((left / width, bottom / height, tiles.shape[1] / width, tiles.shape[0] / height))
    ax.imshow(tiles, cmap="gray", vmin=0, vmax=1, extent=(0, c.n, c.n, 0), interpolation="nearest")
    centres = np.arange(c.n) + 0.5
    ax.set_xticks(centres, [f"{v:.2f}" for v in z1], rotation=90, fontsize=7)
    ax.set_yticks(centres, [f"{v:.2f}" for v in z2], fontsize=7)
    ax.set_xlabel("z₁ = Φ⁻¹(u₁)", fontsize=9)
    ax.set_ylabel("z₂ = Φ⁻¹(u₂)", fontsize=9)
    val = [e["val"] for e in hist if e.get("val") is not None]
    elbo = val[-1]
    numbers = {
        "seed": seed, "settings": dataclasses.asdict(c), "run": f"{RUNS}/aevb-manifold",
        "protocol": (f"vaelab's vae at --preset aevb with --latent-dim 2 (MLP 784-500-2 and back, tanh; Bernoulli "
                     f"decoder on dynamically binarized pixels), on vaelab's MNIST training split ({n_train:,} "
                     f"images; {n_val:,} held out), {len(hist)} epochs of minibatches of {t.batch_size}, Adam lr "
                     f"{t.lr:g}; the last epoch's weights"),
        "grid": f"z = Phi^-1(u), u = (i + 1/2) / {c.n} for i = 0..{c.n - 1} in each coordinate "
                "(vaelab.images.manifold_codes)",
        "z1_columns_left_to_right": _r(z1), "z2_rows_top_to_bottom": _r(z2),
        "final_val_elbo": _r(elbo), "val_elbo_per_epoch": _r(val),
        "train_loss_per_epoch": _r([e["train_loss"] for e in hist]), "epochs": len(hist),
        "train_images": n_train, "val_images": n_val,
    }
    log(f"aevb-manifold: {len(hist)} epochs, validation ELBO {elbo:.2f} nats")
    caption = (f"A VAE with a 2-D latent space (vaelab's vae at --preset aevb with --latent-dim 2: MLPs with one "
               f"hidden layer of 500 tanh units each way, a Bernoulli decoder on dynamically binarized pixels) "
               f"trained on MNIST's {n_train:,} training images ({n_val:,} more held out) for {len(hist)} epochs "
               f"(minibatches of {t.batch_size}, Adam at {t.lr:g}, seed {seed}); its validation ELBO after the last "
               f"is {elbo:.1f} nats. Each cell is the decoder's mean at z = Φ⁻¹(u), u on a regular {c.n}×{c.n} grid "
               f"of the unit square (cell centres (i + ½)/{c.n}), so that equal areas carry equal prior mass; the "
               f"axes give z₁ and z₂ at the cell centres. The run is kept in {RUNS}/aevb-manifold. After Figure 4 "
               f"of")
    f = Figure("aevb-manifold", "The AEVB manifold",
               f"A {c.n} by {c.n} grid of MNIST digits decoded from a 2-D latent space, with the z1 and z2 values "
               "on the axes.",
               caption, "Kingma & Welling (2014), Auto-encoding variational Bayes", "https://arxiv.org/abs/1312.6114",
               numbers, runs=[str(run)])
    return _finish(f, fig, out_dir, layout=False, grey=True)


def _split_sizes(data_dir: str | None) -> tuple[int, int]:
    """(training, validation) images of vaelab's MNIST splits, as the runs here train on them."""
    ds = _mnist(data_dir)
    return len(ds.train), len(ds.val)


# --------------------------------------------------------------------------------------------
# 5. The GAN game on MNIST
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GANGame:
    """The MNIST GAN's run: vaelab's ``gan`` with its defaults (MLPs 100-512-512-784 and back)."""
    epochs: int = 5
    log_every: int = 10      # steps between the per-step records (steps.jsonl)
    smooth: int = 20         # records in the moving average drawn over them


def _moving_average(v: list[float], n: int) -> np.ndarray:
    """The mean of each run of ``n`` consecutive values (fewer at the start): as long as ``v``."""
    a = np.asarray(v, dtype=np.float64)
    c = np.cumsum(np.insert(a, 0, 0.0))
    k = np.minimum(np.arange(1, len(a) + 1), n)
    return (c[1:] - c[np.arange(1, len(a) + 1) - k]) / k


def gan_game(out_dir: Path, seed: int = 0, data_dir: str | None = None, log=print,
             settings: GANGame = GANGame(), threads: int | None = THREADS,
             device: str = "auto") -> Figure:
    """D(x) on data and D(G(z)) on samples over an MNIST GAN's training, beside the equilibrium's
    1/2; and D's loss beside its equilibrium value log 4."""
    c = settings
    run = _train_run(out_dir, "gan-game", log, threads, device, data="mnist", data_dir=data_dir, model="gan",
                     epochs=c.epochs, seed=seed, log_every=c.log_every)
    doc = read_run_config(run)["run"]
    mc, tc = doc["model"], doc["train"]
    hist, steps = read_jsonl(run / METRICS), read_jsonl(run / STEPS)
    n_train, n_val = _split_sizes(data_dir)
    per_epoch_steps = n_train // tc["batch_size"] // mc["k"]  # whole minibatches only (drop_last), k a step
    ends = [per_epoch_steps * h["epoch"] for h in hist]
    s = [r["step"] for r in steps]
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.9))
    # faint: each logged step's minibatch; line: their moving average; dots: the epoch's mean
    for a, series in ((ax[0], (("d_real", "train_d_real", "C0", "D(x), data"),
                               ("d_fake", "train_d_fake", "C3", "D(G(z)), samples"))),
                      (ax[1], (("d_loss", "train_d_loss", "C0", "D's loss"),
                               ("g_loss", "train_g_loss", "C1", f"G's loss ({mc['g_loss']})")))):
        for key, epoch_key, colour, label in series:
            v = [r[key] for r in steps]
            a.plot(s, v, color=colour, lw=0.5, alpha=0.3)
            a.plot(s, _moving_average(v, c.smooth), color=colour, lw=1.3, label=label)
            a.plot(ends, [h[epoch_key] for h in hist], "o", color=colour, ms=6, mec="black", mew=0.6)
        for e in ends:
            a.axvline(e, color="grey", lw=0.4, alpha=0.6)
    if any(h.get("val") is not None for h in hist):
        ax[0].plot(ends, [h.get("val") for h in hist], "s", color="C2", ms=6, mec="black", mew=0.6,
                   label="D(x), held-out data")
    ax[0].axhline(0.5, color="black", lw=1.0, ls="--", label="½")
    ax[0].set(xlabel="step", ylabel="mean D", ylim=(0, 1), title="the discriminator's view")
    ax[0].legend(fontsize=7.5, loc="lower center", ncol=2, framealpha=0.85)
    ax[1].axhline(math.log(4), color="black", lw=1.0, ls="--", label="log 4")
    ax[1].set(xlabel="step", ylabel="nats", title="the players' losses")
    ax[1].legend(fontsize=7.5, loc="upper left", ncol=3, framealpha=0.85)
    last = hist[-1]
    numbers = {
        "seed": seed, "settings": dataclasses.asdict(c), "run": f"{RUNS}/gan-game",
        "protocol": (f"vaelab's gan (MLPs: G {mc['latent_dim']}-{'-'.join(map(str, mc['hidden']))}-784 with batch "
                     f"norm, tanh output; D mirrored, LeakyReLU 0.2), Algorithm 1 with k = {mc['k']}, "
                     f"{mc['g_loss']} G loss, Adam (beta1 {mc['beta1']}) lr {tc['lr']:g}, minibatches of "
                     f"{tc['batch_size']}, on vaelab's MNIST training split ({n_train:,} images; {n_val:,} held "
                     f"out), {len(hist)} epochs"),
        "per_epoch": {"epoch": [h["epoch"] for h in hist], "end_step": ends,
                      "d_real": _r([h["train_d_real"] for h in hist]),
                      "d_fake": _r([h["train_d_fake"] for h in hist]),
                      "held_out_d_real": _r([h.get("val") for h in hist]) if hist[0].get("val") is not None else None,
                      "d_loss": _r([h["train_d_loss"] for h in hist]),
                      "g_loss": _r([h["train_g_loss"] for h in hist])},
        "per_step": {"step": s, **{k: _r([r[k] for r in steps]) for k in ("d_real", "d_fake", "d_loss", "g_loss")}},
        "log4": math.log(4),
        "final_d_real": _r(last["train_d_real"]), "final_d_fake": _r(last["train_d_fake"]),
        "final_d_loss": _r(last["train_d_loss"]),
    }
    log(f"gan-game: {len(hist)} epochs; D(x) {last['train_d_real']:.3f}, D(G(z)) {last['train_d_fake']:.3f}, "
        f"D's loss {last['train_d_loss']:.3f} (log 4 = {math.log(4):.3f})")
    caption = (f"vaelab's gan on MNIST: MLPs (G: {mc['latent_dim']}-{'-'.join(map(str, mc['hidden']))}-784 with "
               f"batch norm; D mirrored, LeakyReLU) trained by Algorithm 1 with k = {mc['k']}, the "
               f"{mc['g_loss']} generator loss and Adam (β1 {mc['beta1']}, learning rate {tc['lr']:g}) on MNIST's "
               f"{n_train:,} training images for {len(hist)} epochs ({ends[-1]:,} steps of {tc['batch_size']} "
               f"images, seed {seed}). Left: the discriminator's mean output on data, D(x), and on samples, "
               f"D(G(z)), on each step's minibatch every {c.log_every} steps (faint), their moving average over "
               f"{c.smooth} records, and each epoch's mean (dots; squares: D(x) on the {n_val:,} held-out images). "
               f"At the game's equilibrium, p_g = p_data, both are ½. Right: D's loss, log 4 there, and G's. After "
               f"{len(hist)} epochs D(x) = {last['train_d_real']:.2f} and D(G(z)) = {last['train_d_fake']:.2f}: "
               f"the discriminator still tells them apart, and the game goes on. The run is kept in "
               f"{RUNS}/gan-game. The game of")
    f = Figure("gan-game", "The GAN game",
               "D(x) and D(G(z)) of an MNIST GAN over training with the line at 1/2, and both players' losses with "
               "the line at log 4.",
               caption, "Goodfellow et al. (2014), Generative adversarial nets", "https://arxiv.org/abs/1406.2661",
               numbers, runs=[str(run)])
    return _finish(f, fig, out_dir)


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------

MAKERS: dict[str, Callable[..., Figure]] = {
    "gan-1d": gan_1d,
    "dae-field": dae_field,
    "linear-ae-pca": linear_ae_pca,
    "aevb-manifold": aevb_manifold,
    "gan-game": gan_game,
}
FIGURES = tuple(MAKERS)
NEEDS_MNIST = ("linear-ae-pca", "aevb-manifold", "gan-game")
TRAINER_RUNS = ("aevb-manifold", "gan-game")  # trained by vaelab's trainer, on --device


def chosen(only: list[str] | str | None) -> list[str]:
    """The figures ``only`` names (a list, or one string of names with commas), in the page's
    order; all five for None."""
    if only is None:
        return list(FIGURES)
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in MAKERS]
    if unknown:
        raise VaelabError(f"--only takes figure names among {', '.join(FIGURES)}; got {clip(unknown[0])!r}"
                          f"{did_you_mean(unknown[0], FIGURES)}.")
    if not names:
        raise VaelabError(f"--only names no figure: give one or more of {', '.join(FIGURES)}.")
    return [n for n in FIGURES if n in names]


def write_figures(out_dir: Path, seed: int = 0, data_dir: str | None = None, log=print,
                  only: list[str] | str | None = None, threads: int | None = THREADS, device: str = "auto") -> Path:
    """Train and draw the lecture's figures into ``out_dir``: ``<name>.png`` and ``<name>.json``
    for each, ``index.json`` (files and seconds) and the page ``figures.html``.

    Args:
        out_dir: the folder to write (created; files of the same names are replaced).
        seed: the seed of every run; the same seed gives the same numbers on one CPU.
        data_dir: where MNIST is (a folder holding ``mnist/``); default ``$VAELAB_DATA`` and
            vaelab's usual places. Needed by linear-ae-pca, aevb-manifold and gan-game.
        log: called with a line of progress at a time.
        only: the names of the figures to make (default all of :data:`FIGURES`), in any order: a
            list, or one string with commas (``"gan-1d,dae-field"``).
        threads: torch's CPU threads for the figures' training (default :data:`THREADS`, one;
            None: whatever torch has); put back afterwards. The numbers may differ in their last
            digits from one thread count to another.
        device: where the two MNIST runs of vaelab's trainer (aevb-manifold, gan-game) train:
            ``auto`` (CUDA where there is one), ``cpu``, ``cuda[:N]``; the other figures' small
            nets train on the CPU.

    Returns:
        The page's path, ``out_dir/figures.html``.
    """
    names = chosen(only)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise VaelabError(f"--out {clip(out_dir)} is a file, not a directory.")
    mnist = [n for n in names if n in NEEDS_MNIST]
    if mnist and locate_dataset("mnist", data_dir) is None:  # before any training starts
        where = (f"--data-dir {clip(data_dir)}" if data_dir is not None
                 else "$VAELAB_DATA, ./data or ~/.local/share/vaelab")
        raise VaelabError(f"the figures {', '.join(mnist)} train on MNIST, which is not in {where} (a folder "
                          f"mnist/ with its 4 IDX files): pass --data-dir, or --only "
                          f"{','.join(n for n in FIGURES if n not in NEEDS_MNIST)}.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaelabError(f"cannot create --out {clip(out_dir)}: {e.strerror or e}.") from None
    made: list[Figure] = []
    start = time.perf_counter()
    for name in names:
        log(f"figure {name}: training")
        t0 = time.perf_counter()
        more = {"device": device} if name in TRAINER_RUNS else {}
        fig = MAKERS[name](out_dir, seed=seed, data_dir=data_dir, log=log, threads=threads, **more)
        fig.seconds = time.perf_counter() - t0
        log(f"figure {name}: {fig.png.name} and {fig.json.name} in {fig.seconds:.1f}s")
        made.append(fig)
    total = time.perf_counter() - start
    write_json(out_dir / INDEX, {
        "vaelab_version": __version__, "seed": seed, "total_seconds": round(total, 2),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "figures": [{"name": f.name, "title": f.title, "png": f.png.name, "json": f.json.name,
                     "seconds": round(f.seconds, 2), "runs": [Path(r).relative_to(out_dir).as_posix()
                                                              if Path(r).is_relative_to(out_dir) else r
                                                              for r in f.runs]} for f in made]})
    page = write_page(out_dir / PAGE, PAGE, version=__version__, written=datetime.date.today().isoformat(),
                      seed=seed, total=total, all_made=len(made) == len(FIGURES),
                      figures=[{"name": f.name, "title": f.title, "alt": f.alt, "caption": f.caption,
                                "paper": f.paper, "url": f.url, "src": data_uri(f.png), "seconds": f.seconds}
                               for f in made])
    log(f"wrote {page}")
    return page
