"""Faults injected, with one JSON line per model or command:

- ``sigkill``: kill every registered model's training at random write events, at least
  ``--kills`` times each (20 by default), resume each time, and check that every run ends bitwise
  equal to an uninterrupted one with no temporary file left (tests/crashes.py);
- ``disk-full``: run each command that writes (training resumed, eval with a fitted sampler,
  sample, report) on a real full disk (a tmpfs, so root only) with ``--points`` amounts of free
  space from none to more than it writes, and check that each ends in one sentence naming the
  file, leaves the run intact, and ends as it would have once there is room (tests/diskfull.py).

    python benchmarks/faults.py --kills 20
    python benchmarks/faults.py --faults sigkill --models vae,gan --kills 40 --seed 1
    python benchmarks/faults.py --faults disk-full --points 24
    python benchmarks/faults.py --faults sigkill --ranks 2 --kills 20   # under torchrun, either rank

``kills`` lists the write event each kill landed on (``replace:resume.safetensors`` is the
rename that commits the resume file; ``open:...`` a file opened to be written; ``write:...`` a
write to it), so the moments hit can be read back.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import RESULTS, emit, machine, names, shown  # noqa: E402

from crashes import kill_and_resume, train_argv  # noqa: E402
from diskfull import COMMANDS, PAGE, ends_as_with_room, finished_run, on_a_full_disk, small_disk, snapshot  # noqa: E402
from vaelab.registry import MODELS  # noqa: E402


def _kind(kill: str) -> str:
    """What a kill landed on: ``open``, ``write``, ``replace``, ``step`` or ``after resuming``,
    after the rank under torchrun (``rank 1 step``)."""
    who = ""
    if kill.startswith("rank "):
        who, kill = kill.split(": ", 1)
        who += " "
    return who + ("after resuming" if kill.startswith("after") else kill.split(":")[0])


def sigkill(models: list[str], kills: int, seed: int, out: str, base: dict, ranks: int = 0) -> None:
    for model in models:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"vaelab-faults-{model}-") as work:
            res = kill_and_resume(train_argv(model), Path(work), kills, seed, model, ranks=ranks)
        where = collections.Counter(_kind(k) for k in res.kills)
        emit(out, {"fault": "sigkill", "model": model if not ranks else f"{model} (torchrun, {ranks} ranks)",
                   "ranks": ranks or 1, "injected": len(res.kills), "survived": res.survived,
                   "runs": res.runs, "equal": res.equal, "clean": res.clean, "failures": res.failures,
                   "kinds": dict(where), "kills": res.kills, "seconds": round(time.perf_counter() - t0, 1), **base})


def disk_full(points: int, out: str, base: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="vaelab-diskfull-") as work:
        work = Path(work)
        finished = finished_run(work / "finished")
        for name, argv in COMMANDS.items():
            t0 = time.perf_counter()
            same = ends_as_with_room(name, finished, work)
            ref = work / f"reference-{name}"
            written = sum(len(v) for v in snapshot(ref).values()) - sum(len(v) for v in snapshot(finished).values())
            top = max(written, 0) + 16 * PAGE  # past what it writes, with the temporaries beside their files
            frees = sorted({PAGE * round(top * i / (points - 1) / PAGE) for i in range(points)})
            with small_disk(work / "disk") as disk:
                res = on_a_full_disk(argv, finished, disk, frees, same)
            emit(out, {"fault": "disk_full", "tested": res.command, "cases": res.tried, "survived": res.survived,
                       "refused": res.refused, "named": res.named, "failures": res.failures, "free_bytes": frees,
                       "seconds": round(time.perf_counter() - t0, 1), **base})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--faults", default="sigkill,disk-full")
    p.add_argument("--models", default=",".join(sorted(MODELS)))
    p.add_argument("--kills", type=int, default=20, help="kills per model, at least")
    p.add_argument("--points", type=int, default=16, help="amounts of free space per command")
    p.add_argument("--ranks", type=int, default=0, help="kill runs under torchrun with this many ranks (0: one process)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "faults.jsonl"))
    a = p.parse_args()
    base = {"machine": machine(1), "command": shown(sys.argv), "seed": a.seed}
    faults = names(p, "--faults", a.faults, ("sigkill", "disk-full"))
    if "disk-full" in faults:
        disk_full(a.points, a.out, base)
    if "sigkill" in faults:
        sigkill(names(p, "--models", a.models, sorted(MODELS)), a.kills, a.seed, a.out, base, a.ranks)


if __name__ == "__main__":
    main()
