"""What the fuzzer feeds each parser: a hypothesis strategy of inputs and the call that writes one
under a fresh folder and parses it (:data:`TARGETS`, by parser).

Inputs are drawn near the format rather than as noise alone: a well-formed file of random
content, then that file cut short, a byte of it changed, a header field replaced by any value,
or bytes of no format at all. A well-formed input that parses is checked against an independent
reading (numpy's own, or the values it was written from): a parse must be correct, not only
quiet. A refusal must name the file it is about.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import gzip
import io
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from hypothesis import strategies as st

from fuzzing import Unnamed, named_in
from vaelab.errors import VaelabError


@dataclass(frozen=True)
class Target:
    """A parser under fuzzing: ``inputs`` draws one input; ``case(input)`` is the function of a
    fresh folder that writes it there and parses it (:func:`fuzzing.run_case` runs it)."""
    inputs: st.SearchStrategy
    case: Callable[[Any], Callable[[Path], None]]


def _names_the_file(path: Path, call: Callable[[], Any], or_setting: bool = False) -> Any:
    """``call()``; a refusal that does not name ``path`` (or, ``or_setting``, the setting it is
    about, as its flag) is a failure of its own."""
    try:
        return call()
    except VaelabError as e:
        if not (named_in(str(e), path) or or_setting and re.search(r"(^|\W)--[a-z]", str(e))):
            raise Unnamed(f"the refusal does not name {path.name}: {e}") from None
        raise


@st.composite
def _mutated(draw, data: bytes) -> tuple[bytes, bool]:
    """``data`` as written, cut short, with one byte changed, or with bytes appended: (bytes,
    whether they are still the well-formed file)."""
    how = draw(st.sampled_from(["as is", "as is", "cut", "byte", "append"]))
    if how == "cut" and data:
        return data[:draw(st.integers(0, len(data) - 1))], False
    if how == "byte" and data:
        i = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(0, 255).filter(lambda v: v != data[i]))
        return data[:i] + bytes([b]) + data[i + 1:], False
    if how == "append":
        return data + draw(st.binary(min_size=1, max_size=64)), False
    return data, True


# ---- IDX (MNIST's container), raw and gzipped ---------------------------------------------------

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@st.composite
def idx_inputs(draw) -> dict:
    """An IDX file: a header of a type and dimensions, then data (well formed, or any header)."""
    if draw(st.integers(0, 9)) == 0:  # bytes of no format
        return {"bytes": draw(st.binary(max_size=2048)), "gzip": draw(st.booleans()), "expect": None}
    type_byte = draw(st.sampled_from(sorted(IDX_DTYPES)) | st.integers(0, 255))
    dims = draw(st.lists(st.integers(0, 6), min_size=0, max_size=4))
    if draw(st.integers(0, 4)) == 0:  # a size of any value: absurd, or past int32's sign
        dims = dims + [draw(st.integers(0, 2 ** 32 - 1))]
    ndim = draw(st.just(len(dims)) | st.integers(0, 255))
    head = bytes([0, 0, type_byte, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    dtype = IDX_DTYPES.get(type_byte)
    n = math.prod(dims) if ndim == len(dims) and dtype and math.prod(dims) < 4096 else draw(st.integers(0, 256))
    itemsize = np.dtype(dtype).itemsize if dtype else 1
    payload = draw(st.binary(min_size=n * itemsize, max_size=n * itemsize))
    data, intact = draw(_mutated(head + payload))
    well = intact and dtype is not None and ndim == len(dims) and math.prod(dims) == n
    gz = draw(st.sampled_from([False, True, True, "broken"]))
    if gz == "broken":  # the gzip stream itself cut, changed or extended: bytes is the file as written
        data, intact = draw(_mutated(gzip.compress(data, mtime=0)))
        well = well and intact
    return {"bytes": data, "gzip": gz, "expect": (dtype, dims, payload) if well else None,
            "magic": draw(st.sampled_from([None, 0x803, int.from_bytes(head[:4], "big")]))}


def idx_case(inp: dict) -> Callable[[Path], None]:
    """``gzip``: False, the bytes as a raw file; True, gzipped; "broken", the bytes are a gzip
    stream already (one cut or changed)."""
    from vaelab.data.idx import read_idx

    def case(tmp: Path) -> None:
        path = tmp / ("images-idx3-ubyte.gz" if inp["gzip"] else "images-idx3-ubyte")
        data = gzip.compress(inp["bytes"], mtime=0) if inp["gzip"] is True else inp["bytes"]
        path.write_bytes(data)
        got = _names_the_file(path, lambda: read_idx(path, expected_magic=inp.get("magic")))
        if inp["expect"] is not None:
            dtype, dims, payload = inp["expect"]
            want = np.frombuffer(payload, dtype).reshape(dims)
            assert got.shape == want.shape and got.dtype == want.dtype.newbyteorder("="), (got.dtype, got.shape)
            assert np.array_equal(got, want, equal_nan=got.dtype.kind == "f"), "the values differ from numpy's"
    return case


# ---- .amat (binarized MNIST's text format) ----------------------------------------------------

AMAT_WIDTH = 6


@st.composite
def amat_inputs(draw) -> dict:
    if draw(st.integers(0, 9)) == 0:
        return {"bytes": draw(st.binary(max_size=1024)), "expect": None}
    rows = draw(st.lists(st.lists(st.integers(0, 1), min_size=AMAT_WIDTH, max_size=AMAT_WIDTH), min_size=1,
                         max_size=8))
    fmt = draw(st.sampled_from(["{}", "{}.0", "{}.000000"]))
    text = "\n".join(" ".join(fmt.format(v) for v in r) for r in rows) + draw(st.sampled_from(["", "\n", "\n\n"]))
    data, intact = draw(_mutated(text.encode()))
    return {"bytes": data, "expect": rows if intact else None}


def amat_case(inp: dict) -> Callable[[Path], None]:
    from vaelab.data.amat import read_amat

    def case(tmp: Path) -> None:
        path = tmp / "binarized_mnist_train.amat"
        path.write_bytes(inp["bytes"])
        got = _names_the_file(path, lambda: read_amat(path, width=AMAT_WIDTH))
        if inp["expect"] is not None:
            assert np.array_equal(got, np.array(inp["expect"], np.uint8)), "the values differ from the file's"
        assert got.dtype == np.uint8 and got.ndim == 2 and got.shape[1] == AMAT_WIDTH and (got <= 1).all()
    return case


# ---- .npy / .npz arrays of images --------------------------------------------------------------

ARRAY_DTYPES = ["u1", "i1", "<i2", ">i2", "<i4", "<u2", "<f4", ">f4", "<f8", "?", "<c8", "O", "<U3", "V4"]


@st.composite
def _array(draw) -> np.ndarray:
    if draw(st.booleans()):  # images: [N, H, W] or [N, H, W, C] of bytes or of floats in [0, 1]
        shape = (draw(st.integers(0, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5)),
                 *draw(st.sampled_from([(), (1,), (3,), (2,)])))
        if draw(st.booleans()):
            return np.asarray(draw(st.lists(st.integers(0, 255), min_size=math.prod(shape), max_size=math.prod(shape))),
                              np.uint8).reshape(shape)
        return np.asarray(draw(st.lists(st.floats(0, 1) | st.sampled_from([np.nan, -1.0, 2.0]), min_size=math.prod(shape),
                                        max_size=math.prod(shape))), np.float32).reshape(shape)
    dtype = np.dtype(draw(st.sampled_from(ARRAY_DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=5)))
    if dtype.kind == "O":
        return np.empty(shape, dtype)
    raw = draw(st.binary(min_size=math.prod(shape) * dtype.itemsize, max_size=math.prod(shape) * dtype.itemsize))
    return np.frombuffer(raw, dtype).reshape(shape).copy()


@st.composite
def npy_inputs(draw) -> dict:
    if draw(st.integers(0, 9)) == 0:
        return {"bytes": draw(st.binary(max_size=1024))}
    a = draw(_array())
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=a.dtype.kind == "O")
    data, _ = draw(_mutated(buf.getvalue()))
    return {"bytes": data}


def npy_case(inp: dict) -> Callable[[Path], None]:
    from vaelab.data.arrays import read_array

    def case(tmp: Path) -> None:
        path = tmp / "images.npy"
        path.write_bytes(inp["bytes"])
        raw = _names_the_file(path, lambda: read_array(path))
        _check_raw(raw)
    return case


@st.composite
def npz_inputs(draw) -> dict:
    if draw(st.integers(0, 9)) == 0:
        return {"bytes": draw(st.binary(max_size=1024)), "key": None, "label_key": None}
    names = draw(st.lists(st.sampled_from(["x", "y", "images", "labels", "a b", "../x", ""]), min_size=0,
                          max_size=3, unique=True))
    arrays = {name: draw(_array()) for name in names}
    buf = io.BytesIO()
    try:
        (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays, allow_pickle=False)
    except ValueError:  # an object array: numpy will not write it without pickles
        np.savez(buf, **{k: v for k, v in arrays.items() if v.dtype.kind != "O"})
    data, _ = draw(_mutated(buf.getvalue()))
    key = draw(st.sampled_from([None, *names, "missing"]))
    label_key = draw(st.sampled_from([None, *names]))
    return {"bytes": data, "key": key, "label_key": label_key}


def npz_case(inp: dict) -> Callable[[Path], None]:
    from vaelab.data.arrays import read_array

    def case(tmp: Path) -> None:
        path = tmp / "images.npz"
        path.write_bytes(inp["bytes"])
        raw = _names_the_file(path, lambda: read_array(path, key=inp["key"], label_key=inp["label_key"]))
        _check_raw(raw)
    return case


def _check_raw(raw) -> None:
    """What every parse of images must hold, whatever the file: uint8 [N, C, H, W] with C 1 or 3,
    and levels that fit its values."""
    x = raw.x_train
    assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] in (1, 3), (x.dtype, x.shape)
    assert len(raw.y_train) == len(x)
    assert 2 <= raw.levels <= 256 and (x.size == 0 or int(x.max()) < raw.levels)


# ---- CIFAR-10: pickled batches, in their folder or their tarball ----------------------------------

# what a pickle that runs a command would create: a name of this session's, so no file of
# another can be there before
PWNED = Path(tempfile.gettempdir()) / f"vaelab-fuzz-pwned-{os.getpid()}-{secrets.token_hex(4)}"
EVIL = b"cos\nsystem\n(S'touch " + str(PWNED).encode() + b"'\ntR."


@st.composite
def _cifar_batch(draw, dump) -> bytes:
    n = draw(st.integers(0, 2))
    width = draw(st.sampled_from([3072, 3072, 3072, 3071, 0]))
    rows = np.frombuffer(draw(st.binary(min_size=n * width, max_size=n * width)), np.uint8).reshape(n, width)
    labels = draw(st.lists(st.integers(0, 9) | st.integers(-3, 300), min_size=n, max_size=n)
                  | st.lists(st.integers(0, 9), max_size=3))
    from test_cifar import batch
    doc = batch(rows, labels)
    if draw(st.integers(0, 5)) == 0:  # a key missing, or of another type
        key = draw(st.sampled_from([b"data", b"labels"]))
        doc = {k: v for k, v in doc.items() if k != key} if draw(st.booleans()) else \
            {**doc, key: draw(st.integers(-9, 9) | st.binary(max_size=8) | st.lists(st.binary(max_size=2), max_size=3))}
    return dump(doc)


@st.composite
def cifar_inputs(draw) -> dict:
    from test_cifar import meta, py2_pickle, py3_pickle
    dump = draw(st.sampled_from([py2_pickle, py3_pickle, lambda o: py3_pickle(o, 4)]))
    classes = draw(st.sampled_from([10, 10, 0, 3, 11]))
    members = {"data_batch_1": draw(_cifar_batch(dump)), "test_batch": draw(_cifar_batch(dump)),
               "batches.meta": dump(meta([f"class{i}" for i in range(classes)]))}
    if draw(st.booleans()):  # one member changed: cut, a byte, a value of any type, or a pickle that runs code
        name = draw(st.sampled_from(sorted(members)))
        how = draw(st.sampled_from(["bytes", "value", "evil", "gone"]))
        if how == "bytes":
            members[name] = draw(_mutated(members[name]))[0]
        elif how == "value":
            members[name] = py3_pickle(draw(_values(1)))
        elif how == "evil":
            members[name] = EVIL
        else:
            del members[name]
    return {"members": members, "tarball": draw(st.booleans()), "cut": draw(st.integers(0, 3)) == 0}


def cifar_case(inp: dict) -> Callable[[Path], None]:
    from test_cifar import write_folder, write_tarball
    from vaelab.data.cifar import TARBALL, read_cifar10

    def case(tmp: Path) -> None:
        if inp["tarball"]:
            path = write_tarball(tmp / TARBALL, inp["members"])
            if inp["cut"]:
                data = path.read_bytes()
                path.write_bytes(data[:len(data) // 2])
        else:
            path = write_folder(tmp, inp["members"])
        try:
            raw = _names_the_file(path, lambda: read_cifar10(path))
        finally:
            assert not PWNED.exists(), "a pickle ran a command"
        assert raw.x_train.dtype == np.uint8 and raw.x_train.shape[1:] == (3, 32, 32)
        for x, y in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):
            assert len(x) == len(y) and (len(y) == 0 or 0 <= y.min() and y.max() < len(raw.classes))
    return case


# ---- image folders and tarballs -------------------------------------------------------------------

IMAGE_NAMES = ["a.png", "b.jpg", "c.jpeg", "D.PNG", "one/a.png", "one/b.png", "two/c.jpg", "two/deep/d.png",
               ".hidden.png", "notes.txt", "a b.png", "\u00fc.png", "one/.x.png", "one", "x.png/y.png"]
MEMBER_NAMES = ["../up.png", "/abs.png", "one/../../up.png", "./a.png", "top/one/a.png", "top/two/b.png"]


@st.composite
def _image_file(draw) -> bytes:
    from PIL import Image
    w, h = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "LA", "I", "F"]))
    fmt = draw(st.sampled_from(["PNG", "PNG", "JPEG", "GIF", "BMP"]))
    pixels = np.frombuffer(draw(st.binary(min_size=w * h * 3, max_size=w * h * 3)), np.uint8).reshape(h, w, 3)
    img = Image.fromarray(pixels).convert(mode)
    if fmt == "JPEG" and mode not in ("L", "RGB"):
        img = img.convert("RGB")
    buf = io.BytesIO()
    try:
        img.save(buf, fmt)
    except OSError:  # a mode the format cannot hold
        img.convert("RGB").save(buf, fmt)
    return draw(_mutated(buf.getvalue()))[0]


@st.composite
def images_inputs(draw) -> dict:
    n = draw(st.integers(0, 5))
    names = draw(st.lists(st.sampled_from(IMAGE_NAMES + MEMBER_NAMES) | st.text(min_size=1, max_size=8).map(
        lambda t: t + ".png"), min_size=n, max_size=n, unique=True))
    entries = []
    for name in names:
        kind = draw(st.sampled_from(["file", "file", "file", "empty", "noise", "link", "dir", "hardlink", "device"]))
        data = draw(_image_file()) if kind == "file" else b"" if kind == "empty" else draw(st.binary(max_size=64))
        target = draw(st.sampled_from(["/etc/passwd", "../outside.png", *names[:2], "loop.png"]))
        entries.append({"name": name, "kind": kind, "data": data, "target": target})
    return {"entries": entries, "tarball": draw(st.booleans()), "size": draw(st.sampled_from([None, 4, 8])),
            "crop": draw(st.sampled_from([None, None, 2, 100])), "channels": draw(st.sampled_from([None, 1, 3])),
            "compress": draw(st.sampled_from(["", "gz", "bz2", "xz"]))}


def _write_folder(root: Path, entries: list[dict]) -> None:
    """The entries as a folder: each one a folder can hold (the writer's own limits are not the
    parser's findings: a name or a link's target with a NUL, a name through a loop of links
    written before it, or one that leaves the folder, is left out)."""
    for e in entries:
        p = root / e["name"]
        try:
            inside = p.resolve().is_relative_to(root.resolve())
        except (RuntimeError, OSError, ValueError):  # a loop of the links written before it, a NUL
            continue
        if "\x00" in e["name"] + e["target"] or not inside:
            continue
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            if e["kind"] == "link":
                os.symlink(e["target"], p)
            elif e["kind"] == "dir":
                p.mkdir(parents=True, exist_ok=True)
            elif e["kind"] == "device":
                os.mkfifo(p)  # a FIFO: opening it to read would wait for a writer forever
            else:
                p.write_bytes(e["data"])
        except OSError:  # the names collide (the first one stays), or one is too long
            pass


def _write_tarball(path: Path, entries: list[dict], compress: str) -> None:
    import tarfile
    with tarfile.open(path, f"w:{compress}" if compress else "w") as tar:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            kinds = {"link": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "dir": tarfile.DIRTYPE,
                     "device": tarfile.CHRTYPE}
            info.type = kinds.get(e["kind"], tarfile.REGTYPE)
            if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = e["target"]
            data = e["data"] if info.type == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def images_case(inp: dict) -> Callable[[Path], None]:
    from vaelab.data.folder import read_image_folder

    def case(tmp: Path) -> None:
        if inp["tarball"]:
            path = tmp / f"images.tar{'.' + inp['compress'] if inp['compress'] else ''}"
            _write_tarball(path, inp["entries"], inp["compress"])
        else:
            path = tmp / "images"
            path.mkdir()
            _write_folder(path, inp["entries"])
        outside = sorted(p.name for p in tmp.iterdir())
        raw = _names_the_file(path, lambda: read_image_folder(path, image_size=inp["size"], crop=inp["crop"],
                                                               channels=inp["channels"], workers=0, progress=False,
                                                               cache=False))
        assert sorted(p.name for p in tmp.iterdir()) == outside, "a file was written beside the data"
        x = raw.x_train
        assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] in (1, 3) and len(raw.y_train) == len(x)
        if inp["size"]:
            assert x.shape[2:] == (inp["size"], inp["size"])
    return case


# ---- run directories: config.json, checkpoints, the resume file, the logs, the lock -----------------

RUN_FILES = ["config.json", "best.safetensors", "model.safetensors", "resume.safetensors", "metrics.jsonl",
             "steps.jsonl", "finished.json", ".vaelab.lock"]


@functools.cache
def pristine_run() -> Path:
    """A finished run of a tiny VAE on the bundled digits (trained once, in the parent): what each
    case copies and changes one file of."""
    import vaelab
    out = Path(tempfile.mkdtemp(prefix="vaelab-fuzz-run-")) / "run"
    atexit.register(shutil.rmtree, out.parent, True)  # this process's (a forked case's exit skips it: os._exit)
    cfg = vaelab.make_config(data="digits", hidden=(8,), latent_dim=2, epochs=1, nll_samples=0, ema="none",
                             progress=False, report=False, out=str(out))
    return vaelab.train(cfg, log=lambda m: None)


@st.composite
def _json_changed(draw, doc):
    """``doc`` with one value anywhere in it replaced, or one key removed."""
    if not isinstance(doc, (dict, list)) or not doc or draw(st.integers(0, 3)) == 0:
        return draw(_values(1))
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    k = draw(st.sampled_from(keys))
    out = dict(doc) if isinstance(doc, dict) else list(doc)
    if isinstance(out, dict) and draw(st.integers(0, 4)) == 0:
        del out[k]
    else:
        out[k] = draw(_json_changed(doc[k]))
    return out


@st.composite
def run_dir_inputs(draw) -> dict:
    run = pristine_run()
    name = draw(st.sampled_from(RUN_FILES))
    path = run / name
    data = path.read_bytes() if path.exists() else b""
    how = draw(st.sampled_from(["bytes", "json", "json", "gone", "link"]))
    if how == "json" and name.endswith(".safetensors") and len(data) > 8:  # its JSON header changed
        n = int.from_bytes(data[:8], "little")
        head = json.loads(data[8:8 + n])
        text = json.dumps(draw(_json_changed(head))).encode()
        data = len(text).to_bytes(8, "little") + text + data[8 + n:]
    elif how == "json" and name.endswith(".json"):
        data = json.dumps(draw(_json_changed(json.loads(data))), allow_nan=True).encode()
    elif how == "json" and name.endswith(".jsonl"):
        lines = data.decode().splitlines()
        i = draw(st.integers(0, max(len(lines) - 1, 0)))
        lines[i:i + 1] = [json.dumps(draw(_json_changed(json.loads(lines[i]) if lines else {})), allow_nan=True)]
        data = "\n".join(lines).encode() + b"\n"
    elif how == "bytes":
        data = draw(_mutated(data))[0]
    return {"run": str(run), "file": name, "how": how, "bytes": data,
            "target": draw(st.sampled_from(["/etc/passwd", "/nonexistent", "config.json", name]))}


def run_dir_case(inp: dict) -> Callable[[Path], None]:
    import vaelab
    from vaelab.io import lock_run
    from vaelab.loading import read_run
    from vaelab.images import plot_curves
    from vaelab.report.curves import plot_panels
    from vaelab.report.metrics import training_rows
    from vaelab.report.page import figure_uri
    from vaelab.rundir import finished_epochs, read_jsonl, report_done
    from vaelab.training.checkpoint import check_loop, load_resume
    from vaelab.training.loggers import StepLines

    def case(tmp: Path) -> None:
        run = tmp / "run"
        shutil.copytree(inp["run"], run)
        path = run / inp["file"]
        path.unlink(missing_ok=True)
        if inp["how"] == "link":
            os.symlink(inp["target"], path)
        elif inp["how"] != "gone":
            path.write_bytes(inp["bytes"])
        outside = "/etc/passwd", Path("/etc/passwd").read_bytes()

        def read_all():
            cfg, _ = read_run(run)
            for checkpoint in ("best", "last"):
                model = vaelab.load(run, checkpoint, device="cpu")
            rng, loop = load_resume(run / "resume.safetensors", model, model.optimizers(cfg.train))
            check_loop(run / "resume.safetensors", loop)
            finished_epochs(run)
            report_done(run)
            with lock_run(run, "--resume"):
                pass
            # what reads the logs: the report's table and curves (drawn where a record was changed:
            # a tenth of the cases, a drawing taking most of a second), a resume's cut of the steps
            hist, steps = read_jsonl(run / "metrics.jsonl"), read_jsonl(run / "steps.jsonl")
            training_rows(run)
            if inp["file"].endswith(".jsonl") and inp["how"] == "json":
                for records, x in ((hist, "epoch"), (steps, "step")):
                    fig, _ = plot_panels([("run", records)], x)
                    if fig is not None:
                        figure_uri(fig, tight=False)
                if hist:
                    plot_curves(hist, tmp / "curves.png")
            StepLines(run, 1).close()
        try:
            _names_the_file(run, read_all)
        finally:
            assert Path(outside[0]).read_bytes() == outside[1], "a file outside the run was written"
    return case


# ---- the command line: vaelab train --model X and its flags ---------------------------------------

FLAG_VALUES = ["1", "0", "-1", "2", "64", "1e-3", "0.5", "nan", "inf", "-inf", "1e400", "10" * 20, "", " ", "all",
               "none", "mnist", "digits", "vae", "64,32", "2,,3", "a,b", "mlp", "conv", "true", "\u00fc", "../x",
               "/dev/null", "x" * 300, "-", "--", "3.7", "0x10", "1_000"]


@st.composite
def flags_inputs(draw) -> dict:
    from vaelab.cli import build_parser
    from vaelab.registry import MODELS
    model = draw(st.sampled_from(sorted(MODELS)))
    known = sorted(o for o in build_parser(model).commands["train"]._option_string_actions if o.startswith("--"))
    argv = ["train", "--model", model, "--data", "digits"]
    for _ in range(draw(st.integers(0, 5))):
        flag = draw(st.sampled_from(known) | st.sampled_from(["--nope", "--epoch", "-x", "--model"]))
        if flag in ("--help", "-h", "--out", "--resume", "--like", "--config"):
            continue  # help prints and exits; the paths are the run-dir and settings targets'
        argv.append(flag)
        if draw(st.integers(0, 5)):
            argv.append(draw(st.sampled_from(FLAG_VALUES) | st.text(max_size=6)))
    return {"argv": argv}


class _Trained(Exception):
    """Raised where training would take its first step: the flags were parsed and checked."""


def _run_cli(argv: list[str]) -> None:
    """``vaelab argv`` in this process: returns where it succeeded or was stopped where its work
    begins (:class:`_Trained`); its one line of error, where it exited 2, raised as the
    VaelabError it was."""
    from vaelab import cli
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(argv)
    except _Trained:
        return
    if rc == 2:  # log lines may come before it; the error is one line, the last
        lines = said.getvalue().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        if len(errors) != 1 or lines[-1] != errors[0]:
            raise Unnamed(f"exit 2 without one line of error, the last: {said.getvalue()[-500:]!r}")
        raise VaelabError(errors[0][len("error: "):])
    assert rc == 0, rc


@functools.cache
def _warmed() -> None:
    """One run of ``vaelab train`` up to its first step, in this process, once: what torch and
    scikit-learn do on a first use (lazy imports, the digits read), which each forked case would
    otherwise do again (7 s a case where 0.1 s is the parse)."""
    from vaelab.training import trainer
    real = trainer._Loop.train_steps  # the case stops training there: put back for this process
    try:
        with tempfile.TemporaryDirectory(prefix="vaelab-fuzz-warm-") as tmp, contextlib.suppress(BaseException):
            flags_case({"argv": ["train", "--data", "digits", "--out", f"{tmp}/run"]})(Path(tmp))
    finally:
        trainer._Loop.train_steps = real


def flags_case(inp: dict) -> Callable[[Path], None]:
    from vaelab.training import trainer

    def case(tmp: Path) -> None:
        def stop(*args, **kwargs):
            raise _Trained
        trainer._Loop.train_steps = stop
        _run_cli([*inp["argv"], "--out", str(tmp / "run"), "--threads", "1"])
    return case


# ---- the other commands on a run: eval, sample, reconstruct, interpolate, manifold, probe, ... ------

COMMANDS = ["eval", "sample", "reconstruct", "interpolate", "manifold", "probe", "finetune", "report", "compare",
            "figures", "datasets", "demo"]
ON_A_RUN = COMMANDS[:9]  # the commands that take run directories (compare, one or more)


@st.composite
def commands_inputs(draw) -> dict:
    cmd = draw(st.sampled_from(COMMANDS))
    known = sorted(o for o in _options(cmd) if o.startswith("--") and o not in ("--help", "--data-dir"))
    runs = st.sampled_from(["RUN", "RUN", "RUN", "TMP/missing", "RUN/config.json", "TMP"])
    argv = [cmd, *draw(st.lists(runs, min_size=1, max_size=3 if cmd == "compare" else 1))] if cmd in ON_A_RUN else [cmd]
    for _ in range(draw(st.integers(0, 4))):
        argv.append(draw(st.sampled_from([*known, "-o", "--nope"])))
        if draw(st.integers(0, 5)):
            argv.append(draw(st.sampled_from(FLAG_VALUES + ["RUN/out.png", "TMP/x.json", "gmm:3", "prior"])
                             | st.text(max_size=6)))
    return {"run": str(pristine_run()), "argv": argv}


def commands_case(inp: dict) -> Callable[[Path], None]:
    from vaelab import api, lecture
    from vaelab.evaluation import likelihood, probe
    from vaelab.training import trainer

    def case(tmp: Path) -> None:
        run = tmp / "run"
        shutil.copytree(inp["run"], run)

        def stop(*args, **kwargs):  # where the minutes of work begin: the flags were parsed and checked
            raise _Trained
        # as each caller holds them: vaelab.api imports evaluate_likelihood by name
        api.evaluate_likelihood = likelihood.evaluate_likelihood = probe.linear_probe = probe.finetune = stop
        trainer._Loop.train_steps = stop  # demo's training
        for name in lecture.MAKERS:  # each of the lecture's figures trains for a minute or more
            lecture.MAKERS[name] = stop
        argv = [a.replace("RUN", str(run)).replace("TMP", str(tmp)) for a in inp["argv"]]
        if "--threads" in _options(argv[0]) and "--threads" not in argv:
            argv += ["--threads", "1"]
        _run_cli(argv)
    return case


@functools.cache
def _options(cmd: str) -> frozenset:
    from vaelab.cli import build_parser
    return frozenset(build_parser().commands[cmd]._option_string_actions)


# ---- the environment: torchrun's variables, the data and cache folders ------------------------------

ENV_VALUES = ["", " ", "0", "1", "2", "3", "-1", "x", "1.5", "10" * 10, "\u00fc", "127.0.0.1", "nonexistent.invalid",
              "65535", "70000", "/nonexistent", "/dev/null", "relative/dir", "/etc/passwd"]
ENV_NAMES = ["WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "VAELAB_DATA",
             "VAELAB_CACHE", "XDG_DATA_HOME", "VAELAB_MIRROR"]


@st.composite
def env_inputs(draw) -> dict:
    names = draw(st.lists(st.sampled_from(ENV_NAMES), max_size=5, unique=True))
    return {"env": {n: draw(st.sampled_from(ENV_VALUES) | st.text(max_size=6).filter(lambda t: "\x00" not in t))
                    for n in names}}


def env_case(inp: dict) -> Callable[[Path], None]:
    _warmed()

    def case(tmp: Path) -> None:
        for name in ENV_NAMES:
            os.environ.pop(name, None)
        os.environ.update({k: v.replace("TMP", str(tmp)) for k, v in inp["env"].items()})
        flags_case({"argv": ["train", "--data", "digits", "--dist-timeout", "1"]})(tmp)
    return case


# ---- .mat files (MATLAB v5), and the samplers' specs ------------------------------------------------

@st.composite
def mat_inputs(draw) -> dict:
    if draw(st.integers(0, 9)) == 0:
        return {"bytes": draw(st.binary(max_size=1024)), "key": None}
    import scipy.io
    names = draw(st.lists(st.sampled_from(["x", "X", "images", "y", "data"]), min_size=1, max_size=3, unique=True))
    arrays = {n: draw(_array()) for n in names}
    arrays = {n: a for n, a in arrays.items() if a.dtype.kind in "biuf" and a.dtype.itemsize <= 8}
    buf = io.BytesIO()
    scipy.io.savemat(buf, arrays, do_compression=draw(st.booleans()))
    data = buf.getvalue()
    if draw(st.integers(0, 9)) == 0:  # a v7.3 file's header: HDF5 inside, not read
        data = b"MATLAB 7.3 MAT-file" + data[19:]
    return {"bytes": draw(_mutated(data))[0], "key": draw(st.sampled_from([None, *names, "missing"]))}


def mat_case(inp: dict) -> Callable[[Path], None]:
    from vaelab.data.arrays import read_array

    def case(tmp: Path) -> None:
        path = tmp / "images.mat"
        path.write_bytes(inp["bytes"])
        _check_raw(_names_the_file(path, lambda: read_array(path, key=inp["key"])))
    return case


@st.composite
def sampler_inputs(draw) -> dict:
    from vaelab.registry import MODELS, SAMPLERS
    names = sorted(SAMPLERS)
    text = draw(st.sampled_from(names).flatmap(lambda n: st.sampled_from(
        [n, f"{n}:", f"{n}:10", f"{n}:0", f"{n}:-1", f"{n}:1e3", f"{n}:{10 ** 30}", f"{n}:\u0661\u0662", f"{n}:x"]))
        | st.text(max_size=12))
    return {"text": text, "model": draw(st.sampled_from(sorted(MODELS)))}


def sampler_case(inp: dict) -> Callable[[Path], None]:
    from vaelab.registry import MODELS
    from vaelab.samplers import resolve_sampler

    def case(tmp: Path) -> None:
        spec = resolve_sampler(inp["text"], MODELS[inp["model"]], tmp)
        assert spec.title and spec.caption  # what a report and the samples' caption say of it
    return case


# ---- settings files: TOML and JSON -------------------------------------------------------------

# real setting names, some misspelt, and tables as a file may hold them
SETTING_NAMES = ["model", "epochs", "batch_size", "batch-size", "lr", "latent_dim", "latent-dim", "hidden", "data",
                 "seed", "labels", "beta", "train", "data_dir", "time_budget", "epoch", "format_version", "run",
                 "likelihood", "preset", "k", "alpha", ""]
_SCALARS = (st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True) | st.booleans()
            | st.text(max_size=12) | st.sampled_from(["vae", "m2", "iwae", "mnist", "digits", "all", "1e-3", "64,32"]))


def _values(depth: int):
    return st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from(SETTING_NAMES) | st.text(max_size=6), inner, max_size=4),
                        max_leaves=12) if depth else _SCALARS


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(v), repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


@st.composite
def settings_inputs(draw) -> dict:
    kind = draw(st.sampled_from(["json", "toml"]))
    shape = draw(st.sampled_from(["table", "table", "deep", "noise", "not a table", "duplicate", "large"]))
    if shape == "noise":
        return {"suffix": kind, "bytes": draw(st.binary(max_size=512))}
    if shape == "deep":  # nesting past any recursion limit
        depth = draw(st.sampled_from([3, 6, 100, 5000, 100_000]))
        text = ("[" * depth + "]" * depth) if kind == "json" else "a = " + "[" * depth + "]" * depth
        return {"suffix": kind, "bytes": text.encode()}
    if shape == "large":  # megabytes: a long string, a long array, many keys
        n = draw(st.sampled_from([10**5, 10**6, 4 * 10**6]))
        big = draw(st.sampled_from(["string", "array", "keys"]))
        if big == "string":
            doc = {"model": "vae", "data": "x" * n}
        elif big == "array":
            doc = {"model": "vae", "hidden": [8] * (n // 2)}
        else:
            doc = {f"k{i}": i for i in range(n // 10)}
        text = json.dumps(doc) if kind == "json" else "\n".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items())
        return {"suffix": kind, "bytes": text.encode()}
    if shape == "not a table":
        return {"suffix": kind, "bytes": json.dumps(draw(_values(1))).encode() if kind == "json" else b"= 1"}
    doc = draw(st.dictionaries(st.sampled_from(SETTING_NAMES), _values(1), max_size=6))
    if kind == "json":
        text = json.dumps(doc, allow_nan=True)
        if shape == "duplicate" and doc:
            k = next(iter(doc))
            text = text[:-1] + f', {json.dumps(k)}: {json.dumps(doc[k], allow_nan=True)}' + "}"
    else:
        lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc.items()]
        if shape == "duplicate" and lines:
            lines.append(lines[0])
        text = "\n".join(lines)
    data, _ = draw(_mutated(text.encode()))
    return {"suffix": kind, "bytes": data}


def settings_case(inp: dict) -> Callable[[Path], None]:
    import vaelab

    def case(tmp: Path) -> None:
        path = tmp / f"settings.{inp['suffix']}"
        path.write_bytes(inp["bytes"])
        cfg = _names_the_file(path, lambda: vaelab.make_config(config_file=str(path), out=str(tmp / "run")),
                              or_setting=True)
        assert cfg.train.epochs >= 1 and cfg.train.batch_size >= 1  # a parse gives a checked config
    return case


TARGETS: dict[str, Target] = {
    "idx": Target(idx_inputs(), idx_case),
    "amat": Target(amat_inputs(), amat_case),
    "npy": Target(npy_inputs(), npy_case),
    "npz": Target(npz_inputs(), npz_case),
    "settings": Target(settings_inputs(), settings_case),
    "cifar": Target(cifar_inputs(), cifar_case),
    "images": Target(images_inputs(), images_case),
    "run-dir": Target(run_dir_inputs(), run_dir_case),
    "flags": Target(flags_inputs(), flags_case),
    "env": Target(env_inputs(), env_case),
    "mat": Target(mat_inputs(), mat_case),
    "sampler": Target(sampler_inputs(), sampler_case),
    "commands": Target(commands_inputs(), commands_case),
}
