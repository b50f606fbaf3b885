"""The pictures training leaves in a run directory, each drawn with its rows and columns
labelled and returned as a :class:`~vaelab.images.Figure` that knows its title and caption."""
from __future__ import annotations

from pathlib import Path

import torch

from ..images import (Figure, fraction_labels, interpolate, interpolate_prior, manifold, plot_curves, reconstruction_rows, save_grid,
                      save_manifold)
from ..loading import load, split_inputs
from ..models.base import ENCODE, LIKELIHOOD, SAMPLE
from ..rundir import METRICS, PNG, read_jsonl
from ..samplers import resolve_sampler, sampler_for


def _device(model) -> torch.device:
    return next(model.parameters()).device


def sampler_words(spec) -> str:
    """How a sampler draws, for a caption (its own: it completes "samples drawn from ...")."""
    return spec.caption


def run_pictures(run_dir, n: int = 64, data_dir: str | None = None, seed: int = 0,
                 model: torch.nn.Module | None = None, x: torch.Tensor | None = None, log=None) -> list[Figure]:
    """Write samples.png (from the model's default sampler), reconstructions.png (models with an
    encoder), interpolation.png (between encoded test images, or prior draws for a GAN),
    curves.png and, for a 2-D latent, manifold.png into the run directory, and the model's own
    pictures; each labelled, and returned with its title and caption."""
    run_dir = Path(run_dir)
    model = load(run_dir) if model is None else model
    x = split_inputs(run_dir, "test", data_dir)[0] if x is None else x
    ckpt = getattr(model, "checkpoint", "best")
    torch.manual_seed(seed)
    out = []
    if model.can(ENCODE):
        shown = min(32, len(x))
        path = save_grid(reconstruction_rows(model, x[:shown], 8), run_dir / PNG.reconstructions, nrow=8,
                         row_labels=["input", "reconstruction"])
        out.append(Figure(path, "Reconstructions",
                          f"The first {shown} test images (rows labelled input), each above its reconstruction "
                          f"(rows labelled reconstruction): the decoder's mean at the encoder's code, by the {ckpt} "
                          "checkpoint."))
        pairs = min(8, len(x) // 2)  # a small test set gives fewer lines
        if pairs:
            steps = 10
            path = save_grid(interpolate(model, x[:pairs], x[pairs:2 * pairs], steps), run_dir / PNG.interpolation,
                             nrow=steps, col_labels=fraction_labels(steps))
            out.append(Figure(path, "Interpolations",
                              f"Each row decodes {steps} evenly spaced points t (above each column) on the straight "
                              f"line (1 - t) z0 + t z1 between the codes of two test images: test image i at t = 0, "
                              f"test image {pairs} + i at t = 1, for the first {pairs} pairs."))
    else:
        steps = 10
        path = save_grid(interpolate_prior(model, 8, steps, seed), run_dir / PNG.interpolation, nrow=steps,
                         col_labels=fraction_labels(steps))
        out.append(Figure(path, "Interpolations",
                          f"Each row decodes {steps} evenly spaced points t (above each column) on the straight line "
                          f"(1 - t) z0 + t z1 between two draws of the prior (seed {seed}); the model has no encoder, "
                          "so the ends are generated images, not test images."))
    if model.can(SAMPLE):
        spec = resolve_sampler(None, type(model), run_dir)
        drawer = sampler_for(run_dir, model, spec, ckpt, data_dir, log)
        path = save_grid(drawer.sample(n), run_dir / PNG.samples, nrow=8)
        how = ("each is G(z), the generator's output" if not model.can(ENCODE)
               else "each is the decoder's output for its code" if not model.can(LIKELIHOOD)
               else "each is the decoder's mean, not a draw of p(x|z)")
        out.append(Figure(path, "Samples", f"{n} samples (seed {seed}) of the {ckpt} checkpoint, drawn from "
                          f"{sampler_words(spec)} (--sampler {spec}); {how}."))
        if model.cfg.latent_dim == 2 and model.normal_prior:
            grid_n = 20
            path = save_manifold(manifold(model, grid_n), grid_n, run_dir / PNG.manifold)
            out.append(Figure(path, "The learned manifold",
                              f"The decoder's mean over a {grid_n} x {grid_n} grid of the 2-D latent space, as in "
                              "Kingma & Welling's Figure 4: evenly spaced points of the unit square mapped through the "
                              "inverse Gaussian CDF, so that each cell holds the same prior mass; the axes give z1 "
                              "and z2."))
    out += model.pictures(x.to(_device(model)), run_dir)
    hist = read_jsonl(run_dir / METRICS)
    if hist:
        likelihood = model.can(LIKELIHOOD)
        label = "training loss (nats/example)" if likelihood else "training loss"
        path = plot_curves(hist, run_dir / PNG.curves, label)
        val = hist[0].get("val_name")
        loss = ("the negative of M2's objective: its bounds and classification term, weighted, in nats per "
                "example, " if model.labelled_part else "the negative ELBO in nats per example, " if likelihood else "")
        right = f"the validation {val} at each epoch's end" if val else "nothing: the run had no validation set"
        out.append(Figure(path, "Training curves",
                          f"Left: the training loss ({loss}the mean over each epoch's steps). Right: {right}."))
    return out
