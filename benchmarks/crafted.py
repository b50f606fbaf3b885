"""The crafted-file corpus (tests/crafted.py), each file read in a forked child under the
fuzzer's bounds: one JSON line with the count of files, those refused in one sentence naming
them with nothing changed outside the run directory and the cache, per group, and the failures:

    python benchmarks/crafted.py
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import RESULTS, emit, machine, shown  # noqa: E402

from crafted import CORPUS, check  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(RESULTS / "crafted.jsonl"))
    a = p.parse_args()
    t0 = time.perf_counter()
    groups: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures = []
    for name, item in CORPUS.items():
        out = check(item)
        groups[item.group]["files"] += 1
        groups[item.group]["refused"] += out.kind == "refused"
        if out.kind != "refused":
            failures.append({"file": name, "kind": out.kind, "detail": out.detail[-2000:]})
    emit(a.out, {"files": len(CORPUS), "refused": len(CORPUS) - len(failures),
                 "groups": {g: dict(c) for g, c in sorted(groups.items())}, "failures": failures,
                 "seconds": round(time.perf_counter() - t0, 1), "machine": machine(1), "command": shown(sys.argv)})


if __name__ == "__main__":
    main()
