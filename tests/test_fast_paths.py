"""The fast paths of issue 7 against fp32 eager: --precision bf16|fp16, --compile and
--channels-last each give the same objective and gradient as fp32 eager on a fixed batch, for
every update of every registered model's step, within a tolerance stated per path; checkpoints
trained with them load and evaluate without them; and a training step never reads a value back
to the host.

Tolerances (relative, on the loss; on the gradient's norm of difference):
  channels_last  1e-5  1e-5   the same arithmetic, summed in another order
  compile        1e-4  1e-4   inductor fuses and reorders float32 sums (random draws as eager's)
  fp16           1e-2  3e-2   10-bit mantissas in the matrix products, float32 losses
  bf16           3e-2  5e-2   8-bit mantissas in the matrix products, float32 losses
The gradients' bounds cover every registered model in mlp and conv (measured, worst: 2.2e-2 in
fp16, the GAN generator's gradient back through both DCGAN nets at initialisation, where batch
norm rescales small activations; 3.1e-2 in bf16, the denoising autoencoder's mlp; the VAE's
were 4e-4 and 9e-3).
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import vaelab
from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.models import MODELS
from vaelab.models.base import StepInfo
from vaelab.models.vae import VAE, VAEConfig
from vaelab.training.update import FastPaths, apply_update, take_step

from labelled import fed

# the tests marked cpu_paths compare figures that depend on the CPU's float kernels: test_cpu_paths.py
# replays them on the generic kernels. The rest (whole runs that compare within one run, what a
# step reads back, refusals) hold on any kernels by construction and are not replayed.

TOL = {"channels_last": 1e-5, "compile": 1e-4, "fp16": 1e-2, "bf16": 3e-2}
# bf16's 8 bits: the worst gradient measured is infovae's (its MMD weighted 1000 against the
# reconstruction), 0.062 of the fp32 gradient's norm; the VAE's is below 0.05
TOL_GRAD = {**TOL, "fp16": 3e-2, "bf16": 8e-2}
SHAPE = (1, 16, 16)
SMALL = dict(shape=SHAPE, hidden=(64,), latent_dim=8, channels=(8, 8, 16, 16), width=8)
INFO = StepInfo(epoch=0, step=0, steps_per_epoch=10, dataset_size=160)


def _archs(name):
    """The mlp and conv architectures a registered model offers."""
    f = next((f for f in dataclasses.fields(MODELS[name].config_cls) if f.name == "arch"), None)
    return [a for a in ("mlp", "conv") if f is not None and a in f.metadata["choices"]]


def _make(name, arch, **extra):
    """A small ``name`` model on 16x16 images (only the fields its config has are set)."""
    cls = MODELS[name]
    names = {f.name for f in dataclasses.fields(cls.config_cls)}
    return cls(cls.config_cls(**{k: v for k, v in {**SMALL, "arch": arch, **extra}.items() if k in names}))


# every registered model in each of its architectures: the losses of its training step
CASES = [pytest.param(name, arch, id=f"{name}-{arch}") for name in sorted(MODELS) for arch in _archs(name)]
CONV_CASES = [c for c in CASES if c.values[1] == "conv"]


def _batch(n=16):
    return torch.bernoulli(torch.full((n, *SHAPE), 0.4), generator=torch.Generator().manual_seed(3))


def _losses_and_grads(name, arch, fast: FastPaths, x):
    """The losses of every update one training step yields (none applied, so each is of the
    initial weights) and the gradient of each with respect to all parameters."""
    torch.manual_seed(0)
    model = _make(name, arch).train()
    if fast.channels_last:
        model = model.to(memory_format=torch.channels_last)
    k = model.batches_per_step
    batch = fast.inputs(fed(model, x if k == 1 else [x] * k))
    info = dataclasses.replace(INFO, compile=fast.compiled)
    torch.manual_seed(1)  # the same noise (z, corruption, prior draws) for every path
    updates, out = model.step(batch, info), []
    params = list(model.parameters())
    while True:
        with fast.autocast():
            update = next(updates, None)
        if update is None:
            return out
        grads = torch.autograd.grad(update.loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for p, g in zip(params, grads)])
        out.append((update.optimizer, update.loss.detach(), flat))


def _close(path: str, name: str, arch: str, fast: FastPaths):
    x = _batch()
    ref = _losses_and_grads(name, arch, FastPaths(), x)
    got = _losses_and_grads(name, arch, fast, x)
    assert [r[0] for r in ref] == [g[0] for g in got] and ref  # the same updates, in the same order
    worst = (0.0, 0.0)
    for (opt, ref_loss, ref_grad), (_, loss, grad) in zip(ref, got):
        assert loss.dtype == torch.float32  # the loss is summed in float32 on every path
        rel_loss = ((loss - ref_loss).abs() / ref_loss.abs()).item()
        rel_grad = ((grad - ref_grad).norm() / ref_grad.norm()).item()
        assert rel_loss < TOL[path] and rel_grad < TOL_GRAD[path], (path, name, arch, opt, rel_loss, rel_grad)
        worst = max(worst[0], rel_loss), max(worst[1], rel_grad)
    return worst


@pytest.mark.cpu_paths
@pytest.mark.parametrize("name, arch", CASES)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_gives_the_fp32_loss_and_gradient_within_tolerance(precision, name, arch):
    rel_loss, rel_grad = _close(precision, name, arch, FastPaths(precision=precision))
    assert rel_loss > 0 or rel_grad > 0  # low precision did run: not the fp32 path again


@pytest.mark.cpu_paths
@pytest.mark.parametrize("name, arch", CONV_CASES)
def test_channels_last_gives_the_fp32_loss_and_gradient(name, arch):
    _close("channels_last", name, arch, FastPaths(channels_last=True))


@pytest.mark.cpu_paths
def test_compile_gives_the_eager_loss_and_gradient():
    import torch._inductor.config as inductor
    torch._dynamo.reset()
    with inductor.patch(fallback_random=True):  # compiled draws = eager draws
        _close("compile", TrainConfig.model, "mlp", FastPaths(compile=True))  # the default model: a compile is slow


@pytest.mark.cpu_paths
def test_fp16_step_scales_the_loss_and_skips_an_overflow():
    torch.manual_seed(0)
    model = VAE(VAEConfig(shape=SHAPE, hidden=(64,), latent_dim=8))
    opts = model.optimizers(TrainConfig())
    # a loss of ~1e2 scaled by 2^125 overflows float32 gradients: the step is dropped
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 125)
    fast = FastPaths(precision="fp16", scalers={"model": scaler})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = take_step(model, opts, _batch(), INFO, fast)
    assert m["skipped"].item() == 1 and scaler.get_scale() == 2.0 ** 124  # backed off
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    scaler.update(2.0 ** 16)
    m = take_step(model, opts, _batch(), INFO, fast)
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


def _optimizer_choices(name):
    f = next((f for f in dataclasses.fields(MODELS[name].config_cls) if f.name == "optimizer"), None)
    return f.metadata["choices"] if f is not None else [None]


# every registered model (conv where it has one), with each optimizer its config offers; k = 3
# where its config has a k (a GAN's three discriminator minibatches per step, an IWAE's samples)
HOST_CASES = [pytest.param(name, o, id=f"{name}-{o}" if o else name)
              for name in sorted(MODELS) for o in _optimizer_choices(name)]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("name, optimizer", HOST_CASES)
def test_steps_never_wait_for_the_host(precision, name, optimizer):
    torch.manual_seed(0)
    model = _make(name, _archs(name)[-1], k=3, **({"optimizer": optimizer} if optimizer else {})).train()
    opts = model.optimizers(TrainConfig())
    scalers = {n: torch.amp.GradScaler("cpu") for n in opts} if precision == "fp16" else {}
    fast = FastPaths(precision=precision, grad_clip=1.0, scalers=scalers)
    nan = torch.full((16, *SHAPE), float("nan"))
    k = model.batches_per_step
    good, bad = (_batch(), nan) if k == 1 else ([_batch()] * k, [_batch(), nan, _batch()][:k])
    with _NoHostReads():
        take_step(model, opts, fed(model, good), INFO, fast)
        m = take_step(model, opts, fed(model, bad), INFO, fast)  # the NaN guard too
    assert m["skipped"].item() == 1


# --------------------------------------------------------------------------------------------
# through the trainer: checkpoints, resume, bad input
# --------------------------------------------------------------------------------------------

TINY = dict(data="digits", hidden=(32,), latent_dim=2, batch_size=64, epochs=2, nll_samples=10, progress=False,
            lr=3e-3, report=False)
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
    from vaelab.io import read_metadata
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
    """An update masked by ``skip`` (one after a dropped update of the same step) does not move
    the loss scale, even where its own gradients overflowed; an unmasked overflow backs it off."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], fused=True)
    for skip, scale in ((torch.tensor(True), 2.0 ** 16), (None, 2.0 ** 15)):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        bad = apply_update((p * float("inf")).sum(), opt, None, scaler, skip)
        assert bad.item() == 1 and scaler.get_scale() == scale and torch.equal(p.detach(), torch.ones(3))
