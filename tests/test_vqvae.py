"""The VQ-VAE's terms against independent computations: the nearest entry against a brute-force
distance matrix, the straight-through gradient and the stop-gradients against autograd, the EMA
codebook against the paper's formulas done by hand, exact resume of the EMA buffers; and the
PixelCNN prior's masks against autograd."""
import contextlib
import dataclasses
import json

import pytest
import torch

import vaelab
from vaelab.cli import main
from vaelab.models.vqvae import LAPLACE_EPS, VQVAE, VQVAEConfig, nearest, straight_through
from vaelab.nets import PixelCNN
from vaelab.training.trainer import train as train_loop


def _model(**over) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(shape=(1, 8, 8), hidden=(16,), latent_dim=4, codebook_size=10, **over))


def _x(n=6):
    return (torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)) < 0.5).float()


def test_nearest_entry_is_the_brute_force_argmin():
    g = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(2000, 8, generator=g), torch.randn(64, 8, generator=g)
    assert torch.equal(nearest(z, codebook), torch.cdist(z, codebook).argmin(1))


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_the_models_grid_holds_each_vectors_nearest_entry(arch):
    # through the model: z_e's vectors, read out of [B, D, h, w] by hand, against the codebook
    model = _model(arch=arch, **({"channels": (4, 4)} if arch == "conv" else {})).eval()
    x = _x()
    z_e = model.encode(x)                                          # [B, D, h, w]
    vectors = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])    # [B*h*w, D]
    want = torch.cdist(vectors, model.codebook.detach()).argmin(1).view(len(x), *model.grid)
    assert torch.equal(model.code_grid(x), want)
    out = model(x)
    assert torch.equal(out.e, model.codebook.detach()[want].permute(0, 3, 1, 2))


def test_straight_through_passes_the_gradient_at_the_quantised_output_to_z_e():
    g = torch.Generator().manual_seed(0)
    z_e = torch.randn(3, 4, 2, 2, generator=g).requires_grad_()
    e = torch.randn(3, 4, 2, 2, generator=g)
    w = torch.randn(3, 4, 2, 2, generator=g)
    f = lambda t: (w * t).sum() + (t ** 3).sum()  # noqa: E731  a loss whose gradient depends on where it is taken
    z_q = straight_through(z_e, e)
    torch.testing.assert_close(z_q, e)  # z_e + (e - z_e): e up to rounding
    (grad_z_e,) = torch.autograd.grad(f(z_q), z_e)
    e_leaf = e.clone().requires_grad_()
    (grad_at_e,) = torch.autograd.grad(f(e_leaf), e_leaf)
    torch.testing.assert_close(grad_z_e, grad_at_e)
    assert not torch.allclose(grad_at_e, torch.autograd.grad(f(z_e), z_e)[0])  # the gradient at e, not at z_e


def test_each_loss_term_trains_what_the_paper_says():
    model = _model().train()
    x = _x()
    loss, metrics, _, _ = model.objective(x)
    z_e, out = model.encode(x), model(x)
    # both terms are the squared distance to the nearest entry, summed per example: cdist's minimum
    vectors = z_e.permute(0, 2, 3, 1).reshape(len(x), -1, z_e.shape[1])   # [B, h*w, D]
    d2 = torch.cdist(vectors, model.codebook.detach().expand(len(x), -1, -1)).min(-1).values.pow(2).sum(1)
    torch.testing.assert_close(metrics["commitment"], d2.mean())
    torch.testing.assert_close(metrics["codebook"], d2.mean())
    torch.testing.assert_close(loss, metrics["recon"] + d2.mean() + 0.25 * d2.mean())
    enc = [p for p in model.encoder.parameters()]
    grad = lambda t, ps: [g if g is not None else torch.zeros_like(p)  # noqa: E731
                          for g, p in zip(torch.autograd.grad(t, ps, retain_graph=True, allow_unused=True), ps)]
    # sg[.]: the reconstruction and the commitment never reach the codebook; the codebook term
    # never reaches the encoder; the reconstruction reaches the encoder through z_q
    _, m = model.objective(x)[:2]
    for term in ("recon", "commitment"):
        assert grad(m[term], [model.codebook])[0].abs().max() == 0, term
    assert all(g.abs().max() == 0 for g in grad(m["codebook"], enc))
    assert all(g.abs().max() > 0 for g in grad(m["recon"], enc)[-1:])
    assert grad(m["codebook"], [model.codebook])[0].abs().max() > 0
    assert out.recon.shape == x.shape


def test_ema_codebook_update_by_hand():
    model = _model(codebook_ema=True, codebook_decay=0.9)
    assert "codebook" not in dict(model.named_parameters())  # a buffer, moved by the averages
    k, d = 10, 4
    g = torch.Generator().manual_seed(2)
    count0, sum0 = torch.rand(k, generator=g) + 0.5, torch.randn(k, d, generator=g)
    model.ema_count.copy_(count0)
    model.ema_sum.copy_(sum0)
    z_e = torch.randn(2, d, 3, 3, generator=g)
    c = torch.tensor([[[0, 0, 3], [3, 3, 9], [1, 0, 0]], [[9, 9, 9], [2, 2, 2], [0, 1, 3]]])
    model.ema_update(z_e, c)
    gamma, want_count, want_sum = 0.9, [], []
    for j in range(k):  # N_j <- g N_j + (1 - g) n_j, m_j <- g m_j + (1 - g) sum of its z_e
        members = [z_e[b, :, h, w] for b in range(2) for h in range(3) for w in range(3) if c[b, h, w] == j]
        n_j = len(members)
        s_j = torch.stack(members).sum(0) if members else torch.zeros(d)
        want_count.append(gamma * count0[j] + (1 - gamma) * n_j)
        want_sum.append(gamma * sum0[j] + (1 - gamma) * s_j)
    want_count, want_sum = torch.stack(want_count), torch.stack(want_sum)
    total = float(want_count.sum())
    smoothed = [(float(want_count[j]) + LAPLACE_EPS) / (total + k * LAPLACE_EPS) * total for j in range(k)]
    torch.testing.assert_close(model.ema_count, want_count)
    torch.testing.assert_close(model.ema_sum, want_sum)
    torch.testing.assert_close(model.codebook, torch.stack([want_sum[j] / smoothed[j] for j in range(k)]))


def test_ema_codebook_moves_in_a_train_step_and_resume_is_exact(tmp_path):
    flags = dict(model="vqvae", data="digits", hidden=(16,), latent_dim=2, codebook_ema=True, batch_size=64,
                 nll_samples=0, progress=False, device="cpu")
    with contextlib.ExitStack() as hold:  # the training loop alone: the samplers are not this test's
        full = train_loop(vaelab.make_config(**flags, epochs=2, out=str(tmp_path / "full")), hold=hold,
                          log=lambda m: None)
        half = train_loop(vaelab.make_config(**flags, epochs=1, out=str(tmp_path / "half")), hold=hold,
                          log=lambda m: None)
    with contextlib.ExitStack() as hold:
        train_loop(vaelab.make_config(**flags, epochs=2), resume=half, hold=hold, log=lambda m: None)
    a, b = vaelab.load(full, "last", "cpu").state_dict(), vaelab.load(half, "last", "cpu").state_dict()
    assert {"codebook", "ema_count", "ema_sum"} <= set(a)
    assert all(torch.equal(a[n], b[n]) for n in a)
    fresh = VQVAE(vaelab.load(full, "last", "cpu").cfg).state_dict()
    assert not torch.equal(a["ema_count"], fresh["ema_count"]) and not torch.equal(a["codebook"], fresh["codebook"])


def test_pixelcnn_logits_at_a_cell_depend_on_earlier_cells_only():
    torch.manual_seed(0)
    net = PixelCNN(num_codes=5, channels=8, blocks=2, kernel=3)
    h, w = 4, 5
    inp = torch.randn(1, 8, h, w, requires_grad=True)
    out = net(inp)  # [1, K, h, w]
    for i in range(h):
        for j in range(w):
            (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), inp, retain_graph=True)
            seen = grad[0].abs().sum(0)  # [h, w]: how much each input cell moves the logits at (i, j)
            later = torch.arange(h * w).view(h, w) >= i * w + j  # this cell and those after it
            assert seen[later].max() == 0, (i, j)
            if j > 0:
                assert seen[i, j - 1] > 0, (i, j)
            if i > 0:
                assert seen[i - 1, j] > 0, (i, j)


def test_pixelcnn_sampling_crops_rows_without_changing_the_logits():
    torch.manual_seed(0)
    net = PixelCNN(num_codes=6, channels=8, blocks=2, kernel=3).eval()
    c = torch.randint(0, 6, (2, 7, 4))
    full = net.logits(c)
    for i in range(7):
        top = max(0, i - net.reach)
        torch.testing.assert_close(net.logits(c[:, top: i + 1])[:, :, i - top], full[:, :, i])
    assert net.reach < 6  # so some rows above were left out


def test_vqvae_trains_and_samples_through_its_pixelcnn(tmp_path, capsys):
    out = tmp_path / "vq"
    assert main(["train", "--model", "vqvae", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                 "--batch-size", "64", "--no-progress", "--out", str(out)]) == 0
    res = json.loads((out / "eval-test.json").read_text())
    assert res["sampler"] == "pixelcnn" and 1 <= res["codebook_perplexity"] <= res["codebook_used"] <= 64
    assert (out / "samplers" / "pixelcnn-best.safetensors").is_file()
    capsys.readouterr()
    assert main(["sample", str(out), "-n", "8", "-o", str(tmp_path / "s.png")]) == 0
    assert "fitting" not in capsys.readouterr().err  # the cached PixelCNN
    assert main(["sample", str(out), "--sampler", "gmm:3", "-o", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "grids of codebook indices" in err and "pixelcnn" in err


def test_vqvae_config_refusals():
    for bad, flag in ((dict(codebook_size=1), "--codebook-size"), (dict(arch="conv", grid=4), "--grid"),
                      (dict(codebook_decay=0.5), "--codebook-decay"), (dict(commitment=-1.0), "--commitment"),
                      (dict(codebook_ema=True, codebook_decay=1.0), "--codebook-decay")):
        with pytest.raises(vaelab.VaelabError, match=flag):
            dataclasses.replace(VQVAEConfig(), **bad).check()
