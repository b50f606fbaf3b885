"""Benchmark results name no path of the machine they ran on (benchmarks/_common.portable)."""
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import RESULTS, portable, shown  # noqa: E402


@pytest.fixture
def data(tmp_path, monkeypatch):
    d = tmp_path / "shared" / "data"
    d.mkdir(parents=True)
    monkeypatch.setenv("VAELAB_DATA", str(d))
    return os.path.realpath(d)


def test_each_root_is_named(data):
    root = str(RESULTS.parent.parent)
    assert portable(f"{root}/src/x.py {data}/mnist {sys.prefix}/bin/python") == \
        "./src/x.py $VAELAB_DATA/mnist $VENV/bin/python"
    assert "$VAELAB_DATA" not in portable(f"--data-dir {data}2")  # another folder of the same prefix


def test_a_relative_path_that_climbs_to_the_data_or_temporary_folder(data):
    climb = "../" * 6
    assert portable(f"--data-dir {climb}{data.lstrip('/')} x") == "--data-dir $VAELAB_DATA x"
    tmp = tempfile.gettempdir().lstrip("/")
    assert portable(f"--work {climb}{tmp}/w") == "--work $TMPDIR/w"


def test_a_command_line_given_absolute_paths(data):
    line = shown(["benchmarks/x.py", "--data-dir", data, "--out", str(RESULTS / "x.jsonl")])
    assert line == "benchmarks/x.py --data-dir $VAELAB_DATA --out benchmarks/results/x.jsonl"


def test_the_data_dir_flag_is_named_wherever_it_points(monkeypatch):
    """A benchmark run from another checkout (a worktree under /tmp) with $VAELAB_DATA unset still
    records its --data-dir as the data folder, not as the machine's path."""
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    line = shown(["benchmarks/x.py", "--data-dir", "/elsewhere/shared/data", "--seeds", "0"])
    assert line == "benchmarks/x.py --data-dir $VAELAB_DATA --seeds 0"
    assert shown(["x.py", "--data-dir=/elsewhere/data"]) == "x.py --data-dir=$VAELAB_DATA"
