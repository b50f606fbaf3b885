"""SIGKILL at random write events of a training run, then --resume: the run ends bitwise equal to
an uninterrupted one, with no temporary file left (tests/crashes.py). A few kills of one model
here; benchmarks/faults.py kills every registered model's runs 20 times or more."""
from crashes import kill_and_resume, train_argv


def test_a_run_killed_at_random_writes_and_resumed_ends_as_an_uninterrupted_one(tmp_path):
    out = kill_and_resume(train_argv("vae"), tmp_path, kills=2, seed=1)
    assert len(out.kills) >= 2 and out.runs >= 1 and not out.failures, out
    assert out.equal == out.clean == out.runs and out.survived == len(out.kills)
