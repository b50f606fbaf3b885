"""The ``vaelab`` command. Every user mistake ends in one sentence on stderr and exit 2."""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import typing
from pathlib import Path

import torch

from . import distributed
from .io import dumps, not_finite, write_json
from .config import DataConfig, TrainConfig, _unwrap_optional, field_types, flag_name
from .config import check_path, check_seed, check_threads
from .errors import VaelabError, clip, did_you_mean, quote
from .models import MODELS, get_model
from .models.base import ENCODE, SAMPLE
from .loading import read_run
from .rundir import REPORT, TRAINING_EVAL, result_name, result_path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: one sentence, exit 2, no usage dump
        chose = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        hint = did_you_mean(chose[1], re.findall(r"'([^']*)'", chose[2])) if chose else ""
        # a value argparse quotes may be as long as a command line takes (128 kB)
        raise VaelabError(f"{self.prog}: {clip(message, 400)}{hint} (see {self.prog} --help).")


def _metavar(f: dataclasses.Field, tp) -> str:
    """What a flag's value is, for the help: its choices, else its type."""
    if f.metadata.get("choices"):
        return "{" + ",".join(f.metadata["choices"]) + "}"
    if f.metadata.get("metavar"):
        return f.metadata["metavar"]
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        return "FLOAT,FLOAT,..." if typing.get_args(inner)[0] is float else "INT,INT,..."
    return {int: "INT", float: "FLOAT", bool: "{true,false}"}.get(inner, "STR")


def _add_flags(p, cls, seen: set, hidden: bool = False, defaults: dict | None = None) -> None:
    """The flags of one config class (those not added already), each coerced later by its field;
    ``defaults``: the chosen model's own defaults of these fields (the GAN's learning rate)."""
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        name = f.name
        if not f.metadata.get("flag", True) or name in seen:
            continue
        seen.add(name)
        default = (defaults or {}).get(name, f.default)
        help_ = f.metadata.get("help", "")
        if default not in (None, dataclasses.MISSING):  # None: the help says what unset means
            help_ += f" [default: {','.join(map(str, default)) if isinstance(default, tuple) else default}]"
        if types[name] is bool:  # a switch; an optional bool (unset, true, false) takes a value below
            help_ += f"; --no-{name.replace('_', '-')} turns it off"
            p.add_argument(flag_name(name), dest=name, action="store_const", const=True,
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS if hidden else help_)
            p.add_argument("--no-" + name.replace("_", "-"), dest=name, action="store_const", const=False,
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            metavar = "{" + ",".join(sorted(MODELS)) + "}" if name == "model" else _metavar(f, types[name])
            p.add_argument(flag_name(name), dest=name, default=argparse.SUPPRESS, metavar=metavar,
                           help=argparse.SUPPRESS if hidden else help_)


def _add_train_flags(p: argparse.ArgumentParser, model_name: str) -> None:
    """The run's flags in groups: data, training, and the chosen model's own (``vaelab train
    --model X --help`` shows X's). Every other model's flags are parsed too, unseen in the help,
    so the one rule that refuses a flag a model does not have can name the model it belongs to."""
    seen: set = set()
    chosen = MODELS.get(model_name)
    _add_flags(p.add_argument_group("data"), DataConfig, seen)
    _add_flags(p.add_argument_group("training"), TrainConfig, seen,
               defaults=chosen.train_defaults if chosen is not None else None)
    if chosen is not None:
        about = " ".join((chosen.__doc__ or "").strip().split("\n\n")[0].split())  # its docstring's first paragraph
        _add_flags(p.add_argument_group(f"--model {model_name}", about), chosen.config_cls, seen)
    for cls in MODELS.values():
        _add_flags(p, cls.config_cls, seen, hidden=True)
    g = p.add_argument_group("run")
    presets = chosen.presets if chosen is not None else {}
    g.add_argument("--preset", default=argparse.SUPPRESS, metavar="{" + ",".join(presets) + "}" if presets else "NAME",
                   help="a published network's settings (explicit flags win)")
    g.add_argument("--config", dest="config_file", metavar="FILE",
                   help="TOML or JSON file of settings, or a run's config.json (flags win)")
    g.add_argument("--like", metavar="RUN_DIR",
                   help="a new run with the settings of RUN_DIR (flags win; it is written to --out, not over RUN_DIR)")
    g.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last finished epoch")


def _model_named(argv: list[str]) -> str:
    """The --model of a train command line (for its help and flags), before parsing: the flag,
    else the --config file's or the --like run's, else the default. An unknown one is refused
    here, so that ``--model nosuch --help`` says so instead of printing the general help."""
    given = {}
    for i, arg in enumerate(argv):
        for flag in ("--model", "--config", "--like"):
            if arg == flag and i + 1 < len(argv):
                given[flag] = argv[i + 1]
            elif arg.startswith(flag + "="):
                given[flag] = arg.split("=", 1)[1]
    if next((arg for arg in argv if not arg.startswith("-")), None) != "train":
        return TrainConfig.model
    if "--model" in given:
        return get_model(given["--model"]).name
    from .run import like_run, settings_file
    try:
        if "--config" in given:
            return get_model(settings_file(given["--config"]).get("model", TrainConfig.model)).name
        if "--like" in given:
            return get_model(like_run(given["--like"]).get("model", TrainConfig.model)).name
    except VaelabError:
        pass  # the same file is read again, and refused, when the run is made
    return TrainConfig.model


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_train(a) -> int:
    from . import api
    from .config import coerce
    from .run import make_config
    from .training.trainer import RESUMABLE

    flags = {k: v for k, v in vars(a).items() if k not in ("cmd", "config_file", "like", "resume", "func")}
    if a.resume:
        allowed = [f for fields in RESUMABLE.values() for f in fields]
        extra = sorted(set(flags) - set(allowed)) + (["config"] if a.config_file else []) + (["like"] if a.like else [])
        if extra:
            raise VaelabError(f"--resume continues a run with its own settings; {flag_name(extra[0])} cannot "
                              f"be given with it (only {', '.join(flag_name(f) for f in allowed)}).")
        run = read_run(a.resume)[0]
        for name, v in flags.items():
            part = next(p for p, fields in RESUMABLE.items() if name in fields)
            cls = DataConfig if part == "data" else TrainConfig
            new = dataclasses.replace(getattr(run, part), **{name: coerce(cls, name, v, "flag")})
            run = dataclasses.replace(run, **{part: new})
    else:
        run = make_config(a.config_file, like=a.like, **flags)
    run_dir = api.train(run, resume=a.resume, log=_say)
    if distributed.is_main():
        _report(run_dir)
    return 0


def _report(run_dir: Path) -> None:
    ev = run_dir / TRAINING_EVAL
    if ev.exists():
        print(ev.read_text().strip())
    files = sorted(p.name for p in run_dir.iterdir() if p.suffix in (".png", ".json", ".jsonl"))
    _say(f"run written to {run_dir}/: {', '.join(files)}")
    if (run_dir / REPORT).is_file():
        _say(f"the run on one page: {run_dir / REPORT}")


def cmd_eval(a) -> int:
    from . import api
    from .models import get_model
    from .samplers import resolve_sampler
    run, spec = read_run(a.run_dir)
    cls = get_model(run.train.model)
    if a.sampler is not None:
        if not a.sample_metrics:
            raise VaelabError("--sampler chooses what draws the samples scored; it cannot be given with "
                              "--no-sample-metrics.")
        resolve_sampler(a.sampler, cls, a.run_dir)
    if a.sample_metrics and (SAMPLE in cls.capabilities or a.sampler):  # before the NLL's minutes, not after
        from .evaluation.samples import check_samples
        check_samples(a.samples, spec.shape)
    # -o checked before the NLL's minutes; without it, api.evaluate names the file by its settings
    out = result_path(a.run_dir, a.o, "eval.json", a.overwrite) if a.o is not None else None
    res = api.evaluate(a.run_dir, a.split, a.nll_samples, a.batch_size, a.checkpoint, a.data_dir, a.device,
                       progress=True, out=out, sample_metrics=a.sample_metrics, samples=a.samples, log=_say,
                       compile=a.compile, precision=a.nll_precision, seed=a.seed, sampler=a.sampler,
                       threads=a.threads, dist_timeout=a.dist_timeout)
    if not distributed.is_main():  # under torchrun, rank 0 speaks for all
        return 0
    print(dumps(res))
    bad = not_finite(res)
    if bad:  # null in the JSON; the exit status stays 0, as the evaluation itself did run
        names = ", ".join(bad[:-1]) + " and " + bad[-1] if len(bad) > 1 else bad[0]
        _say(f"warning: {names} of {a.run_dir} (checkpoint {a.checkpoint}) {'are' if len(bad) > 1 else 'is'} "
             "not finite, written as null: its weights give NaN or infinite values (a diverged run? "
             "retrain it with a lower --lr).")
    return 0


def _threads(a) -> None:
    """--threads of a command that runs in one process: torch's CPU threads (eval and train
    pass theirs on, as under torchrun a rank's default differs)."""
    if a.threads is not None:
        import torch
        torch.set_num_threads(a.threads)  # checked in main (check_threads)


def _at_least(flag: str, value: int, low: int) -> None:
    if value < low:
        raise VaelabError(f"{flag} must be at least {low}, got {value}.")


def _out_path(a, kind: str, *settings) -> Path:
    """Where a picture command writes: -o, else a name in the run directory that carries the
    settings deciding the picture (``samples-prior-best-n64-seed0.png``), never training's."""
    return result_path(a.run_dir, a.o, result_name(kind, ".png", *settings), a.overwrite)


def _wrote(path: Path) -> int:
    """A picture command's end: the path on stdout (its result) and said on stderr."""
    _say(f"wrote {path}")
    print(path)
    return 0


def _need_encoder(run_dir: str, what: str) -> None:
    from .models import get_model
    name = read_run(run_dir)[0].train.model
    if ENCODE not in get_model(name).capabilities:
        encoders = ", ".join(n for n, m in sorted(MODELS.items()) if ENCODE in m.capabilities)
        raise VaelabError(f"{clip(run_dir)} holds a {name}, which has no encoder: vaelab {what} needs a model that "
                          f"maps images to codes ({encoders}).")


def _model_and_split(a):
    """The run's model and the fixed inputs of the split a picture command draws from."""
    from . import api
    return api.load(a.run_dir, a.checkpoint, a.device), api.split_inputs(a.run_dir, a.split, a.data_dir)[0]


def cmd_sample(a) -> int:
    import torch
    from . import api
    from .images import check_grid, save_grid
    from .models import get_model
    from .samplers import resolve_sampler, sampler_for
    _threads(a)
    by_class = a.class_ is not None or a.per_class
    n = a.n if a.n is not None else 10 if a.per_class else 64
    _at_least("-n", n, 1)
    _at_least("--nrow", a.nrow, 0)
    run, spec = read_run(a.run_dir)
    model_cls = get_model(run.train.model)
    if by_class:
        return _sample_by_class(a, run, spec, model_cls, n)
    sampler = resolve_sampler(a.sampler, model_cls, a.run_dir)
    out = _out_path(a, "samples", sampler.slug, a.checkpoint, f"n{n}", f"seed{a.seed}")
    check_grid(f"-n {n}" + (f" with --nrow {a.nrow}" if a.nrow else ""), n, spec.shape[1:], a.nrow or None)
    model = api.load(a.run_dir, a.checkpoint, a.device)
    drawer = sampler_for(a.run_dir, model, sampler, a.checkpoint, a.data_dir, _say)  # the model itself for prior
    torch.manual_seed(a.seed)
    return _wrote(save_grid(drawer.sample(n).cpu(), out, nrow=a.nrow or None))


def _sample_by_class(a, run, spec, model_cls, n: int) -> int:
    """``sample --class C`` (n samples of class C) or ``--per-class`` (a row of n for each
    class), drawn from p(z) with y chosen: a model of labels (cvae, m2) only."""
    import torch
    from . import api
    from .images import check_grid, save_grid
    if a.class_ is not None and a.per_class:
        raise VaelabError("--class and --per-class are two ways to choose the classes: give one.")
    what = f"--class {a.class_}" if a.class_ is not None else "--per-class"
    if not model_cls.samples_classes:
        raise VaelabError(f"{what} needs a model that samples a chosen class (cvae, m2); {a.run_dir} is a "
                          f"{run.train.model}.")
    if a.sampler not in (None, "prior"):
        raise VaelabError(f"{what} draws from the model's prior with the class chosen; --sampler {a.sampler} "
                          "does not apply.")
    classes = spec.num_classes
    if a.class_ is not None and not 0 <= a.class_ < classes:
        raise VaelabError(f"--class must be one of the run's classes, 0 to {classes - 1}, got {a.class_}.")
    if a.per_class and a.nrow:
        raise VaelabError("--nrow does not apply with --per-class: its rows are the classes, -n images each.")
    if a.per_class:
        count, nrow, rows = classes * n, n, [f"class {c}" for c in range(classes)]
        out = _out_path(a, "samples", "per-class", a.checkpoint, f"n{n}", f"seed{a.seed}")
    else:
        count, nrow, rows = n, a.nrow or None, None
        out = _out_path(a, "samples", f"class{a.class_}", a.checkpoint, f"n{n}", f"seed{a.seed}")
    check_grid(f"{what} with -n {n}", count, spec.shape[1:], nrow)
    model = api.load(a.run_dir, a.checkpoint, a.device)
    torch.manual_seed(a.seed)
    # --per-class: the same n draws of z in every row, as the run's own picture has them
    images = model.class_grid(n) if a.per_class else model.sample_class(torch.full((n,), a.class_))
    return _wrote(save_grid(images.cpu(), out, nrow=nrow, row_labels=rows))


def cmd_reconstruct(a) -> int:
    from . import api
    from .images import check_grid, save_grid
    _threads(a)
    _at_least("-n", a.n, 1)
    _at_least("--nrow", a.nrow, 1)
    out = _out_path(a, "reconstructions", a.split, a.checkpoint, f"n{a.n}")
    _need_encoder(a.run_dir, "reconstruct")
    model, x = _model_and_split(a)
    check_grid(f"-n {a.n} with --nrow {a.nrow}", 2 * len(x[: a.n]), model.data_spec.shape[1:], a.nrow)
    return _wrote(save_grid(api.reconstruction_rows(model, x[: a.n], a.nrow), out, nrow=a.nrow,
                            row_labels=["input", "reconstruction"]))


def cmd_interpolate(a) -> int:
    from . import api
    from .images import check_grid, fraction_labels, save_grid
    _threads(a)
    _at_least("--steps", a.steps, 2)
    _at_least("--pairs", a.pairs, 1)
    model = api.load(a.run_dir, a.checkpoint, a.device)
    encoder = model.can(ENCODE)  # without one: lines between prior draws
    out = _out_path(a, "interpolation", a.split if encoder else "prior", a.checkpoint, f"pairs{a.pairs}",
                    f"steps{a.steps}", None if encoder else f"seed{a.seed}")
    if encoder:
        x = api.split_inputs(a.run_dir, a.split, a.data_dir)[0]
        if 2 * a.pairs > len(x):
            raise VaelabError(f"--pairs {a.pairs} needs {2 * a.pairs} images; the split has {len(x)}.")
    check_grid(f"--pairs {a.pairs} with --steps {a.steps}", a.pairs * a.steps, model.data_spec.shape[1:], a.steps)
    lines = (api.interpolate(model, x[: a.pairs], x[a.pairs: 2 * a.pairs], a.steps) if encoder
             else api.interpolate_prior(model, a.pairs, a.steps, a.seed))
    return _wrote(save_grid(lines, out, nrow=a.steps, col_labels=fraction_labels(a.steps)))


def cmd_manifold(a) -> int:
    from . import api
    from .images import check_grid, save_grid
    _threads(a)
    _at_least("-n", a.n, 1)
    model = api.load(a.run_dir, a.checkpoint, a.device)
    if not model.can(SAMPLE):
        raise VaelabError(f"{a.run_dir} holds a {model.run_config.train.model}, which has no prior; "
                          "the manifold grid needs a model with a 2-D N(0, I) prior.")
    if not model.normal_prior:
        raise VaelabError(f"{a.run_dir} has a prior other than N(0, I); the manifold grid maps the unit square "
                          "through the Gaussian CDF and needs --prior normal.")
    if model.cfg.latent_dim != 2:
        raise VaelabError(f"{a.run_dir} has a {model.run_config.model.latent_dim}-D latent; "
                          "the manifold grid needs --latent-dim 2.")
    out = _out_path(a, "manifold", a.checkpoint, f"n{a.n}")
    check_grid(f"-n {a.n}", a.n * a.n, model.data_spec.shape[1:], a.n)
    return _wrote(save_grid(api.manifold(model, a.n), out, nrow=a.n))


def _labels(value: str) -> int | None:
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise VaelabError(f"--labels must be a whole number or all, got {quote(value)}.") from None


def cmd_probe(a) -> int:
    from .evaluation.probe import linear_probe
    _threads(a)
    _need_encoder(a.run_dir, "probe")
    labels = _labels(a.labels)
    out = result_path(a.run_dir, None, result_name("probe", ".json", f"labels{labels}" if labels else "labels-all",
                                                    f"seed{a.seed}"))
    res = linear_probe(a.run_dir, labels, a.data_dir, a.seed, a.device)
    print(dumps(res))
    write_json(out, res)  # its name says how it was measured: the report and compare read it
    _say(f"wrote {out}")
    return 0


def cmd_finetune(a) -> int:
    from .evaluation.probe import finetune
    _threads(a)
    _need_encoder(a.run_dir, "finetune")
    print(dumps(finetune(a.run_dir, _labels(a.labels), a.data_dir, a.seed, a.epochs, a.lr, a.batch_size,
                         a.device, weight_decay=a.weight_decay, patience=a.patience)))
    return 0


def cmd_report(a) -> int:
    from .report.run import write_report
    _threads(a)
    print(write_report(a.run_dir, a.data_dir, checkpoint=a.checkpoint, log=_say))
    return 0


def cmd_compare(a) -> int:
    from .report.compare import compare
    print(compare(a.runs, a.out, log=_say))
    return 0


def cmd_figures(a) -> int:
    from .lecture import THREADS, write_figures
    only = [n for n in a.only.split(",")] if a.only is not None else None
    print(write_figures(a.out, seed=a.seed, data_dir=a.data_dir, log=_say, only=only,
                        threads=a.threads or THREADS, device=a.device))
    return 0


def cmd_datasets(a) -> int:
    from .data import list_datasets
    for d in list_datasets(a.data_dir):
        where = d["where"] or "not found"
        print(f"{d['name']:<15} {'found' if d['found'] else 'missing':<8} {where}")
    return 0


DEMO = Path(__file__).parent / "demo.toml"  # the main job's settings
# the paths a command line names: each is refused if no file can have it (a name past 255 bytes)
PATHS = {"run_dir": "RUN_DIR", "o": "-o", "data_dir": "--data-dir", "config_file": "--config", "like": "--like",
         "resume": "--resume", "out": "--out", "data_path": "--data-path"}
DATA_PARALLEL = ("train", "eval")  # the commands that run under torchrun, each rank taking its part


def cmd_demo(a) -> int:
    from . import api
    from .run import make_config
    given = {"epochs": a.epochs} if a.epochs else {}
    # the demo's own settings stand where a flag is not given
    given.update({k: getattr(a, k) for k in ("threads", "device", "seed") if getattr(a, k) not in (None, "auto")})
    cfg = make_config(str(DEMO), **given, out=a.out, overwrite=True, progress=False)
    t0 = time.perf_counter()
    run_dir = api.train(cfg, log=_say)
    _report(run_dir)
    _say(f"demo finished in {time.perf_counter() - t0:.0f}s: open {run_dir / REPORT} in a browser "
         "(every figure of the run, with captions)")
    return 0


OUT_PNG = dict(default=None, metavar="PNG", help="where to write the picture (default: in the run directory, named "
                                                 "by its settings, e.g. samples-prior-best-n64-seed0.png)")
OUT_JSON = dict(default=None, metavar="JSON", help="where to write the result (default: in the run directory, named by "
                                                   "its settings, e.g. eval-test-best-k1000-seed0.json)")
OVERWRITE = dict(action="store_true", help="replace the file -o names if it exists")
SAMPLER_HELP = ("what draws the codes of the samples: prior (the model's own p(z)), gmm:K (a Gaussian mixture "
                "fitted to the codes of the training images), two-stage (a second VAE trained on draws of "
                "q(z|x), Dai & Wipf 2019) or pixelcnn (over a VQ-VAE's grid of codebook indices); fitted once "
                "and cached in RUN_DIR/samplers/ [default: the model's own, pixelcnn for vqvae, prior for the others]")
RUN_DIR_HELP = "a run directory that vaelab train wrote (its --out)"
DATA_DIR_HELP = ("where the run's data is now, if not where it was found in training (for a run trained with "
                 "--data-path: that file or folder itself)")


def build_parser(model_name: str = TrainConfig.model) -> argparse.ArgumentParser:
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}

    def as_train(name: str, type_: type = str, metavar: str | None = None) -> dict:  # a flag shared with train
        f = train_fields[name]
        shown = "" if f.default is None else f" [default: {f.default:g}]" if type_ is not str else f" [default: {f.default}]"
        return dict(type=type_, default=f.default, metavar=metavar or type_.__name__.upper(),
                    help=f"{f.metadata['help']}{shown}")

    def computes(s: argparse.ArgumentParser, draws: str | None = None) -> None:
        """The flags of every command that computes: --threads, --device and, where it draws
        (``draws``: what), --seed; one meaning each, the training run's."""
        s.add_argument("--threads", **as_train("threads", int))
        s.add_argument("--device", **as_train("device", metavar="DEVICE"))
        if draws:
            s.add_argument("--seed", type=int, default=0, metavar="INT", help=f"seed of {draws} [default: 0]")

    p = _Parser(prog="vaelab", description="Autoencoders, VAEs and GANs on real images, measured honestly.",
                allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a model", allow_abbrev=False)
    _add_train_flags(t, model_name)
    t.set_defaults(func=cmd_train)

    def run_cmd(name, help_, func, **extra):
        s = sub.add_parser(name, help=help_, allow_abbrev=False)
        s.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
        s.add_argument("--checkpoint", default="best", choices=("best", "last"),
                       help="the weights of the best validation score, or of the last epoch [default: best]")
        s.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
        s.add_argument("--split", default="test", choices=("train", "val", "test"),
                       help="the split of the run's data whose images are used [default: test]")
        draws = extra.pop("draws", None)
        if "-o" in extra:  # a file -o names is replaced only when asked
            extra["--overwrite"] = OVERWRITE
        for flag, kw in extra.items():
            s.add_argument(*flag.split("|"), **({"metavar": "INT"} if kw.get("type") is int and "metavar" not in kw else {}), **kw)
        computes(s, draws)
        s.set_defaults(func=func)
        return s

    run_cmd("eval", "reconstruction error, ELBO, importance-sampled NLL, bits/dim, Parzen log-likelihood and "
                    "Fréchet distance of samples, as JSON", cmd_eval,
            **{"--nll-samples|-k": dict(type=int, default=1000, help="importance samples K (up to 5000 and more)"),
               "--batch-size": dict(type=int, default=100,
                                    help="images a pass of the reconstruction error (the NLL takes blocks of 100 "
                                         "images, each with its own importance samples' seed, whatever this is)"),
               "--samples": dict(type=int, default=10_000,
                                 help="samples for the Parzen window and the Fréchet distance"),
               "--sample-metrics": dict(action=argparse.BooleanOptionalAction, default=True,
                                        help="score the model's samples (models that can sample)"),
               "--compile": dict(action=argparse.BooleanOptionalAction, default=None,
                                 help="torch.compile the importance-sampled NLL (default: when images x K "
                                      "is 2,000,000 or more, where its one-off compile pays)"),
               "--nll-precision": dict(choices=("auto", "fp32", "bf16"), default="auto",
                                       help="the NLL decoder's matrix products: auto takes bf16 where the CPU "
                                            "has bf16 units (AMX, AVX512-BF16), fp32 elsewhere; the "
                                            "log-likelihoods and the logsumexp stay fp32"),
               "draws": "the importance samples",
               "--sampler": dict(default=None, metavar="SPEC", help=SAMPLER_HELP),
               "--dist-timeout": as_train("dist_timeout", float), "-o": OUT_JSON})
    run_cmd("sample", "a grid of samples", cmd_sample,
            **{"-n": dict(type=int, default=None, help="samples in the grid (default 64); with --per-class, "
                                                        "samples of each class (default 10)"), "-o": OUT_PNG,
               "--nrow": dict(type=int, default=0, help="images a row (default: a square grid)"),
               "--class": dict(type=int, default=None, dest="class_", metavar="C",
                               help="draw every sample of class C (a model of labels: cvae, m2)"),
               "--per-class": dict(action="store_true", help="a row of -n samples for each class, the same draws "
                                                              "of z in every row (cvae, m2)"),
               "draws": "the draws", "--sampler": dict(default=None, metavar="SPEC", help=SAMPLER_HELP)})
    run_cmd("reconstruct", "test images above their reconstructions", cmd_reconstruct,
            **{"-n": dict(type=int, default=32, help="images of --split"), "-o": OUT_PNG,
               "--nrow": dict(type=int, default=8, help="images a row")})
    run_cmd("interpolate", "decoded straight lines between encoded test images (between prior draws for a GAN)",
            cmd_interpolate, **{"--pairs": dict(type=int, default=8, help="lines, one a row"),
                                "--steps": dict(type=int, default=10, help="images along each line"),
                                "-o": OUT_PNG, "draws": "the prior draws (a model without an encoder)"})
    run_cmd("manifold", "the learned 2-D manifold (AEVB Figure 4)", cmd_manifold,
            **{"-n": dict(type=int, default=20, help="images along each side of the grid"), "-o": OUT_PNG})
    for name, help_, func in (("probe", "linear probe (logistic regression) on the frozen codes", cmd_probe),
                              ("finetune", "linear probe, then encoder + head fine-tuned on the labels with early "
                                           "stopping, vs the same from random initialisation", cmd_finetune)):
        s = sub.add_parser(name, help=help_, allow_abbrev=False)
        s.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
        s.add_argument("--labels", default="all", help="labelled training images, balanced per class (or all)")
        s.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
        computes(s, "the labelled subset" + (" and of the fine-tuning" if name == "finetune" else ""))
        if name == "finetune":
            s.add_argument("--epochs", type=int, default=50, help="most epochs of a fine-tuning run")
            s.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the head")
            s.add_argument("--batch-size", type=int, default=64)
            s.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
            s.add_argument("--patience", type=int, default=10,
                           help="epochs without a better validation accuracy before a run stops")
        s.set_defaults(func=func)
    r = sub.add_parser("report", help="write RUN_DIR/report.html: the run on one page (training writes it too)",
                       allow_abbrev=False)
    r.add_argument("run_dir", metavar="RUN_DIR", help=RUN_DIR_HELP)
    r.add_argument("--checkpoint", default="best", choices=("best", "last"),
                   help="the weights the page's traversals, codes and errors are drawn from [default: best]")
    r.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    computes(r)
    r.set_defaults(func=cmd_report)
    c = sub.add_parser("compare", help="runs side by side: DIR/compare.html, compare.csv and compare.md",
                       allow_abbrev=False)
    c.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders of them")
    c.add_argument("--out", required=True, metavar="DIR", help="the folder to write the page and tables into")
    c.set_defaults(func=cmd_compare)
    f = sub.add_parser("figures", help="the lecture's five figures, trained and drawn: DIR/figures.html, a PNG and "
                                       "a JSON of each (some minutes)", allow_abbrev=False)
    f.add_argument("--out", required=True, metavar="DIR", help="the folder to write the figures into")
    f.add_argument("--only", default=None, metavar="NAMES",
                   help="a comma-separated subset of gan-1d, dae-field, linear-ae-pca, aevb-manifold, gan-game "
                        "[default: all five]")
    f.add_argument("--data-dir", default=None, help="where MNIST is (the last three figures train on it)")
    computes(f, "every figure's training")
    f.set_defaults(func=cmd_figures)
    d = sub.add_parser("datasets", help="list the datasets and where each was found", allow_abbrev=False)
    d.add_argument("--data-dir", default=None)
    d.set_defaults(func=cmd_datasets)
    p.commands = sub.choices  # each command's parser: what a mistyped flag is compared with
    m = sub.add_parser("demo", help="train a VAE on the bundled digits (one to two minutes)", allow_abbrev=False)
    m.add_argument("--out", default="runs/digits-vae", metavar="DIR", help="run directory [default: runs/digits-vae]")
    m.add_argument("--epochs", type=int, default=None, metavar="INT", help="training epochs (default: the demo's)")
    computes(m)
    m.add_argument("--seed", type=int, default=None, metavar="INT", help="seed of the run (default: the demo's)")
    m.set_defaults(func=cmd_demo)
    return p


def _smaller(args) -> str:
    """What to make smaller when a command ran out of the device's memory: its flags that size what
    the device holds at once (half of each value given), else the device."""
    flags = [(flag, getattr(args, name, None)) for flag, name in
             (("--batch-size", "batch_size"), ("--nll-samples", "nll_samples"), ("-n", "n"))
             if hasattr(args, name)]
    if not flags:
        return "try it on the CPU (--device cpu)" if hasattr(args, "device") else "try it with less at once"
    said = [f"{flag} {v // 2}" if isinstance(v, int) and not isinstance(v, bool) and v > 1 else f"a smaller {flag}"
            for flag, v in flags]
    return "try " + " or ".join(said)


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        parser = build_parser(_model_named(argv))
        args, extra = parser.parse_known_args(argv)
        if extra:
            flag = next((e for e in extra if e.startswith("-")), extra[0])
            known = parser.commands[args.cmd]._option_string_actions if flag.startswith("-") else {}
            raise VaelabError(f"unknown {'flag' if flag.startswith('-') else 'argument'} {clip(flag)} for "
                              f"vaelab {args.cmd}{did_you_mean(flag.split('=')[0], known)} (see vaelab {args.cmd} "
                              "--help).")
        for name, flag in PATHS.items():  # before the first stat() of one
            check_path(flag, getattr(args, name, None))
        if args.cmd != "train":  # train's are checked with the rest of its settings (run.check)
            check_threads("--threads", getattr(args, "threads", None))
            check_seed("--seed", getattr(args, "seed", None))
        if distributed.launched() and args.cmd not in DATA_PARALLEL:  # else N copies, all writing the same files
            raise VaelabError(f"vaelab {args.cmd} runs in one process: under torchrun only "
                              f"{' and '.join(DATA_PARALLEL)} share their work between the ranks; run it without "
                              "torchrun.")
        return args.func(args)
    except VaelabError as e:
        if distributed.prints(e):  # under torchrun, one copy of what every rank raised alike
            print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as e:  # a GPU's allocator (torch.OutOfMemoryError from torch 2.5)
        what = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
        print(f"error: vaelab {args.cmd} ran out of memory on the device ({clip(what, 200)}); "
              f"{_smaller(args)}.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
