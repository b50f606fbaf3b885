"""A full disk during every kind of write vaelab makes: the harness of tests/test_diskfull.py and
benchmarks/faults.py.

The disk is real: a tmpfs mounted for the test (the tests run as root), filled with a reserved
file until only so many bytes are free, so every writer meets ENOSPC where the disk ends, safetensors'
and TensorBoard's as well as Python's. A command is run on a copy of a finished run with each amount
of free space in turn, from none to more than it writes; each time it must either succeed or end
with exit status 2 and one line, ``error: cannot write FILE: no space left on device; ...``,
with no traceback, and every file the run held before untouched unless the command moved the run
forward whole (a training epoch's set). Then the disk is freed and the same command run again:
it must end as it ends on a disk with room, bit for bit, with no temporary left.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vaelab.io import LOCK

PAGE = 4096  # tmpfs counts whole pages


@functools.cache
def can_mount() -> bool:
    """Whether this process may mount a tmpfs: root, and allowed to (a container may refuse
    root that), tried once."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount")):
        return False
    with tempfile.TemporaryDirectory() as d:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True).returncode:
            return False
        return subprocess.run(["umount", d], capture_output=True).returncode == 0


@contextlib.contextmanager
def small_disk(where: Path, size_mb: int = 64):
    """A tmpfs of ``size_mb`` MB mounted at ``where`` for the block."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)], check=True,
                   capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)
        if os.path.ismount(where):  # busy: detach it now, so nothing of the test stays mounted
            subprocess.run(["umount", "-l", str(where)], check=True, capture_output=True)


FILLER = ".reserved-by-the-test"


def leave_free(disk: Path, free: int) -> None:
    """Fill ``disk`` until about ``free`` bytes are left (whole pages)."""
    filler = disk / FILLER
    filler.unlink(missing_ok=True)
    room = shutil.disk_usage(disk).free - free
    if room > 0:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, room)
        finally:
            os.close(fd)


def free_disk(disk: Path) -> None:
    (disk / FILLER).unlink(missing_ok=True)


def vaelab(argv: list[str], timeout: float = 600) -> tuple[int, str]:
    """``vaelab argv`` in a child: (exit status, stderr)."""
    p = subprocess.run([sys.executable, "-m", "vaelab", *argv], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return p.returncode, p.stderr


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of the run (in sub-folders too), by its path inside it; not the lock, which
    holds the last process's id, nor the filler."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in (LOCK, FILLER)}


# what an epoch writes together (vaelab.io.all_or_nothing): all of it moves, or none
EPOCH_SET = ("model.safetensors", "resume.safetensors", "metrics.jsonl")


@dataclass
class DiskFull:
    """What running one command on a full disk found: each amount of free space tried, the file
    each failure named (``named``), and the failures of the contract (``failures``)."""
    command: str
    tried: int = 0
    refused: int = 0
    named: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def survived(self) -> int:
        return self.tried - len(self.failures)


def on_a_full_disk(command: list[str], finished: Path, disk: Path, frees: list[int], same) -> DiskFull:
    """Run ``command`` (RUN stands for the run's path) on a copy of ``finished`` on ``disk`` with
    each of ``frees`` bytes left free. ``same(run)`` says whether a run ended as it should (as
    on a disk with room)."""
    out = DiskFull(" ".join(command[:1] + command[2:]))
    for free in frees:
        free_disk(disk)
        run = disk / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(finished, run)
        before = snapshot(run)
        argv = [a.replace("RUN", str(run)) for a in command]
        leave_free(disk, free)
        rc, err = vaelab(argv)
        out.tried += 1
        lines = err.strip().splitlines()
        if rc == 2:
            out.refused += 1
            last = lines[-1] if lines else ""
            if "Traceback" in err or not last.startswith("error: cannot write "):
                out.failures.append(f"{free} bytes free: {last[:300] or err[-300:]}")
            else:
                name = Path(last[len("error: cannot write "):].split(":")[0]).name
                out.named[name] = out.named.get(name, 0) + 1
            after = snapshot(run)
            changed = sorted(k for k in before if after.get(k) != before[k])
            if command[0] == "train":  # training may move the run forward, a whole epoch's set at a time
                moved = {k in changed for k in EPOCH_SET}
                if len(moved) > 1:
                    out.failures.append(f"{free} bytes free: part of an epoch's set changed: "
                                        f"{sorted(k for k in EPOCH_SET if k in changed)}")
            elif changed:
                out.failures.append(f"{free} bytes free: changed {changed[:5]}")
        elif rc != 0:
            out.failures.append(f"{free} bytes free: exit status {rc}: {err[-300:]}")
        free_disk(disk)
        if rc != 0:  # as a user would go on: the same command again, now that there is room
            rc, err = vaelab(argv)
        if rc != 0:
            out.failures.append(f"{free} bytes free, then room: exit status {rc}: {err[-300:]}")
        elif not same(run):
            out.failures.append(f"{free} bytes free, then room: the run ended otherwise than on a disk with room")
        left = sorted(str(p.relative_to(run)) for p in run.rglob(".*.tmp"))
        if left:
            out.failures.append(f"{free} bytes free: temporaries left: {left[:5]}")
    return out


# ---- the commands, and how each ends on a disk with room ----------------------------------------

def finished_run(out: Path) -> Path:
    """A tiny VAE run of one epoch that keeps every log (TensorBoard, CSV) and its report."""
    rc, err = vaelab(["train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                      "--batch-size", "64", "--nll-samples", "5", "--no-progress", "--threads", "1", "--tensorboard",
                      "--csv", "--out", str(out)])
    if rc != 0:
        raise RuntimeError(err[-2000:])
    return out


COMMANDS = {
    # an epoch's checkpoints, metrics, steps, CSV and TensorBoard logs, pictures, eval, report
    "train": ["train", "--resume", "RUN", "--epochs", "2"],
    # the evaluation's JSON and the fitted sampler's cache
    "eval": ["eval", "RUN", "-k", "5", "--samples", "200", "--sampler", "gmm:2", "-o", "RUN/eval.json"],
    "sample": ["sample", "RUN", "-n", "16", "-o", "RUN/s.png"],
    "report": ["report", "RUN"],
}


def ends_as_with_room(name: str, finished: Path, work: Path):
    """How command ``name`` should end (a test of the run): as the same command ends on a copy
    of ``finished`` on a disk with room."""
    from crashes import same_weights
    argv = COMMANDS[name]
    ref = work / f"reference-{name}"
    shutil.copytree(finished, ref)
    rc, err = vaelab([a.replace("RUN", str(ref)) for a in argv])
    if rc != 0:
        raise RuntimeError(err[-2000:])
    if name == "train":
        return lambda run: same_weights(ref, run)
    if name == "report":
        return lambda run: "</html>" in (run / "report.html").read_text()
    if name == "eval":  # every figure to the bit; not the speed it was measured at
        def figures(run):
            return {k: v for k, v in json.loads((run / "eval.json").read_text()).items() if "per_s" not in k}
        return lambda run: figures(run) == figures(ref)
    return lambda run: (run / "s.png").read_bytes() == (ref / "s.png").read_bytes()
