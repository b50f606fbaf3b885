"""What every benchmark script shares: one JSON line per case, printed and appended to the
results file as soon as the case ends."""
from __future__ import annotations

import json
from pathlib import Path

# where results and pictures go by default: beside this file, from whatever folder a script runs
RESULTS = Path(__file__).resolve().parent / "results"


def emit(path: str, row: dict) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    with open(path, "a") as f:
        f.write(line + "\n")
