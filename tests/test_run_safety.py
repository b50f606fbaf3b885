"""Runs that diverge, collide or are killed (issue 12, item 3): a diverged run stops in one
sentence and keeps its last good checkpoint; every JSON written is valid; a run directory
is locked while a run uses it; a run killed after its last epoch is finished by --resume;
the temporaries of a killed write are removed."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import vaelab
from vaelab import api
from vaelab.cli import main

TINY = ["--data", "digits", "--hidden", "32", "--latent-dim", "2", "--batch-size", "64", "--nll-samples", "5",
        "--no-progress", "--threads", "1"]
# epoch 1 at 1e-3, epoch 2 at 1e5: the second diverges after a good first (21 steps an epoch)
DIVERGES = [*TINY, "--epochs", "2", "--lr", "1e-3", "--lr-schedule", "exponential", "--lr-final", "1e5",
            "--max-bad-steps", "3", "--log-every", "2"]


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as every JSON reader but Python's does."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_a_diverging_run_stops_and_keeps_its_last_good_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *DIVERGES, "--out", str(out)]) == 2
    err = one_line_error(capsys)
    # the step is named (epoch 2 starts at step 22; checked every 2 steps), and the advice given
    assert "training diverged: steps 23 to 25 (3 in a row, --max-bad-steps)" in err, err
    assert f"{out} keeps the checkpoints of epoch 1" in err and "try a lower --lr (the rate was 100000)" in err
    for name in ("model", "best"):  # loadable, finite, and epoch 1's
        w = load_file(str(out / f"{name}.safetensors"))
        assert all(torch.isfinite(v).all() for v in w.values())
    assert vaelab.load(out, "best") is not None
    history = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1] and math.isfinite(history[0]["val"])
    # the kept run resumes from epoch 1 (and diverges again, as it should: the same rates)
    assert main(["train", "--resume", str(out), "--max-bad-steps", "3"]) == 2
    assert "steps 23 to 25" in one_line_error(capsys)


def test_a_run_that_never_had_a_finite_epoch_says_so_and_counts_skipped_steps(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--lr", "1000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "epoch 1/2: " in err and "19 of 21 steps skipped (non-finite loss or gradient)" in err
    assert "training diverged: epoch 1 ended at step 21 with a non-finite validation elbo" in err
    assert f"no epoch ended with finite values, so {out} holds no checkpoint" in err
    assert not (out / "model.safetensors").exists() and not (out / "best.safetensors").exists()


def test_max_bad_steps_must_be_positive(tmp_path, capsys):
    assert main(["train", *TINY, "--max-bad-steps", "0", "--out", str(tmp_path / "r")]) == 2
    assert "--max-bad-steps must be at least 1, got 0" in one_line_error(capsys)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_eval_writes_null_for_a_non_finite_metric_and_names_it(finished, tmp_path, capsys):
    run = tmp_path / "nan"
    run.mkdir()
    for name in ("config.json", "model.safetensors", "best.safetensors"):
        (run / name).write_bytes((finished / name).read_bytes())
    w = load_file(str(run / "model.safetensors"))
    w = {k: torch.full_like(v, float("nan")) if k.startswith("decoder") else v for k, v in w.items()}
    save_file(w, str(run / "model.safetensors"))
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "last", "-k", "3", "--no-sample-metrics"]) == 0
    printed = capsys.readouterr()
    res = strict_json(printed.out)
    assert res["elbo"] is None and res["nll"] is None and math.isfinite(res["kl"])  # the encoder is intact
    assert strict_json((run / "eval-test-last-k3-seed0.json").read_text())["elbo"] is None
    warning = printed.err.strip().splitlines()[-1]
    assert warning.startswith(f"warning: mse, elbo, nll and bpd of {run} (checkpoint last) are not finite")
    assert "written as null" in warning and "--lr" in warning


def test_a_second_run_on_a_run_directory_in_use_stops_and_changes_nothing(finished, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from vaelab.io import lock_run\n"
                               f"with lock_run({str(finished)!r}):\n print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline() == "held\n"
        before = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
        for argv in (["train", *TINY, "--epochs", "1", "--out", str(finished), "--overwrite"],
                     ["train", "--resume", str(finished), "--epochs", "2"]):
            assert main(argv) == 2
            assert f"{finished} is in use by process {holder.pid}" in one_line_error(capsys)
        assert {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()} == before
    finally:
        holder.communicate("")
    assert holder.returncode == 0


def test_the_lock_is_held_until_the_last_picture_and_then_released(tmp_path, monkeypatch):
    from vaelab.errors import VaelabError
    from vaelab.io import lock_run
    seen, draw = [], api.pictures

    def pictures(run_dir, **kw):
        with pytest.raises(VaelabError, match=f"is in use by process {os.getpid()}"):
            with lock_run(run_dir):
                pass
        seen.append(run_dir)
        return draw(run_dir, **kw)
    monkeypatch.setattr(api, "pictures", pictures)
    out = tmp_path / "run"
    vaelab.train(vaelab.make_config(data="digits", hidden=(32,), latent_dim=2, batch_size=64, epochs=1,
                                    nll_samples=0, progress=False, out=str(out)), log=lambda m: None)
    assert seen == [out]
    with lock_run(out):  # released at the end
        pass


@pytest.mark.parametrize("stage", ["evaluate", "pictures"])
def test_resume_finishes_a_run_killed_after_its_last_epoch(stage, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"

    def killed(*a, **kw):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(api, stage, killed)
        assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 130
    assert not (out / "samples.png").exists() and not (out / "finished.json").exists()
    weights, metrics = (out / "model.safetensors").read_bytes(), (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    assert "its 1 epochs are trained; finishing its evaluation and pictures" in capsys.readouterr().err
    for name in ("eval-test.json", "samples.png", "reconstructions.png", "curves.png"):
        assert (out / name).is_file(), name
    # nothing was trained again
    assert (out / "model.safetensors").read_bytes() == weights and (out / "metrics.jsonl").read_text() == metrics
    assert main(["train", "--resume", str(out)]) == 2  # now it is finished
    assert "already finished 1 epochs and its final evaluation" in one_line_error(capsys)


def _train_in_a_child(argv, replace: str) -> int:
    """``vaelab argv`` in a child process whose os.replace is ``replace`` (Python source)."""
    code = (f"import os, shutil, sys\nos.replace = {replace}\n"
            f"from vaelab.cli import main\nsys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).returncode


def _temporaries(run):
    return sorted(p.name for p in run.rglob(".*.tmp"))


def test_start_and_resume_remove_the_temporaries_of_a_killed_write(finished, tmp_path):
    """The temporaries are the ones the writer itself leaves: a child whose renames copy and keep
    the temporary (so the run still ends), and a child killed at its first rename."""
    run = tmp_path / "run"
    run.mkdir()
    for p in finished.iterdir():
        if p.is_file():
            (run / p.name).write_bytes(p.read_bytes())
    kept = [run / "notes.tmp", run / ".my.safetensors.a1b2c3d4.tmp"]  # not names of vaelab's writes
    # as versions before this one named them (mkstemp's): left by runs killed then
    old = [run / ".resume.safetensors..tmpcz68gihn.tmp", run / ".curves.png..tmpwx9ao9zv.tmp"]
    for p in kept + old:
        p.write_bytes(b"half a file")
    assert _train_in_a_child(["train", "--resume", str(run), "--epochs", "2"], "shutil.copyfile") == 0
    left = _temporaries(run)
    for name in ("model.safetensors", "resume.safetensors", "metrics.jsonl", "samples.png", "eval-test.json"):
        assert any(t.startswith(f".{name}.") for t in left if t not in {p.name for p in old}), (name, left)
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    assert _temporaries(run) == sorted(p.name for p in kept if p.name.startswith("."))
    assert all(p.exists() for p in kept)

    argv = ["train", *TINY, "--epochs", "1", "--out", str(run), "--overwrite"]
    assert _train_in_a_child(argv, "lambda src, dst: os._exit(9)") == 9
    killed = [t for t in _temporaries(run) if t not in {p.name for p in kept}]
    assert len(killed) == 1, killed  # the first file written
    assert main(argv) == 0
    assert _temporaries(run) == sorted(p.name for p in kept if p.name.startswith("."))


def test_injected_non_finite_losses_are_skipped_or_stop_the_run(tmp_path):
    """NaN losses injected at chosen steps (tests/nonfinite.py): three random steps of a run are
    dropped and counted, the run ending finite; a run poisoned for good from the middle of its
    second epoch stops in one sentence, keeping epoch 1. benchmarks/nonfinite.py runs every model."""
    from nonfinite import Injected, persistent, transient
    out = Injected("vae")
    transient("vae", tmp_path, out)
    persistent("vae", tmp_path, out)
    assert out.failures == [] and (out.injected, out.skipped, out.persistent, out.stopped) == (3, 3, 1, 1), out


def test_the_injection_reaches_the_guard(tmp_path):
    """The harness can fail: a step poisoned with the guard's check disabled reaches the weights."""
    import vaelab.training.update as update
    from nonfinite import Injected, transient
    real = torch.isfinite
    update.torch = type("T", (), {"__getattr__": lambda self, n: getattr(torch, n),
                                  "isfinite": staticmethod(lambda t: real(t) | True)})()
    try:
        out = Injected("vae")
        transient("vae", tmp_path, out, count=1)
    finally:
        update.torch = torch
    assert out.skipped == 0 and out.failures, out
