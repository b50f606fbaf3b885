"""Contract tests for every model in the registry, every architecture and a range of image
shapes: forward shapes, one training step, determinism, checkpoints, bad batches, resume and
the config conversion path. Models are tiny (latent 4, hidden 16, channels 4-8)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vaelab.config import TrainConfig, coerce
from vaelab.errors import VaelabError
from vaelab.io import load_weights, read_metadata, save_weights
from vaelab.models import MODELS
from vaelab.models.base import ENCODE, LIKELIHOOD, SAMPLE, StepInfo
from vaelab.run import make_config
from vaelab.training import checkpoint as ckpt
from vaelab.training.update import FastPaths, take_step

from labelled import as_validation, fed, given

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 28, 20)]
ARCHS = ["mlp", "conv", "linear"]
SMALL = {"latent_dim": 4, "hidden": (16,), "channels": (4, 4, 8, 8), "width": 4}
B = 3


def _archs(entry) -> list[str]:
    """The architectures a model offers (its config's ``arch`` choices)."""
    f = next((f for f in dataclasses.fields(entry.config_cls) if f.name == "arch"), None)
    return [a for a in ARCHS if f is not None and a in f.metadata["choices"]] or ["mlp"]


def _config(entry, arch, shape, **extra):
    """The model's default config with the shape, arch and small sizes set (only the fields
    that this model's config has, so a future model is covered without edits)."""
    names = {f.name for f in dataclasses.fields(entry.config_cls)}
    want = {"shape": shape, "arch": arch, **SMALL, **extra}
    return dataclasses.replace(entry.config_cls(), **{k: v for k, v in want.items() if k in names})


def _build(entry, cfg, seed=0):
    torch.manual_seed(seed)
    return entry(cfg)


def _can(entry, capability) -> bool:
    return capability in entry.capabilities


def _batch(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((B, *shape), 0.5), generator=g)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CASES = [pytest.param((name, arch, shape), id=f"{name}-{arch}-{'x'.join(map(str, shape))}")
         for name in sorted(MODELS) for arch in _archs(MODELS[name]) for shape in SHAPES]


def _case(param):
    name, arch, shape = param
    entry = MODELS[name]
    return entry, _config(entry, arch, shape), shape


@pytest.fixture(params=CASES)
def case(request):
    return _case(request.param)


# the checks of a model with an encoder distribution and a likelihood (the VAE and the IWAE today)
LIKELIHOOD_CASES = [p for p in CASES if _can(MODELS[p.values[0][0]], LIKELIHOOD)]


@pytest.fixture(params=LIKELIHOOD_CASES)
def likelihood_case(request):
    return _case(request.param)


# --------------------------------------------------------------------------------------------
# forward shapes
# --------------------------------------------------------------------------------------------

def test_forward_shapes(case):
    entry, cfg, shape = case
    model = _build(entry, cfg).eval()
    x = _batch(shape)
    if _can(entry, ENCODE):  # it reconstructs and gives codes (the features of a linear probe)
        assert model.reconstruct(x).shape == (B, *shape)
        assert model.codes(x).shape == (B, model.code_dim)
    else:
        assert not hasattr(model, "reconstruct") and not hasattr(model, "codes")
    if not _can(entry, SAMPLE):
        assert not hasattr(model, "sample")
        return
    s = model.sample(5)
    assert s.shape == (5, *shape) and torch.isfinite(s).all()
    if not _can(entry, LIKELIHOOD):
        return
    lw = model.log_weights(x, 6, **given(model, x))
    assert lw.shape == (6, B) and torch.isfinite(lw).all()
    r = model.reconstruct(x) if _can(entry, ENCODE) else s
    assert r.shape[1:] == shape
    if cfg.likelihood == "bernoulli":
        assert ((s >= 0) & (s <= 1)).all() and ((r >= 0) & (r <= 1)).all()
    if not _decodes_z(model):
        return
    d = cfg.latent_dim
    q = model.encode(x)
    assert q.mu.shape == q.logvar.shape == (B, d)
    p = model.decode(q.rsample())
    params = p.logits if hasattr(p, "logits") else p.loc
    assert params.shape == (B, *shape)
    pk = model.decode(q.rsample(2))  # leading sample dims pass through the decoder
    assert (pk.logits if hasattr(pk, "logits") else pk.loc).shape == (2, B, *shape)
    assert q.rsample().shape == (B, d)


def _decodes_z(model) -> bool:
    """Whether the decoder takes z alone, [..., latent_dim] (not [z, y]: a model of labels)."""
    return not getattr(model, "needs_labels", False)


def _decoder_width(model) -> int:
    """What the decoder takes: z [..., D], or for a model of labels [z, y] [..., D + C]."""
    return model.prior(1).shape[-1]


def test_forward_samples_z_from_the_posterior():
    # out.z = mu + sigma * eps with eps ~ N(0, I): standardised residuals over 2000 copies of
    # one input have mean 0 (within 5 s.e.) and std 1 (within 10%)
    entry = MODELS["vae"]
    model = _build(entry, _config(entry, "mlp", (1, 4, 4))).eval()
    x = _batch((1, 4, 4))[:1].repeat(2000, 1, 1, 1)
    with torch.no_grad():
        out = model(x)
    eps = (out.z - out.posterior.mu) / out.posterior.std
    assert (eps.mean(0).abs() < 5 / np.sqrt(2000)).all()
    assert ((eps.std(0) - 1).abs() < 0.1).all()


def test_decoder_leading_dims_match_per_sample_decoding(likelihood_case):
    # decoding [K, B, D] at once equals decoding each [B, D] slice (the conv decoder reshapes)
    entry, cfg, shape = likelihood_case
    model = _build(entry, cfg).eval()
    z = torch.randn(2, B, _decoder_width(model))
    with torch.no_grad():
        whole = model.decode(z).mean
        parts = torch.stack([model.decode(z[i]).mean for i in range(2)])
    torch.testing.assert_close(whole, parts, atol=1e-6, rtol=1e-5)


def test_decoder_outputs_are_unconstrained(likelihood_case):
    # the decoder's last layer has no activation: its outputs (logits, means) take both signs.
    # At initialisation the conv decoder depends only weakly on z, so z is drawn wide.
    entry, cfg, shape = likelihood_case
    model = _build(entry, cfg).eval()
    with torch.no_grad():
        p = model.decode(100 * torch.randn(256, _decoder_width(model)))
    params = p.logits if hasattr(p, "logits") else p.loc
    assert params.min() < 0 < params.max()


# --------------------------------------------------------------------------------------------
# training step
# --------------------------------------------------------------------------------------------

INFO = StepInfo(epoch=0, step=0, steps_per_epoch=10, dataset_size=30)


def _train_step(model, opts, x, fast=None):
    """One training step through the trainer's update path (a model that takes k minibatches
    a step gets k copies of x)."""
    k = model.batches_per_step
    return take_step(model, opts, fed(model, x if k == 1 else [x] * k), INFO, fast or FastPaths())


def _step(entry, model, x, fast=None, tcfg=None):
    opts = model.optimizers(tcfg or TrainConfig(lr=1e-2))
    return opts, _train_step(model, opts, x, fast)


def test_train_step_changes_weights(case):
    entry, cfg, shape = case
    model = _build(entry, cfg).train()
    before = _weights(model)
    _, m = _step(entry, model, _batch(shape))
    assert m["skipped"].item() == 0
    for k in ("loss",):
        assert m[k].shape == () and torch.isfinite(m[k]) and not m[k].requires_grad
    after = _weights(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no parameter moved"
    # every parameter that received a non-negligible gradient was updated
    for name, p in model.named_parameters():
        if p.grad is not None and p.grad.abs().max() > 1e-6:  # (a tiny one may round away)
            assert name in changed, name


def _reference_terms(model, x):
    """log p(x|z) and KL(q || p) per example for one draw of z, from torch.distributions."""
    from torch import distributions as td
    q = model.encode(x)
    z = q.rsample()
    rec = td.Bernoulli(logits=model.decode(z).logits).log_prob(x).sum((1, 2, 3))
    kl = td.kl_divergence(td.Normal(q.mu, q.std), td.Normal(0.0, 1.0)).sum(-1)
    return rec, kl


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_vae_step_reports_the_objective_it_optimises(beta):
    # recompute the loss from the same random draws (same seed, same weights) with
    # torch.distributions, independently of vaelab.losses
    entry = MODELS["vae"]
    model = _build(entry, _config(entry, "mlp", (1, 4, 4), beta=beta)).train()
    x = _batch((1, 4, 4))
    torch.manual_seed(3)
    with torch.no_grad():
        rec, kl = _reference_terms(model, x)
    torch.manual_seed(3)
    _, m = _step(entry, model, x)
    torch.testing.assert_close(m["kl"], kl.mean())
    torch.testing.assert_close(m["elbo"], (rec - kl).mean())
    torch.testing.assert_close(m["loss"], (beta * kl - rec).mean())


@pytest.mark.parametrize("arch", ARCHS)
def test_every_likelihood_model_learns_the_gaussian_scale(arch):
    # every model with a likelihood (importance samples where its config has a k) learns the
    # Gaussian's per-pixel scale
    for name, entry in sorted(MODELS.items()):
        names = {f.name for f in dataclasses.fields(entry.config_cls)}
        if not _can(entry, LIKELIHOOD) or "likelihood" not in names:
            continue
        cfg = _config(entry, arch, (1, 8, 8), likelihood="gaussian", gaussian_std=None, k=3)
        model = _build(entry, cfg).train()
        before = _weights(model)
        x = torch.rand(B, 1, 8, 8)
        _, m = _step(entry, model, x)
        assert m["skipped"].item() == 0 and torch.isfinite(m["loss"])
        after = _weights(model)
        assert "log_scale" in before and not torch.equal(before["log_scale"], after["log_scale"])


def test_val_score_does_not_change_weights(case):
    entry, cfg, shape = case
    model = _build(entry, cfg).eval()
    before = _weights(model)
    with torch.no_grad():
        s = model.validation(as_validation(model, _batch(shape)))
    assert s.shape == (B,) and torch.isfinite(s).all()
    assert _same(before, _weights(model))
    assert all(p.grad is None for p in model.parameters())


def test_determinism(case):
    entry, cfg, shape = case
    runs = []
    for _ in range(2):
        model = _build(entry, cfg, seed=123).train()
        w0 = _weights(model)
        torch.manual_seed(7)
        _, m1 = _step(entry, model, _batch(shape))
        _, m2 = _step(entry, model, _batch(shape, seed=2))
        runs.append((w0, m1, m2, _weights(model)))
    (w0a, m1a, m2a, wa), (w0b, m1b, m2b, wb) = runs
    assert _same(w0a, w0b)
    assert _same(m1a, m1b) and _same(m2a, m2b)
    assert _same(wa, wb)
    # and a different seed gives different initial weights (the check above is not vacuous)
    assert not _same(w0a, _weights(_build(entry, cfg, seed=124)))


def _took_no_step(opt) -> bool:
    """No state yet, or (a fused optimizer told to skip by found_inf) a step count of 0 and
    zero moments: the same as no step for the next one."""
    return all(v.count_nonzero() == 0 for st in opt.state.values() for v in st.values() if torch.is_tensor(v))


def test_nan_batch_is_skipped(case):
    entry, cfg, shape = case
    model = _build(entry, cfg).train()
    opts = model.optimizers(TrainConfig(lr=1e-2))
    before = _weights(model)
    x = torch.full((B, *shape), float("nan"))
    m = _train_step(model, opts, x)
    assert m["skipped"].item() == 1
    assert _same(before, _weights(model))
    assert all(_took_no_step(o) for o in opts.values())  # the optimizer took no step either
    # a good batch afterwards is taken
    m = _train_step(model, opts, _batch(shape))
    assert m["skipped"].item() == 0
    assert not _same(before, _weights(model))


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------

def test_weights_round_trip(case, tmp_path):
    entry, cfg, shape = case
    model = _build(entry, cfg, seed=1).eval()
    _step(entry, model.train(), _batch(shape))  # weights that are not the initial ones
    model.eval()
    path = tmp_path / "model.safetensors"
    save_weights(model, path, {"epoch": 3})
    assert read_metadata(path) == {"epoch": 3}
    other = _build(entry, cfg, seed=2).eval()
    assert not _same(_weights(model), _weights(other))
    load_weights(other, path)
    assert _same(_weights(model), _weights(other))
    if _can(entry, SAMPLE):
        torch.manual_seed(5)
        a = model.sample(4)
        torch.manual_seed(5)
        b = other.sample(4)
        assert torch.equal(a, b)
    if _can(entry, ENCODE):
        x = _batch(shape)
        assert torch.equal(model.reconstruct(x), other.reconstruct(x))


def _adam_state_equal(sd_a, sd_b):
    assert sd_a["state"].keys() == sd_b["state"].keys()
    for i in sd_a["state"]:
        sa, sb = sd_a["state"][i], sd_b["state"][i]
        assert sa.keys() == sb.keys()
        for k in sa:
            if torch.is_tensor(sa[k]):
                assert torch.is_tensor(sb[k]) and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), (i, k)
            else:
                assert sa[k] == sb[k], (i, k)
    assert len(sd_a["param_groups"]) == len(sd_b["param_groups"])
    for ga, gb in zip(sd_a["param_groups"], sd_b["param_groups"]):
        assert ga.keys() == gb.keys()
        for k in ga:
            va, vb = ga[k], gb[k]
            if isinstance(va, (list, tuple)):
                va, vb = list(va), list(vb)
            assert va == vb, k


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_round_trips_optimizer_state(arch, tmp_path):
    for name, entry in sorted(MODELS.items()):
        if arch not in _archs(entry):
            continue
        cfg = _config(entry, arch, (1, 8, 8))
        tcfg = TrainConfig(lr=3e-3)
        model = _build(entry, cfg).train()
        opts = model.optimizers(tcfg)
        for s in range(3):
            _train_step(model, opts, _batch((1, 8, 8), seed=s))
        rng = {"torch": torch.get_rng_state(), "data": torch.Generator().manual_seed(9).get_state()}
        ckpt.save_resume(tmp_path / f"{name}-resume.safetensors", model, opts, rng,
                         {"epoch": 2, "history": [{"a": 1.5}]})

        fresh = _build(entry, cfg, seed=99).train()
        fresh_opts = fresh.optimizers(tcfg)
        # one file restores the weights and the optimizer together
        rng2, loop = ckpt.load_resume(tmp_path / f"{name}-resume.safetensors", fresh, fresh_opts)
        assert _same(_weights(model), _weights(fresh))
        assert loop == {"epoch": 2, "history": [{"a": 1.5}]}
        assert rng2.keys() == rng.keys() and all(torch.equal(rng[k], rng2[k]) for k in rng)
        assert fresh_opts.keys() == opts.keys()
        for k in opts:
            _adam_state_equal(opts[k].state_dict(), fresh_opts[k].state_dict())
        # the next step is identical for the original and the resumed pair
        x = _batch((1, 8, 8), seed=10)
        torch.manual_seed(11)
        ma = _train_step(model, opts, x)
        torch.manual_seed(11)
        mb = _train_step(fresh, fresh_opts, x)
        assert _same(ma, mb)
        assert _same(_weights(model), _weights(fresh))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_load_weights_errors_name_the_file(name, tmp_path):
    entry = MODELS[name]
    model = _build(entry, _config(entry, "mlp", (1, 8, 8)))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x13not a safetensors file at all" * 7)
    with pytest.raises(VaelabError, match="garbage.safetensors"):
        load_weights(model, garbage)
    other = _build(entry, _config(entry, "mlp", (1, 28, 28)))
    wrong = tmp_path / "wrong-shape.safetensors"
    save_weights(other, wrong)
    with pytest.raises(VaelabError, match="wrong-shape.safetensors"):
        load_weights(model, wrong)
    with pytest.raises(VaelabError, match="missing.safetensors"):
        load_weights(model, tmp_path / "missing.safetensors")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rejected_checkpoint_leaves_model_untouched(name, tmp_path):
    entry = MODELS[name]
    model = _build(entry, _config(entry, "mlp", (1, 8, 8)), seed=0)
    # same hidden and latent sizes, other image size: only the first and last layers differ
    other = _build(entry, _config(entry, "mlp", (1, 28, 28)), seed=1)
    wrong = tmp_path / "wrong-shape.safetensors"
    save_weights(other, wrong)
    before = _weights(model)
    with pytest.raises(VaelabError):
        load_weights(model, wrong)
    assert _same(before, _weights(model))


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------

def test_make_config_defaults_and_values():
    cfg = make_config(hidden="200,200", latent_dim="3", lr="0.01", arch="conv")
    assert cfg.model.hidden == (200, 200) and cfg.model.latent_dim == 3 and cfg.model.arch == "conv"
    assert cfg.train.lr == 0.01


def test_make_config_rejects_unknown_flag():
    with pytest.raises(VaelabError, match="--no-such-flag"):
        make_config(no_such_flag=1)


def test_make_config_rejects_bad_choice():
    with pytest.raises(VaelabError, match="--arch.*transformer"):
        make_config(arch="transformer")
    with pytest.raises(VaelabError, match="--lr-schedule"):
        make_config(lr_schedule="linear")


@pytest.mark.parametrize("bad", ["200,abc", "2.5", "200,-1", "0"])
def test_make_config_rejects_bad_hidden(bad):
    with pytest.raises(VaelabError, match="--hidden"):
        make_config(hidden=bad)


def test_coerce_conversions():
    from vaelab.models.vae import VAEConfig
    assert coerce(VAEConfig, "hidden", "200,200", "flag") == (200, 200)
    assert coerce(VAEConfig, "hidden", " 300 , 100 ", "flag") == (300, 100)
    assert coerce(VAEConfig, "hidden", [64], "flag") == (64,)
    assert coerce(VAEConfig, "latent_dim", "7", "flag") == 7
    assert coerce(VAEConfig, "gaussian_std", "none", "flag") is None
    assert coerce(VAEConfig, "gaussian_std", "0.5", "flag") == 0.5
    assert coerce(TrainConfig, "progress", "off", "flag") is False
    with pytest.raises(VaelabError):
        coerce(VAEConfig, "latent_dim", 2.5, "flag")
    with pytest.raises(VaelabError):
        coerce(TrainConfig, "progress", "maybe", "flag")
