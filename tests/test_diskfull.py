"""A full disk during vaelab's writes: a real one, a tmpfs filled until only so many bytes are
free (tests/diskfull.py). Each command ends in one sentence naming the file it could not write,
leaves what the run held intact (or a training epoch's set moved whole), and, run again with
room, ends as it would have. Training with 40 kB free here (its checkpoints do not fit); benchmarks/faults.py
sweeps them for every command."""
import pytest

from diskfull import COMMANDS, can_mount, ends_as_with_room, finished_run, on_a_full_disk, small_disk

pytestmark = pytest.mark.skipif(not can_mount(), reason="mounting a small tmpfs needs root")


def test_a_full_disk_during_training_ends_in_one_sentence_and_the_run_goes_on(tmp_path):
    finished = finished_run(tmp_path / "finished")
    same = ends_as_with_room("train", finished, tmp_path)
    with small_disk(tmp_path / "disk") as disk:
        out = on_a_full_disk(COMMANDS["train"], finished, disk, [40_000], same)
    assert not out.failures and out.refused == 1, out
