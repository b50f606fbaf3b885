"""The fast paths of issue 7 against fp32 eager: --precision bf16|fp16, --compile and
--channels-last each give the same objective and gradient as fp32 eager on a fixed batch,
within a tolerance stated per path; checkpoints trained with them load and evaluate without
them; and a training step never reads a value back to the host.

Tolerances (relative, on the loss and on the gradient's norm of difference):
  channels_last  1e-5   the same arithmetic, summed in another order
  compile        1e-4   inductor fuses and reorders float32 sums (random draws as eager's)
  fp16           1e-2   10-bit mantissas in the matrix products, float32 losses
  bf16           3e-2   8-bit mantissas in the matrix products, float32 losses
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.errors import VaelabError
from vaelab.models.ae import AE, DAEConfig
from vaelab.models.gan import GAN, GANConfig
from vaelab.models.vae import VAE, VAEConfig
from vaelab.training.steps import (StepContext, adam, ae_objective, gan_d_objective, gan_g_objective, gan_optimizers,
                                   gan_step, vae_objective, vae_step)

TOL = {"channels_last": 1e-5, "compile": 1e-4, "fp16": 1e-2, "bf16": 3e-2}
SHAPE = (1, 16, 16)


def _models():
    """(name, model factory, objective(model, x)) for each family, mlp and conv."""
    conv = dict(arch="conv", channels=(8, 8, 16, 16))
    return {
        "vae-mlp": (lambda: VAE(VAEConfig(shape=SHAPE, hidden=(64,), latent_dim=8)),
                    lambda m, x: vae_objective(m, x, 1.0, 1)[0]),
        "vae-conv": (lambda: VAE(VAEConfig(shape=SHAPE, latent_dim=8, **conv)),
                     lambda m, x: vae_objective(m, x, 1.0, 1)[0]),
        "vae-iwae": (lambda: VAE(VAEConfig(shape=SHAPE, hidden=(64,), latent_dim=8)),
                     lambda m, x: vae_objective(m, x, 1.0, 5)[0]),
        "dae-conv": (lambda: AE(DAEConfig(shape=SHAPE, latent_dim=8, corruption="gaussian:0.3", **conv)),
                     lambda m, x: ae_objective(m, x)[0]),
        "gan-d-conv": (lambda: GAN(GANConfig(shape=SHAPE, arch="conv", width=8, latent_dim=8)),
                       lambda m, x: gan_d_objective(m, x)[0]),
        "gan-g-mlp": (lambda: GAN(GANConfig(shape=SHAPE, hidden=(64,), latent_dim=8)),
                      lambda m, x: gan_g_objective(m, len(x))),
    }


def _batch(n=16):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=torch.Generator().manual_seed(3))


def _loss_and_grad(make, objective, ctx: StepContext, x):
    torch.manual_seed(0)
    model = make().train()
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(1)  # the same noise (z, corruption, prior draws) for every path
    loss = ctx.run(objective, model, ctx.inputs(x))
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for p, g in zip(params, grads)])
    return loss.detach(), flat


def _close(path: str, name: str, ctx: StepContext):
    make, objective = _models()[name]
    x = _batch()
    ref_loss, ref_grad = _loss_and_grad(make, objective, StepContext(), x)
    loss, grad = _loss_and_grad(make, objective, ctx, x)
    assert loss.dtype == torch.float32  # the loss is summed in float32 on every path
    rel_loss = ((loss - ref_loss).abs() / ref_loss.abs()).item()
    rel_grad = ((grad - ref_grad).norm() / ref_grad.norm()).item()
    assert rel_loss < TOL[path] and rel_grad < TOL[path], (path, name, rel_loss, rel_grad)
    return rel_loss, rel_grad


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_gives_the_fp32_loss_and_gradient_within_tolerance(precision, name):
    rel_loss, rel_grad = _close(precision, name, StepContext(precision=precision))
    assert rel_loss > 0 or rel_grad > 0  # low precision did run: not the fp32 path again


@pytest.mark.parametrize("name", ["vae-conv", "dae-conv", "gan-d-conv"])
def test_channels_last_gives_the_fp32_loss_and_gradient(name):
    _close("channels_last", name, StepContext(channels_last=True))


def test_compile_gives_the_eager_loss_and_gradient():
    import torch._inductor.config as inductor
    torch._dynamo.reset()
    with inductor.patch(fallback_random=True):  # compiled draws = eager draws
        _close("compile", "vae-mlp", StepContext(compile=True))


def test_fp16_step_scales_the_loss_and_skips_an_overflow():
    torch.manual_seed(0)
    model = VAE(VAEConfig(shape=SHAPE, hidden=(64,), latent_dim=8))
    opts = adam(model, vaelab.config.TrainConfig())
    # a loss of ~1e2 scaled by 2^125 overflows float32 gradients: the step is dropped
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 125)
    ctx = StepContext(precision="fp16", scalers={"model": scaler})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = vae_step(model, opts, _batch(), ctx)
    assert m["skipped"].item() == 1 and scaler.get_scale() == 2.0 ** 124  # backed off
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    scaler.update(2.0 ** 16)
    m = vae_step(model, opts, _batch(), ctx)
    assert m["skipped"].item() == 0 and not all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


class _NoHostReads:
    """Fails the test if anything reads a tensor's value on the host (``.item()``, ``bool()``,
    ``float()``, ``.tolist()``): what would make a GPU step wait."""

    def __enter__(self):
        names = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist")
        self.saved = {n: getattr(torch.Tensor, n) for n in names}

        def refuse(self_, *a, **kw):
            raise AssertionError("a training step read a tensor back to the host")
        for n in self.saved:
            setattr(torch.Tensor, n, refuse)

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_steps_never_wait_for_the_host(precision, optimizer):
    torch.manual_seed(0)
    vae = VAE(VAEConfig(shape=SHAPE, hidden=(64,), latent_dim=8))
    gan = GAN(GANConfig(shape=SHAPE, arch="conv", width=8, latent_dim=8, optimizer=optimizer)).train()
    vae_opts, gan_opts = adam(vae, vaelab.config.TrainConfig()), gan_optimizers(gan, vaelab.config.TrainConfig())
    scalers = {n: torch.amp.GradScaler("cpu") for n in ("model", "d", "g")} if precision == "fp16" else {}
    ctx = StepContext(precision=precision, grad_clip=1.0, scalers=scalers)
    bad = torch.full((16, *SHAPE), float("nan"))
    with _NoHostReads():
        vae_step(vae, vae_opts, _batch(), ctx)
        m = vae_step(vae, vae_opts, bad, ctx)                  # the NaN guard too
        g = gan_step(gan, gan_opts, [_batch(), bad, _batch()], ctx)
    assert m["skipped"].item() == 1 and g["skipped"].item() == 1


# --------------------------------------------------------------------------------------------
# through the trainer: checkpoints, resume, bad input
# --------------------------------------------------------------------------------------------

TINY = dict(data="digits", hidden=(32,), latent_dim=2, batch_size=64, epochs=2, nll_samples=10, progress=False,
            lr=3e-3)
CONV = dict(TINY, arch="conv", channels=(8, 8, 16, 16))


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def _train(tmp_path, name, **kw):
    return vaelab.train(vaelab.make_config(**kw, out=str(tmp_path / name)), log=lambda m: None)


@pytest.mark.parametrize("flags", [dict(CONV, channels_last=True), dict(TINY, compile=True)],
                         ids=["channels_last", "compile"])
def test_a_checkpoint_trained_with_a_fast_path_loads_and_evaluates_without_it(flags, tmp_path):
    import torch._inductor.config as inductor
    with inductor.patch(fallback_random=True):  # compiled draws = eager draws: the same curve
        fast = _train(tmp_path, "fast", **flags)
    plain_flags = {k: v for k, v in flags.items() if k not in ("channels_last", "compile")}
    plain = _train(tmp_path, "plain", **plain_flags)
    wf, wp = _weights(fast), _weights(plain)
    assert wf.keys() == wp.keys()  # no _orig_mod. prefixes, nothing added
    assert all(wf[k].shape == wp[k].shape and wf[k].dtype == wp[k].dtype for k in wf)
    # the run's training curve is the plain run's (the same arithmetic up to float32 rounding)
    lf, lp = ([json.loads(x)["train_loss"] for x in (r / "metrics.jsonl").read_text().splitlines()]
              for r in (fast, plain))
    assert lf == pytest.approx(lp, rel=1e-3)
    model = vaelab.load(fast)  # a plain module, contiguous weights
    assert all(p.is_contiguous() for p in model.parameters())
    res = vaelab.evaluate(fast, k=10)
    assert res["nll"] == pytest.approx(vaelab.evaluate(plain, k=10)["nll"], rel=1e-2)


@pytest.mark.parametrize("flags", [dict(CONV, channels_last=True), dict(TINY, precision="fp16"),
                                   dict(TINY, precision="bf16")], ids=["channels_last", "fp16", "bf16"])
def test_resume_is_exact_on_the_fast_paths(flags, tmp_path):
    """2 + 2 epochs == 4, bitwise: channels_last needs the optimizer's moments laid out as the
    weights after loading; fp16 needs the loss scale saved."""
    from vaelab.training.checkpoint import read_metadata
    full = _train(tmp_path, "full", **{**flags, "epochs": 4})
    half = _train(tmp_path, "half", **flags)
    if flags.get("precision") == "fp16":  # the scale moved from its start, so a fresh one would differ
        assert read_metadata(half / "resume.safetensors")["loop"]["scalers"]["model"]["scale"] != 2.0 ** 16
    vaelab.train(vaelab.make_config(**{**flags, "epochs": 4}), resume=half, log=lambda m: None)
    wa, wb = _weights(full), _weights(half)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("flags, needle", [
    (dict(channels_last=True), "--channels-last applies to conv nets"),
    (dict(log_every=0), "--log-every must be at least 1"),
    (dict(precision="fp8"), "--precision must be one of fp32, bf16, fp16"),
])
def test_fast_path_bad_input(flags, needle):
    with pytest.raises(VaelabError, match=needle):
        vaelab.make_config(**{**TINY, **flags})


def test_a_masked_step_leaves_the_loss_scale_as_it_was():
    """A step masked by ``skip`` (a GAN step after a dropped one) does not move the loss scale,
    even where its own gradients overflowed; an unmasked overflow backs it off."""
    from vaelab.training.steps import apply_update
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], fused=True)
    for skip, scale in ((torch.tensor(True), 2.0 ** 16), (None, 2.0 ** 15)):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        bad = apply_update((p * float("inf")).sum(), [p], opt, None, scaler, skip)
        assert bad.item() == 1 and scaler.get_scale() == scale and torch.equal(p.detach(), torch.ones(3))
