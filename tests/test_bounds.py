"""Every size a user or a file names is bounded: one sentence, exit status 2, nothing written, and
never the allocation that would have met the out-of-memory killer (issue 12, item 4)."""
import gzip
import io
import json
import shutil
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from test_cli import TINY, fails
from test_data import fake_idx_dataset
from vaelab.cli import main

HUGE = "1000000000"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bounds") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(run, tmp_path):
    """A copy of the run to spoil, without its eval-test.json, so that a command that wrote one shows."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "eval-test.json").unlink()
    return copy


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


@pytest.mark.parametrize("argv,needle", [
    (["sample", "-n", HUGE], f"-n {HUGE}"),
    (["sample", "--nrow", HUGE], f"--nrow {HUGE}"),
    (["reconstruct", "--nrow", HUGE], f"--nrow {HUGE}"),
    (["interpolate", "--steps", HUGE], f"--steps {HUGE}"),
    (["manifold", "-n", "1000000"], "-n 1000000"),
], ids=["sample-n", "sample-nrow", "reconstruct-nrow", "interpolate-steps", "manifold-n"])
def test_a_picture_larger_than_pillow_reads_is_refused_before_drawing(run, tmp_path, capsys, argv, needle):
    out = tmp_path / "pictures"
    out.mkdir()
    err = fails(capsys, [argv[0], str(run), *argv[1:], "-o", str(out / "x.png")], needle, "Pillow")
    assert "89,478,485" in err
    assert _files(out) == []


def test_eval_samples_that_would_not_fit_in_memory_are_refused_first(run, tmp_path, capsys):
    before = _files(run), (run / "eval-test.json").read_bytes()
    fails(capsys, ["eval", str(run), "-k", "2", "--samples", HUGE], f"--samples {HUGE}", "of memory", "1x8x8")
    assert (_files(run), (run / "eval-test.json").read_bytes()) == before


@pytest.mark.parametrize("flag,value", [("--latent-dim", "1000000000000"), ("--hidden", "100000000000")])
def test_a_network_too_big_to_train_is_refused_from_flags_and_config_files(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    fails(capsys, ["train", *TINY, flag, value, "--out", str(out)], f"{flag} {value}", "parameters", "of memory")
    toml = tmp_path / "big.toml"
    toml.write_text(f'data = "digits"\n[model]\n{flag[2:].replace("-", "_")} = '
                    f'{value if flag == "--latent-dim" else [int(value)]}\n')
    fails(capsys, ["train", "--config", str(toml), "--out", str(out)], f"{flag} {value}", "of memory")
    assert _files(tmp_path) == [toml.relative_to(tmp_path)]


@pytest.mark.parametrize("cmd", [["eval", "-k", "2", "--no-sample-metrics"], ["sample"]])
def test_a_network_too_big_in_a_runs_config_json_is_refused_before_it_is_built(run_copy, capsys, cmd):
    doc = json.loads((run_copy / "config.json").read_text())
    doc["run"]["model"]["latent_dim"] = 10 ** 12
    (run_copy / "config.json").write_text(json.dumps(doc))
    before = _files(run_copy)
    fails(capsys, [cmd[0], str(run_copy), *cmd[1:]], "config.json: latent_dim 1000000000000", "of memory")
    assert _files(run_copy) == before


@pytest.mark.parametrize("model,example", [("vae", "400; for none, use --arch linear"), ("gan", "512,512")])
def test_an_empty_hidden_list_is_refused(tmp_path, capsys, model, example):
    fails(capsys, ["train", *TINY, "--model", model, "--hidden", "", "--out", str(tmp_path / "run")],
          "--hidden must list at least one layer size", example)
    assert _files(tmp_path) == []


def _gzip_bomb(path, header: bytes, megabytes: int) -> None:
    """``header`` then ``megabytes`` MB of zeros, as gzip members (concatenated members are one
    valid gzip stream), so the file is about a thousand times smaller than what it expands to."""
    zeros = gzip.compress(bytes(1 << 20), 9)
    with open(path, "wb") as f:
        f.write(gzip.compress(header))
        for _ in range(megabytes):
            f.write(zeros)


@pytest.mark.parametrize("count,needle", [(50, "has trailing bytes"), (4_000_000_000, "of memory")],
                         ids=["plausible-header", "huge-header"])
def test_an_idx_gzip_bomb_is_not_expanded(tmp_path, capsys, count, needle):
    folder, _ = fake_idx_dataset(tmp_path / "data")
    bomb = folder / "train-images-idx3-ubyte.gz"
    _gzip_bomb(bomb, struct.pack(">IIII", 0x803, count, 28, 28), 256)  # 256 KB expanding to 256 MB
    assert bomb.stat().st_size < 300_000
    tracemalloc.start()
    try:
        fails(capsys, ["train", "--data", "mnist", "--data-dir", str(tmp_path / "data"), "--out",
                       str(tmp_path / "run")], str(bomb), needle)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32e6, peak  # the header and the 39,200 bytes it declares (+1), not the 256 MB
    assert not (tmp_path / "run").exists()


def _npy_header(shape, descr="|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _npz(path, x, y_member: bytes):
    with zipfile.ZipFile(path, "w") as z:
        with z.open("x.npy", "w") as f:
            np.save(f, x)
        z.writestr("y.npy", y_member)


def _npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


X = np.random.default_rng(0).integers(0, 256, (100, 8, 8), dtype=np.uint8)


@pytest.mark.parametrize("write,flags,needles", [
    (lambda p: p.write_bytes(_npy_header((10 ** 12, 8, 8)) + bytes(64)), [],
     ["(1000000000000, 8, 8) its .npy header declares", "of memory"]),
    (lambda p: _npz(p, X, _npy_header((10 ** 12,), "<i8") + bytes(8)), ["--key", "x", "--label-key", "y"],
     ["array 'y': the shape (1000000000000,)", "of memory"]),
    (lambda p: _npz(p, X, _npy_bytes(np.r_[np.zeros(99, np.int64), 10 ** 12])), ["--key", "x", "--label-key", "y"],
     ["labels 'y' include 1e+12", "below 100,000"]),
    (lambda p: _npz(p, X, _npy_bytes(np.r_[np.zeros(99), np.inf])), ["--key", "x", "--label-key", "y"],
     ["labels 'y' include NaN or infinite values"]),
    (lambda p: p.write_bytes(_npy_bytes(np.zeros((100, 0, 8), np.uint8))), [],
     ["images of 0x8 pixels", "at least 1 pixel high"]),
], ids=["npy-1e12-images", "npz-1e12-labels-header", "npz-label-1e12", "npz-label-inf", "zero-height"])
def test_array_files_naming_impossible_sizes_are_refused(tmp_path, capsys, write, flags, needles):
    path = tmp_path / ("data.npy" if not flags else "data.npz")
    write(path)
    fails(capsys, ["train", "--data", "array", "--data-path", str(path), *flags, "--epochs", "1",
                   "--out", str(tmp_path / "run")], str(path), *needles)
    assert _files(tmp_path) == [path.relative_to(tmp_path)]


def test_one_pixel_level_in_a_runs_data_spec_is_refused(run_copy, capsys):
    doc = json.loads((run_copy / "config.json").read_text())
    doc["data_spec"]["levels"] = 1
    (run_copy / "config.json").write_text(json.dumps(doc))
    before = _files(run_copy)
    fails(capsys, ["eval", str(run_copy), "-k", "2", "--no-sample-metrics"], "config.json: the data spec's levels is 1",
          "2 to 256")
    assert _files(run_copy) == before


def test_a_non_numeric_epoch_in_the_resume_metadata_is_refused(run_copy, capsys):
    path = run_copy / "resume.safetensors"
    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    md["loop"] = json.dumps({**json.loads(md["loop"]), "epoch": "one"})
    save_file(load_file(str(path)), str(path), metadata=md)
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    fails(capsys, ["train", "--resume", str(run_copy), "--epochs", "3"], str(path), "'epoch' is 'one'",
          "whole number")
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


def test_o_naming_an_existing_folder_is_refused(run, tmp_path, capsys):
    (tmp_path / "x.png").mkdir()
    fails(capsys, ["sample", str(run), "-o", str(tmp_path / "x.png")], f"-o {tmp_path / 'x.png'} is a folder")
    assert _files(tmp_path) == [(tmp_path / "x.png").relative_to(tmp_path)]


@pytest.mark.parametrize("bad", [["--batch-size", "1000"], ["--test-size", "100"],
                                 ["--batch-size", "8", "--latent-dim", "1000000000000"]],
                         ids=["batch-size", "test-size", "latent-dim"])
def test_a_run_refused_after_decoding_leaves_no_image_cache(tmp_path, capsys, monkeypatch, bad):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(20):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)).save(images / f"{i}.png")
    argv = ["train", "--data", "image-folder", "--data-path", str(images), "--workers", "0", "--epochs", "1",
            "--nll-samples", "0", "--no-progress", "--out", str(tmp_path / "run")]
    fails(capsys, [*argv, *bad], bad[-2])
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    assert main([*argv, "--batch-size", "8"]) == 0  # the same images in a run that starts: cached
    assert len(list((tmp_path / "cache" / "images").glob("image-folder-*.npz"))) == 1


def test_images_and_grids_share_pillows_pixel_limit(monkeypatch):
    """One limit for a decoded image and a drawn grid: Pillow's MAX_IMAGE_PIXELS as it is set now,
    its default where it is None."""
    from vaelab.data.imagefiles import decode
    from vaelab.errors import VaelabError
    from vaelab.images import check_grid
    from vaelab.limits import pillow_pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert pillow_pixels() == 89_478_485
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    buf = io.BytesIO()
    Image.new("L", (40, 40)).save(buf, "PNG")
    with pytest.raises(VaelabError, match="40x40 pixels, more than the 1,000"):
        decode(buf.getvalue(), "big.png")
    with pytest.raises(VaelabError, match="more than the 1,000"):
        check_grid("--n 4", 4, (28, 28))
    check_grid("--n 1", 1, (12, 12))  # drawn at 28x28 with its padding: within it
