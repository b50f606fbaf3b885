"""Kill every registered model's training at random write events, at least ``--kills`` times
each (20 by default), resume each time, and check that every run ends bitwise equal to an
uninterrupted one with no temporary file left (tests/crashes.py). One JSON line per model:

    python benchmarks/faults.py --kills 20
    python benchmarks/faults.py --models vae,gan --kills 40 --seed 1

``kills`` lists the write event each kill landed on (``replace:resume.safetensors`` is the
rename that commits the resume file; ``open:...`` a file opened to be written; ``fsync`` data
being flushed before its rename), so the moments hit can be read back.
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
from vaelab.registry import MODELS  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(sorted(MODELS)))
    p.add_argument("--kills", type=int, default=20, help="kills per model, at least")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "faults.jsonl"))
    a = p.parse_args()
    base = {"machine": machine(1), "command": shown(sys.argv), "seed": a.seed}
    for model in names(p, "--models", a.models, sorted(MODELS)):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"vaelab-faults-{model}-") as work:
            out = kill_and_resume(train_argv(model), Path(work), a.kills, a.seed, model)
        where = collections.Counter(k.split(":")[0] if not k.startswith("after") else "after resuming"
                                    for k in out.kills)
        emit(a.out, {"fault": "sigkill", "model": model, "injected": len(out.kills), "survived": out.survived,
                     "runs": out.runs, "equal": out.equal, "clean": out.clean, "failures": out.failures,
                     "kinds": dict(where), "kills": out.kills, "seconds": round(time.perf_counter() - t0, 1), **base})


if __name__ == "__main__":
    main()
