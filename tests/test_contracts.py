"""Contracts every registered model keeps, with no per-model code: a new model file is covered
by being registered. Tiny configs on the bundled 8x8 digits."""
import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.models import MODELS
from vaelab.models.base import ENCODE, LIKELIHOOD, SAMPLE, StepInfo
from vaelab.training.trainer import train as train_loop
from vaelab.training.update import FastPaths, take_step

from labelled import as_validation, fed, given

NAMES = sorted(MODELS)


def tiny(name: str, **over) -> dict:
    """Small nets for any model: only the fields its config has are set."""
    fields = {f.name for f in dataclasses.fields(MODELS[name].config_cls)}
    small = {"hidden": (16,), "latent_dim": 2}  # every model defaults to an mlp
    return dict(model=name, data="digits", batch_size=64, nll_samples=0, progress=False, device="cpu",
                **{k: v for k, v in small.items() if k in fields}, **over)


def _weights(run_dir, name="model.safetensors"):
    return load_file(str(run_dir / name))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _trained(name: str, path, **over):
    """The training loop alone: the final evaluation and pictures (the same for a resumed run;
    every model's are exercised by test_cli) would cost more than the epochs here."""
    return train_loop(vaelab.make_config(**tiny(name, **over), out=str(path)), log=lambda m: None)


@pytest.mark.parametrize("name", NAMES)
def test_resume_is_exact_for_every_model(name, tmp_path):
    full = _trained(name, tmp_path / "full", epochs=3)
    half = _trained(name, tmp_path / "half", epochs=1)
    train_loop(vaelab.make_config(**tiny(name, epochs=3)), resume=half, log=lambda m: None)
    assert _same(_weights(full), _weights(half))
    lines = lambda r: [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [h["train_loss"] for h in lines(full)] == [h["train_loss"] for h in lines(half)]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_and_checkpoint_round_trip(name, tmp_path):
    a, b = (_trained(name, tmp_path / n, epochs=1) for n in "ab")
    assert _same(_weights(a), _weights(b))
    model = vaelab.load(a, "last", device="cpu")
    assert _same({k: v for k, v in model.state_dict().items()}, _weights(a))
    assert type(model) is MODELS[name]


def _model_and_batch(name):
    cfg = vaelab.make_config(**tiny(name))
    torch.manual_seed(0)
    model = MODELS[name](dataclasses.replace(cfg.model, shape=(1, 8, 8)))
    x = (torch.rand(2 * model.batches_per_step * 8, 1, 8, 8) < 0.5).float()
    return cfg, model, x


@pytest.mark.parametrize("name", NAMES)
def test_a_train_step_changes_every_optimizer_and_validation_changes_nothing(name):
    cfg, model, x = _model_and_batch(name)
    optimizers = model.optimizers(cfg.train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        scores = model.validation(as_validation(model, x))
    assert scores.shape == (len(x),) and torch.isfinite(scores).all()
    assert _same(before, model.state_dict())
    model.train()
    k = model.batches_per_step
    batch = x if k == 1 else list(x.chunk(k))
    out = take_step(model, optimizers, fed(model, batch), StepInfo(0, 0, 10, len(x)), FastPaths())
    assert out["skipped"].item() == 0 and torch.isfinite(out["loss"])
    for opt_name, opt in optimizers.items():
        params = [p for g in opt.param_groups for p in g["params"]]
        names = [n for n, p in model.named_parameters() if any(p is q for q in params)]
        assert any(not torch.equal(before[n], model.state_dict()[n]) for n in names), opt_name


@pytest.mark.parametrize("name", NAMES)
def test_declared_capabilities_are_there(name):
    _, model, x = _model_and_batch(name)
    model.eval()
    assert model.capabilities <= {ENCODE, SAMPLE, LIKELIHOOD}
    if model.can(ENCODE):
        assert model.codes(x).shape == (len(x), model.code_dim)
        assert model.reconstruct(x).shape == x.shape
    if model.can(SAMPLE):
        assert model.sample(3).shape == (3, 1, 8, 8)
        assert model.decode_mean(model.prior(3)).shape == (3, 1, 8, 8)
    if model.can(LIKELIHOOD):
        assert model.log_weights(x, 4, **given(model, x)).shape == (4, len(x))
