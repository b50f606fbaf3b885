"""Non-finite losses injected into training: the guard must drop each poisoned step and leave no
trace of it, and a run whose every step turns non-finite must stop in one sentence, keeping the
checkpoints of its last good epoch.

:func:`poisoned` makes the loss of chosen steps NaN (the first update of the step: a GAN's
discriminator, a model's only one), in this process, by wrapping the trainer's step:
``vaelab.training.trainer.take_step`` notes the step, ``vaelab.training.update.apply_update``
multiplies that step's loss by NaN. :func:`transient` poisons a few random steps of a run,
which must then finish with exactly those steps counted as skipped and finite weights;
:func:`persistent` poisons every step from the middle of the second epoch on, and the run must
stop with exit status 2, one ``error:`` line saying it diverged, and epoch 1's finite
checkpoints. tests/test_run_safety.py runs one model; benchmarks/nonfinite.py every registered
one.
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

def argv(model: str, out: Path, epochs: int) -> list[str]:
    from crashes import train_argv
    a = train_argv(model, epochs=epochs)
    a[a.index("--nll-samples") + 1] = "0"
    return [*a, "--out", str(out), "--max-bad-steps", "3", "--log-every", "1"]


@contextlib.contextmanager
def poisoned(bad):
    """Within this block, the first update of each training step for whose
    :class:`~vaelab.models.base.StepInfo` ``bad(info)`` holds has a NaN loss."""
    import vaelab.training.trainer as trainer
    import vaelab.training.update as update
    state = {"info": None, "first": False}
    real_step, real_apply = trainer.take_step, update.apply_update

    def take_step(model, optimizers, batch, info, fast):
        state["info"], state["first"] = info, True
        return real_step(model, optimizers, batch, info, fast)

    def apply_update(loss, *a, **kw):
        if state["first"] and bad(state["info"]):
            loss = loss * float("nan")
        state["first"] = False
        return real_apply(loss, *a, **kw)
    trainer.take_step, update.apply_update = take_step, apply_update
    try:
        yield
    finally:
        trainer.take_step, update.apply_update = real_step, real_apply


def _main(args) -> tuple[int, str]:
    from vaelab.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(args)
    return rc, err.getvalue()


def _finite(run: Path, name: str) -> bool:
    from safetensors.torch import load_file
    p = run / name
    return p.exists() and all(torch.isfinite(v).all() for v in load_file(str(p)).values() if v.is_floating_point())


@dataclass
class Injected:
    """What injecting non-finite losses into one model's runs found."""
    model: str
    injected: int = 0    # poisoned steps of the transient runs
    skipped: int = 0     # of those, dropped: counted as skipped, the run ending finite
    persistent: int = 0  # runs poisoned for good
    stopped: int = 0     # of those, stopped in one sentence with epoch 1's checkpoints kept
    failures: list[str] = field(default_factory=list)


def transient(model: str, work: Path, out: Injected, count: int = 3, seed: int = 0) -> None:
    """Poison ``count`` random steps of a 2-epoch run, drawn once the steps of an epoch are known
    (a GAN's step takes k minibatches)."""
    rng = np.random.default_rng(seed)
    steps: set[int] = set()

    def bad(info) -> bool:
        if not steps:
            steps.update(rng.choice(2 * info.steps_per_epoch, count, replace=False).tolist())
        return info.step in steps
    run = work / f"{model}-transient-{seed}"
    with poisoned(bad):
        rc, err = _main(argv(model, run, 2))
    out.injected += count
    if rc != 0:
        out.failures.append(f"{model}: a run with {count} poisoned steps ended with status {rc}: {err[-500:]}")
        return
    recorded = sum(json.loads(line).get("skipped_steps", 0) for line in (run / "metrics.jsonl").read_text().splitlines())
    if recorded != count or not all(_finite(run, n) for n in ("model.safetensors", "best.safetensors")):
        out.failures.append(f"{model}: {count} poisoned steps, {recorded} counted as skipped")
        return
    out.skipped += count


def persistent(model: str, work: Path, out: Injected) -> None:
    """Every step from the middle of epoch 2 on poisoned: the run stops, keeping epoch 1."""
    run = work / f"{model}-persistent"
    with poisoned(lambda info: info.step >= info.steps_per_epoch * 3 // 2):
        rc, err = _main(argv(model, run, 3))
    out.persistent += 1
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    ok = (rc == 2 and len(lines) == 1 and "training diverged" in lines[0] and "Traceback" not in err
          and all(_finite(run, n) for n in ("model.safetensors", "best.safetensors"))
          and [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1])
    if ok:
        out.stopped += 1
    else:
        out.failures.append(f"{model}: poisoned for good, ended with status {rc}: {err.strip()[-500:]}")
