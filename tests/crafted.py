"""The corpus of crafted files: inputs made to attack the reader rather than to be read, each of
which vaelab must refuse in one sentence naming it, with nothing changed on disk outside the
run directory and vaelab's cache (``VAELAB_CACHE``).

Each :class:`Crafted` writes its file under a fresh folder (``data/``, ``run/``, ``home/`` for
the user's own files, ``cache/``) and says which call reads it: a parser, as training calls it, or
a command on a run directory. :func:`check` runs it in a forked child under the fuzzer's memory
and time bounds (tests/fuzzing.py), so a bomb that went off would be a finding, not a dead
suite. tests/test_crafted.py runs every file; benchmarks/crafted.py records the counts.

The groups, as the reliability issue lists them: pickles that would run a command (CIFAR's
batches, and NumPy's object arrays); tarballs with ``..``, absolute paths, links and devices;
links planted in a run directory; a run naming an unknown model; image, gzip, zip, MATLAB and
sparse-file bombs.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fuzzing import Outcome, Unnamed, named_in, run_case
from vaelab.errors import VaelabError
from vaelab.io import LOCK

Call = Callable[[], object]


@dataclass(frozen=True)
class Crafted:
    """One crafted file: ``make(root)`` writes it under ``root`` and returns the call that reads it
    and the path its refusal must name."""
    name: str
    group: str
    make: Callable[[Path], tuple[Call, Path]]


# ---- what the child runs -----------------------------------------------------------------------

def _cli(*argv) -> Call:
    """``vaelab argv`` as the command line runs it: a refusal (exit 2, ``error: ...`` on stderr)
    comes back as the VaelabError it printed; exit 0 returns."""
    def call():
        from vaelab.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main([str(a) for a in argv])
        text = err.getvalue().strip()
        if rc == 2 and text.startswith("error: "):
            raise VaelabError(text[len("error: "):])
        if rc != 0:
            raise AssertionError(f"vaelab {argv[0]} ended with status {rc}: {text[-2000:]}")
    return call


def _snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple]:
    """Every entry under ``root`` but those under ``skip``, never followed: its kind and its bytes'
    hash (a file) or target (a link)."""
    out = {}
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in skip]
        for n in dirs + names:
            p = here / n
            st = p.lstat()
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():  # a small file by its bytes, a large one (a bomb) by its size and time
                out[str(p)] = ("file", st.st_mode, st.st_size, st.st_mtime_ns,
                               hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 2 ** 20 else "")
            else:
                out[str(p)] = ("other" if not p.is_dir() else "dir", st.st_mode)
    return out


def case_fn(item: Crafted) -> Callable[[Path], None]:
    """The function of a fresh folder that writes ``item`` there and reads it: a correct refusal
    ends in the VaelabError (the harness checks it is one sentence); a refusal naming another file
    is :class:`~fuzzing.Unnamed`; anything written outside ``run/`` and ``cache/`` fails."""
    def case(root: Path) -> None:
        for d in ("data", "run", "home", "cache", "tmp"):
            (root / d).mkdir(exist_ok=True)
        (root / "home" / "precious.txt").write_text("the user's own file\n")
        # everything this process could write to without being told where is inside the folder
        # compared: its home, its temporary folder and its working folder (the user's home)
        os.environ.update(VAELAB_CACHE=str(root / "cache"), HOME=str(root / "home"), TMPDIR=str(root / "tmp"))
        import tempfile
        tempfile.tempdir = None
        os.chdir(root / "home")
        call, named = item.make(root)
        skip = (root / "run", root / "cache")
        before = _snapshot(root, skip)
        try:
            call()
        except VaelabError as e:
            if not named_in(str(e), named):
                raise Unnamed(f"the refusal does not name {named}: {e}") from None
            raise
        finally:
            after = _snapshot(root, skip)
            changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
            assert not changed, f"changed outside the run and the cache: {changed[:5]}"
        raise AssertionError(f"{item.name}: read without a refusal")
    return case


def check(item: Crafted) -> Outcome:
    """``item`` read in a forked child under the bounds: refused (its sentence), or what went wrong.
    The finished run the run-directory cases copy is trained here, and the command line imported,
    before the fork: the child's memory is then the reading's alone."""
    import vaelab.cli  # noqa: F401
    from fuzz_targets import pristine_run
    pristine_run()
    return run_case(case_fn(item))


# ---- pickles that would run a command ------------------------------------------------------------

def _pwned(root: Path) -> Path:
    return root / "home" / "pwned"


class _Reduce:
    """Pickles as ``func(*args)``: what an attacker's pickle calls when it is loaded."""
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _pickles(root: Path) -> dict[str, bytes]:
    touch = str(_pwned(root))
    return {
        "os.system by GLOBAL and REDUCE (protocol 0)": b"cos\nsystem\n(S'touch " + touch.encode() + b"'\ntR.",
        "os.system by INST (protocol 0)": b"(S'touch " + touch.encode() + b"'\nios\nsystem\n.",
        "builtins.exec by STACK_GLOBAL (protocol 4)":
            pickle.dumps(_Reduce(exec, f"open({touch!r}, 'w').close()"), protocol=4),
        "subprocess.Popen (protocol 2)": pickle.dumps(_Reduce(subprocess.Popen, ["touch", touch]), protocol=2),
        "a batch whose data is os.system (protocol 2)": pickle.dumps(
            {b"batch_label": b"training batch 1 of 5", b"labels": [0],
             b"data": _Reduce(os.system, f"touch {touch}")}, protocol=2),
    }


def _cifar_pickle(kind: str, tarball: bool) -> Callable[[Path], tuple[Call, Path]]:
    def make(root: Path):
        from test_cifar import official_members, write_folder, write_tarball
        from vaelab.data.cifar import read_cifar10
        members = {**official_members(), "data_batch_1": _pickles(root)[kind]}
        path = write_tarball(root / "data" / "cifar-10-python.tar.gz", members) if tarball else \
            write_folder(root / "data", members) / "data_batch_1"
        return (lambda: read_cifar10(path if tarball else path.parent)), path
    return make


def _npy_object(suffix: str) -> Callable[[Path], tuple[Call, Path]]:
    def make(root: Path):
        from vaelab.data.arrays import read_array
        a = np.empty(2, dtype=object)
        a[0], a[1] = _Reduce(os.system, f"touch {_pwned(root)}"), 1
        path = root / "data" / f"images{suffix}"
        if suffix == ".npy":
            np.save(path, a, allow_pickle=True)
        else:
            np.savez(path, x=a)
        return (lambda: read_array(path)), path
    return make


# ---- tarballs that would write or read outside ----------------------------------------------------

def _png(w: int = 4, h: int = 4) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (w, h), 7).save(buf, "PNG")
    return buf.getvalue()


def _tar_member(how: str) -> Callable[[Path], tuple[Call, Path]]:
    def make(root: Path):
        from vaelab.data.folder import read_image_folder
        path = root / "data" / "images.tar"
        with tarfile.open(path, "w") as tar:
            good = tarfile.TarInfo("ok.png")
            data = _png()
            good.size = len(data)
            tar.addfile(good, io.BytesIO(data))
            m = tarfile.TarInfo({"dotdot": "../../home/escaped.png", "absolute": str(root / "home" / "abs.png"),
                                 "symlink": "link.png", "hardlink": "hard.png", "device": "dev.png",
                                 "fifo": "fifo.png"}[how])
            m.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "device": tarfile.CHRTYPE,
                      "fifo": tarfile.FIFOTYPE}.get(how, tarfile.REGTYPE)
            if how in ("symlink", "hardlink"):
                m.linkname = str(root / "home" / "precious.txt")
            body = data if m.type == tarfile.REGTYPE else b""
            m.size = len(body)
            tar.addfile(m, io.BytesIO(body))
        return (lambda: read_image_folder(path, workers=0, progress=False, cache=False)), path
    return make


def _cifar_tar_dotdot(root: Path):
    from test_cifar import official_members
    from vaelab.data.cifar import read_cifar10
    path = root / "data" / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {**official_members(), "../../home/escaped": b"x"}.items():
            m = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return (lambda: read_cifar10(path)), path


def _folder_link_out(root: Path):
    from vaelab.data.folder import read_image_folder
    folder = root / "data" / "images"
    folder.mkdir()
    (folder / "ok.png").write_bytes(_png())
    (root / "home" / "photo.png").write_bytes(_png())
    (folder / "link.png").symlink_to(root / "home" / "photo.png")
    return (lambda: read_image_folder(folder, workers=0, progress=False, cache=False)), folder / "link.png"


# ---- links planted in a run directory, and a run naming an unknown model ---------------------------

def _planted(name: str, *argv: str) -> Callable[[Path], tuple[Call, Path]]:
    """``name`` in a finished run replaced by a link to a file of the user's; ``argv`` opens the
    run (``RUN`` stands for it)."""
    def make(root: Path):
        from fuzz_targets import pristine_run
        run = root / "run"
        shutil.rmtree(run)
        shutil.copytree(pristine_run(), run)
        target = root / "home" / f"theirs-{name.replace('/', '-')}"
        p = run / name
        if p.is_dir():
            target.mkdir()
            shutil.rmtree(p)
        elif p.exists():
            target.write_bytes(p.read_bytes())
            p.unlink()
        else:
            target.write_bytes(b"the user's own\n")
        p.symlink_to(target)
        named = run if name == LOCK else p  # the lock's refusal names the run it locks
        return _cli(*[str(run) if a == "RUN" else a for a in argv]), named
    return make


def _unknown_model(*argv: str) -> Callable[[Path], tuple[Call, Path]]:
    """A finished run whose config.json (the checkpoints' JSON: the weights carry no model name)
    names a model vaelab does not have, as a path to a callable."""
    def make(root: Path):
        from fuzz_targets import pristine_run
        run = root / "run"
        shutil.rmtree(run)
        shutil.copytree(pristine_run(), run)
        p = run / "config.json"
        doc = json.loads(p.read_text())
        doc["run"]["train"]["model"] = "os:system"
        p.write_text(json.dumps(doc))
        return _cli(*[str(run) if a == "RUN" else a for a in argv]), p
    return make


# ---- bombs -----------------------------------------------------------------------------------------

def _zeros(write, n: int, chunk: int = 1 << 22) -> None:
    """``n`` zero bytes handed to ``write`` a few MB at a time (a bomb is made in small memory)."""
    block = bytes(chunk)
    for _ in range(n // chunk):
        write(block)
    write(bytes(n % chunk))


def _deflated(n: int, prefix: bytes = b"", wbits: int = 15) -> bytes:
    """``prefix`` and ``n`` zero bytes, deflated (zlib's stream, or raw with ``wbits`` -15)."""
    z = zlib.compressobj(1, zlib.DEFLATED, wbits)
    out = [z.compress(prefix)]
    _zeros(lambda b: out.append(z.compress(b)), n)
    return b"".join(out) + z.flush()


def _image_bomb(in_tarball: bool, side: int = 10_000) -> Callable[[Path], tuple[Call, Path]]:
    """An RGB PNG of ``side`` x ``side`` black pixels: 300 MB decoded, 1 MB stored, at 10,000, more
    than Pillow's limit (89,478,485 pixels) and less than twice it, where Pillow only warns; at
    9,000, under it, 243 MB, which the memory bound refuses."""
    def make(root: Path):
        from vaelab.data.folder import read_image_folder
        w = h = side
        row = 1 + 3 * w  # a filter byte, then the pixels

        def chunk(kind: bytes, body: bytes) -> bytes:
            return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0]))
               + chunk(b"IDAT", _deflated(row * h)) + chunk(b"IEND", b""))
        if in_tarball:
            path = root / "data" / "images.tar.gz"
            with tarfile.open(path, "w:gz", compresslevel=1) as tar:
                m = tarfile.TarInfo("bomb.png")
                m.size = len(png)
                tar.addfile(m, io.BytesIO(png))
            named = path
        else:
            folder = root / "data" / "images"
            folder.mkdir()
            (folder / "bomb.png").write_bytes(png)
            path, named = folder, folder / "bomb.png"
        return (lambda: read_image_folder(path, workers=0, progress=False, cache=False)), named
    return make


BOMB = 2 ** 28  # 256 MB inflated: twice the memory bound the child runs vaelab under


def _gzip_idx_bomb(root: Path):
    """An IDX file of 256 MB declared and written, 250 kB gzipped."""
    from vaelab.data.idx import read_idx
    path = root / "data" / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 3]) + (BOMB // 1024).to_bytes(4, "big") + (32).to_bytes(4, "big") * 2)
        _zeros(f.write, BOMB)
    return (lambda: read_idx(path)), path


def _npz_bomb(root: Path):
    """A .npz whose one member inflates to 256 MB."""
    from vaelab.data.arrays import read_array
    path = root / "data" / "images.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (BOMB // 1024, 32, 32)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z, \
            z.open("x.npy", "w", force_zip64=True) as f:
        f.write(header.getvalue())
        _zeros(f.write, BOMB)
    return (lambda: read_array(path)), path


def _mat_bomb(root: Path):
    """A MATLAB v5 file of one compressed uint8 matrix of 256 MB (MATLAB's own layout: a 128-byte
    header, then a miCOMPRESSED element holding the miMATRIX element)."""
    from vaelab.data.arrays import read_array
    path = root / "data" / "images.mat"
    rows, cols = 2 ** 14, BOMB // 2 ** 14

    def el(kind: int, body: bytes) -> bytes:
        return kind.to_bytes(4, "little") + len(body).to_bytes(4, "little") + body + bytes(-len(body) % 8)
    flags = el(6, (9).to_bytes(4, "little") + bytes(4))  # miUINT32: mxUINT8_CLASS
    dims = el(5, rows.to_bytes(4, "little") + cols.to_bytes(4, "little"))  # miINT32
    name = (1 | 1 << 16).to_bytes(4, "little") + b"x\0\0\0"  # a small miINT8 element: "x"
    data_tag = (2).to_bytes(4, "little") + BOMB.to_bytes(4, "little")  # miUINT8
    body = flags + dims + name + data_tag
    matrix = (14).to_bytes(4, "little") + (len(body) + BOMB).to_bytes(4, "little") + body
    packed = _deflated(BOMB, matrix)
    head = b"MATLAB 5.0 MAT-file, crafted".ljust(116, b" ") + bytes(8) + b"\x00\x01IM"
    path.write_bytes(head + (15).to_bytes(4, "little") + len(packed).to_bytes(4, "little") + packed)
    return (lambda: read_array(path)), path


def _sparse(suffix: str) -> Callable[[Path], tuple[Call, Path]]:
    """A 16 GB file that takes no disk (a hole): a .npy whose header declares it all, or a run's
    best checkpoint."""
    def make(root: Path):
        if suffix == ".npy":
            from vaelab.data.arrays import read_array
            path = root / "data" / "images.npy"
            with open(path, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                         "shape": (2 ** 24, 32, 32)})
                f.truncate(2 ** 34)
            return (lambda: read_array(path)), path
        from fuzz_targets import pristine_run
        run = root / "run"
        shutil.rmtree(run)
        shutil.copytree(pristine_run(), run)
        path = run / "best.safetensors"
        head = json.dumps({"w": {"dtype": "F32", "shape": [2 ** 32], "data_offsets": [0, 2 ** 34]}}).encode()
        with open(path, "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head)
            f.truncate(8 + len(head) + 2 ** 34)
        return _cli("eval", run, "--checkpoint", "best"), path
    return make


def corpus() -> list[Crafted]:
    pickles = list(_pickles(Path("/")))
    out = [Crafted(f"CIFAR batch: {k}", "pickle", _cifar_pickle(k, False)) for k in pickles]
    out += [Crafted("CIFAR tarball: os.system in data_batch_1", "pickle", _cifar_pickle(pickles[0], True)),
            Crafted(".npy of Python objects (os.system)", "pickle", _npy_object(".npy")),
            Crafted(".npz of Python objects (os.system)", "pickle", _npy_object(".npz"))]
    out += [Crafted(f"image tarball: a {how} member", "tarball", _tar_member(how))
            for how in ("dotdot", "absolute", "symlink", "hardlink", "device", "fifo")]
    out += [Crafted("CIFAR tarball: a '..' member", "tarball", _cifar_tar_dotdot),
            Crafted("image folder: a link out of it", "tarball", _folder_link_out)]
    out += [Crafted(f"run directory: {name} a link ({argv[0]})", "run-link", _planted(name, *argv)) for name, argv in [
        (LOCK, ("train", "--resume", "RUN", "--epochs", "2")), ("best.safetensors", ("eval", "RUN")),
        ("model.safetensors", ("train", "--resume", "RUN", "--epochs", "2")),
        ("resume.safetensors", ("train", "--resume", "RUN", "--epochs", "2")),
        ("config.json", ("sample", "RUN")), ("samples.png", ("report", "RUN")),
        ("eval-test.json", ("eval", "RUN")), ("metrics.jsonl", ("report", "RUN")),
        ("samplers", ("sample", "RUN"))]]
    out += [Crafted(f"a run naming an unknown model ({argv[0]})", "unknown-model", _unknown_model(*argv))
            for argv in (("eval", "RUN"), ("train", "--resume", "RUN"))]
    out += [Crafted("image bomb: a 10,000 x 10,000 RGB PNG in a folder", "bomb", _image_bomb(False)),
            Crafted("image bomb: a 10,000 x 10,000 RGB PNG in a tarball", "bomb", _image_bomb(True)),
            Crafted("image bomb: a 9,000 x 9,000 RGB PNG, within Pillow's limit", "bomb", _image_bomb(False, 9_000)),
            Crafted("gzip bomb: an IDX file of 256 MB", "bomb", _gzip_idx_bomb),
            Crafted("zip bomb: a .npz member of 256 MB", "bomb", _npz_bomb),
            Crafted("MATLAB bomb: a compressed matrix of 256 MB", "bomb", _mat_bomb),
            Crafted("sparse-file bomb: a 16 GB .npy", "bomb", _sparse(".npy")),
            Crafted("sparse-file bomb: a 16 GB best checkpoint", "bomb", _sparse(".safetensors"))]
    return out


CORPUS = {c.name: c for c in corpus()}


if __name__ == "__main__":  # a quick look: python tests/crafted.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    for c in CORPUS.values():
        o = check(c)
        print(f"{o.kind:8} {c.name}: {o.detail[:160]}")
