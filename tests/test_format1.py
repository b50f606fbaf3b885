"""Runs saved before the redesign (format 1: --binarize the data's, --beta, --warmup-epochs and
--iw-samples the trainer's, the IWAE bound as --model vae --iw-samples K) load, evaluate and
resume as the same runs in today's words."""
import json

import pytest

import vaelab
from vaelab.models import MODELS

TINY = dict(data="digits", hidden=(16,), latent_dim=2, batch_size=64, epochs=1, nll_samples=0, progress=False,
            device="cpu")


def _as_format1(run_dir, train_extra: dict, model_name: str = "vae"):
    """Rewrite a run's config.json in the layout format 1 wrote."""
    p = run_dir / "config.json"
    doc = json.loads(p.read_text())
    run = doc["run"]
    run["data"]["binarize"] = run["model"].pop("binarize")
    for name in ("beta", "warmup_epochs", "k"):
        run["model"].pop(name, None)
    run["train"].update({"beta": 1.0, "warmup_epochs": 0.0, "iw_samples": 1, **train_extra, "model": model_name})
    run["model_name"] = model_name
    doc["format_version"] = 1
    p.write_text(json.dumps(doc))


@pytest.mark.parametrize("old,name,expect", [
    ({"iw_samples": 3}, "iwae", {"k": 3}),
    ({"beta": 0.5, "warmup_epochs": 2.0}, "vae", {"beta": 0.5, "warmup_epochs": 2.0}),
])
def test_a_format1_vae_run_loads_evaluates_and_resumes(tmp_path, old, name, expect):
    if name not in MODELS:
        pytest.skip(f"--model {name} is not registered")
    run_dir = vaelab.train(vaelab.make_config(model=name, binarize="static", **TINY, **expect,
                                              out=str(tmp_path / "r")), log=lambda m: None)
    _as_format1(run_dir, old)
    model = vaelab.load(run_dir, device="cpu")
    assert type(model) is MODELS[name]
    assert all(getattr(model.cfg, k) == v for k, v in expect.items()) and model.cfg.binarize == "static"
    assert vaelab.evaluate(run_dir, k=5, save=False, sample_metrics=False)["nll"] > 0
    vaelab.train(vaelab.make_config(**{**TINY, "epochs": 2}), resume=run_dir, log=lambda m: None)
    doc = json.loads((run_dir / "config.json").read_text())
    assert doc["format_version"] == 2 and doc["run"]["train"]["model"] == name
    assert "binarize" not in doc["run"]["data"] and doc["run"]["model"]["binarize"] == "static"


def test_a_format1_run_of_a_model_without_those_settings_drops_their_defaults(tmp_path):
    run_dir = vaelab.train(vaelab.make_config(model="ae", **TINY, out=str(tmp_path / "a")), log=lambda m: None)
    _as_format1(run_dir, {}, "ae")
    assert type(vaelab.load(run_dir, device="cpu")) is MODELS["ae"]
