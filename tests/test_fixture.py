"""Changes of the code change nothing any command computes: each case of
tests/fixtures/record_redesign.py is replayed here against its recording.

On a kernel path that was recorded (torch's version, ATen's and oneDNN's instruction sets, the
CPU's vendor: ``record_redesign.kernel_path``) the first 20 losses and the final weights must
agree bit for bit. Elsewhere float kernels round differently (an AVX-512 sum adds in another
order than an AVX2 one), so the run is compared with the reference recording's tensors within
the tolerances below; ``tests/test_cpu_paths.py`` replays this file under
``ATEN_CPU_CAPABILITY=default`` in every run of the suite, so that side is exercised too."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fixtures.record_redesign import CASES, JSON, N_LOSSES, TENSORS, kernel_path, run_case, weights_digest

RECORDINGS = json.loads(JSON.read_text())["recordings"]
REFERENCE = RECORDINGS[0]  # the one whose tensors TENSORS holds

# The tolerances across kernel paths, per case kind: (losses, weights' rtol, weights' atol).
# losses: the largest relative difference of any of the first 20. weights: each tensor's root
# mean square difference must stay within rtol times its own root mean square plus atol.
# Measured between the kernel paths of an AMD EPYC (AVX2, AVX-512, the generic kernels, oneDNN
# capped at AVX2: docs/testing.md), the losses differed by at most 4e-7 relative in fp32 and
# 1.4e-6 under bf16 or fp16 autocast; the limits leave 50x and 70x for CPUs whose matrix
# products round otherwise (MKL's AVX-512 and AMX kernels on Intel). The weights need the atol:
# a bias just before a batch norm gets only rounding noise as its gradient, which Adam scales
# up to steps of about the learning rate, so it differs by some 1e-5 between paths (the GAN's
# generator.1.bias); 1e-4 is a tenth of one step at lr 1e-3. What the limits must catch, and do
# (test_the_tolerance_catches_a_changed_run), is any change of what is computed: a 1% change
# of the learning rate moves the losses by 3e-4 to 7e-4 relative and the VAE's weights by 2x
# the weights' limit.
TOLERANCE = {"fp32": (2e-5, 1e-3, 1e-4), "half": (1e-4, 1e-2, 1e-4)}


def _kind(name: str) -> str:
    return "half" if CASES[name].get("precision") in ("bf16", "fp16") else "fp32"


def _recorded_here() -> dict | None:
    here = kernel_path()
    return next((r for r in RECORDINGS if r["path"] == here), None)


def _rms(t: torch.Tensor) -> float:
    return t.double().pow(2).mean().sqrt().item() if t.numel() else 0.0


def differences(losses, weights, name: str) -> tuple[float, dict[str, float]]:
    """A run of case ``name`` against the reference recording: the largest relative difference
    of its losses, and each tensor's difference as a fraction of its tolerance (above 1 fails;
    integer tensors, such as a batch norm's count, must be equal)."""
    _, rtol, atol = TOLERANCE[_kind(name)]
    want = REFERENCE["cases"][name]["losses"]
    ref = load_file(str(TENSORS))
    ref = {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(f"{name}/")}
    assert sorted(ref) == sorted(weights), "the run's tensors are not the recorded ones"
    dl = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, want, strict=True))
    dw = {k: (_rms(weights[k].double() - v.double()) / (rtol * _rms(v) + atol) if v.is_floating_point() else
              0.0 if torch.equal(weights[k], v) else math.inf) for k, v in ref.items()}
    return dl, dw


@pytest.mark.cpu_paths
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_run_reproduces_its_recording(name, tmp_path):
    losses, weights = run_case(name, tmp_path)
    assert len(losses) == N_LOSSES
    recorded = _recorded_here()
    if recorded is not None:  # the same kernels: the same bits
        assert losses == recorded["cases"][name]["losses"]
        assert weights_digest(weights) == recorded["cases"][name]["weights"]
        return
    dl, dw = differences(losses, weights, name)
    tol_l = TOLERANCE[_kind(name)][0]
    assert dl <= tol_l, f"losses differ by {dl:.2e} relative on {kernel_path()} (tolerance {tol_l:g})"
    worst = max(dw, key=dw.get)
    assert dw[worst] <= 1, f"{worst} differs by {dw[worst]:.2f} times its tolerance on {kernel_path()}"


def test_the_reference_is_the_recorded_history():
    # the reference's digests are those of its own tensors, so the two files cannot drift apart
    ref = load_file(str(TENSORS))
    for name, case in REFERENCE["cases"].items():
        mine = {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith(f"{name}/")}
        assert weights_digest(mine) == case["weights"], name
    assert sorted(REFERENCE["cases"]) == sorted(CASES)
    assert all(len(r["path"]) == len(REFERENCE["path"]) for r in RECORDINGS)


@pytest.mark.cpu_paths
def test_the_tolerance_catches_a_changed_run(tmp_path, monkeypatch):
    # a run that computes something else (the learning rate 1% off) fails the comparison that a
    # foreign kernel path passes
    from fixtures import record_redesign
    name = "vae"
    monkeypatch.setitem(record_redesign.CASES, name, {**CASES[name], "lr": 1.01e-3})
    losses, weights = run_case(name, tmp_path)
    dl, dw = differences(losses, weights, name)
    assert dl > TOLERANCE["fp32"][0] and max(dw.values()) > 1, (dl, dw)
