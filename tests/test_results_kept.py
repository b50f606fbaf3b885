"""What training wrote stays as it was: a later command (eval, sample, reconstruct, interpolate,
manifold) writes under a name that says how it was made, or where -o says, and replaces an
existing -o only with --overwrite. Progress bars show on a terminal and never in a log."""
import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

import vaelab
from vaelab.cli import main

TINY = dict(data="digits", hidden=(16,), latent_dim=2, epochs=1, batch_size=100, nll_samples=5, progress=False,
            device="cpu", threads=1, seed=0)
TRAINING_FILES = ("eval-test.json", "samples.png", "reconstructions.png", "interpolation.png", "manifold.png",
                  "curves.png", "config.json", "model.safetensors", "best.safetensors", "metrics.jsonl")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return vaelab.train(vaelab.make_config(**TINY, out=str(tmp_path_factory.mktemp("kept") / "r")),
                        log=lambda m: None)


def _snapshot(run):
    return {name: (run / name).read_bytes() for name in TRAINING_FILES}


def _ok(capsys, argv):
    assert main(argv) == 0
    return capsys.readouterr()


def test_later_commands_leave_what_training_wrote(run, capsys):
    before = _snapshot(run)
    r = str(run)
    ev = _ok(capsys, ["eval", r, "-k", "3", "--samples", "100", "--sampler", "gmm:2"])
    _ok(capsys, ["eval", r, "-k", "4", "--no-sample-metrics", "--split", "val", "--checkpoint", "last"])
    smp = _ok(capsys, ["sample", r, "--sampler", "gmm:2", "-n", "4"])
    _ok(capsys, ["sample", r, "-n", "4", "--seed", "3"])
    _ok(capsys, ["reconstruct", r, "-n", "4", "--nrow", "4"])
    _ok(capsys, ["interpolate", r, "--pairs", "2", "--steps", "3"])
    _ok(capsys, ["manifold", r, "-n", "3"])
    assert _snapshot(run) == before
    # each under a name that says how it was made, said on stderr; stdout stays the JSON
    res = json.loads(ev.out)
    saved = run / "eval-test-best-k3-gmm-2-n100-seed0.json"
    assert json.loads(saved.read_text()) == res and f"wrote {saved}" in ev.err
    assert {res[k] for k in ("split", "checkpoint", "k", "sampler", "samples", "seed")} == \
        {"test", "best", 3, "gmm:2", 100, 0}
    assert (run / "eval-val-last-k4-seed0.json").is_file()
    assert (run / "samples-gmm-2-best-n4-seed0.png").is_file() and "samples-gmm-2-best-n4-seed0.png" in smp.err
    assert smp.out.strip().endswith("samples-gmm-2-best-n4-seed0.png")  # stdout: the path, as before
    for name in ("samples-prior-best-n4-seed3.png", "reconstructions-test-best-n4.png",
                 "interpolation-test-best-pairs2-steps3.png", "manifold-best-n3.png"):
        assert (run / name).is_file(), name


def test_the_same_command_again_replaces_its_own_file_with_the_same(run, capsys):
    argv = ["eval", str(run), "-k", "2", "--no-sample-metrics"]
    first = json.loads(_ok(capsys, argv).out)
    path = run / "eval-test-best-k2-seed0.json"
    path.write_text("{}")  # spoiled: the same command writes it again, the same figures (seeded)
    assert json.loads(_ok(capsys, argv).out) == first == json.loads(path.read_text())


def test_o_replaces_an_existing_file_only_with_overwrite(run, capsys, tmp_path):
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"precious")
    assert main(["sample", str(run), "-n", "4", "-o", str(mine)]) == 2
    assert "--overwrite" in capsys.readouterr().err and mine.read_bytes() == b"precious"
    # training's own picture, named with -o: refused too
    before = (run / "samples.png").read_bytes()
    assert main(["sample", str(run), "-n", "4", "-o", str(run / "samples.png")]) == 2
    capsys.readouterr()
    assert (run / "samples.png").read_bytes() == before
    _ok(capsys, ["sample", str(run), "-n", "4", "-o", str(mine), "--overwrite"])
    assert mine.read_bytes().startswith(b"\x89PNG")
    js = tmp_path / "e.json"
    js.write_text("{}")
    assert main(["eval", str(run), "-k", "2", "--no-sample-metrics", "-o", str(js)]) == 2
    assert "--overwrite" in capsys.readouterr().err and js.read_text() == "{}"
    _ok(capsys, ["eval", str(run), "-k", "2", "--no-sample-metrics", "-o", str(js), "--overwrite"])
    assert json.loads(js.read_text())["k"] == 2


def test_the_api_never_replaces_trainings_evaluation(run):
    before = (run / "eval-test.json").read_bytes()
    res = vaelab.evaluate(run, k=7, sample_metrics=False)
    assert (run / "eval-test.json").read_bytes() == before
    assert json.loads((run / "eval-test-best-k7-seed0.json").read_text()) == res


def _stderr_on_a_terminal(argv, **env) -> str:
    """What ``python -m vaelab ARGV`` writes on stderr when stderr is a terminal."""
    master, slave = pty.openpty()
    # a terminal 100 columns wide: a new pty is 0 wide, where tqdm draws an empty bar
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "vaelab", *argv], stdout=subprocess.DEVNULL, stderr=slave,
                         env={**os.environ, **env})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert p.wait(timeout=300) == 0
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_trainings_final_nll_has_a_bar_on_a_terminal(tmp_path):
    shown = _stderr_on_a_terminal(["train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs",
                                   "1", "--nll-samples", "3", "--threads", "1", "--out", str(tmp_path / "r")])
    assert "NLL (K=3)" in shown


def test_the_frechet_classifiers_training_has_a_bar_on_a_terminal(run, tmp_path):
    # a cache of its own: the classifier is trained here (some 4 s on the digits), not read
    shown = _stderr_on_a_terminal(["eval", str(run), "-k", "2", "--samples", "100", "--threads", "1", "-o",
                                   str(tmp_path / "e.json")], VAELAB_CACHE=str(tmp_path / "cache"))
    assert "feature classifier for digits: training" in shown and "Fréchet classifier" in shown


def test_progress_bars_on_a_terminal_and_never_in_a_log(run, tmp_path):
    argv = ["eval", str(run), "-k", "2", "--no-sample-metrics", "--threads", "1", "-o", str(tmp_path / "e.json"),
            "--overwrite"]
    shown = _stderr_on_a_terminal(argv)
    assert "NLL (K=2)" in shown
    logged = subprocess.run([sys.executable, "-m", "vaelab", *argv], capture_output=True, text=True, timeout=300)
    assert logged.returncode == 0 and "NLL (K=" not in logged.stderr and "\r" not in logged.stderr
