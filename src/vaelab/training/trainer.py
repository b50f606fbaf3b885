"""The training loop: data in, checkpoints, metrics and pictures out. It knows nothing of
models: everything model-specific comes from the registry entry."""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import TrainConfig
from ..data import load_dataset
from ..data.transforms import Batches, dequantize_fixed, dequantizes, eval_inputs
from ..errors import VaelabError
from ..registry import get_model
from ..run import RunConfig, check_model_size
from . import checkpoint as ckpt
from .steps import StepContext, make_scalers

RUN_FILES = ("config.json", "model.safetensors", "best.safetensors", "resume.safetensors", "metrics.jsonl")
RUN_PATTERNS = ("eval-*.json", "*.png", "progress/epoch-*.png")  # results of the run, replaced with it
# What may change when a run is resumed: how long it trains and where it runs and finds its
# data, never what it computes.
RESUMABLE = {"train": ("epochs", "progress", "device", "threads", "log_every", "compile", "channels_last"),
             "data": ("data_dir", "data_path", "workers")}

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise VaelabError(f"--device must be auto, cpu or cuda[:N], got {name!r}.")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise VaelabError(f"--device {name} was asked for, but torch sees {count} CUDA GPU(s) here.")
    return dev


def uses_channels_last(t: TrainConfig, model: torch.nn.Module, device: torch.device) -> bool:
    """--channels-last, by default on for conv nets on CUDA (where cuDNN's NHWC kernels are the
    fast ones) and off on the CPU (measured slower there for vaelab's conv VAE)."""
    has_conv = any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())
    wanted = t.channels_last if t.channels_last is not None else device.type == "cuda"
    return bool(wanted and has_conv)


def _has_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):  # native bf16 (compute capability 8+), not emulated
        return torch.cuda.is_bf16_supported(including_emulation=False)


def _steps(batches, per_step: int):
    """The epoch's minibatches, one per step, or in lists of ``per_step`` (a GAN's k
    discriminator minibatches); a last incomplete group is dropped."""
    if per_step == 1:
        yield from batches
        return
    group = []
    for xb in batches:
        group.append(xb)
        if len(group) == per_step:
            yield group
            group = []


def learning_rate(t: TrainConfig, epoch: int, elapsed: float = 0.0) -> float:
    """The learning rate of epoch ``epoch`` (0-based): a pure function, so resume needs no
    scheduler state. With a time budget, progress is the fraction of it spent (``elapsed``
    seconds), so the schedule ends when the budget does."""
    final = t.lr_final if t.lr_final is not None else t.lr / 10
    if t.time_budget:
        frac = min(1.0, elapsed / (60 * t.time_budget))
    else:
        frac = epoch / max(1, t.epochs - 1)
    if t.lr_schedule == "cosine":
        return final + (t.lr - final) * 0.5 * (1 + math.cos(math.pi * frac))
    if t.lr_schedule == "exponential":
        return t.lr * (final / t.lr) ** frac
    return t.lr


def kl_weight(t: TrainConfig, step: int, steps_per_epoch: int) -> float:
    if t.warmup_epochs <= 0:
        return t.beta
    return t.beta * min(1.0, step / (t.warmup_epochs * steps_per_epoch))


def default_out(run: RunConfig) -> Path:
    return Path("runs") / f"{run.data.data}-{run.train.model}"


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise VaelabError(f"--out {out} is a file, not a directory.")
    if out.is_dir() and (out / "config.json").exists():
        if not overwrite:
            raise VaelabError(f"--out {out} already holds a run: pass --resume {out} to continue it, "
                              "--overwrite to replace it, or another --out.")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for pattern in RUN_PATTERNS:
            for p in out.glob(pattern):
                p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaelabError(f"cannot create the run directory --out {out}: {e.strerror or e}.") from None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train(run: RunConfig, resume: str | Path | None = None, log=_log) -> Path:
    """Train ``run`` (or continue the run in ``resume``) and return its run directory.

    The run directory receives config.json, the checkpoints and metrics.jsonl (evaluation and
    pictures are :func:`vaelab.api.train`'s). On resume, the run's own settings are used except
    the fields in :data:`RESUMABLE`, which are taken from ``run``.
    """
    if resume is not None:
        saved = ckpt.read_run_config(Path(resume))
        old = RunConfig.from_dict(saved["run"], f"{resume}/config.json")
        run = dataclasses.replace(old, **{
            part: dataclasses.replace(getattr(old, part), **{f: getattr(getattr(run, part), f) for f in fields})
            for part, fields in RESUMABLE.items()})
    t, d = run.train, run.data
    entry = get_model(t.model)
    device = resolve_device(t.device)
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.precision == "bf16" and device.type == "cuda" and not _has_bf16(device):
        raise VaelabError(f"--precision bf16 needs a GPU with bfloat16 support; {device} has none: use fp16.")
    ds = load_dataset(d.data, d.data_dir, val_size=d.val_size, split_seed=d.split_seed, download=d.download,
                      defer_cache=True, **d.reader_options())
    # what the model takes from the data: its image shape (and pixel levels, where it has them)
    from_data = {"shape": tuple(ds.spec.shape), "levels": ds.spec.levels}
    model_cfg = dataclasses.replace(run.model, **{k: v for k, v in from_data.items()
                                                  if k in {f.name for f in dataclasses.fields(run.model)}})
    if resume is not None and tuple(run.model.shape) != tuple(ds.spec.shape):
        raise VaelabError(f"--resume {resume}: the run was trained on images of shape {run.model.shape}, "
                          f"but {d.data} has {ds.spec.shape}.")
    if resume is not None and getattr(run.model, "levels", ds.spec.levels) != ds.spec.levels:
        raise VaelabError(f"--resume {resume}: the run was trained on {run.model.levels} pixel levels, "
                          f"but {d.data} now has {ds.spec.levels}.")
    run = dataclasses.replace(run, model=model_cfg)
    if t.batch_size > len(ds.train):
        raise VaelabError(f"--batch-size {t.batch_size} is larger than the training set ({len(ds.train)} images).")

    check_model_size(t.model, model_cfg)
    torch.manual_seed(t.seed)
    model = entry.model_cls(model_cfg).to(device)
    channels_last = uses_channels_last(t, model, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizers = entry.make_optimizers(model, t)
    scalers = make_scalers(t.precision, device.type, optimizers)
    gen = torch.Generator().manual_seed(t.seed + 1)  # batch order and dynamic binarization
    deq = dequantizes(model_cfg, d.binarize)
    batches = Batches(ds.train.x, ds.spec.levels, d.binarize, t.batch_size, gen, device, dequantize=deq,
                      drop_last=entry.drop_last)
    x_val = eval_inputs(ds.val.x, ds.spec.levels, d.binarize).to(device)
    if deq:
        x_val = dequantize_fixed(x_val, ds.spec.levels)
    per_step = entry.data_per_step(model_cfg)
    if len(batches) < per_step:
        raise VaelabError(f"--k {per_step} needs {per_step} minibatches per step, but the training set makes "
                          f"{len(batches)} of --batch-size {t.batch_size}.")

    out = Path(resume) if resume is not None else Path(t.out) if t.out else default_out(run)
    start_epoch, step, history, best = 0, 0, [], -math.inf
    if resume is not None:
        if not (out / "resume.safetensors").exists():
            raise VaelabError(f"--resume {out}: no finished epoch to resume from (resume.safetensors is missing).")
        rng, loop = ckpt.load_resume(out / "resume.safetensors", model, optimizers)
        ckpt.check_loop(out / "resume.safetensors", loop)
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["data"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)
        start_epoch, step, history, best = loop["epoch"], loop["global_step"], loop["history"], loop["best"]
        for name, state in loop.get("scalers", {}).items():
            scalers[name].load_state_dict(state)
        if start_epoch >= t.epochs:
            raise VaelabError(f"--resume {out}: the run already finished {start_epoch} epochs; "
                              f"pass --epochs larger than {start_epoch} to continue it.")
        log(f"resuming {out} at epoch {start_epoch + 1}/{t.epochs}")
    else:
        _prepare_out(out, t.overwrite)
    ds.keep_cache()  # the arguments passed: a later run may skip the decoding
    config_doc = {"format_version": ckpt.FORMAT_VERSION, "vaelab_version": __version__,
                  "run": run.to_dict(), "data_spec": ds.spec.to_dict(), "data_source": ds.source}
    ckpt.write_json(out / "config.json", config_doc)

    ctx = StepContext(iw_samples=t.iw_samples, grad_clip=t.grad_clip, precision=t.precision,
                      device_type=device.type, compile=t.compile, channels_last=channels_last, scalers=scalers)
    n_params = sum(p.numel() for p in model.parameters())
    if start_epoch == 0:
        log(f"training {t.model} ({n_params:,} parameters) on {d.data} "
            f"({len(ds.train)} train / {len(ds.val)} val) on {device} -> {out}")
    for epoch in range(start_epoch, t.epochs):
        elapsed = sum(h["seconds"] for h in history)
        if t.time_budget and elapsed >= 60 * t.time_budget:
            log(f"time budget of {t.time_budget:g} min spent after {epoch} epochs")
            break
        lr = learning_rate(t, epoch, elapsed)
        for opt in optimizers.values():  # each group's own rate (a GAN's players), scheduled alike
            for g in opt.param_groups:
                g["lr"] = g.get("base_lr", t.lr) * lr / t.lr
        model.train()
        # the sums stay on the device: a step never waits for the host, except to update the bar
        sums: dict[str, torch.Tensor] = {}
        skipped = torch.zeros((), device=device)
        t0 = time.perf_counter()
        bar = tqdm(_steps(batches, per_step), total=len(batches) // per_step, desc=f"epoch {epoch + 1}/{t.epochs}",
                   leave=False, disable=not t.progress or None, file=sys.stderr)
        for i, xb in enumerate(bar):
            ctx.kl_weight = kl_weight(t, step, len(batches))
            m = entry.train_step(model, optimizers, xb, ctx)
            step += 1
            dropped = m.pop("skipped").bool()
            skipped += dropped
            for k, v in m.items():  # a dropped step's metrics (NaN, maybe) are left out
                sums[k] = sums.get(k, 0.0) + torch.where(dropped, 0.0, v)
            if not bar.disable and i % t.log_every == 0:  # a hidden bar reads nothing
                bar.set_postfix(loss=f"{m['loss'].item():.2f}")
        n_skipped = int(skipped.item())
        taken = len(batches) // per_step - n_skipped
        seconds = time.perf_counter() - t0
        rec = {"epoch": epoch + 1, "lr": lr, "seconds": round(seconds, 3), "skipped_steps": n_skipped,
               "train_loss": (sums["loss"] / taken).item() if taken else float("nan")}
        rec.update({f"train_{k}": (v / taken).item() for k, v in sums.items() if k != "loss"})
        model.eval()
        if len(x_val):
            with torch.no_grad():
                scores = torch.cat([entry.val_metric(model, x_val[i:i + 1000]) for i in range(0, len(x_val), 1000)])
            rec["val"] = scores.mean().item()
            rec["val_name"] = entry.val_name
        history.append(rec)
        # without a validation set, the training score of the same quantity (not the loss,
        # which carries beta and the warm-up weight)
        metric = rec.get("val", rec.get(f"train_{entry.val_name}"))
        if entry.higher_is_better is None:  # no ranking of epochs: the best is the latest
            score = float(epoch + 1)
        elif metric is None:  # e.g. the IWAE bound is trained: its loss is the bound's negative
            score = -rec["train_loss"]
        else:
            score = metric if entry.higher_is_better else -metric
        improved = score > best
        best = max(best, score)
        ckpt.save_weights(model, out / "model.safetensors", {"epoch": epoch + 1})
        if improved:
            ckpt.save_weights(model, out / "best.safetensors", {"epoch": epoch + 1})
        rng = {"torch": torch.get_rng_state(), "data": gen.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        ckpt.save_resume(out / "resume.safetensors", model, optimizers, rng,
                         {"epoch": epoch + 1, "global_step": step, "history": history, "best": best,
                          "scalers": {name: s.state_dict() for name, s in scalers.items()}})
        ckpt.atomic_write(out / "metrics.jsonl",
                          lambda p: Path(p).write_text("".join(json.dumps(h) + "\n" for h in history)))
        if entry.epoch_pictures:
            entry.epoch_pictures(model, out, epoch + 1)
        val_txt = f", val {entry.val_name} {rec['val']:.3f}" if "val" in rec else ""
        log(f"epoch {epoch + 1}/{t.epochs}: train loss {rec['train_loss']:.3f}{val_txt} ({seconds:.1f}s)")
    return out
