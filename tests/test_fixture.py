"""The redesign of issue 13 changed nothing any command computes: each case of
tests/fixtures/record_redesign.py, recorded on the code before anything moved, is replayed
here and must give the same first 20 losses and the same final weights, bit for bit (CPU,
one thread)."""
import json
from pathlib import Path

import pytest

from fixtures.record_redesign import BASE, CASES, N_LOSSES, weights_digest  # noqa: F401

import vaelab
from vaelab.models import MODELS
from vaelab.training import update

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "redesign.json").read_text())

# the same runs in today's words: the IWAE bound is its own model (it was --iw-samples on vae)
RENAMED = {"vae-iwae": {"model": "iwae", "k": 3, "iw_samples": None}}


def _flags(name: str) -> dict:
    flags = {**CASES[name], **RENAMED.get(name, {})}
    if flags["model"] not in MODELS:
        pytest.skip(f"--model {flags['model']} is not registered")
    return {k: v for k, v in flags.items() if v is not None}


@pytest.mark.parametrize("name", sorted(CASES))
def test_redesign_reproduces_the_recorded_run(name, tmp_path, monkeypatch):
    losses = []
    original = update.apply_update

    def recording(loss, *a, **kw):
        losses.append(loss.detach().float().item())
        return original(loss, *a, **kw)

    monkeypatch.setattr(update, "apply_update", recording)
    run_dir = vaelab.train(vaelab.make_config(**BASE, **_flags(name), out=str(tmp_path / name)), log=lambda m: None)
    want = RECORDED[name]
    assert losses[:N_LOSSES] == want["losses"]
    assert weights_digest(run_dir / "model.safetensors") == want["weights"]
