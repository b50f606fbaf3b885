"""Labels in the batch: the trainer hands each step a Batch whose labels are its images' own."""
import torch

import vaelab
from vaelab.data import Batch, as_batch, run_dataset
from vaelab.models.vae import VAE


def test_each_step_gets_the_labels_of_its_images(tmp_path, monkeypatch):
    seen = []
    step = VAE.step

    def recording(self, batch, info):
        seen.append(batch)
        return step(self, batch, info)
    monkeypatch.setattr(VAE, "step", recording)
    cfg = vaelab.make_config(data="digits", hidden=(16,), latent_dim=2, epochs=1, batch_size=100, nll_samples=0,
                             progress=False, report=False, out=str(tmp_path / "r"))
    vaelab.train(cfg, log=lambda m: None)
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
