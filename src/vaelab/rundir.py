"""The one owner of a run directory's layout: every file name a run holds is decided here, and
the trainer, evaluation, the samplers, the pictures and the report ask for it. Low in the house
(it imports only :mod:`vaelab.io` and :mod:`vaelab.errors`), so anything may read it.

    RUN/config.json                 the run's settings, data spec and format version
    RUN/model.safetensors           the last epoch's weights   (best.safetensors: the best epoch's)
    RUN/resume.safetensors          optimizer, RNG and loop state for --resume
    RUN/metrics.jsonl               one record per epoch        (metrics.csv with --csv)
    RUN/steps.jsonl                 one record per --log-every steps
    RUN/tensorboard/                event files (--tensorboard)
    RUN/eval-test.json              training's final evaluation
    RUN/eval-<settings>.json        a later `vaelab eval`'s (:func:`result_name`)
    RUN/probe-<settings>.json       a `vaelab probe`'s
    RUN/<picture>.png               training's pictures (:data:`PICTURES`)
    RUN/progress/epoch-NNNN.png     a grid of each epoch (a GAN's fixed noise)
    RUN/samplers/<name>-<ckpt>.safetensors   fitted samplers (:func:`sampler_cache`)
    RUN/report.html                 the run's page (:mod:`vaelab.report`)
    RUN/figures.json                the pictures' titles and captions
    RUN/finished.json               written once the final evaluation and pictures are done
    RUN/.vaelab.lock                held while a process writes the run
"""
from __future__ import annotations

import json
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from .errors import VaelabError, clip
from .io import LOCK  # noqa: F401 - the lock's name: io's, which takes it without a layer above

# of config.json; 2: each model holds its own settings (binarize, beta, warm-up; the IWAE bound is
# --model iwae); a format-1 run is read and upgraded (vaelab.run.migrate)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

CONFIG = "config.json"
CHECKPOINTS = {"best": "best.safetensors", "last": "model.safetensors"}
RESUME = "resume.safetensors"
METRICS = "metrics.jsonl"   # one record per epoch: the curves, resume's history
STEPS = "steps.jsonl"       # one record per --log-every steps
CSV = "metrics.csv"         # --csv: metrics.jsonl's records as a table
TENSORBOARD = "tensorboard"  # --tensorboard: event files
FINISHED = "finished.json"  # the final evaluation and pictures are done
TRAINING_EVAL = "eval-test.json"  # training's final evaluation (vaelab.api.train)
REPORT = "report.html"
FIGURES = "figures.json"    # the pictures' titles and captions, for the report
PROGRESS = "progress"       # per-epoch grids
SAMPLERS = "samplers"       # fitted samplers



@dataclass(frozen=True)
class _Pictures:
    """The pictures training writes (the report shows them in this order)."""
    samples: str = "samples.png"
    samples_by_class: str = "samples-by-class.png"  # a model of labels' (cvae, m2): a row per class
    reconstructions: str = "reconstructions.png"
    interpolation: str = "interpolation.png"
    manifold: str = "manifold.png"
    denoising: str = "denoising.png"               # the denoising autoencoder's
    codes_histogram: str = "codes_histogram.png"   # the sparse autoencoder's
    progress: str = "progress.png"                 # the GAN's
    game: str = "game.png"                         # the GAN's
    curves: str = "curves.png"


PNG = _Pictures()
PICTURES = tuple(astuple(PNG))
PLOTS = (PNG.manifold, PNG.codes_histogram, PNG.game, PNG.curves)  # drawn by matplotlib, not pixel grids

# What training writes and a later command never does. A later command (eval, sample,
# reconstruct, interpolate, manifold) writes under a name that carries every setting deciding
# its content (:func:`result_name`), so running it again with the same settings replaces only its
# own file, with the same result (it is seeded); elsewhere only where -o says.
RUN_FILES = (CONFIG, CHECKPOINTS["last"], CHECKPOINTS["best"], RESUME, METRICS, STEPS, CSV, FINISHED, REPORT,
             FIGURES)
# results of the run, replaced with it
RUN_PATTERNS = ("eval-*.json", "probe-*.json", "*.png", f"{PROGRESS}/epoch-*.png", f"{SAMPLERS}/*.safetensors",
                f"{TENSORBOARD}/events.out.tfevents.*")
SUBFOLDERS = (PROGRESS, SAMPLERS, TENSORBOARD)  # each refused if it is a link out of the run


def progress_picture(run_dir, epoch: int) -> Path:
    """The grid of epoch ``epoch`` (1-based)."""
    return Path(run_dir) / PROGRESS / f"epoch-{epoch:04d}.png"


def progress_pictures(run_dir) -> list[Path]:
    return sorted((Path(run_dir) / PROGRESS).glob("epoch-*.png"))


def epoch_of(picture: Path) -> int:
    """The epoch of a :func:`progress_picture`."""
    return int(Path(picture).stem.split("-")[1])


def sampler_cache(run_dir, slug: str, checkpoint: str) -> Path:
    """Where the sampler of name ``slug`` fitted on ``checkpoint``'s weights is kept."""
    return Path(run_dir) / SAMPLERS / f"{slug}-{checkpoint}.safetensors"


def eval_files(run_dir) -> list[Path]:
    """Every evaluation a run holds, training's first."""
    run_dir = Path(run_dir)
    rest = sorted(p for p in run_dir.glob("eval-*.json") if p.name != TRAINING_EVAL)
    return [p for p in [run_dir / TRAINING_EVAL] if p.is_file()] + rest


def probe_files(run_dir) -> list[Path]:
    """Every linear probe's result a run holds (``vaelab probe``)."""
    return sorted(Path(run_dir).glob("probe-*.json"))


def read_run_config(run_dir: Path) -> dict[str, Any]:
    p = Path(run_dir) / CONFIG
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise VaelabError(f"{run_dir} is a file, not a run directory (a folder holding {CONFIG}).")
    if not Path(run_dir).is_dir():
        raise VaelabError(f"run directory {run_dir} does not exist.")
    if not p.is_file() and not p.is_symlink():
        raise VaelabError(f"{run_dir} is not a vaelab run directory: {p.name} is missing.")
    check_run_files(Path(run_dir))
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise VaelabError(f"cannot read {p}: it is not valid JSON ({e}).") from None
    if not isinstance(d, dict) or d.get("format_version") not in READABLE_VERSIONS:
        raise VaelabError(f"{p} is not a vaelab run config of format version "
                          f"{' or '.join(map(str, READABLE_VERSIONS))}.")
    return d


def run_entries(run_dir: Path) -> list[Path]:
    """Where the run's own files go (:data:`RUN_FILES`, there or not) and the results of it
    found there (:data:`RUN_PATTERNS`): what ``--overwrite`` replaces and what a command opening
    the run checks."""
    return [run_dir / name for name in RUN_FILES] + [p for pattern in RUN_PATTERNS for p in run_dir.glob(pattern)]


def check_run_files(run_dir: Path) -> None:
    """Refuse a run directory holding a symbolic link, a FIFO, a device or a folder where one of
    its files goes (:data:`RUN_FILES`, :data:`RUN_PATTERNS`): a run may come from someone else,
    and through a link there vaelab would read another file as the run's (a checkpoint, its
    config) or, had its writes not replaced links, write into any file the user can write. Every
    command that opens a run checks this first (:func:`read_run_config`); ``--overwrite`` removes
    such links with the rest of the run, and refuses a folder in a file's place."""
    for p in [*run_entries(run_dir), *(run_dir / name for name in SUBFOLDERS)]:
        if p.is_symlink() or p.exists() and not (p.is_dir() if p.name in SUBFOLDERS else p.is_file()):
            what = "a symbolic link" if p.is_symlink() else "a folder" if p.is_dir() else "not a plain file"
            raise VaelabError(f"{clip(p)} is {what}: vaelab reads and writes a run's own files only, never through "
                              f"a link or a special file; remove it if the run is yours.")


# What every record of a run's JSON-lines logs holds, besides numbers: metrics.jsonl an epoch's
# mean loss, steps.jsonl the step's number
NEEDED = {METRICS: ("epoch", "train_loss"), STEPS: ("epoch", "step")}
# The largest logged figure (float32's largest is 3.4e38) and epoch or step a record may hold:
# matplotlib's axes fail on a span past float64's (a hand-made 1e308 and -1e308)
LOGGED_MAX, COUNT_MAX = 1e40, 10**12


def _well_formed(rec, needed: tuple[str, ...]) -> bool:
    """A record as the trainer writes one: each of ``needed`` there; ``epoch`` and ``step`` whole
    numbers from 1 to :data:`COUNT_MAX`; every other value a number of magnitude at most
    :data:`LOGGED_MAX` or null (a non-finite one), or the text of a ``*_name`` key (``val_name``)."""
    if not isinstance(rec, dict) or not all(k in rec for k in needed):
        return False
    for k, v in rec.items():
        if k in ("epoch", "step"):
            if not (type(v) is int and 1 <= v <= COUNT_MAX):
                return False
        elif not (v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) <= LOGGED_MAX)
                  or (isinstance(v, str) and k.endswith("_name"))):
            return False
    return True


def read_jsonl(path: Path) -> list[dict]:
    """The records of a run's JSON-lines log (metrics.jsonl, steps.jsonl) that are as the trainer
    writes them (:func:`_well_formed`): a line cut short by a kill mid-write (the last), or one
    changed into something else, is left out, as a missing file has none. So what reads them (the
    report, compare, the curves) can rely on each record's keys and types."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return []
    needed = NEEDED.get(Path(path).name, ())
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if _well_formed(rec, needed):
            out.append(rec)
    return out


def finished_epochs(run_dir) -> int | None:
    """The epochs a run had when its final evaluation and pictures were done (None: never)."""
    try:
        return int(json.loads((Path(run_dir) / FINISHED).read_text())["epochs"])
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return None


def report_done(run_dir) -> bool:
    """Whether the run's report page was written for its finish: :data:`FINISHED` says so, and the
    page is there. (A page that could not be written, its disk full, leaves the last one, which is
    of an earlier finish; a run of a vaelab before this one says nothing, and its page counts.)"""
    try:
        done = json.loads((Path(run_dir) / FINISHED).read_text()).get("report", True)
    except (OSError, UnicodeDecodeError, TypeError, ValueError, AttributeError):
        done = False
    return done is True and (Path(run_dir) / REPORT).is_file()


def result_name(kind: str, suffix: str, *settings) -> str:
    """A later command's file name: ``kind``, then each setting that is given, joined by ``-``:
    ``result_name("eval", ".json", "test", "best", "k1000", "seed0")`` is
    ``eval-test-best-k1000-seed0.json``. At least one setting, so it is never a name of
    training's (``eval-test.json``, ``samples.png``)."""
    parts = [str(s) for s in settings if s not in (None, "")]
    assert parts, "a later command's name carries its settings"
    return "-".join([kind, *parts]) + suffix


def result_path(run_dir, given: str | Path | None, name: str, overwrite: bool = False, flag: str = "-o") -> Path:
    """Where a later command writes: ``given`` (``-o``), else ``name`` in the run directory. A
    given file that exists is replaced only with ``overwrite``; the command's own name is
    replaced (the same settings give the same file)."""
    p = Path(given) if given is not None else Path(run_dir) / name
    suffix = Path(name).suffix
    if p.suffix.lower() != suffix:
        raise VaelabError(f"{flag} {clip(p)} must be a {suffix} file.")
    if p.is_dir():
        raise VaelabError(f"{flag + ' ' if given is not None else ''}{clip(p)} is a folder: expected a {suffix} file "
                          "to write.")
    if not p.parent.is_dir():
        raise VaelabError(f"{flag} {clip(p)}: folder {clip(p.parent)} does not exist.")
    if given is not None and (p.exists() or p.is_symlink()) and not overwrite:
        raise VaelabError(f"{flag} {clip(p)} exists: pass --overwrite to replace it, or give another file.")
    return p
