"""The Python API: the same things the CLI does, from code.

    import vaelab
    cfg = vaelab.make_config(data="mnist", preset="aevb", epochs=5, out="runs/aevb")
    run_dir = vaelab.train(cfg)
    model = vaelab.load(run_dir)        # .encode .decode .sample .reconstruct
    print(vaelab.evaluate(run_dir, k=5000))
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from . import distributed
from .io import read_metadata, write_json
from .limits import check_nll_samples
from .config import check_seed, check_threads
from .data.batch import Batch
from .data.transforms import dequantize_fixed, from_dequantized_scale, to_dequantized_scale
from .errors import VaelabError
from .images import interpolate, interpolate_prior, manifold, reconstruction_rows  # noqa: F401 - the API's
from .report.pictures import run_pictures
from .report.run import write_figures_record, write_report
from .evaluation.likelihood import evaluate_likelihood
from .models.base import ENCODE, LIKELIHOOD, SAMPLE
from .run import RunConfig
from .loading import load, resolve_device, split_inputs
from .rundir import CHECKPOINTS, FINISHED, TRAINING_EVAL, result_name
from .samplers import resolve_sampler, sampler_for
from .training.trainer import train as _train_loop

def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate(run_dir, split: str = "test", k: int = 1000, batch_size: int = 100, checkpoint: str = "best",
             data_dir: str | None = None, device: str = "auto", progress: bool = False, save: bool = True,
             model: torch.nn.Module | None = None, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
             sample_metrics: bool | None = None, samples: int = 10_000, log=None, compile: bool | None = None,
             precision: str = "auto", seed: int | None = 0, sampler: str | None = None,
             threads: int | None = None, dist_timeout: float = distributed.DEFAULT_TIMEOUT_S,
             out: str | Path | None = None) -> dict:
    """Metrics of a run on a split, saved as ``out`` (default: the run directory's
    ``eval-<split>-<checkpoint>[-k<K>][-<sampler>-n<samples>]-seed<seed>.json``, a name that says
    how it was measured, so that training's ``eval-test.json`` is never replaced; the JSON
    records the same settings): the reconstruction error of every model (``mse``, per pixel), and
    for models with a likelihood the ELBO, importance-sampled NLL (``k`` samples) and bits/dim in
    nats per example. For a model that can sample (``sample_metrics``, default: whenever it can),
    the Parzen-window log-likelihood and the Fréchet distance of ``samples`` samples
    (:mod:`vaelab.evaluation.samples`), drawn by ``sampler`` (:mod:`vaelab.samplers`: ``prior``,
    ``gmm:K``, ``two-stage``, ``pixelcnn``; default: the model's own), which a model without a
    prior of its own may be given too. ``model``, ``x`` and its labels ``y`` may be passed when
    the caller has loaded them already. ``compile``, ``precision``: the importance-sampled NLL's path
    (:func:`vaelab.evaluation.likelihood.choose_path`; by default chosen from the CPU and the
    work); ``seed``: its importance samples' seed.

    Under torchrun (``torchrun --nproc-per-node N -m vaelab eval``) the ranks share the work: the
    test images of the reconstruction error and the NLL, the samples scored. Every rank returns
    the one-process figures (the NLL, ELBO, bits/dim and error to the last bit; the Parzen
    log-likelihood to float rounding), and rank 0 alone logs and writes the file. ``threads``: torch's
    CPU threads (default: torch's choice; under torchrun, the cores shared by the ranks);
    ``dist_timeout``: seconds a collective waits for a rank that died or hung. Both apply where
    ``model`` is not given (given, it is the caller's set-up)."""
    if k < 1:
        raise VaelabError(f"--nll-samples must be at least 1, got {k}.")
    check_nll_samples(k)
    if batch_size < 1:
        raise VaelabError(f"--batch-size must be at least 1, got {batch_size}.")
    check_threads("--threads", threads)  # as every command's (torch's OverflowError past 2^63)
    check_seed("--seed", seed)
    if dist_timeout <= 0:
        raise VaelabError(f"--dist-timeout must be positive, got {dist_timeout:g}.")
    if model is None:  # under torchrun: join the group; a rank on CUDA takes cuda:LOCAL_RANK
        dev = str(distributed.setup(resolve_device(device), dist_timeout, threads))
        model = distributed.together(lambda: load(run_dir, checkpoint, dev))  # a rank that cannot read it says so
    log = log if distributed.is_main() else None
    run = model.run_config
    spec = None if sampler is None else resolve_sampler(sampler, type(model), run_dir)
    scores_samples = (model.can(SAMPLE) or spec is not None) and sample_metrics is not False
    if scores_samples and distributed.active():  # enough samples for the ranks? before the NLL's minutes
        from .evaluation.samples import check_samples
        distributed.together(lambda: check_samples(samples, model.data_spec.shape))
    if x is None:
        x, y = distributed.together(lambda: split_inputs(run_dir, split, data_dir))
    x = x.to(_device(model))
    # the split's labels, where the data has classes (a model that reads them: M2's accuracy)
    y = y.to(x.device) if y is not None and model.data_spec.num_classes >= 2 else None
    levels = model.data_spec.levels
    deq = run.model.dequantizes  # a density on (k + u) / levels
    res = {"split": split, "checkpoint": checkpoint, "seed": seed}
    if model.can(ENCODE):
        res["mse"] = reconstruction_mse(model, x, batch_size, levels if deq else None)
    res.update(distributed.from_main(model.metrics, Batch(x, y)))  # whole-split figures: rank 0's, not every rank's
    if model.can(ENCODE) and not model.can(LIKELIHOOD) and getattr(run.model, "arch", None) == "linear":
        # the linear autoencoder against PCA fitted on the same training images
        from .evaluation.pca import pca_report
        res["pca"] = distributed.from_main(lambda: pca_report(model, split_inputs(run_dir, "train", data_dir)[0],
                                                              x.cpu()))
    if model.can(LIKELIHOOD):
        offset = 0.0
        if deq:
            x, offset = dequantize_fixed(x, levels), x[0].numel() * math.log(levels)
        res.update(evaluate_likelihood(model, x, k, discrete=model.discrete(levels), progress=progress, offset=offset,
                                       compile=compile, precision=precision, seed=seed, log=log, y=y))
        if getattr(model, "conditional", False):  # -log p(x|y): never in one column with -log p(x)
            res["nll_of"] = "x given its label"
    else:
        res["n"] = len(x)
    if scores_samples:
        from .evaluation.samples import sample_metrics as _sample_metrics
        spec = spec or resolve_sampler(None, type(model), run_dir)
        # rank 0 fits a sampler (and caches it in the run directory) before the others read it
        drawer = distributed.main_first(sampler_for, run_dir, model, spec, checkpoint, data_dir, log)
        res["sampler"] = str(spec)
        res["samples"] = samples
        res.update(_sample_metrics(model, samples, data_dir, log=log, sampler=drawer))
    res = distributed.broadcast_object(res)  # every rank returns rank 0's dict
    if save and distributed.is_main():
        if out is None:
            out = Path(run_dir) / result_name(
                "eval", ".json", split, checkpoint, f"k{k}" if "nll" in res else None,
                *((spec.slug, f"n{samples}") if scores_samples else ()),
                f"seed{seed}" if seed is not None else "unseeded")
        write_json(Path(out), res)
        if log:
            log(f"wrote {out}")
    return res


@torch.no_grad()
def reconstruction_mse(model, x: torch.Tensor, batch_size: int = 500, dequantized_levels: int | None = None) -> float:
    """Mean squared error per pixel between x and its reconstruction (at the code / posterior mean).
    ``dequantized_levels``: the model is a density on dequantized pixels (k + u) / levels (its
    config's ``dequantizes``); it then reconstructs x on its own scale and the
    reconstruction is mapped back to x's scale k / (levels - 1) before the comparison. Under
    torchrun each rank takes whole batches and the batches' sums are added in order on every rank."""
    model.eval()
    sums = []
    for b in distributed.blocks(len(x), batch_size):
        xb = x[b * batch_size:(b + 1) * batch_size]
        if dequantized_levels is None:
            r = model.reconstruct(xb)
        else:
            r = from_dequantized_scale(model.reconstruct(to_dequantized_scale(xb, dequantized_levels)),
                                       dequantized_levels)
        sums.append(((r - xb) ** 2).sum().item())
    return sum(distributed.gather(sums)) / x.numel()


def pictures(run_dir, n: int = 64, data_dir: str | None = None, seed: int = 0,
             model: torch.nn.Module | None = None, x: torch.Tensor | None = None, log=None) -> list:
    """Write the run's pictures (samples.png, reconstructions.png, interpolation.png, curves.png,
    manifold.png for a 2-D latent, and the model's own) into the run directory, labelled; returns
    them as :class:`vaelab.images.Figure` (``path``, ``title``, ``caption``)."""
    return run_pictures(run_dir, n, data_dir, seed, model, x, log)


def train(config: RunConfig, resume: str | Path | None = None, log=None) -> Path:
    """Train, then evaluate the best checkpoint on the test set (``nll_samples`` importance
    samples for a likelihood; 0 skips it) and draw the pictures. Returns the run directory.
    Resuming a run stopped after its last epoch but before these final stages finishes them."""
    kw = {"log": log} if log else {}
    with contextlib.ExitStack() as hold:  # the run directory stays locked until its last file
        run_dir = _train_loop(config, resume=resume, hold=hold, **kw)
        # under torchrun every rank loads the model (onto its own GPU) and takes its part of the
        # evaluation (a rank that cannot read the run says so: together); rank 0 alone logs, draws
        # the pictures and writes
        device = str(distributed.local_device(resolve_device(config.train.device)))

        def read():
            model = load(run_dir, "best", device)
            return model, *split_inputs(run_dir, "test", model.run_config.data.data_dir)
        model, x, y = distributed.together(read)
        run = model.run_config
        has_likelihood = model.can(LIKELIHOOD)
        if run.train.nll_samples > 0 or not has_likelihood:
            # a likelihood model is scored by its likelihood here; its samples by `vaelab eval`
            evaluate(run_dir, "test", max(1, run.train.nll_samples), model=model, x=x, y=y,
                     sample_metrics=not has_likelihood, log=log, compile=run.train.compile or None,
                     out=run_dir / TRAINING_EVAL, progress=run.train.progress)

        def finish():
            figures = pictures(run_dir, data_dir=run.data.data_dir, model=model, x=x, log=log)
            write_figures_record(run_dir, figures)
            # what lets --resume tell a finished run from one killed in the stages above
            epochs = read_metadata(run_dir / CHECKPOINTS["last"])["epoch"]
            write_json(run_dir / FINISHED, {"epochs": epochs, **({"report": False} if run.train.report else {})})
            # last, so that it shows the run finished (vaelab report RUN_DIR writes it again); then
            # said done, since a page that could not be written leaves the last one, which is stale
            if run.train.report:
                write_report(run_dir, run.data.data_dir, model=model, x=x, y=y)
                write_json(run_dir / FINISHED, {"epochs": epochs, "report": True})
        distributed.together(finish, main_only=True)  # and no rank leaves before rank 0 is done
    return run_dir
