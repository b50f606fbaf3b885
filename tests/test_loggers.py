"""The loop's loggers: metrics.jsonl, steps.jsonl, the progress grids, --csv and --tensorboard
(read back with TensorBoard's own event reader), and what a resumed run keeps of them."""
import csv
import json
import sys

import pytest
import torch

import vaelab
from vaelab.errors import VaelabError
from vaelab.models import MODELS, get_model
from vaelab.models.base import SAMPLE
from vaelab.rundir import progress_pictures, read_jsonl
from vaelab.data import run_dataset
from vaelab.training import loggers
from vaelab.training.trainer import settle_for_data
from test_contracts import tiny

TINY = dict(data="digits", hidden=(32,), latent_dim=2, batch_size=64, epochs=2, nll_samples=0,
            progress=False, lr=3e-3, log_every=5)
QUIET = dict(log=lambda m: None)


def _events(folder):
    """Every scalar and image of the event files in ``folder``: {tag: [(step, value)]}, {tag: [step]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    images = {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    return scalars, images


def test_steps_jsonl_holds_a_record_every_log_every_steps(tmp_path):
    run = vaelab.train(vaelab.make_config(**TINY, out=str(tmp_path / "r")), **QUIET)
    steps = read_jsonl(run / "steps.jsonl")
    per_epoch = -(-1317 // 64) - (1 if 1317 % 64 == 0 else 0)  # digits' 1317 training images, 21 steps
    assert [r["step"] for r in steps] == [e * 21 + i + 1 for e in range(2) for i in range(0, 21, 5)], per_epoch
    assert {"step", "epoch", "lr", "loss", "elbo", "kl"} <= set(steps[0])
    assert steps[-1]["epoch"] == 2
    # the step's own figures: the loss is the negative ELBO of that minibatch
    assert all(r["loss"] == pytest.approx(-r["elbo"]) for r in steps)
    hist = read_jsonl(run / "metrics.jsonl")
    assert [h["epoch"] for h in hist] == [1, 2]
    # the first logged step's loss is above the first epoch's mean: training lowers it
    assert steps[0]["loss"] > hist[0]["train_loss"]


def test_csv_holds_the_records_of_metrics_jsonl(tmp_path):
    run = vaelab.train(vaelab.make_config(**TINY, csv=True, out=str(tmp_path / "r")), **QUIET)
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    hist = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == len(hist) == 2
    for row, h in zip(rows, hist):
        assert set(row) == set(h)
        assert float(row["train_loss"]) == h["train_loss"] and row["val_name"] == h["val_name"]


def test_no_csv_or_tensorboard_unless_asked(tmp_path):
    run = vaelab.train(vaelab.make_config(**TINY, out=str(tmp_path / "r")), **QUIET)
    assert not (run / "metrics.csv").exists() and not (run / "tensorboard").exists()


def test_tensorboard_events_read_back(tmp_path):
    run = vaelab.train(vaelab.make_config(**TINY, tensorboard=True, out=str(tmp_path / "r")), **QUIET)
    scalars, images = _events(run / "tensorboard")
    steps = read_jsonl(run / "steps.jsonl")
    hist = read_jsonl(run / "metrics.jsonl")
    # every logged step's loss, at its step, to float32
    assert [s for s, _ in scalars["step/loss"]] == [r["step"] for r in steps]
    assert [v for _, v in scalars["step/loss"]] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    # every epoch's record at the step it ended, the validation score among them
    assert [v for _, v in scalars["epoch/val"]] == pytest.approx([h["val"] for h in hist], rel=1e-6)
    assert [s for s, _ in scalars["epoch/val"]] == [21, 42]
    assert images["images/samples"] == [21, 42]


def test_a_resumed_run_continues_its_logs_without_repeats(tmp_path):
    full = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 3}, tensorboard=True, out=str(tmp_path / "f")),
                        **QUIET)
    half = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 2}, tensorboard=True, out=str(tmp_path / "h")),
                        **QUIET)
    # a process killed after logging steps of epoch 3 but before its checkpoint: its records stay
    # in steps.jsonl, its grid in progress/, and resume must drop them
    with open(half / "steps.jsonl", "a") as f:
        f.write(json.dumps({"step": 50, "epoch": 3, "loss": 1e9}) + "\n")
        f.write('{"step": 51, "epo')  # cut short by the kill
    (half / "progress" / "epoch-0003.png").write_bytes(b"left by the killed process")
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(half / "tensorboard")) as w:
        w.add_scalar("step/loss", 1e9, 50)
        w.add_scalar("step/extra", 1e9, 50)  # a tag the resumed run never writes: only the purge drops it
    vaelab.train(vaelab.make_config(**{**TINY, "epochs": 3}, tensorboard=True), resume=half, **QUIET)
    a, b = read_jsonl(full / "steps.jsonl"), read_jsonl(half / "steps.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # resume is exact
    assert [p.name for p in progress_pictures(half)] == ["epoch-0001.png", "epoch-0002.png", "epoch-0003.png"]
    assert (half / "progress" / "epoch-0003.png").read_bytes() == (full / "progress" / "epoch-0003.png").read_bytes()
    scalars, _ = _events(half / "tensorboard")
    assert [s for s, _ in scalars["step/loss"]] == [r["step"] for r in a]
    assert [s for s, _ in scalars["epoch/train_loss"]] == [21, 42, 63]
    assert not scalars.get("step/extra")


def test_tensorboard_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import of it fails
    with pytest.raises(VaelabError, match=r"pip install tensorboard"):
        vaelab.train(vaelab.make_config(**TINY, tensorboard=True, out=str(tmp_path / "r")), **QUIET)
    assert not (tmp_path / "r").exists()  # said before the run directory is made: the same command runs again


def test_a_model_that_cannot_sample_draws_no_progress_grid(tmp_path):
    run = vaelab.train(vaelab.make_config(**{**TINY, "model": "ae"}, out=str(tmp_path / "r")), **QUIET)
    assert progress_pictures(run) == []


@pytest.mark.parametrize("name", sorted(n for n, cls in MODELS.items() if SAMPLE in cls.capabilities))
def test_every_sampling_model_draws_the_same_grid_from_a_fixed_noise_batch(name):
    cfg = vaelab.make_config(**tiny(name))
    model_cfg, _ = settle_for_data(cfg.model, run_dataset(cfg.data).spec)
    model = get_model(name)(model_cfg)
    model.eval()
    state = torch.get_rng_state()
    a, b = model.epoch_grid(), model.epoch_grid()
    assert torch.equal(torch.get_rng_state(), state)  # the training stream is untouched
    assert a.shape == (64, *model.cfg.shape) and torch.equal(a, b)


def test_logger_classes_are_called_through_one_seam(tmp_path):
    seen = []

    class Recorder(loggers.Logger):
        wants_images = True

        def steps(self, step, epoch, scalars):
            seen.append(("steps", step))

        def epoch(self, record, history, step):
            seen.append(("epoch", step))

        def images(self, epoch, step, name, images):
            seen.append(("images", step))

    group = loggers.Loggers([loggers.Logger(), Recorder()])
    assert group.wants_images
    group.steps(1, 1, {"loss": 1.0})
    group.epoch({"epoch": 1}, [{"epoch": 1}], 21)
    group.images(1, 21, "samples", torch.zeros(4, 1, 8, 8))
    group.close()
    assert seen == [("steps", 1), ("epoch", 21), ("images", 21)]
