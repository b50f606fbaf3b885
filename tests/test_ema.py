"""--ema: the averaged weights are what is validated, checkpointed and evaluated; the trained
weights stay for resume, and both resume exactly."""
import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.errors import VaelabError
from vaelab.training.ema import EMA
from vaelab.training.trainer import learning_rate

TINY = dict(data="digits", hidden=(16,), latent_dim=2, batch_size=64, nll_samples=0, progress=False, device="cpu")


def test_the_average_follows_its_closed_form_and_a_dropped_step_leaves_it():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, 0.9)
    start = net.weight.detach().clone()
    history = []
    for t in range(30):
        with torch.no_grad():
            net.weight.add_(1.0)
        history.append(net.weight.detach().clone())
        ema.update(torch.tensor(1.0 if t == 5 else 0.0))
    want = start
    for t, w in enumerate(history):  # theta_ema += (1 - d_t)(theta - theta_ema), d_t warmed up
        d = min(0.9, (1 + t) / (10 + t))
        if t != 5:
            want = want + (1 - d) * (w - want)
    assert torch.allclose(ema.model.weight, want, atol=1e-5)
    assert not ema.model.weight.requires_grad


def test_checkpoints_hold_the_average_and_resume_is_exact(tmp_path):
    full = vaelab.train(vaelab.make_config(**TINY, epochs=3, ema=0.99, out=str(tmp_path / "full")),
                        log=lambda m: None)
    half = vaelab.train(vaelab.make_config(**TINY, epochs=1, ema=0.99, out=str(tmp_path / "half")),
                        log=lambda m: None)
    vaelab.train(vaelab.make_config(**TINY, epochs=3), resume=half, log=lambda m: None)
    for name in ("model.safetensors", "resume.safetensors", "best.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(half / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    saved, state = load_file(str(full / "model.safetensors")), load_file(str(full / "resume.safetensors"))
    for k, v in saved.items():  # the checkpoint is the average, not the trained weights
        assert torch.equal(v, state[f"ema.{k}"])
    assert any(not torch.equal(v, state[f"model.{k}"]) for k, v in saved.items())
    model = vaelab.load(full, "last", device="cpu")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def test_a_decay_outside_0_1_is_refused():
    with pytest.raises(VaelabError, match="--ema"):
        vaelab.make_config(**TINY, ema=1.5)


def test_the_iwae_preset_carries_the_time_to_quality_recipe_and_flags_win():
    cfg = vaelab.make_config(data="mnist", preset="iwae")
    t = cfg.train
    assert (t.batch_size, t.lr, t.lr_schedule, t.lr_final, t.ema) == (100, 1e-3, "cosine", None, 0.999)
    ten = vaelab.make_config(data="mnist", preset="iwae", epochs=10).train
    assert learning_rate(ten, 9) == pytest.approx(1e-4) and learning_rate(ten, 0) == 1e-3  # cosine to lr/10
    assert vaelab.make_config(data="mnist", preset="iwae", lr=5e-5, epochs=10).train.lr_final is None
    assert cfg.model.binarize == "dynamic" and cfg.model.hidden == (200, 200) and cfg.model.latent_dim == 50
    iwae = vaelab.make_config(model="iwae", data="mnist", preset="iwae", k=5)
    assert (iwae.train.ema, iwae.train.lr_schedule, iwae.model.k) == (0.999, "cosine", 5)
    two = vaelab.make_config(model="vae-2layer", data="mnist", preset="iwae")  # the paper's 2-layer net, same recipe
    assert (two.train.batch_size, two.train.ema, two.train.lr_schedule, two.model.binarize, two.model.top_latent_dim) \
        == (100, 0.999, "cosine", "dynamic", 50)
    plain = vaelab.make_config(data="mnist", preset="iwae", ema="none", lr_schedule="constant")
    assert plain.train.ema is None and plain.train.lr_schedule == "constant"
