"""Denoising PSNR and code-sparsity diagnostics (the denoising and sparse autoencoders' own
metrics) against closed forms."""
import math

import pytest
import torch

from vaelab.data import Batch
from vaelab.models.dae import DAE, DAEConfig, psnr
from vaelab.models.sparse_ae import SparseAE, SparseAEConfig


def test_psnr_closed_form():
    a = torch.zeros(2, 1, 4, 4)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1, 0, 0, 0] = 1.0  # MSE 1/16 -> 10 log10(16)
    torch.testing.assert_close(psnr(a, b), torch.tensor([20.0, 10 * math.log10(16)]))


def test_denoising_metrics_are_seeded_and_consistent():
    torch.manual_seed(0)
    model = DAE(DAEConfig(shape=(1, 6, 6), hidden=(8,), latent_dim=3, corruption="mask:0.5")).eval()
    x = torch.rand(50, 1, 6, 6).round()
    torch.manual_seed(1)
    a = model.metrics(Batch(x))
    torch.manual_seed(2)
    b = model.metrics(Batch(x))
    assert a == b  # the evaluation corruption is fixed, whatever the global RNG says
    assert a["corruption"] == "mask:0.5"
    assert a["psnr_gain"] == pytest.approx(a["psnr_denoised"] - a["psnr_corrupted"])
    # masking half the pixels of a binary image: MSE = half the fraction of ones
    ones = x.flatten(1).mean(1)
    expected = (10 * torch.log10(1 / (0.5 * ones).clamp_min(1e-12))).mean().item()
    assert a["psnr_corrupted"] == pytest.approx(expected, abs=1.0)  # 50 images: sampling noise of the mask


def test_sparsity_metrics_count_inactive_units():
    model = SparseAE(SparseAEConfig(shape=(1, 2, 2), arch="linear", latent_dim=4))
    with torch.no_grad():
        lin = model.encoder[0].net[0]
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([0.0, 0.005, -0.5, 2.0]))  # two of four units are near zero
    m = model.metrics(Batch(torch.rand(10, 1, 2, 2)))
    assert m["near_zero_fraction"] == pytest.approx(0.5)
    assert m["mean_abs_code"] == pytest.approx((0.005 + 0.5 + 2.0) / 4)
