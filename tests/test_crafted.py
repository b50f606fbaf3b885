"""The crafted-file corpus (tests/crafted.py): pickles that would run a command, tarballs that
would write outside, links planted in a run directory, a run naming an unknown model, and
bombs. Each is refused in one sentence naming it, within the fuzzer's memory and time bounds,
and nothing outside the run directory and vaelab's cache changes; benchmarks/crafted.py records
the counts for the reliability sheet."""
from pathlib import Path

import pytest

from crafted import CORPUS, Crafted, check
from fuzzing import BOUND_MB
from vaelab.io import LOCK


@pytest.mark.parametrize("name", list(CORPUS))
def test_a_crafted_file_is_refused_in_one_sentence_and_nothing_outside_changes(name):
    out = check(CORPUS[name])
    assert out.kind == "refused", (out.kind, out.detail)
    assert out.peak_mb <= BOUND_MB


def test_the_corpus_covers_each_group_of_the_threat_list():
    groups = {c.group for c in CORPUS.values()}
    assert groups == {"pickle", "tarball", "run-link", "unknown-model", "bomb"}


def _plain_png(root: Path):
    from crafted import _png
    from vaelab.data.folder import read_image_folder
    folder = root / "data" / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png())
    return (lambda: read_image_folder(folder, workers=0, progress=False, cache=False)), folder


def _writes_home(root: Path):
    def call():
        (root / "home" / "precious.txt").write_text("changed")
        raise __import__("vaelab.errors").errors.VaelabError(f"{root / 'data'} refused")
    return call, root / "data"


def test_the_check_fails_a_file_that_is_read_or_a_write_outside():
    """The harness of the corpus can fail: an ordinary image is read (not refused), and a refusal
    that came after a write to the user's own file is a failure."""
    assert check(Crafted("plain", "tarball", _plain_png)).kind == "crash"
    out = check(Crafted("writes", "pickle", _writes_home))
    assert out.kind == "crash" and "changed outside the run" in out.detail and "precious.txt" in out.detail


def test_a_link_planted_as_the_lock_of_a_run_with_epochs_to_go_is_refused_before_training():
    """The lock case trains if the lock is not refused: its run has an epoch to go."""
    from crafted import _planted
    out = check(Crafted("lock", "run-link", _planted(LOCK, "train", "--resume", "RUN", "--epochs", "2")))
    assert out.kind == "refused" and f"its {LOCK} is a symbolic link" in out.detail, out
