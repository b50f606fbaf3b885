"""The IWAE (Burda et al. 2016) as its own model: the bound it reports is the k-sample bound of
the same draws, computed independently, and it trains through the CLI's options."""
import json

import numpy as np
import torch

import vaelab
from test_models import MODELS, _batch, _build, _config, _step

TINY = dict(data="digits", hidden=(32,), latent_dim=2, batch_size=64, nll_samples=20, progress=False, lr=3e-3)


def test_iwae_step_reports_the_bound_it_optimises():
    # the IWAE bound of k = 4 samples from the same random draws, with scipy's logsumexp
    from scipy.special import logsumexp

    iw = 4
    entry = MODELS["iwae"]
    model = _build(entry, _config(entry, "mlp", (1, 4, 4), k=iw)).train()
    x = _batch((1, 4, 4))
    torch.manual_seed(3)
    with torch.no_grad():
        lw = model.log_weights(x, iw)
    bound = torch.from_numpy(logsumexp(lw.double().numpy(), 0) - np.log(iw)).float()
    torch.manual_seed(3)
    _, m = _step(entry, model, x)
    torch.testing.assert_close(m["bound"], bound.mean())
    torch.testing.assert_close(m["loss"], -bound.mean())


def test_iwae_trains_on_its_bound(tmp_path):
    run = vaelab.train(vaelab.make_config(**TINY, epochs=2, model="iwae", k=5, out=str(tmp_path / "iw")),
                       log=lambda m: None)
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "train_bound" in hist[0] and hist[1]["train_bound"] > hist[0]["train_bound"]
    assert json.loads((run / "config.json").read_text())["run"]["model"]["k"] == 5
