"""The autoencoder formulas against closed forms and independent references: the L1 and KL
sparsity penalties, the reconstruction errors, the corruptions' statistics and what an
autoencoder's step reports through the one update path. Every random quantity has a fixed seed;
every statistical tolerance is explained."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import distributions as td

from vaelab.corruption import Corruption, corrupt, parse_corruption
from vaelab.errors import VaelabError
from vaelab.losses import kl_sparsity, l1_penalty, reconstruction_error
from vaelab.models.base import StepInfo
from vaelab.models.dae import DAE, DAEConfig
from vaelab.models.sparse_ae import SparseAE, SparseAEConfig
from vaelab.training.update import FastPaths, take_step

N_PIX = 200_000  # pixels for the corruption statistics: binomial std of a fraction <= 0.0011


def _kl_closed_form(z: np.ndarray, rho: float) -> float:
    """sum_j rho log(rho / rho_hat_j) + (1 - rho) log((1 - rho) / (1 - rho_hat_j)), float64."""
    rho_hat = np.asarray(z, dtype=np.float64).mean(0)
    return float(np.sum(rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))))


# --------------------------------------------------------------------------------------------
# penalties
# --------------------------------------------------------------------------------------------

def test_l1_penalty_hand_values():
    z = torch.tensor([[1.0, -2.0, 3.0], [0.0, -0.5, 0.0], [0.0, 0.0, 0.0]])
    got = l1_penalty(z)
    assert got.shape == (3,)                                       # one value per example
    torch.testing.assert_close(got, torch.tensor([6.0, 0.5, 0.0]), rtol=0, atol=0)


def test_kl_sparsity_closed_form_and_torch():
    # [B=4, D=3] sigmoid-like codes; unit means 0.15, 0.75, 0.3
    z = np.array([[0.1, 0.9, 0.3], [0.2, 0.7, 0.5], [0.0, 0.8, 0.1], [0.3, 0.6, 0.3]])
    rho = 0.2
    got = kl_sparsity(torch.tensor(z), rho)
    assert got.shape == ()
    # hand-computed rho_hat = (0.15, 0.75, 0.3): every term is exact to float64 rounding
    assert got.item() == pytest.approx(_kl_closed_form(z, rho), rel=1e-12)
    rho_hat = torch.tensor([0.15, 0.75, 0.3], dtype=torch.float64)
    ref = td.kl_divergence(td.Bernoulli(probs=torch.full_like(rho_hat, rho)), td.Bernoulli(probs=rho_hat)).sum()
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)      # torch goes through logits: ~1e-15
    assert got.item() > 0.1                                        # far from the target: clearly positive


def test_kl_sparsity_zero_at_the_target_and_positive_off_it():
    rho = 0.2
    z = torch.tensor([[0.1, 0.3], [0.3, 0.1], [0.2, 0.2], [0.2, 0.2]], dtype=torch.float64)  # means 0.2, 0.2
    assert abs(kl_sparsity(z, rho).item()) < 1e-12                 # KL(p || p) = 0 up to rounding of the mean
    z_off = z.clone()
    z_off[0, 1] += 0.04                                            # one unit's mean 0.2 -> 0.21
    assert kl_sparsity(z_off, rho).item() > 1e-5                   # ~ (0.01)^2 / (2 * 0.2 * 0.8) = 3e-4
    assert kl_sparsity(z_off, rho).item() == pytest.approx(_kl_closed_form(z_off.numpy(), rho), rel=1e-10)
    # a dead unit (mean 0) is clamped, so the penalty stays finite
    assert math.isfinite(kl_sparsity(torch.zeros(4, 2), rho).item())


# --------------------------------------------------------------------------------------------
# reconstruction error
# --------------------------------------------------------------------------------------------

def test_reconstruction_error_bce_matches_torch_on_probabilities():
    torch.manual_seed(0)
    logits = 3 * torch.randn(5, 1, 3, 4, dtype=torch.float64)      # |logits| < ~12: no log clamping
    x = torch.rand(5, 1, 3, 4, dtype=torch.float64)
    x[:2] = (x[:2] > 0.5).double()                                 # binary and grey targets
    got = reconstruction_error(logits, x, "bce")
    ref = F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="none").flatten(1).sum(1)
    assert got.shape == (5,)
    # logits vs probabilities differ only by rounding of sigmoid and log in float64
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_reconstruction_error_l2_hand_values():
    recon = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, -0.5]]])  # [B=2, 2, 2]
    x = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]])
    got = reconstruction_error(recon, x, "l2")
    torch.testing.assert_close(got, torch.tensor([1 + 4 + 1 + 1.0, 1.0]), rtol=0, atol=0)
    torch.manual_seed(1)
    r, y = torch.randn(3, 1, 4, 5, dtype=torch.float64), torch.randn(3, 1, 4, 5, dtype=torch.float64)
    hand = [sum((a - b) ** 2 for a, b in zip(ri.flatten().tolist(), yi.flatten().tolist())) for ri, yi in zip(r, y)]
    torch.testing.assert_close(reconstruction_error(r, y, "l2"), torch.tensor(hand, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# corruptions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_zeroes_a_fraction_p_of_nonzero_pixels(p):
    torch.manual_seed(2)
    x = torch.rand(N_PIX)
    x[torch.rand(N_PIX) < 0.3] = 0.0                               # ~30% already zero
    y = corrupt(x, parse_corruption(f"mask:{p}"))
    nz = x != 0
    assert torch.all(y[~nz] == 0)                                  # zeros stay zeros
    kept = y[nz] != 0
    assert torch.all(y[nz][kept] == x[nz][kept])                   # the others are untouched
    # ~140k nonzero pixels: binomial std <= 0.0014, so 0.01 is > 7 sigma
    assert (1 - kept.double().mean().item()) == pytest.approx(p, abs=0.01)


def test_mask_extremes():
    x = torch.rand(1000) + 0.1
    assert torch.equal(corrupt(x, parse_corruption("mask:0")), x)
    assert torch.equal(corrupt(x, parse_corruption("mask:1")), torch.zeros_like(x))


@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_gaussian_adds_zero_mean_noise_of_std_sigma(sigma):
    torch.manual_seed(3)
    x = torch.rand(N_PIX, dtype=torch.float64)
    r = corrupt(x, parse_corruption(f"gaussian:{sigma}")) - x
    # std of the sample mean is sigma / sqrt(2e5) = 0.0022 sigma: 0.01 sigma is > 4 sigma of it;
    # relative std of the sample std is 1 / sqrt(2 * 2e5) = 0.0016: 1% is > 6 of those
    assert abs(r.mean().item()) < 0.01 * sigma
    assert r.std().item() == pytest.approx(sigma, rel=0.01)


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_salt_pepper_on_mid_grey(p):
    torch.manual_seed(4)
    x = torch.full((N_PIX,), 0.5)
    y = corrupt(x, parse_corruption(f"salt-pepper:{p}"))
    changed = y != 0.5
    assert torch.all((y[changed] == 0) | (y[changed] == 1))        # only salt (1) and pepper (0)
    # binomial std of the changed fraction <= 0.0011; of the pepper share among >= 40k changed
    # pixels <= 0.0025: 0.01 is > 4 sigma for both
    assert changed.double().mean().item() == pytest.approx(p, abs=0.01)
    assert (y[changed] == 0).double().mean().item() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("spec", ["gaussian:0.3", "mask:0.5", "salt-pepper:0.5"])
def test_corruption_is_drawn_afresh_each_call_and_seeded(spec):
    c = parse_corruption(spec)
    x = torch.full((1000,), 0.5)
    torch.manual_seed(5)
    a, b = corrupt(x, c), corrupt(x, c)
    assert not torch.equal(a, b)                                   # two calls, two draws
    assert not torch.equal(a, x)
    torch.manual_seed(5)
    assert torch.equal(corrupt(x, c), a)                           # the global RNG decides it


@pytest.mark.parametrize("spec,kind,amount", [("gaussian:0.3", "gaussian", 0.3), ("mask:0", "mask", 0.0),
                                              ("mask:1.0", "mask", 1.0), ("salt-pepper:0.25", "salt-pepper", 0.25),
                                              ("gaussian:2", "gaussian", 2.0)])
def test_parse_corruption_valid(spec, kind, amount):
    assert parse_corruption(spec) == Corruption(kind, amount)


@pytest.mark.parametrize("spec", ["blur:2", "mask:1.5", "gaussian:-1", "mask", "mask:abc", "salt-pepper:-0.1",
                                  "mask:nan", "", "gaussian:"])
def test_parse_corruption_errors(spec):
    with pytest.raises(VaelabError, match="--corruption"):
        parse_corruption(spec)


def test_parse_corruption_rejects_infinite_sigma():
    with pytest.raises(VaelabError, match="--corruption"):
        parse_corruption("gaussian:inf")


# --------------------------------------------------------------------------------------------
# an autoencoder's step: what it reports is the loss of the weights before the update
# --------------------------------------------------------------------------------------------

def _adam(model):
    return {"model": torch.optim.Adam(model.parameters(), lr=0.05)}


def _batch(seed=6):
    torch.manual_seed(seed)
    return torch.rand(16, 1, 4, 4)


def _step_with_copy(model_cls, cfg, x, seed=7):
    """Build a model, keep a copy of its pre-step weights, take one training step (the model's
    step protocol through the trainer's update path) with the RNG at `seed`."""
    torch.manual_seed(0)
    model = model_cls(cfg)
    before = copy.deepcopy(model)
    torch.manual_seed(seed)
    metrics = take_step(model, _adam(model), x, StepInfo(0, 0, 1, len(x)), FastPaths())
    assert metrics["skipped"].item() == 0
    changed = any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))
    assert changed                                                 # so the copy is what the loss was of
    return model, before, metrics


@pytest.mark.parametrize("lam", [0.3, 0.0])
def test_ae_step_l1_loss_is_recon_plus_lambda_mean_abs_code(lam):
    x = _batch()
    cfg = SparseAEConfig(shape=(1, 4, 4), arch="mlp", hidden=(8,), latent_dim=5, l1=lam)
    model, before, m = _step_with_copy(SparseAE, cfg, x)
    with torch.no_grad():
        out = before(x)
        recon = F.binary_cross_entropy_with_logits(out.recon, x, reduction="none").sum((1, 2, 3)).mean()
        l1 = out.z.abs().sum(1).mean()
        expected = recon + lam * l1
        after = model(x)
    # same float32 operations on the same weights: equal up to summation order, ~1e-7 relative
    assert m["recon"].item() == pytest.approx(recon.item(), rel=1e-5)
    assert m["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    if lam:
        assert m["l1"].item() == pytest.approx(l1.item(), rel=1e-5)
        assert lam * l1.item() > 1e-3 * expected.item()            # the penalty term is visible
    else:
        assert "l1" not in m                                       # lambda 0: no penalty term at all
    # the post-step weights give another value, so the comparison above is meaningful
    after_loss = F.binary_cross_entropy_with_logits(after.recon, x, reduction="none").sum((1, 2, 3)).mean()
    assert abs(after_loss.item() - recon.item()) > 1e-3


def test_ae_step_kl_sparsity_loss_matches_the_closed_form():
    x = _batch()
    rho, beta, lam = 0.05, 0.5, 0.01
    cfg = SparseAEConfig(shape=(1, 4, 4), arch="mlp", hidden=(8,), latent_dim=5, code_activation="sigmoid",
                         l1=lam, sparsity_target=rho, sparsity_weight=beta)
    _, before, m = _step_with_copy(SparseAE, cfg, x)
    with torch.no_grad():
        out = before(x)
    z = out.z.double().numpy()                                     # [16, 5] in (0, 1)
    recon = reconstruction_error(out.recon, x, "bce").mean().item()
    kl = _kl_closed_form(z, rho)                                   # float64 reference
    expected = recon + lam * np.abs(z).sum(1).mean() + beta * kl
    # float32 inside the step vs float64 here: ~1e-6 relative
    assert m["kl_sparsity"].item() == pytest.approx(kl, rel=1e-4)
    assert m["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert beta * kl > 0.01 * expected                             # the KL term is a visible part


def test_dae_step_corrupts_the_input_but_reconstructs_the_clean_target():
    x = _batch()
    cfg = DAEConfig(shape=(1, 4, 4), arch="mlp", hidden=(8,), latent_dim=5, corruption="mask:1.0")
    _, before, m = _step_with_copy(DAE, cfg, x)
    zeros = torch.zeros_like(x)                                    # mask:1 blanks every pixel
    with torch.no_grad():
        out0 = before(zeros)                                       # the same output for every example
    torch.testing.assert_close(out0.recon, out0.recon[:1].expand_as(out0.recon))
    vs_clean = reconstruction_error(out0.recon, x, "bce").mean().item()
    vs_input = reconstruction_error(out0.recon, zeros, "bce").mean().item()
    # the two targets are told apart: ~0.18 apart here, 1000x the 1e-5 relative tolerance below
    assert abs(vs_clean - vs_input) > 0.01
    assert m["recon"].item() == pytest.approx(vs_clean, rel=1e-5)
    assert m["loss"].item() == pytest.approx(vs_clean, rel=1e-5)
    with torch.no_grad():                                          # and not the uncorrupted input
        assert abs(reconstruction_error(before(x).recon, x, "bce").mean().item() - vs_clean) > 1e-3


def test_dae_step_gaussian_uses_one_fresh_draw_from_the_global_rng():
    x = _batch()
    cfg = DAEConfig(shape=(1, 4, 4), arch="mlp", hidden=(8,), latent_dim=5, corruption="gaussian:0.3")
    _, before, m = _step_with_copy(DAE, cfg, x, seed=8)
    torch.manual_seed(8)                                           # replay the step's draw
    x_in = corrupt(x, parse_corruption("gaussian:0.3"))
    with torch.no_grad():
        expected = reconstruction_error(before(x_in).recon, x, "bce").mean().item()
        clean_in = reconstruction_error(before(x).recon, x, "bce").mean().item()
    assert abs(expected - clean_in) > 1e-4                         # the corruption matters here
    assert m["recon"].item() == pytest.approx(expected, rel=1e-5)
