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


def machine(threads: int) -> dict:
    """What a result was measured on: the CPU model, its vector-instruction flags, torch's
    version, the threads used and the load average when it started (other work on the machine
    shows there)."""
    import os
    import platform

    import torch
    model, flags = platform.processor(), []
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = [f for f in value.split() if f.startswith(("avx", "amx", "fma", "sse4"))]
                break
    except OSError:  # not Linux
        pass
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cpu_flags": flags, "torch": torch.__version__, "threads": threads, "load_1min": load}
