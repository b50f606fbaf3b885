"""What the fuzzer feeds each parser: a hypothesis strategy of inputs and the call that writes one
under a fresh folder and parses it (:data:`TARGETS`, by parser).

Inputs are drawn near the format rather than as noise alone: a well-formed file of random
content, then that file cut short, a byte of it changed, a header field replaced by any value,
or bytes of no format at all. A well-formed input that parses is checked against an independent
reading (numpy's own, or the values it was written from): a parse must be correct, not only
quiet. A refusal must name the file it is about.
"""
from __future__ import annotations

import gzip
import io
import json
import math
import re
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
    return {"bytes": data, "gzip": draw(st.booleans()), "expect": (dtype, dims, payload) if well else None,
            "magic": draw(st.sampled_from([None, 0x803, int.from_bytes(head[:4], "big")]))}


def idx_case(inp: dict) -> Callable[[Path], None]:
    from vaelab.data.idx import read_idx

    def case(tmp: Path) -> None:
        path = tmp / ("images-idx3-ubyte.gz" if inp["gzip"] else "images-idx3-ubyte")
        data = gzip.compress(inp["bytes"], mtime=0) if inp["gzip"] else inp["bytes"]
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
    shape = draw(st.sampled_from(["table", "table", "deep", "noise", "not a table", "duplicate"]))
    if shape == "noise":
        return {"suffix": kind, "bytes": draw(st.binary(max_size=512))}
    if shape == "deep":  # nesting past any recursion limit
        depth = draw(st.sampled_from([3, 6, 100, 5000, 100_000]))
        text = ("[" * depth + "]" * depth) if kind == "json" else "a = " + "[" * depth + "]" * depth
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
}
