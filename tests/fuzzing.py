"""Fuzzing vaelab's parsers in-process: the harness that tests/test_fuzz.py runs a few examples
of and benchmarks/fuzz.py runs at least 10,000 of, per parser.

A parser's outcome on any input is one of two things: a correct parse, or one clear sentence
(a :class:`~vaelab.errors.VaelabError`, which the command line prints and exits 2 on). Anything
else is a failure: another exception (a crash, with its traceback), a hang, or memory past the
bound. Each case runs in a child forked after the imports (a fresh Python would spend seconds
importing torch), under

- **a memory bound**, :data:`BOUND_MB`: vaelab's own limit (:func:`vaelab.limits.memory_limit`,
  which every size a file names is checked against before it is allocated) is set to half of it,
  as vaelab keeps half of a machine's memory; the child's peak resident memory above what it had
  at the fork must stay within the bound, and its address space is capped a little above, so a
  runaway allocation ends in a MemoryError instead of the out-of-memory killer;
- **a time limit**, :data:`SECONDS` (SIGALRM), so a hang is a failure rather than a stuck run;
- **one thread** (torch's and OpenMP's pools do not survive a fork).

One bad case cannot take the run down: the parent reads the child's report from a pipe and
classifies its end (a signal, no report, a report of an exception).
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vaelab.errors import VaelabError

BOUND_MB = 256  # the stated bound on a parse's memory (inputs here are at most a few MB)
SECONDS = 20  # a case's time limit: a parse of a few MB takes well under a second
_SAFETY_MB = 1024  # the address space granted above the fork's, past the bound, for the allocator's slack
MAX_MESSAGE = 2000  # a refusal is one sentence: a message longer than this is not

PARSED, REFUSED = "parsed", "refused"
FAILURES = ("crash", "memory", "timeout", "killed", "message")


class Unnamed(Exception):
    """A refusal that does not say what it is about (a target's own check): a failure."""


@dataclass
class Outcome:
    """What one case did: ``kind`` (``parsed``, ``refused`` or a failure of :data:`FAILURES`),
    ``detail`` (the refusal's sentence, or what failed and how) and ``peak_mb``, the resident
    memory the child took above what it had at the fork."""
    kind: str
    detail: str = ""
    peak_mb: float = 0.0

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


class _Timeout(BaseException):
    """The case's time is up (not an Exception: a parser's ``except Exception`` must not take it
    for a bad file)."""


def _alarm(signum, frame):
    raise _Timeout


def _child(fn: Callable[[Path], None], w: int, seconds: int, tmp: Path) -> None:
    """Run ``fn`` in the empty folder ``tmp`` under the limits, ``tmp`` its working folder too (a
    command's relative paths, such as demo's default run directory, land there, not in the
    fuzzer's folder); write the outcome to ``w``."""
    os.chdir(tmp)
    import torch
    import vaelab.limits
    torch.set_num_threads(1)
    # and kept at 1 whatever a command asks (its --threads is checked before it asks): a child
    # forked from a process whose OpenMP pool is live (libgomp's, after the parent's training)
    # hangs when it asks for more threads, a hang of the harness that no fresh vaelab process has
    real_set = torch.set_num_threads
    torch.set_num_threads = lambda n: real_set(1 if isinstance(n, int) and n >= 1 else n)
    vaelab.limits.memory_limit = lambda: BOUND_MB * 2 ** 20 // 2
    base_kb = _rss_kb()
    cap = _vm_bytes() + (BOUND_MB + _SAFETY_MB) * 2 ** 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    signal.signal(signal.SIGALRM, _alarm)  # a hang in Python code ends in _Timeout, its report written
    signal.alarm(seconds)
    try:
        fn(tmp)
        kind, detail = PARSED, ""
    except _Timeout:
        kind, detail = "timeout", f"no outcome in {seconds} s"
    except VaelabError as e:
        text = str(e)
        kind, detail = (REFUSED, text) if text and "\n" not in text and len(text) <= MAX_MESSAGE else \
            ("message", f"not one sentence: {text[:MAX_MESSAGE]!r}")
    except Unnamed as e:
        kind, detail = "message", str(e)[:MAX_MESSAGE]
    except MemoryError:
        kind, detail = "memory", traceback.format_exc()[-MAX_MESSAGE:]
    except BaseException:  # noqa: BLE001 - anything else is what the fuzzer looks for
        kind, detail = "crash", traceback.format_exc()[-4 * MAX_MESSAGE:]
    signal.alarm(0)
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024
    if kind in (PARSED, REFUSED) and peak_mb > BOUND_MB:
        kind, detail = "memory", f"peak {peak_mb:.0f} MB above the fork's, past the bound of {BOUND_MB} MB"
    os.write(w, json.dumps({"kind": kind, "detail": detail, "peak_mb": max(peak_mb, 0.0)}).encode())


def run_case(fn: Callable[[Path], None], seconds: int = SECONDS) -> Outcome:
    """``fn(tmp)`` (it writes its input under the empty folder ``tmp`` and calls a parser) in a
    forked child under the limits: its :class:`Outcome`. The parent makes and removes ``tmp``,
    and waits for the child's report ``seconds`` + 10 s at most: a child stuck where its alarm
    cannot reach it (inside C code) is killed, with its whole process group."""
    tmp = Path(tempfile.mkdtemp(prefix="vaelab-fuzz-"))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's frames
        code = 0
        try:
            os.setpgid(0, 0)  # its own group: whatever it starts is killed with it
            os.close(r)
            _child(fn, w, seconds, tmp)
        except BaseException:  # noqa: BLE001 - reported by the parent as a child without a report
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks, deadline, late = [], time.monotonic() + seconds + 10, False
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                late = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                break
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
        shutil.rmtree(tmp, ignore_errors=True)
    if late:
        return Outcome("timeout", f"no report in {seconds + 10} s: the child was killed")
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        kind = "timeout" if sig == signal.SIGALRM else "killed"
        return Outcome(kind, f"the child ended on signal {signal.Signals(sig).name}")
    try:
        return Outcome(**json.loads(b"".join(chunks)))
    except (ValueError, TypeError):
        return Outcome("crash", f"the child ended with status {os.waitstatus_to_exitcode(status)} and no report")


def named_in(message: str, path: Path) -> bool:
    """Whether a refusal names the file it is about: its path, or the name of a file (one with a
    suffix; a bare folder name such as ``run`` could be any word of a sentence)."""
    return str(path) in message or bool(path.suffix) and path.name in message
