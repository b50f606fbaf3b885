"""Figures the report draws from a run's model and its test images (none is a file of the run):
a traversal of each latent dimension, the test codes in 2-D coloured by label, and the
distribution of per-image reconstruction error with the worst test images."""
from __future__ import annotations

import numpy as np
import torch

from ..images import grid, rows_interleaved
from .page import figure_uri

TRAVERSE_DIMS = 10   # at most this many latent dimensions are traversed: those whose codes vary most
TRAVERSE_STEPS = 9
CODES_SHOWN = 5000   # test images placed in the 2-D view
WORST = 8


@torch.no_grad()
def _codes(model, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    dev = next(model.parameters()).device
    return torch.cat([model.codes(x[i:i + batch].to(dev)).cpu() for i in range(0, len(x), batch)])


def _image_figure(arr: np.ndarray, width: float, height: float, row_labels=None, col_labels=None, nrow=None,
                  cell=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(width, height))
    ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if row_labels is not None and cell is not None:
        ax.set_yticks([(i + 0.5) * cell[0] for i in range(len(row_labels))], row_labels, fontsize=8)
    if col_labels is not None and cell is not None:
        ax.set_xticks([(j + 0.5) * cell[1] for j in range(len(col_labels))], col_labels, fontsize=8)
    for s in ax.spines.values():
        s.set_visible(False)
    return fig


@torch.no_grad()
def traversal(model, x: torch.Tensor) -> tuple[str, str] | None:
    """Each latent dimension varied alone about the mean test code: (data URI, caption), or None
    for a model whose latent is no vector of at most a few hundred dimensions."""
    if getattr(model, "latent", "vector") != "vector":
        return None
    z = _codes(model, x)
    if z.ndim != 2 or z.shape[1] > 512:
        return None
    std = z.std(0)
    dims = torch.argsort(std, descending=True)[:TRAVERSE_DIMS].sort().values
    mean = z.mean(0)
    normal = getattr(model, "normal_prior", False)
    # the prior's quantiles for a N(0, I) prior; else +-2.5 standard deviations of the test codes
    u = torch.linspace(-2.5, 2.5, TRAVERSE_STEPS)
    rows = []
    for d in dims.tolist():
        zz = mean.repeat(TRAVERSE_STEPS, 1)
        zz[:, d] = u if normal else mean[d] + u * std[d]
        rows.append(model.decode_mean(zz.to(next(model.parameters()).device)).cpu())
    imgs = torch.cat(rows)
    arr = grid(imgs, TRAVERSE_STEPS)
    h, w = arr.shape[0] / len(dims), arr.shape[1] / TRAVERSE_STEPS
    col = [f"{v:+.1f}" for v in u.tolist()]
    fig = _image_figure(arr, min(9, 1.0 + arr.shape[1] / 70), min(12, 0.6 + arr.shape[0] / 70),
                        row_labels=[f"z{d + 1}" for d in dims.tolist()], col_labels=col, cell=(h, w))
    how = ("z_d set to -2.5 ... +2.5 (the prior's scale; labelled above the columns)" if normal else
           "z_d moved by -2.5 ... +2.5 standard deviations of the test codes (labelled above the columns)")
    which = (f"the {len(dims)} dimensions whose test codes vary most, of {z.shape[1]}" if z.shape[1] > len(dims)
             else f"all {z.shape[1]} dimensions")
    return figure_uri(fig), (f"Each row decodes the mean code of the {len(x):,} test images with one latent dimension "
                             f"(labelled on the left) changed alone: {how}. Rows: {which}.")


@torch.no_grad()
def codes_2d(model, x: torch.Tensor, y: torch.Tensor | None) -> tuple[str, str] | None:
    """The test images' codes in 2-D, coloured by label: the codes themselves for a 2-D latent,
    their first two principal components otherwise."""
    z = _codes(model, x[:CODES_SHOWN]).flatten(1).numpy()
    if z.shape[1] < 2:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if z.shape[1] == 2:
        pts, axes, how = z, ("z1", "z2"), "the 2-D codes themselves"
    else:
        from sklearn.decomposition import PCA
        pca = PCA(2, random_state=0).fit(z)
        pts = pca.transform(z)
        var = pca.explained_variance_ratio_
        axes = (f"PC 1 ({100 * var[0]:.0f}% of the variance)", f"PC 2 ({100 * var[1]:.0f}%)")
        how = f"the first two principal components of the {z.shape[1]}-D codes"
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    labels = y[:len(pts)].numpy() if y is not None and len(y) else None
    if labels is not None and len(np.unique(labels)) <= 20:
        for c in np.unique(labels):
            m = labels == c
            ax.scatter(pts[m, 0], pts[m, 1], s=6, alpha=0.7, label=str(c), color=plt.cm.tab20(int(c) % 20)
                       if len(np.unique(labels)) > 10 else plt.cm.tab10(int(c) % 10))
        ax.legend(title="label", fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.6)
    ax.set(xlabel=axes[0], ylabel=axes[1])
    ax.grid(alpha=0.3)
    coloured = "coloured by their label" if labels is not None and len(np.unique(labels)) <= 20 else "(no labels)"
    return figure_uri(fig), (f"The codes of {len(pts):,} test images, {coloured}: {how}. Classes that separate here "
                             "are what a linear probe on the codes can read.")


@torch.no_grad()
def error_histogram(model, x: torch.Tensor) -> tuple[str, str, str, str] | None:
    """Per-image reconstruction error of the test images as a histogram, and the worst images above
    their reconstructions: (histogram URI, its caption, worst URI, its caption)."""
    dev = next(model.parameters()).device
    errs, recs = [], []
    for i in range(0, len(x), 500):
        xb = x[i:i + 500].to(dev)
        r = model.reconstruct(xb)
        errs.append(((r - xb) ** 2).flatten(1).mean(1).cpu())
    err = torch.cat(errs)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.hist(err.numpy(), bins=60, color="C0")
    ax.axvline(err.mean().item(), color="C3", lw=1, label=f"mean {err.mean().item():.4f}")
    ax.set(xlabel="reconstruction error per image (mean squared error per pixel)", ylabel="test images")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    hist = figure_uri(fig)
    worst = torch.argsort(err, descending=True)[:WORST]
    xw = x[worst.to(x.device)].cpu()
    recs = model.reconstruct(xw.to(dev)).cpu()
    arr = grid(rows_interleaved(xw, recs, WORST), WORST)
    cell = (arr.shape[0] / 2, arr.shape[1] / WORST)
    fig = _image_figure(arr, min(9, 1.2 + arr.shape[1] / 70), min(4, 0.5 + arr.shape[0] / 70),
                        row_labels=["input", "reconstruction"], col_labels=[f"{e:.3f}" for e in err[worst].tolist()],
                        cell=cell)
    return (hist, f"The distribution of the reconstruction error of each of the {len(x):,} test images (the mean "
                  "squared error per pixel, pixels in [0, 1], at the code).",
            figure_uri(fig), f"The {WORST} test images with the largest reconstruction error (its value above each), "
                             "above their reconstructions.")
