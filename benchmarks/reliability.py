"""The reliability figure sheet: one JSON object on one line, read from the recorded results
(benchmarks/results/fuzz.jsonl and faults.jsonl), the last line of each parser, model and
command counting:

    python benchmarks/reliability.py

Keys (counts are integers; a part not yet recorded is null):

- ``fuzzed``: ``{parser: {"inputs", "failures", "peak_mb"}}``, from benchmarks/fuzz.py, for every
  parser it fuzzes (tests/fuzz_targets.py), null where none is recorded;
- ``crashes``: ``{"injected", "survived"}``: SIGKILLs at random writes of every model's training,
  and those whose run then ended bitwise equal to an uninterrupted one (benchmarks/faults.py);
- ``disk_full``: ``{"cases", "survived"}``: commands run on a full disk, and those that kept
  their contract (benchmarks/faults.py --faults disk-full);
- ``crafted``: ``{"files", "refused"}``: the crafted files of tests/crafted.py, and those refused
  in one sentence with nothing changed outside the run and the cache (benchmarks/crafted.py);
- ``nonfinite``: ``{"injected", "skipped", "persistent", "stopped"}``: NaN losses injected into
  every model's training, the steps the guard dropped and counted, and the runs poisoned for good
  that stopped in one sentence keeping their last good epoch (benchmarks/nonfinite.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import RESULTS  # noqa: E402

from fuzz_targets import TARGETS  # noqa: E402


def _last(name: str, key) -> dict:
    """The last recorded line of each ``key(row)`` in results/``name``.jsonl."""
    path = RESULTS / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return {key(r): r for r in rows}


def sheet() -> dict:
    fuzz = _last("fuzz", lambda r: r["parser"])
    faults = _last("faults", lambda r: (r["fault"], r.get("model") or r.get("tested")))
    kills = [r for (kind, _), r in faults.items() if kind == "sigkill"]
    full = [r for (kind, _), r in faults.items() if kind == "disk_full"]
    crafted = _last("crafted", lambda r: "corpus").get("corpus")
    nonfinite = list(_last("nonfinite", lambda r: r["model"]).values())
    return {
        # every parser fuzz.py knows, null where none is recorded
        "fuzzed": {p: {"inputs": fuzz[p]["inputs"], "failures": fuzz[p]["failures"], "peak_mb": fuzz[p]["peak_mb"]}
                   if p in fuzz else None for p in sorted(TARGETS)},
        "crashes": {"injected": sum(r["injected"] for r in kills), "survived": sum(r["survived"] for r in kills)}
        if kills else None,
        "disk_full": {"cases": sum(r["cases"] for r in full), "survived": sum(r["survived"] for r in full)}
        if full else None,
        "crafted": {"files": crafted["files"], "refused": crafted["refused"]} if crafted else None,
        "nonfinite": {k: sum(r[k] for r in nonfinite) for k in ("injected", "skipped", "persistent", "stopped")}
        if nonfinite else None,
    }


if __name__ == "__main__":
    print(json.dumps(sheet()))
