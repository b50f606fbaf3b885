"""Fuzz every parser: at least 10,000 inputs each (``--inputs``), each parsed in a forked child
under a memory and a time bound (tests/fuzzing.py), from the strategies of tests/fuzz_targets.py.
One JSON line per parser, with the counts of each outcome, the failures (up to 20, each with its
input and what happened) and the peak memory of a case:

    python benchmarks/fuzz.py --inputs 10000
    python benchmarks/fuzz.py --parsers idx,npz --inputs 20000 --seed 3
    python benchmarks/fuzz.py --parsers run-dir,flags,commands --jobs 2   # a process per parser, 2 at once

A failure is any outcome but a correct parse or a one-sentence refusal naming the file: an
unhandled exception, memory past the bound, a hang, a signal, a refusal of several lines or
naming nothing. Every failure found gets a fix and its input kept in tests/test_fuzz.py.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import RESULTS, emit, machine, names, shown  # noqa: E402

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from fuzz_targets import TARGETS  # noqa: E402
from fuzzing import BOUND_MB, SECONDS, run_case  # noqa: E402

KEPT_FAILURES = 20


def fuzz(name: str, inputs: int, at_seed: int) -> dict:
    target = TARGETS[name]
    counts: collections.Counter = collections.Counter()
    failures: list[dict] = []
    peak = 0.0

    @seed(at_seed)
    @settings(max_examples=inputs, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(target.inputs)
    def one(inp):
        nonlocal peak
        out = run_case(target.case(inp))
        counts[out.kind] += 1
        peak = max(peak, out.peak_mb)
        if out.failed and len(failures) < KEPT_FAILURES:
            failures.append({"kind": out.kind, "input": repr(inp)[:2000], "detail": out.detail[-3000:]})
    t0 = time.perf_counter()
    one()
    n = sum(counts.values())
    return {"parser": name, "inputs": n, "failures": sum(counts[k] for k in counts if k not in ("parsed", "refused")),
            "outcomes": dict(counts), "peak_mb": round(peak, 1), "bound_mb": BOUND_MB, "seconds_limit": SECONDS,
            "seconds": round(time.perf_counter() - t0, 1), "examples": failures}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parsers", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--inputs", type=int, default=10_000, help="inputs per parser")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="parsers fuzzed at once, each in its own process")
    p.add_argument("--out", default=str(RESULTS / "fuzz.jsonl"))
    a = p.parse_args()
    parsers = names(p, "--parsers", a.parsers, TARGETS)
    if a.jobs > 1:
        return _in_parallel(parsers, a)
    # a parser's process under --jobs records the command that was typed, not its own
    base = {"machine": machine(1), "command": os.environ.get("VAELAB_FUZZ_COMMAND") or shown(sys.argv), "seed": a.seed}
    for name in parsers:
        emit(a.out, {**fuzz(name, a.inputs, a.seed), **base})


def _in_parallel(parsers: list[str], a) -> None:
    """Each parser in a process of its own, ``--jobs`` at a time, each writing a file of its own;
    their lines are appended to ``--out`` as each ends (one writer: no line interleaves)."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory(prefix="vaelab-fuzz-jobs-") as tmp:
        waiting, running = list(parsers), []
        while waiting or running:
            while waiting and len(running) < a.jobs:
                name = waiting.pop(0)
                part = Path(tmp) / f"{name}.jsonl"
                running.append((part, subprocess.Popen([sys.executable, __file__, "--parsers", name, "--inputs",
                                                        str(a.inputs), "--seed", str(a.seed), "--out", str(part)],
                                                       env={**os.environ, "VAELAB_FUZZ_COMMAND": shown(sys.argv)})))
            time.sleep(1)
            for part, proc in [r for r in running if r[1].poll() is not None]:
                running.remove((part, proc))
                if part.exists():
                    with open(a.out, "a") as f:
                        f.write(part.read_text())


if __name__ == "__main__":
    main()
