"""Labels in the batch: the trainer hands each step a Batch whose labels are its images' own."""
import torch

import vaelab
from vaelab.data import Batch, as_batch, run_dataset
from vaelab.models.vae import VAE


def _trained_batches(tmp_path, monkeypatch, **flags):
    """Train a tiny digits VAE for one epoch; return its config and every Batch its steps got."""
    seen = []
    step = VAE.step

    def recording(self, batch, info):
        seen.append(batch)
        return step(self, batch, info)
    monkeypatch.setattr(VAE, "step", recording)
    cfg = vaelab.make_config(data="digits", hidden=(16,), latent_dim=2, epochs=1, batch_size=100, nll_samples=0,
                             progress=False, report=False, out=str(tmp_path / "r"), **flags)
    vaelab.train(cfg, log=lambda m: None)
    return cfg, seen


def test_each_step_gets_the_labels_of_its_images(tmp_path, monkeypatch):
    cfg, seen = _trained_batches(tmp_path, monkeypatch)
    assert seen and all(isinstance(b, Batch) and b.y is not None and b.y.dtype == torch.int64 for b in seen)
    assert all(b.y.shape == (len(b),) and b.labelled is None for b in seen)
    ds = run_dataset(cfg.data)
    # one epoch is every training image once: its labels, in the shuffled order
    assert torch.equal(torch.cat([b.y for b in seen]).sort().values, ds.train.y.sort().values)


def test_images_alone_are_a_batch_without_labels():
    x = torch.zeros(3, 1, 2, 2)
    b = as_batch(x)
    assert b.x is x and b.y is None and b.labelled is None and len(b) == 3
    assert [len(v) for v in as_batch([x, x[:1]])] == [3, 1] and as_batch(b) is b


def test_labels_n_keeps_the_probes_subset_and_hides_the_rest(tmp_path, monkeypatch):
    from vaelab.data.labels import balanced_subset
    cfg, seen = _trained_batches(tmp_path, monkeypatch, labels=30, seed=4)
    kept = torch.cat([b.y[b.labelled] for b in seen])
    ds = run_dataset(cfg.data)
    want = ds.train.y[balanced_subset(ds.train.y, 30, 10, seed=4)]
    assert len(kept) == 30 and torch.equal(kept.sort().values, want.sort().values)
    assert torch.bincount(kept, minlength=10).tolist() == [3] * 10
    assert all((b.y[~b.labelled] == -1).all() for b in seen)  # the hidden labels cannot be read


def test_labels_flag_takes_all_or_a_whole_number(tmp_path, capsys):
    from vaelab.cli import main
    assert vaelab.make_config(labels="all").train.labels is None
    assert vaelab.make_config(labels="100").train.labels == 100
    out = tmp_path / "r"
    assert main(["train", "--data", "digits", "--labels", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--labels must be at least 10" in err and "Traceback" not in err and not out.exists()
    assert main(["train", "--data", "digits", "--labels", "some", "--out", str(out)]) == 2
    assert "--labels" in capsys.readouterr().err and not out.exists()
