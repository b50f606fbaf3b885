"""Killing training at random moments, and checking that ``--resume`` ends where an uninterrupted
run ends, bit for bit, with no temporary file left: the harness of tests/test_crashes.py (a few
kills) and benchmarks/faults.py (20 or more a model).

A moment is a *write event* of the child process: each opening of a file to write (Python's
``open`` and ``os.open``), each ``write`` to a file Python opened, and each rename (the commit of
an atomic write), counted in the order the run makes them. Kills land at events drawn uniformly
from those of a whole run, so they fall inside checkpoint writes (between the temporary's
creation and its rename), between two writes of one file, in the final evaluation's file, in the
pictures, in the report and the logs, wherever the run writes. (safetensors writes its files in
Rust: a kill lands before or after, not between its writes.) The child is ``vaelab`` itself, with
those functions wrapped to count, and to SIGKILL the process at the chosen event.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

# the wrapper: counts write events, dies at VAELAB_KILL_AT (0: never), writes the event names
# at exit to VAELAB_EVENTS when set. A file opened to write by Python is handed out behind a
# proxy that counts each write, so a kill can land between two writes of one file (a torn line,
# a half-written picture); os.open to write, and each rename, count too.
CHILD = r"""
import builtins, os, signal, sys, json
rank = os.environ.get("RANK")
kill_at = int(os.environ.get("VAELAB_KILL_AT", "0")) if os.environ.get("VAELAB_KILL_RANK", rank) == rank else 0
events = []
def event(what):
    events.append(what)
    if len(events) == kill_at:
        if os.environ.get("VAELAB_KILLED"):  # under torchrun, whose exit status does not say who died how
            os.close(real_os_open(os.environ["VAELAB_KILLED"], os.O_CREAT | os.O_WRONLY))
        os.kill(os.getpid(), signal.SIGKILL)
class Counted:
    def __init__(self, f, name):
        object.__setattr__(self, "_f", f)
        object.__setattr__(self, "_name", name)
    def write(self, data):
        event("write:" + self._name)
        return self._f.write(data)
    def writelines(self, lines):
        for line in lines:
            self.write(line)
    def __getattr__(self, name):
        return getattr(self._f, name)
    def __setattr__(self, name, value):
        setattr(self._f, name, value)
    def __enter__(self):
        self._f.__enter__()
        return self
    def __exit__(self, *exc):
        return self._f.__exit__(*exc)
    def __iter__(self):
        return iter(self._f)
real_open, real_os_open, real_replace = builtins.open, os.open, os.replace
def counted_open(file, mode="r", *a, **kw):
    f = real_open(file, mode, *a, **kw)
    if any(c in mode for c in "wax+"):
        name = os.path.basename(str(file))
        event("open:" + name)
        return Counted(f, name)
    return f
def counted_os_open(path, flags, *a, **kw):
    if flags & (os.O_WRONLY | os.O_RDWR):
        event("open:" + os.path.basename(str(path)))
    return real_os_open(path, flags, *a, **kw)
def counted_replace(src, dst, *a, **kw):
    event("replace:" + os.path.basename(str(dst)))
    return real_replace(src, dst, *a, **kw)
builtins.open, os.open, os.replace = counted_open, counted_os_open, counted_replace
from vaelab.cli import main
if rank is not None:  # under torchrun the ranks but rank 0 write nothing: their moments are their steps
    import vaelab.training.trainer as trainer
    real_step = trainer.take_step
    def counted_step(*a, **kw):
        event("step")
        return real_step(*a, **kw)
    trainer.take_step = counted_step
rc = main(sys.argv[1:])
if os.environ.get("VAELAB_EVENTS"):
    with real_open(os.environ["VAELAB_EVENTS"] + ("" if rank is None else f".{rank}"), "w") as f:
        json.dump(events, f)
sys.exit(rc)
"""


def train_argv(model: str, epochs: int = 3) -> list[str]:
    """A tiny run of ``model`` on the bundled digits that writes everything a run writes: each
    epoch's checkpoints and logs, the final evaluation, the pictures and the report."""
    from vaelab.registry import MODELS
    argv = ["train", "--model", model, "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs",
            str(epochs), "--batch-size", "64", "--nll-samples", "5", "--no-progress", "--threads", "1"]
    return argv + (["--labels", "50"] if MODELS[model].labelled_part else [])


def child(argv: list[str], kill_at: int = 0, events: Path | None = None, timeout: float = 600,
          ranks: int = 0, kill_rank: int = 0) -> tuple[int, str]:
    """``vaelab argv`` in a child killed at write event ``kill_at`` (0: never): its exit status
    (-9 when killed) and what it said on stderr. ``events``: where to write the list of its
    write events (``events.RANK`` for each rank under torchrun).

    ``ranks``: under torchrun with that many ranks on this machine, where rank ``kill_rank`` is
    killed at its event ``kill_at`` (the steps count as events of every rank, since the ranks
    but rank 0 write nothing); the exit status is then -9 when that kill happened, whatever
    torchrun's own."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "VAELAB_KILL_AT": str(kill_at),
           "VAELAB_EVENTS": str(events or "")}
    if not ranks:
        p = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=timeout,
                           env=env)
        return p.returncode, p.stderr
    with tempfile.TemporaryDirectory(prefix="vaelab-kill-") as tmp:
        script, killed = Path(tmp) / "child.py", Path(tmp) / "killed"
        script.write_text(CHILD)
        env.update(VAELAB_KILL_RANK=str(kill_rank), VAELAB_KILLED=str(killed), OMP_NUM_THREADS="1",
                   GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                            str(ranks), str(script), *argv], capture_output=True, text=True, timeout=timeout, env=env)
        return (-9 if killed.exists() else p.returncode), p.stderr


def temporaries(run: Path) -> list[str]:
    """The temporaries of vaelab's writes left in ``run`` (``.NAME.RANDOM.tmp``)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*.tmp"))


def _untimed(obj):
    """``obj`` (JSON) without its timings: the figures two runs of the same work share."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMINGS and not k.endswith("_per_s")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


TIMINGS = {"seconds", "elapsed", "wall_seconds", "epoch_seconds"}


def same_weights(a: Path, b: Path) -> bool:
    """Whether two runs end the same, to the bit: the tensors of the last and best checkpoints
    and the resume file (weights, optimizer state, random streams), the resume file's loop
    state (epoch, step, history, best score) and every epoch's record in metrics.jsonl, their
    timings aside."""
    from vaelab.io import read_metadata
    for name in ("model.safetensors", "best.safetensors", "resume.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        if ta.keys() != tb.keys() or not all(torch.equal(ta[k], tb[k]) for k in ta):
            return False
    if _untimed(read_metadata(a / "resume.safetensors")) != _untimed(read_metadata(b / "resume.safetensors")):
        return False
    records = [[_untimed(json.loads(line)) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (a, b)]
    return records[0] == records[1]


@dataclass
class Crashes:
    """What killing one model's runs found: ``kills`` (each with the event it landed on), the
    ``runs`` that were taken to the end through them, and how many of those ended equal to the
    uninterrupted run (``equal``) with no temporary left (``clean``)."""
    model: str
    kills: list[str] = field(default_factory=list)
    runs: int = 0
    equal: int = 0
    clean: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def survived(self) -> int:
        """Kills whose run ended bitwise equal and clean."""
        return len(self.kills) if self.equal == self.clean == self.runs else 0


def kill_and_resume(argv: list[str], work: Path, kills: int, seed: int = 0, model: str = "",
                    ranks: int = 0) -> Crashes:
    """Train ``argv`` (``train ...`` without ``--out``) once uninterrupted, then again, killed at
    random write events and resumed each time, until at least ``kills`` kills have landed; each
    run taken to its end is compared with the uninterrupted one. ``ranks``: every run under
    torchrun with that many ranks, each kill landing on a rank drawn at random, at one of its
    events (its writes and its steps)."""
    rng = np.random.default_rng(seed)
    ref = work / "reference"
    log = work / "reference-events.json"
    rc, err = child([*argv, "--out", str(ref)], events=log, ranks=ranks)
    if rc != 0:
        raise RuntimeError(f"the uninterrupted run of {argv} ended with status {rc}: {err[-2000:]}")
    by_rank = [json.loads(Path(f"{log}.{r}").read_text()) for r in range(ranks)] if ranks else \
        [json.loads(log.read_text())]
    out = Crashes(model or argv[argv.index("--model") + 1] if "--model" in argv else "vae")
    while len(out.kills) < kills:
        run = work / f"run-{out.runs}"
        rc = None
        for _ in range(10 * kills):  # a run that never ends is a failure, not a hang
            # as a user would go on: --resume from the last finished epoch, else the same command again
            fresh = not (run / "resume.safetensors").exists()
            cmd = [*argv, "--out", str(run), "--overwrite"] if fresh else ["train", "--resume", str(run)]
            victim = int(rng.integers(len(by_rank)))
            events = by_rank[victim]
            at = int(rng.integers(1, len(events) + 1))
            rc, err = child(cmd, kill_at=at if len(out.kills) < kills else 0, ranks=ranks, kill_rank=victim)
            if rc not in (0, -9) and "already finished" in err:  # killed after everything was written
                rc = 0
            if rc == -9:
                where = events[at - 1] if fresh else f"after resuming, event {at}"
                out.kills.append(f"rank {victim}: {where}" if ranks else where)
                continue
            if rc != 0:
                out.failures.append(f"{' '.join(cmd[:3])} ... ended with status {rc} after {len(out.kills)} kills: "
                                    f"{err.strip().splitlines()[-1:] }")
            break
        out.runs += 1
        if rc == 0:
            equal = same_weights(ref, run)
            left = temporaries(run)
            out.equal += equal
            out.clean += not left
            if left:
                out.failures.append(f"temporaries left in {run.name}: {left[:5]}")
            if not equal:
                out.failures.append(f"{run.name} ended with other weights than the uninterrupted run")
    return out
