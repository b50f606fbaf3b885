"""SIGKILL at random write events of a training run, then --resume: the run ends bitwise equal to
an uninterrupted one, with no temporary file left (tests/crashes.py). A few kills of one model
here; benchmarks/faults.py kills every registered model's runs 20 times or more."""
from crashes import kill_and_resume, train_argv


def test_a_run_killed_at_random_writes_and_resumed_ends_as_an_uninterrupted_one(tmp_path):
    out = kill_and_resume(train_argv("vae"), tmp_path, kills=1, seed=1)
    assert len(out.kills) >= 1 and out.runs >= 1 and not out.failures, out
    assert out.equal == out.clean == out.runs and out.survived == len(out.kills)


def test_a_run_killed_while_its_report_was_written_is_finished_by_resume(tmp_path, capsys):
    """Killed after finished.json, inside the report's write: --resume said the run had already
    finished, and the page was never written (its temporary stayed until then)."""
    from vaelab.cli import main
    run = tmp_path / "run"
    assert main([*train_argv("vae", epochs=1)[:-2], "--threads", "1", "--out", str(run)]) == 0
    page = (run / "report.html").read_text()
    (run / "report.html").unlink()
    (run / ".report.html.0123abcd.tmp").write_text(page[:100])  # the write the kill cut short
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "report.html").read_text().rstrip().endswith("</html>") and not list(run.glob(".*.tmp"))
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2  # now it is finished, page and all
    assert "already finished" in capsys.readouterr().err


def test_a_torchrun_run_killed_on_a_rank_and_resumed_ends_as_an_uninterrupted_one(tmp_path):
    """Under torchrun with 2 ranks, rank 1 (which writes nothing: its moments are its steps) is
    killed; torchrun stops rank 0, and --resume under torchrun ends as the uninterrupted launch."""
    out = kill_and_resume(train_argv("vae", epochs=2), tmp_path, kills=1, seed=2, ranks=2)
    assert out.kills and out.kills[0].startswith("rank 1: "), out
    assert out.equal == out.clean == out.runs >= 1 and out.survived == len(out.kills) and not out.failures, out


def test_a_run_whose_new_report_could_not_be_written_is_finished_by_resume(tmp_path, capsys):
    """Continued from 1 epoch to 2 on a full disk, the run wrote finished.json and then failed on its
    page: the page of epoch 1 stayed (as it should), and --resume took the run for finished, stale
    page and all (benchmarks/faults.py's disk-full sweep found it). finished.json now says when
    its page was written."""
    import json

    from vaelab.cli import main
    run = tmp_path / "run"
    argv = [*train_argv("vae", epochs=1)[:-2], "--threads", "1", "--out", str(run)]
    assert main(argv) == 0
    assert json.loads((run / "finished.json").read_text()) == {"epochs": 1, "report": True}
    old_page = (run / "report.html").read_text()
    import vaelab.api
    real = vaelab.api.write_report

    def full(*a, **kw):
        raise vaelab.errors.VaelabError(f"cannot write {run / 'report.html'}: no space left on device")
    vaelab.api.write_report = full
    try:
        assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    finally:
        vaelab.api.write_report = real
    assert json.loads((run / "finished.json").read_text()) == {"epochs": 2, "report": False}
    assert (run / "report.html").read_text() == old_page  # intact, and stale
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # finished: the page is written
    assert (run / "report.html").read_text() != old_page
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "already finished" in capsys.readouterr().err
