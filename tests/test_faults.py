"""Files and faults: a run directory from someone else, files whose headers lie, tampered resume
files, a full disk, a file handle left open. Each ends in one sentence naming the file (exit
status 2), and nothing outside the run, nor the run's last checkpoint, is changed."""
import gc
import gzip
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import vaelab
from vaelab import limits
from vaelab.cli import main
from vaelab.data.arrays import read_array
from vaelab.data.folder import read_image_folder
from vaelab.data.idx import read_idx
from vaelab.errors import VaelabError
from vaelab.io import LOCK, atomic_write, lock_run, read_tensors, remove_temporaries

# finished: a tiny run trained for one epoch, once for this module
from test_run_safety import TINY, finished, one_line_error  # noqa: F401

RESUME = "resume.safetensors"


def files(run) -> dict[str, bytes]:
    """The run's files (not the lock, which holds the id of the last process to use the run)."""
    return {p.name: p.read_bytes() for p in run.iterdir()
            if p.is_file() and not p.is_symlink() and p.name != LOCK}


@pytest.fixture
def run(finished, tmp_path):
    """A fresh copy of the finished one-epoch run."""
    return shutil.copytree(finished, tmp_path / "run")


def run_with_limits(argv, fsize=None, address_space=None):
    """``vaelab argv`` in a child process under a file-size limit (ulimit -f) or an address-space
    cap (ulimit -v): (exit status, stderr)."""
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, not the process\n"
            f"for name, n in (('RLIMIT_FSIZE', {fsize}), ('RLIMIT_AS', {address_space})):\n"
            "    if n is not None:\n"
            "        resource.setrlimit(getattr(resource, name), (n, n))\n"
            "from vaelab.cli import main\n"
            f"sys.exit(main({list(map(str, argv))!r}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return p.returncode, p.stderr


def temporaries(folder):
    return sorted(p.name for p in folder.rglob(".*.tmp"))


# ------------------------------------------------------------------ the run lock and symlinks

@pytest.mark.parametrize("how", ["resume", "overwrite"])
def test_a_symlinked_lock_is_refused_and_its_target_untouched(how, run, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious data\n")
    (run / LOCK).unlink()
    (run / LOCK).symlink_to(precious)
    before = files(run)
    argv = (["train", "--resume", str(run), "--epochs", "2"] if how == "resume" else
            ["train", *TINY, "--epochs", "1", "--out", str(run), "--overwrite"])
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert f"cannot lock --{how if how == 'resume' else 'out'} {run}: its {LOCK} is a symbolic link" in err, err
    assert "remove it if the folder is yours" in err
    assert precious.read_text() == "precious data\n"
    assert files(run) == before and (run / LOCK).is_symlink()


def test_a_symlinked_lock_to_a_missing_file_creates_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).symlink_to(tmp_path / "made-by-the-lock")
    with pytest.raises(VaelabError, match="is a symbolic link"):
        with lock_run(run):
            pass
    assert not (tmp_path / "made-by-the-lock").exists()


def test_a_hard_linked_lock_or_a_fifo_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    precious = tmp_path / "precious.txt"
    precious.write_text("precious data\n")
    os.link(precious, run / LOCK)
    with pytest.raises(VaelabError, match=f"its {LOCK} is a file with other hard links"):
        with lock_run(run, "--resume"):
            pass
    assert precious.read_text() == "precious data\n"
    (run / LOCK).unlink()
    os.mkfifo(run / LOCK)
    with pytest.raises(VaelabError, match=f"its {LOCK} is a FIFO"):  # and it does not wait for a writer
        with lock_run(run):
            pass


def test_an_ordinary_lock_is_still_taken_and_holds_the_pid(tmp_path):
    with lock_run(tmp_path):
        assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"


def test_atomic_write_replaces_a_symlink_and_never_writes_through_it(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious data\n")
    (tmp_path / "run").mkdir()
    link = tmp_path / "run" / "eval-test.json"
    link.symlink_to(precious)
    atomic_write(link, lambda p: Path(p).write_text("{}\n"))
    assert not link.is_symlink() and link.read_text() == "{}\n"
    assert precious.read_text() == "precious data\n"


@pytest.mark.parametrize("argv", [["train", "--resume", "RUN", "--epochs", "2"], ["eval", "RUN"], ["sample", "RUN"],
                                  ["report", "RUN"]])
def test_a_symlinked_run_file_is_refused_and_its_target_left(argv, run, tmp_path, capsys):
    """A run directory may come from someone else: a symbolic link there in place of one of its
    files is refused by every command that opens the run, naming it, and nothing is read or
    written through it (its writes would replace it anyway: atomic_write's rename)."""
    names = ["model.safetensors", "best.safetensors", "metrics.jsonl", "curves.png", "samples.png",
             "eval-test.json", "finished.json"]
    targets = tmp_path / "elsewhere"
    targets.mkdir()
    for name in names:
        (targets / name).write_bytes((run / name).read_bytes())
    before, kept = files(targets), files(run)
    for name in names:
        (run / name).unlink()
        (run / name).symlink_to(targets / name)
        capsys.readouterr()
        assert main([str(run) if a == "RUN" else a for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{run / name} is a symbolic link" in err, err
        (run / name).unlink()
        (run / name).write_bytes((targets / name).read_bytes())
    assert files(targets) == before and files(run) == kept


def test_a_fifo_or_a_linked_subfolder_in_a_run_is_refused(run, tmp_path, capsys):
    os.mkfifo(run / "report.html.fifo")  # not a run's name: left alone
    (run / "report.html").unlink()
    os.mkfifo(run / "report.html")  # reading it would wait for a writer forever
    assert main(["eval", str(run)]) == 2
    assert f"{run / 'report.html'} is not a plain file" in capsys.readouterr().err
    (run / "report.html").unlink()
    (tmp_path / "theirs").mkdir()
    (run / "samplers").symlink_to(tmp_path / "theirs")
    assert main(["sample", str(run)]) == 2
    assert f"{run / 'samplers'} is a symbolic link" in capsys.readouterr().err


def test_the_clean_up_does_not_follow_a_symlinked_sub_folder_out_of_the_run(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    theirs = elsewhere / ".epoch-0001.png.0123abcd.tmp"
    theirs.write_bytes(b"someone else's")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "progress").symlink_to(elsewhere)
    assert remove_temporaries(tmp_path / "run", ["progress/epoch-*.png"]) == []
    assert theirs.exists()


# ------------------------------------------------------------------ files whose headers lie

def _idx(path, dtype, count):
    """An IDX file of ``count`` values of ``dtype`` (a big-endian IDX type), gzipped."""
    types = {">u1": 0x08, ">i4": 0x0C}
    data = (np.arange(count) % 251).astype(dtype)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, types[dtype], 1]) + count.to_bytes(4, "big") + data.tobytes())
    return data


@pytest.mark.parametrize("dtype", [">u1", ">i4"])
def test_an_idx_file_is_read_within_the_memory_bound_it_was_checked_against(dtype, tmp_path, monkeypatch):
    """The bound is checked against the bytes the header declares; the loader's peak must stay
    within it. Set it at 1.5 times the data: a loader that keeps a second copy (the file's bytes
    and the array made of them) goes past it."""
    nbytes = 16 << 20
    data = _idx(tmp_path / "x.gz", dtype, nbytes // np.dtype(dtype).itemsize)
    monkeypatch.setattr(limits, "memory_limit", lambda: nbytes * 3 // 2)
    tracemalloc.start()
    try:
        x = read_idx(tmp_path / "x.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= limits.memory_limit(), f"peak {peak:,} bytes for {nbytes:,} bytes of data"
    assert x.dtype.isnative and x.flags.writeable and np.array_equal(x, data)


def _mnist_folder(root, n_train: int):
    """A data directory whose mnist/ holds real-format IDX files of ``n_train`` and 10 images."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for kind, n in (("train", n_train), ("t10k", 10)):
        with gzip.open(folder / f"{kind}-images-idx3-ubyte.gz", "wb", compresslevel=1) as f:
            f.write(bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28))
                    + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
        with gzip.open(folder / f"{kind}-labels-idx1-ubyte.gz", "wb", compresslevel=1) as f:
            f.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + rng.integers(0, 10, n, dtype=np.uint8).tobytes())
    return root


def test_a_dataset_is_loaded_within_the_memory_bound_counting_its_splits_copy(tmp_path, monkeypatch):
    """The loader's peak is the images read (kept by its cache) and the train and validation
    splits copied from them: twice the file's data. Where the bound lies between once and twice
    the data, the dataset is refused before reading, naming the file, instead of crossing it."""
    from vaelab.data import load_dataset
    n = 20_000  # 15.7 MB of images
    root = _mnist_folder(tmp_path / "data", n)
    monkeypatch.setattr(limits, "memory_limit", lambda: n * 784 * 3 // 2)
    with pytest.raises(VaelabError, match=r"train-images-idx3-ubyte.gz: the shape \(20000, 28, 28\) its IDX header "
                                          r"declares \(2 times its .*: the data and its copies\) would take"):
        load_dataset("mnist", str(root))
    monkeypatch.setattr(limits, "memory_limit", lambda: n * 784 * 5 // 2)  # room for both: loads, within it
    tracemalloc.start()
    try:
        ds = load_dataset("mnist", str(root))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(ds.train) + len(ds.val) == n and peak <= limits.memory_limit(), f"peak {peak:,}"


def test_an_idx_header_past_the_bound_is_refused_before_reading(tmp_path, monkeypatch):
    with gzip.open(tmp_path / "x.gz", "wb") as f:  # declares 4 GB, holds a few bytes
        f.write(bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (4000, 1000, 1000)) + b"x")
    monkeypatch.setattr(limits, "memory_limit", lambda: 3 << 30)
    with pytest.raises(VaelabError, match=r"x.gz: the shape \(4000, 1000, 1000\) its IDX header declares would "
                                          r"take 4.0 GB of memory, more than the limit of 3.2 GB"):
        read_idx(tmp_path / "x.gz")


def _sparse_safetensors(path, nbytes):
    """A safetensors file whose one tensor is ``nbytes`` of float32 zeros, made sparse: a few
    kilobytes on disk."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + nbytes)


def test_a_safetensors_file_declaring_more_than_the_bound_is_refused_before_loading(tmp_path, monkeypatch):
    _sparse_safetensors(tmp_path / "best.safetensors", 96 << 20)
    monkeypatch.setattr(limits, "memory_limit", lambda: 64 << 20)
    with pytest.raises(VaelabError, match=r"best.safetensors: the tensors its header declares would take 100.7 MB "
                                          r"of memory, more than the limit of 67.1 MB"):
        read_tensors(tmp_path / "best.safetensors")


def test_a_safetensors_header_past_the_end_of_its_file_is_refused(tmp_path):
    _sparse_safetensors(tmp_path / "x.safetensors", 1 << 20)
    with open(tmp_path / "x.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "x.safetensors") - 4)
    with pytest.raises(VaelabError, match="is truncated: its header declares 1,048,576 bytes of tensors, but "
                                          "1,048,572 follow it"):
        read_tensors(tmp_path / "x.safetensors")
    (tmp_path / "x.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(VaelabError, match="not a valid safetensors file .it is 10 bytes long, and its header cannot"):
        read_tensors(tmp_path / "x.safetensors")


def test_a_sparse_16_gb_best_checkpoint_ends_in_one_sentence_under_a_memory_cap(run):
    """The user's report: a sparse best.safetensors declaring 16 GB, read under an 8 GB cap."""
    _sparse_safetensors(run / "best.safetensors", 16 << 30)
    status, err = run_with_limits(["eval", str(run), "-k", "2", "--no-sample-metrics"], address_space=8 << 30)
    assert status == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint {run / 'best.safetensors'}: the tensors its header declares would "
                           "take 17.2 GB of memory, more than the limit of"), last


# ------------------------------------------------------------------ tampered resume files

def _tamper(run, change):
    """Rewrite the run's resume file with ``change(tensors, metadata)`` applied."""
    path = run / RESUME
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        md = {k: json.loads(v) for k, v in f.metadata().items()}
    change(tensors, md)
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in md.items()})


def _plain_state_as_list(tensors, md):
    for opt in md["optim"].values():
        opt["plain_state"] = list(opt["plain_state"].values())


def _drop(key):
    return lambda tensors, md: tensors.pop(key)


def _three_bytes(tensors, md):
    tensors["rng.torch"] = torch.tensor([1, 2, 3], dtype=torch.uint8)


def _trained_for_ages(tensors, md):
    md["loop"]["epoch"] = 10 ** 12


@pytest.mark.parametrize("change,expected", [
    (_plain_state_as_list, "the state of its optimizer 'model' is not a table of 'param_groups' (a list of tables) "
                           "and 'plain_state' (a table of tables)."),
    (_drop("rng.data"), "its random-number state rng.data is missing."),
    (_drop("rng.torch"), "its random-number state rng.torch is missing."),
    (_three_bytes, "its random-number state rng.torch (3 torch.uint8 values) is not one torch can restore "
                   "(Expected a CPUGeneratorImplState of size 5056 but found the input RNG state size to be 3)."),
    (_trained_for_ages, "its 'epoch' is 1,000,000,000,000, but its history holds 1 epoch: a run's resume file "
                        "records every epoch it trained."),
], ids=["plain-state-list", "no-rng-data", "no-rng-torch", "rng-3-bytes", "epoch-1e12"])
def test_a_tampered_resume_file_is_refused_in_one_sentence(change, expected, run, capsys):
    _tamper(run, change)
    before = files(run)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert one_line_error(capsys) == f"error: cannot resume from {run / RESUME}: {expected}"
    assert files(run) == before


@pytest.mark.parametrize("key,value", [("step", torch.zeros(3)), ("exp_avg", torch.zeros(3))])
def test_optimizer_tensors_that_do_not_fit_their_parameter_are_refused(key, value, run, capsys):
    """Torch checks no shape when an optimizer loads its state: a 3-number step ended in a
    RuntimeError from Adam's first step, and moments of another shape were taken silently."""
    shape = load_file(str(run / RESUME))[f"optim.model.0.{key}"].shape

    def change(tensors, md):
        tensors[f"optim.model.0.{key}"] = value
    _tamper(run, change)
    before = files(run)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    want = "one number" if key == "step" else f"shape {tuple(shape)}, its parameter's"
    assert one_line_error(capsys) == (f"error: cannot resume from {run / RESUME}: optim.model.0.{key} has shape (3,), "
                                      f"expected {want}.")
    assert files(run) == before


# ------------------------------------------------------------------ a full disk, a file-size limit

CHECKPOINTS = ("model.safetensors", "best.safetensors", RESUME, "metrics.jsonl")


def test_a_checkpoint_that_cannot_be_written_names_it_and_keeps_the_last(run, capsys):
    before = {name: (run / name).read_bytes() for name in CHECKPOINTS}
    # 4 kB: the config (1.7 kB) is rewritten, the weights (18 kB) are not
    status, err = run_with_limits(["train", "--resume", str(run), "--epochs", "2"], fsize=4096)
    assert status == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"error: cannot write {run / 'model.safetensors'}: file too large; "
                                            "the checkpoints and metrics of epoch 1 are intact (--resume continues "
                                            "from there).")
    assert {name: (run / name).read_bytes() for name in CHECKPOINTS} == before and temporaries(run) == []
    # and the run goes on from its intact last epoch
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert "resuming" in capsys.readouterr().err


def test_an_epoch_whose_last_checkpoint_cannot_be_written_changes_none_of_them(run):
    """With room for the weights (18 kB) but not the resume file (its optimizer state too), the
    weights of epoch 2 were renamed into place beside epoch 1's resume file and metrics: eval then
    scored weights that nothing else described. An epoch's set moves whole, or not at all."""
    sizes = {name: (run / name).stat().st_size for name in CHECKPOINTS}
    assert sizes["model.safetensors"] < 30_000 < sizes[RESUME], sizes
    before = {name: (run / name).read_bytes() for name in CHECKPOINTS}
    status, err = run_with_limits(["train", "--resume", str(run), "--epochs", "2"], fsize=30_000)
    assert status == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"error: cannot write {run / RESUME}: file too large; the checkpoints "
                                            "and metrics of epoch 1 are intact (--resume continues from there).")
    assert {name: (run / name).read_bytes() for name in CHECKPOINTS} == before and temporaries(run) == []


@pytest.mark.parametrize("argv", [["eval", "-k", "2", "--no-sample-metrics"], ["sample"]], ids=["eval", "sample"])
def test_eval_and_sample_that_cannot_write_their_result_say_so(argv, run):
    before = files(run)
    status, err = run_with_limits([argv[0], str(run), *argv[1:]], fsize=100)
    assert status == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write {run}{os.sep}") and ": file too large; " in last, last
    assert files(run) == before and temporaries(run) == []


def test_atomic_write_names_the_file_and_why_and_leaves_no_temporary(tmp_path):
    def fails(p):
        Path(p).write_text("half")
        raise OSError(28, "No space left on device")
    with pytest.raises(VaelabError, match=f"cannot write {tmp_path / 'new.json'}: no space left on device; "
                                          "nothing was written."):
        atomic_write(tmp_path / "new.json", fails)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ handles left open

def _resource_warnings(read) -> list[str]:
    """The ResourceWarnings (files never closed) that ``read()`` leaves, once its error is gone."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            read()
        except VaelabError:
            pass
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_a_truncated_npz_is_refused_and_its_file_closed(tmp_path):
    np.savez(tmp_path / "ok.npz", x=np.zeros((10, 8, 8), np.uint8))
    whole = (tmp_path / "ok.npz").read_bytes()
    for n in (10, len(whole) // 2, len(whole) - 30):
        (tmp_path / "cut.npz").write_bytes(whole[:n])
        with pytest.raises(VaelabError, match="cut.npz is not a readable .npz file"):
            read_array(tmp_path / "cut.npz")
        assert _resource_warnings(lambda: read_array(tmp_path / "cut.npz")) == [], n


def test_a_truncated_image_cache_is_decoded_again_and_its_file_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    for i, cls in enumerate(("a", "b")):
        (tmp_path / "d" / cls).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "d" / cls / "1.png")
    read_image_folder(tmp_path / "d", workers=0, progress=False)
    (cache,) = (tmp_path / "cache").rglob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    found = []
    assert _resource_warnings(lambda: found.append(read_image_folder(tmp_path / "d", workers=0,
                                                                     progress=False))) == []
    assert found[0].from_cache is False


def test_the_file_readers_leave_no_handle_open_under_strict_warnings(tmp_path):
    """The readers' refusals in a child process where an unclosed file is an error."""
    np.savez(tmp_path / "ok.npz", x=np.zeros((10, 8, 8), np.uint8))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:40])
    with gzip.open(tmp_path / "cut.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (100).to_bytes(4, "big") + b"x" * 10)
    code = ("import gc, sys\n"
            "from vaelab.data.arrays import read_array\nfrom vaelab.data.idx import read_idx\n"
            "from vaelab.errors import VaelabError\n"
            f"for read, path in ((read_array, {str(tmp_path / 'cut.npz')!r}),\n"
            f"                   (read_idx, {str(tmp_path / 'cut.gz')!r})):\n"
            "    try:\n        read(path)\n    except VaelabError as e:\n        print(e)\n"
            "gc.collect()\n")
    p = subprocess.run([sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.returncode == 0 and "ResourceWarning" not in p.stderr, p.stderr
    assert "cut.npz is not a readable .npz file" in p.stdout and "cut.gz is truncated" in p.stdout


# --- sub-folders of a run that are links out of it ------------------------------------------------

def _gan_run(tmp_path):
    out = tmp_path / "gan"
    vaelab.train(vaelab.make_config(data="digits", model="gan", hidden=(16,), latent_dim=4, epochs=1,
                                    batch_size=100, progress=False, device="cpu", threads=1, seed=0,
                                    out=str(out)), log=lambda m: None)
    return out


@pytest.mark.parametrize("how", ["--overwrite", "--resume"])
def test_a_linked_progress_folder_is_refused_before_anything_goes_through_it(tmp_path, capsys, how):
    run = _gan_run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "epoch-0001.png").write_bytes(b"precious")
    shutil.rmtree(run / "progress")
    (run / "progress").symlink_to(elsewhere)
    argv = (["train", "--resume", str(run), "--epochs", "2"] if how == "--resume" else
            ["train", "--data", "digits", "--model", "gan", "--hidden", "16", "--latent-dim", "4", "--epochs", "1",
             "--no-progress", "--out", str(run), "--overwrite"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "progress is a symbolic link" in err and "Traceback" not in err
    assert [p.name for p in elsewhere.iterdir()] == ["epoch-0001.png"]
    assert (elsewhere / "epoch-0001.png").read_bytes() == b"precious"


def test_a_linked_samplers_folder_gets_nothing_written_into_it(tmp_path, capsys):
    run = vaelab.train(vaelab.make_config(data="digits", hidden=(16,), latent_dim=2, epochs=1, batch_size=100,
                                          nll_samples=0, progress=False, device="cpu", threads=1, seed=0,
                                          out=str(tmp_path / "vae")), log=lambda m: None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "samplers").symlink_to(elsewhere)
    assert main(["sample", str(run), "--sampler", "gmm:2", "-n", "4"]) == 2  # the run is refused as it is
    assert f"{run / 'samplers'} is a symbolic link" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------ out of memory on the device

def _oom_at(monkeypatch, where, name, at: int):
    """``where.name`` raising a GPU's out-of-memory error at its ``at``-th call (1-based), as
    torch's CUDA allocator raises it (no GPU here: the same code path, injected)."""
    real, calls = getattr(where, name), []

    def fails(*a, **kw):
        calls.append(1)
        if len(calls) == at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)")
        return real(*a, **kw)
    monkeypatch.setattr(where, name, fails)


def test_training_out_of_memory_suggests_half_the_batch_and_keeps_the_last_epoch(tmp_path, monkeypatch, capsys):
    import vaelab.training.trainer as trainer
    out = tmp_path / "run"
    _oom_at(monkeypatch, trainer, "take_step", 21 + 5)  # in epoch 2 (21 steps an epoch)
    assert main(["train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--batch-size", "64",
                 "--epochs", "2", "--nll-samples", "0", "--no-progress", "--threads", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([e for e in err if e.startswith("error: ")]) == 1 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: training ran out of memory on cpu at step 26, with --batch-size 64 (CUDA out "
                              "of memory. Tried to allocate 2.00 GiB"), err[-1]
    assert f"{out} keeps the checkpoints of epoch 1; try --batch-size 32, or a smaller model (--hidden, " in err[-1]
    assert vaelab.load(out, "last") is not None


def test_eval_out_of_memory_suggests_a_smaller_batch(run, monkeypatch, capsys):
    from vaelab import api
    _oom_at(monkeypatch, api, "evaluate", 1)
    assert main(["eval", str(run), "--batch-size", "500", "--nll-samples", "1000"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: vaelab eval ran out of memory on the device (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
        "7.79 GiB total)); try --batch-size 250 or --nll-samples 500.")


# ------------------------------------------------------------------ an unwritable or vanished run directory

def _denied(monkeypatch, run):
    """Every write into ``run`` refused as a read-only folder refuses it (EACCES, injected: the
    tests run as root, whom permissions do not stop); vaelab's cache stays writable."""
    import errno

    import vaelab.io as vio
    real = vio._create_temp

    def create_temp(path):
        if Path(path).resolve().is_relative_to(run.resolve()):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)
    monkeypatch.setattr(vio, "_create_temp", create_temp)


@pytest.mark.parametrize("argv", [["train", "--resume", "RUN", "--epochs", "2"], ["eval", "RUN"],
                                  ["sample", "RUN"], ["report", "RUN"]])
def test_an_unwritable_run_directory_is_named_in_one_sentence_and_left_as_it_was(argv, run, monkeypatch, capsys):
    before = files(run)
    _denied(monkeypatch, run)
    assert main([str(run) if a == "RUN" else a for a in argv]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: cannot write {run}/") and ": permission denied;" in err, err
    assert files(run) == before


def test_a_run_directory_deleted_mid_run_ends_in_one_sentence(tmp_path, monkeypatch, capsys):
    import vaelab.training.trainer as trainer
    out, real, calls = tmp_path / "run", trainer.take_step, []

    def step(*a, **kw):
        calls.append(1)
        if len(calls) == 25:  # in epoch 2, after epoch 1's checkpoints
            shutil.rmtree(out)
        return real(*a, **kw)
    monkeypatch.setattr(trainer, "take_step", step)
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: cannot write {out}/") and "no such file or directory" in err, err
    assert not out.exists()  # nothing made again in its place


def _no_space(*a, **kw):
    import errno
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FullFile:
    """A file on a disk that fills when epoch 2's records come: each of their writes fails with
    ENOSPC."""

    def __init__(self, path, mode, **kw):
        self.f = open(path, mode, **kw)  # noqa: SIM115 - closed by close()

    def write(self, text):
        if '"epoch": 2' in text:
            _no_space()
        return self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)


@pytest.mark.parametrize("where", ["steps.jsonl", "tensorboard"])
def test_a_full_disk_under_a_log_ends_in_one_sentence_and_the_run_resumes(where, tmp_path, monkeypatch, capsys):
    """The step log is appended to, and TensorBoard's writer writes from a thread of its own and
    hands its failure on at the next flush: neither went through the checkpoints' atomic writes,
    and a full disk under them ended in a traceback."""
    from torch.utils.tensorboard import SummaryWriter

    import vaelab.training.loggers as loggers
    out = tmp_path / "run"
    if where == "steps.jsonl":  # room for epoch 1's records, not epoch 2's
        monkeypatch.setattr(loggers, "open", lambda p, mode, **kw: _FullFile(p, mode, **kw), raising=False)
    else:  # epoch 1's flushes succeed, then the disk is full
        flushes, real = [], SummaryWriter.flush

        def flush(self):
            flushes.append(1)
            return _no_space() if len(flushes) > 2 else real(self)
        monkeypatch.setattr(SummaryWriter, "flush", flush)
    argv = ["train", *TINY, "--epochs", "2", "--log-every", "10", "--tensorboard", "--out", str(out)]
    assert main(argv) == 2
    assert one_line_error(capsys) == (f"error: cannot write {out / where}: no space left on device; the records "
                                      "written before are intact.")
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 1
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 2


def test_every_logger_is_closed_though_one_fails_to(tmp_path):
    from vaelab.training.loggers import Logger, Loggers
    closed = []

    class Fails(Logger):
        path = tmp_path / "a.log"

        def close(self):
            _no_space()

    class Closes(Logger):
        def close(self):
            closed.append(1)
    with pytest.raises(VaelabError, match="cannot write .*a.log: no space left on device"):
        Loggers([Fails(), Closes()]).close()
    assert closed == [1]


@pytest.mark.parametrize("bad", ['{"lr": 0.001}', '{"epoch": "1", "train_loss": 1.0, "step": 1}',
                                 '{"epoch": 1, "train_loss": [1], "step": 1}', '{"epoch": true, "train_loss": 1, "step": 1}',
                                 '[1]', '{"epoch": 1, "step": 0, "train_loss": 1}',
                                 '{"epoch": 1, "step": 1, "train_loss": 1, "val_name": {"a": 1}}',
                                 '{"epoch": 1, "step": 1, "train_loss": 1, "loss": "high"}',
                                 '{"epoch": 1, "step": 1, "train_loss": 1e308, "val": -1e308}',
                                 '{"epoch": 1000000000000000000, "step": 1, "train_loss": 1}'])
def test_a_changed_log_record_is_left_out_by_the_report_and_compare(bad, run, capsys):
    """A record of metrics.jsonl or steps.jsonl changed by hand (no epoch; text where a number
    goes; 1e308, whose span matplotlib's axes cannot take) ended the report in a KeyError, a
    TypeError or a ValueError; such a record is now left out, as a line cut short is."""
    from vaelab.rundir import read_jsonl
    for name in ("metrics.jsonl", "steps.jsonl"):
        good = read_jsonl(run / name)
        with open(run / name, "a") as f:
            f.write(bad + "\n")
        assert read_jsonl(run / name) == good and good
    assert main(["report", str(run)]) == 0
    assert main(["compare", str(run), "--out", str(run.parent / "compared")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_out_of_memory_in_a_command_without_a_batch_names_what_it_has(run, monkeypatch, capsys):
    from vaelab.report import run as report_run
    _oom_at(monkeypatch, report_run, "write_report", 1)
    assert main(["report", str(run)]) == 2
    assert capsys.readouterr().err.strip().endswith("7.79 GiB total)); try it on the CPU (--device cpu).")


def test_overwrite_refuses_a_folder_where_a_run_file_goes_and_deletes_nothing(run, capsys):
    (run / "samples.png").unlink()
    (run / "samples.png").mkdir()
    (run / "samples.png" / "mine.txt").write_text("the user's")
    before = files(run)
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run), "--overwrite"]) == 2
    assert f"--overwrite cannot replace {run / 'samples.png'}: it is a folder" in one_line_error(capsys)
    assert files(run) == before and (run / "samples.png" / "mine.txt").exists()
