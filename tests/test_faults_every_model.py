"""A full disk at an epoch's checkpoints, for every registered model: the run ends in one sentence
naming the file, the epoch before stays whole, and --resume takes the run to its end. (The kills
at random writes of every model, 20 each, and under torchrun, are benchmarks/faults.py's: minutes
a model.)"""
import errno
import os
from pathlib import Path

import pytest

import vaelab.io as vio
from crashes import train_argv
from vaelab.cli import main
from vaelab.registry import MODELS
from vaelab.rundir import read_jsonl

EPOCH_FILES = ("model.safetensors", "best.safetensors", "resume.safetensors", "metrics.jsonl")


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_full_disk_at_the_second_epochs_checkpoint_keeps_the_first(model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [*train_argv(model, epochs=2), "--no-report", "--out", str(out)]
    real, seen, kept = vio._create_temp, [], {}

    def create_temp(path):
        if Path(path).name == "resume.safetensors":
            seen.append(1)
            if len(seen) == 2:  # epoch 2's set: epoch 1's files are what must stay
                kept.update({n: (out / n).read_bytes() for n in EPOCH_FILES})
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path)
    monkeypatch.setattr(vio, "_create_temp", create_temp)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: cannot write {out / 'resume.safetensors'}: no space left on device; the checkpoints "
                       "and metrics of epoch 1 are intact (--resume continues from there)."), err[-3:]
    assert "Traceback" not in "\n".join(err)
    assert {n: (out / n).read_bytes() for n in EPOCH_FILES} == kept
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-report"]) == 0
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
