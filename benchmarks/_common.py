"""What every benchmark script shares: one JSON line per case, printed and appended to the
results file as soon as the case ends."""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

# where results and pictures go by default: beside this file, from whatever folder a script runs
RESULTS = Path(__file__).resolve().parent / "results"


def portable(text: str) -> str:
    """``text`` (a result's line) naming no path of the machine it ran on: the project's folder is
    ``.``, the Python environment's ``$VENV``, the data folder ``$VAELAB_DATA`` and the temporary
    folder ``$TMPDIR`` (the data and temporary folders also as a relative path that climbs to them,
    as ``shown`` writes a path outside the project)."""
    root = str(RESULTS.parent.parent)
    data = os.environ.get("VAELAB_DATA") or str(Path(root).parent / "shared" / "data")
    tmp = tempfile.gettempdir()
    ends = r"(?=[/\"\s]|$)"
    for path, name in sorted([(os.path.realpath(data), "$VAELAB_DATA"), (tmp, "$TMPDIR")], key=lambda item: -len(item[0])):
        text = re.sub(r"(?:\.\./)+" + re.escape(path.lstrip("/")) + ends, lambda m: name, text)
    for path, name in sorted([(sys.prefix, "$VENV"), (os.path.realpath(data), "$VAELAB_DATA"), (root, "."),
                              (tmp, "$TMPDIR")], key=lambda item: -len(item[0])):
        text = re.sub(re.escape(path) + ends, lambda m: name, text)
    return text


def shown(args) -> str:
    """A command line as the results record it: absolute paths in the project made relative to
    it, the value of ``--data-dir`` written ``$VAELAB_DATA`` (it names the data folder, wherever
    that is), and the data, temporary and Python folders named (:func:`portable`), so a line names
    no path of the machine it ran on."""
    root = str(RESULTS.parent.parent)

    def inside(a: str) -> bool:  # a path in the project: written relative to it (portable names the rest)
        return os.path.isabs(a) and os.path.commonpath([os.path.abspath(a), root]) == root
    args = [str(a) for a in args]
    args = ["$VAELAB_DATA" if i and args[i - 1] == "--data-dir" else
            "--data-dir=$VAELAB_DATA" if a.startswith("--data-dir=") else a for i, a in enumerate(args)]
    return portable(" ".join(os.path.relpath(a, root) if inside(a) else a for a in args))


def names(parser, flag: str, text: str, known) -> list[str]:
    """The comma-separated names ``text`` of ``flag``, each one of ``known`` (else the parser's
    error, which exits 2)."""
    given = text.split(",")
    unknown = set(given) - set(known)
    if unknown:
        parser.error(f"{flag} takes {', '.join(known)}; got {', '.join(sorted(unknown))}")
    return given


def emit(path: str, row: dict) -> None:
    line = portable(json.dumps(row))
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
        with open("/proc/cpuinfo") as f:
            for line in f:
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


def iwae_net():
    """The IWAE paper's MNIST net, 784-200-200-50 tanh, Bernoulli: vaelab's VAE at ``--preset
    iwae`` (its net; the preset's training settings are not the module's)."""
    import dataclasses

    from vaelab.models.vae import VAE, VAEConfig
    fields = {f.name for f in dataclasses.fields(VAEConfig)}
    return VAE(VAEConfig(shape=(1, 28, 28), **{k: v for k, v in VAE.presets["iwae"].items() if k in fields}))
