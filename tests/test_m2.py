"""The semi-supervised VAE (M2): its NLL against an exact value, its bounds against independent
computations, its step's weighting, and training with a few labels through the CLI's path."""
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vaelab
from vaelab.data import Batch
from vaelab.errors import VaelabError
from vaelab.evaluation.likelihood import evaluate_likelihood, log_likelihood_is
from vaelab.models.base import StepInfo
from vaelab.models.m2 import M2, M2Config
from vaelab.training.trainer import train as train_loop

GRID = torch.linspace(-12, 12, 24001, dtype=torch.float64)  # z, step 1e-3


def _tiny(classes=3, **kw) -> M2:
    torch.manual_seed(0)
    cfg = M2Config(shape=(1, 2, 2), hidden=(8,), latent_dim=1, num_classes=classes, likelihood="bernoulli", **kw)
    return M2(cfg).double().eval()


def _binary(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 2, 2, generator=g, dtype=torch.float64) < 0.5).double()


@torch.no_grad()
def exact_log_px(model: M2, x: torch.Tensor) -> torch.Tensor:
    """log sum_y p(y) integral p(x|y,z) N(z) dz, the integral on a fine grid over the 1-D z: [B]."""
    dz = (GRID[1] - GRID[0]).item()
    log_pz = -0.5 * (GRID ** 2 + math.log(2 * math.pi))  # [G]
    per_class = []
    for c in range(model.num_classes):
        y = F.one_hot(torch.full((len(GRID),), c), model.num_classes).double()
        log_pxz = model.decode_y(GRID[:, None], y)  # batch [G]
        lp = log_pxz.log_prob(x[:, None])  # [B, G]
        per_class.append(torch.logsumexp(lp + log_pz, 1) + math.log(dz))
    return torch.logsumexp(torch.stack(per_class, 1), 1) - math.log(model.num_classes)


def test_is_nll_with_y_summed_out_matches_the_exact_likelihood():
    model = _tiny()
    x = _binary()
    exact = exact_log_px(model, x)
    torch.manual_seed(2)
    estimate, mean_log_w = log_likelihood_is(model, x, 20000)
    assert torch.allclose(estimate, exact, atol=0.02), (estimate, exact)
    assert (mean_log_w <= exact + 1e-9).all()  # the mean log-weight is a lower bound
    # the whole evaluation path (blocks, seeds) gives the same figure
    res = evaluate_likelihood(model, x, 20000, compile=False, precision="fp32")
    assert abs(res["nll"] - (-exact.mean().item())) < 0.02


@torch.no_grad()
def exact_u(model: M2, x: torch.Tensor) -> torch.Tensor:
    """E_q[U(x)] = sum_y q(y|x) (E_q(z|x,y) log p(x|y,z) + log p(y) - KL) + H(q(y|x)), the expectation
    over the 1-D z on the grid: [B]."""
    dz = (GRID[1] - GRID[0]).item()
    qy = model.class_logits(x).softmax(-1)  # [B, C]
    out = -(qy * qy.log()).sum(-1)
    for c in range(model.num_classes):
        y1 = F.one_hot(torch.full((len(x),), c), model.num_classes).double()
        q = model.posterior(x, y1)  # [B, 1]
        dens = q.log_prob(GRID[:, None, None]).exp() * dz  # [G, B]
        lik = model.decode_y(GRID[:, None], F.one_hot(torch.full((len(GRID),), c), model.num_classes).double())
        e_log = (dens * lik.log_prob(x[:, None]).T).sum(0)  # [B]
        out = out + qy[:, c] * (e_log - math.log(model.num_classes) - q.kl_to_standard_normal())
    return out


def test_unlabelled_bound_is_below_log_px_and_its_kl_part_matches_a_loop():
    model = _tiny()
    x = _binary(4)
    exact = exact_log_px(model, x)
    torch.manual_seed(3)
    with torch.no_grad():
        draws = torch.stack([model.unlabelled_bound(x) for _ in range(4000)])  # [S, B]
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert (mean < exact + 5 * se).all()  # U(x) <= log p(x), within the Monte Carlo error
    # and E[U(x)] itself, its expectation over z by quadrature over the 1-D z: two-sided
    assert torch.allclose(mean, exact_u(model, x), atol=5 * se.max().item())
    # the KL part of U(x), sum_y q(y|x) [KL(q(z|x,y) || p(z)) + log q(y|x) - log p(y)], against a loop
    with torch.no_grad():
        q = model.encode(x)
        qy = model.class_logits(x).softmax(-1)
        kl_loop = sum(qy[:, c] * (q.kl_to_standard_normal()[:, c] + torch.log(qy[:, c] * model.num_classes))
                      for c in range(model.num_classes))
        assert torch.allclose(model.kl(x, q), kl_loop)


@torch.no_grad()
def test_every_class_elbo_matches_the_labelled_elbo_of_each_class():
    # column c of every_class_elbo is L(x, c): the same mean over many draws as labelled_elbo(x, c)
    model = _tiny()
    x = _binary(1).repeat(3000, 1, 1, 1)
    torch.manual_seed(4)
    every = model.every_class_elbo(x)  # [S, C]
    for c in range(model.num_classes):
        one = model.labelled_elbo(x, torch.full((len(x),), c))
        se = math.hypot(every[:, c].std(), one.std()) / math.sqrt(len(x))
        assert abs(every[:, c].mean() - one.mean()) < 5 * se
    # and the model's U(x) against a loop over the classes with the same draws of z (one [B, C, D]
    # draw of N(0, I), as rsample makes it), torch.distributions' entropy and no class_summed_bound
    from torch import distributions as td
    xs = x[:5]
    torch.manual_seed(5)
    u = model.unlabelled_bound(xs)
    torch.manual_seed(5)
    eps = torch.randn(5, model.num_classes, 1, dtype=torch.float64)
    qy = td.Categorical(logits=model.class_logits(xs))
    loop = qy.entropy()
    for c in range(model.num_classes):
        y1 = F.one_hot(torch.full((5,), c), model.num_classes).double()
        q = model.posterior(xs, y1)
        z = q.mu + q.std * eps[:, c]
        lik = td.Independent(td.Bernoulli(logits=model.decode_y(z, y1).logits), 3)
        l_c = lik.log_prob(xs) - math.log(model.num_classes) - td.kl_divergence(
            td.Independent(td.Normal(q.mu, q.std), 1), td.Independent(td.Normal(torch.zeros_like(q.mu), 1.0), 1))
        loop = loop + qy.probs[:, c] * l_c
    assert torch.allclose(u, loop)


def test_the_step_weights_the_terms_as_the_authors_code_does():
    # the authors' objective over N = 1000 images, 10 labelled: (sum_u U + sum_l L + alpha N/N_l
    # sum_l log q) / N, per example of each minibatch: (1/N) sum_u U estimated by the sum of U over
    # the minibatch's unlabelled images divided by its size
    model = _tiny(alpha=0.1).float()
    model.train()
    x, y = _binary(5).float(), torch.tensor([0, 1, 2, 0, 1])
    xl, yl = _binary(3, seed=9).float(), torch.tensor([2, 0, 1])  # the labelled part: other images
    mask = torch.tensor([True, False, False, False, False])  # x[0]'s label is kept: not in U
    info = StepInfo(0, 0, 10, dataset_size=1000, labels=10)
    torch.manual_seed(6)
    update = next(model.step(Batch(x, y, mask, labelled_part=Batch(xl, yl)), info))
    torch.manual_seed(6)
    u = model.unlabelled_bound(x[1:])
    l_y = model.labelled_elbo(xl, yl).mean()
    ce = F.cross_entropy(model.class_logits(xl), yl)
    want = -u.sum() / 5 - (10 / 1000) * l_y + 0.1 * ce
    assert torch.allclose(update.loss, want)
    assert torch.allclose(update.metrics["class_loss"], ce) and torch.allclose(update.metrics["bound"], u.mean())
    # a minibatch of kept labels only: no U term, and no NaN in the logged bound
    torch.manual_seed(6)
    update = next(model.step(Batch(x, y, torch.ones(5, dtype=torch.bool), labelled_part=Batch(xl, yl)), info))
    torch.manual_seed(6)
    want = -(10 / 1000) * model.labelled_elbo(xl, yl).mean() + 0.1 * ce
    assert torch.allclose(update.loss, want) and update.metrics["bound"].item() == 0
    # with every label kept there is no unlabelled image: no U term, and no bound logged
    torch.manual_seed(6)
    update = next(model.step(Batch(x, y, labelled_part=Batch(xl, yl)), StepInfo(0, 0, 10, 1000)))
    torch.manual_seed(6)
    want = -model.labelled_elbo(xl, yl).mean() + 0.1 * ce
    assert torch.allclose(update.loss, want) and "bound" not in update.metrics


@pytest.mark.parametrize("stacked", [False, True], ids=["m2", "m1+m2"])
def test_balanced_weighting_counts_the_labelled_part_n_u_over_n_l_times(stacked):
    """--labelled-weight balanced: the labelled ELBO and the classification term each times
    N_u/N_l = 99 (10 labels of 1000 images), U as in the paper's weighting; with every label kept
    the two weightings are the same loss."""
    x, y = _binary(5).float(), torch.tensor([0, 1, 2, 0, 1])
    xl, yl = _binary(3, seed=9).float(), torch.tensor([2, 0, 1])
    mask = torch.tensor([True, False, False, False, False])
    losses = {}
    for weighting in ("paper", "balanced"):
        model = (_stacked(labelled_weight=weighting) if stacked else _tiny(alpha=0.1, labelled_weight=weighting))
        model = model.float().train()
        for name, info, m in (("few", StepInfo(0, 0, 10, dataset_size=1000, labels=10), mask),
                              ("all", StepInfo(0, 0, 10, 1000), None)):
            torch.manual_seed(6)
            upd = next(model.step(Batch(x, y, m, labelled_part=Batch(xl, yl)), info))
            losses[weighting, name] = upd.loss
            losses[weighting, name, "terms"] = (upd.metrics["labelled_elbo"], upd.metrics["class_loss"])
    l_y, ce = losses["paper", "few", "terms"]
    u_part = losses["paper", "few"] + (10 / 1000) * l_y - 0.1 * ce  # what the labels do not weigh
    want = u_part - 99 * ((10 / 1000) * l_y - 0.1 * ce)
    assert torch.allclose(losses["balanced", "few"], want, rtol=1e-5), (losses["balanced", "few"], want)
    assert not torch.allclose(losses["balanced", "few"], losses["paper", "few"])
    assert torch.equal(losses["balanced", "all"], losses["paper", "all"])


def test_labelled_weight_is_a_checked_choice():
    with pytest.raises(VaelabError, match="labelled.weight must be one of paper, balanced"):
        vaelab.make_config(model="m2", labelled_weight="equal")


@pytest.mark.parametrize("stacked", [False, True], ids=["m2", "m1+m2"])
def test_ranks_parts_weighted_by_their_shares_give_the_minibatchs_loss(stacked, monkeypatch):
    """Under torchrun each rank steps on its part of the minibatch and its loss is weighted by
    its share: the sum must be the one-process loss, also where the kept labels fall unevenly
    between the parts. The draws are replaced by their means, so the parts see the same numbers."""
    from vaelab.distributions import DiagonalGaussian
    monkeypatch.setattr(DiagonalGaussian, "rsample", lambda self, k=None: self.mu if k is None else
                        self.mu.expand(k, *self.mu.shape))
    model = (_stacked() if stacked else _tiny(alpha=0.1)).float().train()
    x, y = _binary(6).float(), torch.tensor([0, 1, 2, 0, 1, 2])
    xl, yl = _binary(6, seed=9).float(), torch.tensor([2, 0, 1, 1, 2, 0])
    mask = torch.tensor([True, True, False, False, False, False])  # both kept labels in the first part
    info = StepInfo(0, 0, 10, dataset_size=1000, labels=10)

    def loss(part):
        return next(model.step(Batch(x[part], y[part], mask[part], Batch(xl[part], yl[part])), info)).loss
    whole = loss(slice(0, 6))
    shared = loss(slice(0, 2)) * 2 / 6 + loss(slice(2, 6)) * 4 / 6
    assert torch.allclose(whole, shared, rtol=1e-5), (whole, shared)


def test_m1_m2_leaves_the_minibatchs_labelled_images_out_of_u(monkeypatch):
    """M1+M2 hands M2 the codes with the minibatch's labels and mask: U is over the unlabelled
    images' codes only, as in M2."""
    model = _stacked().float().train()
    sizes = []
    real = type(model.inner).unlabelled_bound
    monkeypatch.setattr(type(model.inner), "unlabelled_bound", lambda self, z: sizes.append(len(z)) or real(self, z))
    x, y = _binary(5).float(), torch.tensor([0, 1, 2, 0, 1])
    mask = torch.tensor([True, False, True, False, False])
    next(model.step(Batch(x, y, mask, Batch(_binary(5, seed=9).float(), y)), StepInfo(0, 0, 10, 1000, labels=10)))
    assert sizes == [3]


def test_a_batch_without_a_labelled_part_is_refused():
    model = _tiny().float().train()
    with pytest.raises(VaelabError, match="labelled part"):
        next(model.step(Batch(_binary(2).float()), StepInfo(0, 0, 1, 2)))


def _run(tmp_path, name="run", **over):
    kw = {**dict(model="m2", data="digits", hidden=(32,), latent_dim=4, batch_size=64, epochs=2, nll_samples=0,
                 progress=False, device="cpu", report=False, labels=50), **over}
    return train_loop(vaelab.make_config(**kw, out=str(tmp_path / name)), log=lambda m: None)


def test_labelled_parts_hold_only_the_runs_labels_and_resume_is_exact(tmp_path, monkeypatch):
    seen = []
    real = M2.step

    def spy(self, batch, info):
        seen.append((batch.labelled_part.y.clone(), len(batch.labelled_part), len(batch), info.labels))
        yield from real(self, batch, info)
    monkeypatch.setattr(M2, "step", spy)
    full = _run(tmp_path, "full", epochs=2)
    # as many as the minibatch (50 labels: shuffled copies of them), every one a kept label
    assert seen and all((y >= 0).all() and n_l == n and labels == 50 for y, n_l, n, labels in seen)
    assert all(len(set(y.tolist())) > 1 for y, *_ in seen)  # drawn across the classes
    monkeypatch.setattr(M2, "step", real)
    half = _run(tmp_path, "half", epochs=1)
    train_loop(vaelab.make_config(model="m2", data="digits", hidden=(32,), latent_dim=4, batch_size=64, epochs=2,
                                  nll_samples=0, progress=False, device="cpu", report=False, labels=50),
               resume=half, log=lambda m: None)
    from safetensors.torch import load_file
    a, b = load_file(str(full / "model.safetensors")), load_file(str(half / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_reports_the_classifiers_accuracy_and_probe_reads_the_codes(tmp_path):
    run = _run(tmp_path, epochs=1)
    res = vaelab.evaluate(run, k=2, sample_metrics=False)
    model = vaelab.load(run, device="cpu")
    x, y = vaelab.api.split_inputs(run, "test")
    with torch.no_grad():  # a direct count of the classifier's most probable class
        want = (model.class_logits(x).argmax(-1) == y).double().mean().item()
    assert res["classifier_accuracy"] == pytest.approx(want) and res["classifier_error"] == pytest.approx(1 - want)
    assert res["nll"] > 0
    from vaelab.evaluation.probe import linear_probe
    probe = linear_probe(run, 50, model=model)
    assert probe["latent_dim"] == 4 + 10 and probe["accuracy"] > 0.2, probe  # chance is 0.1: 0.31 here


def test_m2_needs_labelled_data(tmp_path):
    import numpy as np
    path = tmp_path / "nolabels.npy"
    np.save(path, (np.random.default_rng(0).random((40, 8, 8)) * 255).astype(np.uint8))
    with pytest.raises(VaelabError, match="learns from class labels"):
        train_loop(vaelab.make_config(model="m2", data="array", data_path=str(path), hidden=(8,), latent_dim=2,
                                      batch_size=8, epochs=1, nll_samples=0, progress=False, report=False,
                                      out=str(tmp_path / "r")), log=lambda m: None)
    assert not (tmp_path / "r" / "config.json").exists()


def test_metrics_json_of_m2_logs_its_terms(tmp_path):
    run = _run(tmp_path, epochs=1)
    rec = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["val_name"] == "bound" and {"train_bound", "train_labelled_elbo", "train_class_loss"} <= set(rec)


def test_each_epoch_records_the_classifiers_validation_accuracy(tmp_path):
    """Logged, not selected on: the last epoch's figure is a direct count of the last checkpoint's
    most probable class on the validation split."""
    run = _run(tmp_path, epochs=2)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    model = vaelab.load(run, "last", device="cpu")
    x, y = vaelab.api.split_inputs(run, "val")
    with torch.no_grad():
        want = (model.class_logits(x).argmax(-1) == y).double().mean().item()
    assert len(recs) == 2 and all(0 <= r["val_classifier_accuracy"] <= 1 for r in recs)
    assert recs[-1]["val_classifier_accuracy"] == pytest.approx(want)
    assert recs[-1]["val_classifier_error"] == pytest.approx(1 - want)


# --- M1+M2: M2 on the codes of a trained VAE ----------------------------------------------------

def _stacked(d1=1, keep=None, **kw):
    """A tiny M1+M2: M1 a VAE with a ``d1``-D z1 on 2x2 images (M2 reading the dimensions ``keep``,
    one of them), M2 a 1-D z2 and 3 classes."""
    from vaelab.config import to_dict
    from vaelab.models.vae import VAEConfig
    m1 = VAEConfig(shape=(1, 2, 2), hidden=(8,), latent_dim=d1, likelihood="bernoulli", binarize="dynamic")
    cfg = M2Config(shape=(1, 2, 2), hidden=(8,), latent_dim=1, num_classes=3, features="m1",
                   features_model=json.dumps({"model": "vae", "settings": to_dict(m1)}),
                   features_keep=None if keep is None else json.dumps(keep), **kw)
    torch.manual_seed(0)
    model = M2(cfg).double().eval()
    with torch.no_grad():
        model.inner.log_scale.fill_(-0.5)  # p(z1|y,z2) narrower than its initial std of 1
    return model


@torch.no_grad()
def exact_stacked_log_px(model, x: torch.Tensor) -> torch.Tensor:
    """log sum_y p(y) integral integral p(z2) p(z1|y,z2) p(x|z1) dz1 dz2 on a 2-D grid, z1 the one
    dimension of M1 that M2 reads and every other one 0 where M1 decodes: [B]."""
    g = torch.linspace(-10, 10, 1601, dtype=torch.float64)
    dz = (g[1] - g[0]).item()
    d1, (kept,) = model.m1.cfg.latent_dim, model.keep.tolist()
    z1 = torch.zeros(len(g), d1, dtype=torch.float64)
    z1[:, kept] = g
    log_px_z1 = model.m1.decode(z1).log_prob(x[:, None])  # [B, G1]
    log_pz2 = -0.5 * (g ** 2 + math.log(2 * math.pi))  # [G2]
    per_class = []
    for c in range(3):
        y = F.one_hot(torch.full((len(g),), c), 3).double()
        p_z1 = model.inner.decode_y(g[:, None], y)  # a Gaussian over z1 for each z2: batch [G2]
        log_p_z1 = p_z1.log_prob(g[:, None, None])  # [G1, G2]
        inner = torch.logsumexp(log_p_z1 + log_pz2, 1) + math.log(dz)  # log p(z1|y), [G1]
        per_class.append(torch.logsumexp(log_px_z1 + inner, 1) + math.log(dz))  # [B]
    return torch.logsumexp(torch.stack(per_class, 1), 1) - math.log(3)


@pytest.mark.parametrize("d1, keep", [(1, None), (3, [1])], ids=["every-dimension", "one-of-three"])
def test_stacked_nll_matches_the_exact_likelihood_of_x(d1, keep):
    from vaelab.models.m2 import M1M2
    model = _stacked(d1, keep)
    assert type(model) is M1M2
    x = _binary()
    exact = exact_stacked_log_px(model, x)
    torch.manual_seed(2)
    estimate, mean_log_w = log_likelihood_is(model, x, 50000)
    assert torch.allclose(estimate, exact, atol=0.03), (estimate, exact)
    assert (mean_log_w <= exact + 1e-9).all()


def test_m1_m2_trains_on_a_frozen_vae_and_records_it(tmp_path):
    from safetensors.torch import load_file
    m1 = train_loop(vaelab.make_config(model="vae", data="digits", hidden=(32,), latent_dim=6, epochs=1,
                                       nll_samples=0, progress=False, report=False, out=str(tmp_path / "m1")),
                    log=lambda m: None)
    before = load_file(str(m1 / "best.safetensors"))
    # M1's inactive units, by the std of its posterior means over the first 1,000 training images
    # (numpy's, as the authors' code); a threshold at the median leaves some out
    from vaelab.data import run_dataset
    from vaelab.data.transforms import to_unit
    ds = run_dataset(vaelab.make_config(data="digits").data)
    vae = vaelab.load(m1, device="cpu")
    with torch.no_grad():
        std = vae.encode(to_unit(ds.train.x[:1000], ds.spec.levels)).mu.double().numpy().std(0)
    threshold = float(np.sort(std)[len(std) // 2])
    kept = [i for i, s in enumerate(std) if s > threshold]
    full = _run(tmp_path, "full", features=str(m1), epochs=2, features_min_std=threshold)
    cfg = json.loads((full / "config.json").read_text())["run"]["model"]
    assert cfg["features"] == str(m1.absolute()) and json.loads(cfg["features_model"])["model"] == "vae"
    assert json.loads(cfg["features_keep"]) == kept and 0 < len(kept) < len(std)
    assert vaelab.load(full, device="cpu").inner.cfg.shape == (len(kept),)
    weights = load_file(str(full / "model.safetensors"))
    assert all(torch.equal(weights[f"m1.{k}"], v) for k, v in before.items())  # M1 copied in, and frozen
    after = load_file(str(m1 / "best.safetensors"))
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    half = _run(tmp_path, "half", features=str(m1), epochs=1, features_min_std=threshold)
    train_loop(vaelab.make_config(model="m2", data="digits", epochs=2, progress=False, device="cpu"), resume=half,
               log=lambda m: None)
    resumed = load_file(str(half / "model.safetensors"))
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    res = vaelab.evaluate(full, k=2, sample_metrics=False, save=False)
    model = vaelab.load(full, device="cpu")
    x, y = vaelab.api.split_inputs(full, "test")
    with torch.no_grad():  # q(y|x) reads M1's mean code of x
        want = (model.inner.class_logits(model.m1.encode(x).mu[:, kept]).argmax(-1) == y).double().mean().item()
    assert res["classifier_accuracy"] == pytest.approx(want) and res["nll"] > 0
    assert model.sample_class(torch.tensor([0, 1])).shape == (2, 1, 8, 8)  # images, through M1's decoder
    from vaelab.evaluation.probe import finetune
    tuned = finetune(full, 50, epochs=1, model=model)
    assert tuned["accuracy"] > 0.18 and all(p.requires_grad is False for p in model.m1.parameters()), tuned  # 0.27 here, chance 0.1


@pytest.mark.parametrize("text", ["[]", "[1, 0]", "[0, 0]", "[0, 4]", "[-1]", "[0.5]", "[true]", "{}", "x"])
def test_a_recorded_choice_of_m1_dimensions_is_checked(text):
    from vaelab.models.m2 import kept_dims
    assert kept_dims("[0, 2, 3]", 4) == [0, 2, 3] and kept_dims(None, 2) == [0, 1]
    with pytest.raises(VaelabError, match="features_keep must list distinct latent dimensions"):
        kept_dims(text, 4)


@pytest.mark.parametrize("what, said", [("missing", "--features: run directory"), ("gan", "M1 must be a vae or an iwae"),
                                        ("shape", "trained on images of shape (1, 28, 28)"),
                                        ("untrained", "has no best.safetensors: train M1 first")])
def test_features_refusals(tmp_path, what, said):
    path = tmp_path / "m1"
    if what != "missing":
        shape = [1, 28, 28] if what == "shape" else [1, 8, 8]
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"format_version": 2, "run": {
            "train": {"model": "gan" if what == "gan" else "vae"}, "model": {"shape": shape}}}))
    with pytest.raises(VaelabError, match=re.escape(said)):
        _run(tmp_path, features=str(path))


def test_fitted_samplers_draw_m2_codes(tmp_path):
    # M2's encode is over z given each class, not over its codes [mu(x, p), p]: a two-stage
    # sampler takes the codes as their own draws (it crashed on encode's [B, C, D] before)
    from vaelab.samplers import sampler_for
    run = _run(tmp_path, epochs=1)
    model = vaelab.load(run, device="cpu")
    for spec in ("two-stage", "gmm:3"):
        samples = sampler_for(run, model, spec).sample(4)
        assert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all()
