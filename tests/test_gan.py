"""The GAN: the game's losses against closed forms, Algorithm 1 counted step by step, each
player's step isolated from the other's, exact resume, pictures and bad input."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vaelab
from vaelab.cli import main
from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.images import label_margins, save_grid
from vaelab.losses import discriminator_loss, generator_loss
from vaelab.models import MODELS
from vaelab.models.base import SAMPLE, StepInfo
from vaelab.models.gan import GAN, GANConfig, conv_plan
from vaelab.training.trainer import _steps
from vaelab.training.update import FastPaths, take_step

TINY = dict(data="digits", model="gan", hidden=(32,), latent_dim=4, batch_size=64, epochs=4, progress=False,
            report=False)


def _gan(arch="mlp", shape=(1, 8, 8), **kw):
    torch.manual_seed(0)
    return GAN(GANConfig(shape=shape, arch=arch, hidden=(16,), width=4, latent_dim=3, **kw)).train()


def gan_step(model, opts, xs):
    """One training step (Algorithm 1's iteration) through the trainer's update path."""
    return take_step(model, opts, xs, StepInfo(epoch=0, step=0, steps_per_epoch=10, dataset_size=640), FastPaths())


# --------------------------------------------------------------------------------------------
# the game's losses
# --------------------------------------------------------------------------------------------

def test_losses_against_closed_forms():
    real = torch.tensor([-3.0, -0.5, 0.0, 2.0, 40.0], dtype=torch.float64)
    fake = torch.tensor([-40.0, -1.0, 0.0, 0.7, 3.0], dtype=torch.float64)
    d_real, d_fake = 1 / (1 + np.exp(-real.numpy())), 1 / (1 + np.exp(-fake.numpy()))
    with np.errstate(divide="ignore"):
        # -(mean log D(x) + mean log(1 - D(G(z)))), computed from the probabilities (the
        # logits +-40 round D to exactly 1 or 0 in float64 only beyond 37, so these stay finite)
        want_d = -(np.log(d_real).mean() + np.log1p(-d_fake).mean())
    assert discriminator_loss(real, fake).item() == pytest.approx(want_d, rel=1e-12)
    assert generator_loss(fake, "minimax").item() == pytest.approx(np.log1p(-d_fake).mean(), rel=1e-12)
    assert generator_loss(fake, "non-saturating").item() == pytest.approx(-np.log(d_fake).mean(), rel=1e-12)
    # at the equilibrium D = 1/2 everywhere the discriminator's loss is log 4
    zero = torch.zeros(7)
    assert discriminator_loss(zero, zero).item() == pytest.approx(math.log(4))
    with pytest.raises(ValueError):
        generator_loss(fake, "wasserstein")


def test_minimax_saturates_where_non_saturating_does_not():
    # Goodfellow et al. 2014, section 3: early on D rejects samples with confidence and
    # log(1 - D(G(z))) saturates; d loss / d logit is -sigmoid(a) vs sigmoid(a) - 1
    a = torch.tensor([-8.0], requires_grad=True)
    (g_mm,) = torch.autograd.grad(generator_loss(a, "minimax"), a)
    (g_ns,) = torch.autograd.grad(generator_loss(a, "non-saturating"), a)
    assert g_mm.item() == pytest.approx(-torch.sigmoid(torch.tensor(-8.0)).item(), rel=1e-6)
    assert g_ns.item() == pytest.approx(torch.sigmoid(torch.tensor(-8.0)).item() - 1, rel=1e-6)
    assert abs(g_mm.item()) < 1e-3 < abs(g_ns.item())


# --------------------------------------------------------------------------------------------
# Algorithm 1
# --------------------------------------------------------------------------------------------

class _Spy:
    """Wraps an optimizer's step to record, at each step, the state of both players."""

    def __init__(self, opt, name, log, model):
        self.opt, self.name, self.log, self.model = opt, name, log, model
        opt.step = self._step(opt.step)

    def _step(self, real_step):
        def step(*a, **kw):
            snap = {who: ([p.detach().clone() for p in net.parameters()],
                          [None if p.grad is None else p.grad.clone() for p in net.parameters()])
                    for who, net in (("d", self.model.discriminator), ("g", self.model.generator))}
            self.log.append((self.name, "before", snap))
            out = real_step(*a, **kw)
            snap = {who: ([p.detach().clone() for p in net.parameters()],
                          [None if p.grad is None else p.grad.clone() for p in net.parameters()])
                    for who, net in (("d", self.model.discriminator), ("g", self.model.generator))}
            self.log.append((self.name, "after", snap))
            return out
        return step


def _equal(a, b):
    return all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
               for x, y in zip(a, b))


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("k", [1, 3])
def test_algorithm_1_k_discriminator_steps_then_one_generator_step(arch, k):
    model = _gan(arch)
    opts = model.optimizers(TrainConfig(lr=1e-2))
    log = []
    for name, opt in opts.items():
        _Spy(opt, name, log, model)
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    xs = [torch.rand(5, 1, 8, 8) for _ in range(k)]
    seen = []
    real_discriminate = model.discriminate
    model.discriminate = lambda x: (seen.append(x), real_discriminate(x))[1]
    m = gan_step(model, opts, xs)
    assert m["skipped"].item() == 0
    assert [e[0] for e in log[::2]] == ["d"] * k + ["g"]  # k D updates, then one G update
    # each D step saw its own data minibatch (and a fresh sample batch); the G step a fresh one
    reals = seen[0:2 * k:2]
    assert all(r is x for r, x in zip(reals, xs))
    fakes = seen[1:2 * k:2] + [seen[-1]]
    assert all(not torch.equal(a, b) for i, a in enumerate(fakes) for b in fakes[i + 1:])
    # D's steps leave G's parameters and gradients untouched: G is as it started, gradient-free
    for name, when, snap in log[:2 * k]:
        params, grads = snap["g"]
        assert _equal(params, g0) and all(g is None for g in grads)
    # G's step leaves D's parameters and gradients as D's last step left them
    d_after_last = log[2 * k - 1][2]["d"]
    for when in (2 * k, 2 * k + 1):
        assert _equal(log[when][2]["d"][0], d_after_last[0]) and _equal(log[when][2]["d"][1], d_after_last[1])
    # and G's step did move G
    assert not _equal([p.detach() for p in model.generator.parameters()], g0)
    assert all(p.grad is not None for p in model.generator.parameters())


def test_generator_step_descends_the_chosen_loss():
    # one SGD step on G with a tiny learning rate lowers the loss it reports, for both losses
    for kind in ("minimax", "non-saturating"):
        model = _gan(g_loss=kind, optimizer="sgd", momentum=0.0)
        opts = model.optimizers(TrainConfig(lr=1e-3))
        z = model.prior(64, torch.Generator().manual_seed(0))
        before = generator_loss(model.discriminate(model.generate(z)), kind).item()
        for g in opts["d"].param_groups:
            g["lr"] = 0.0  # freeze D to isolate G's descent
        for _ in range(20):
            gan_step(model, opts, torch.rand(64, 1, 8, 8))
        after = generator_loss(model.discriminate(model.generate(z)), kind).item()
        assert after < before, kind


def test_steps_groups_fresh_minibatches():
    batches = [torch.full((2,), float(i)) for i in range(14)]
    groups = list(_steps(batches, 3))
    assert len(groups) == 4 and all(len(g) == 3 for g in groups)  # the last 2 are dropped
    assert [int(b[0]) for g in groups for b in g] == list(range(12))  # each used once, in order
    assert list(_steps(batches, 1)) == batches


def test_trainer_takes_k_discriminator_steps_per_generator_step(tmp_path):
    # n minibatches of 64 per epoch; k = 3 -> n // 3 iterations, each of 3 discriminator
    # updates and one generator update; Adam's step counters (per parameter) say so
    from vaelab.data import load_dataset
    n = len(load_dataset("digits", None).train) // 64  # the last, smaller minibatch is dropped
    run = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 2, "k": 3}, out=str(tmp_path / "g")),
                       log=lambda m: None)
    res = load_file(str(run / "resume.safetensors"))
    d_steps = {v.item() for k, v in res.items() if k.startswith("optim.d.") and k.endswith(".step")}
    g_steps = {v.item() for k, v in res.items() if k.startswith("optim.g.") and k.endswith(".step")}
    assert n % 3 != 0  # (so the dropped remainder is exercised)
    assert d_steps == {2 * 3 * (n // 3)} and g_steps == {2 * (n // 3)}


def test_prior_and_fixed_noise():
    m = _gan(prior="uniform")
    z = m.prior(20000)
    assert z.min() >= -1 and z.max() <= 1 and abs(z.mean()) < 0.02 and abs(z.var() - 1 / 3) < 0.02
    m = _gan(prior="normal")
    z = m.prior(20000)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    # a private generator draws the same batch again and leaves the global RNG alone
    state = torch.get_rng_state()
    a = m.prior(4, torch.Generator().manual_seed(1))
    b = m.prior(4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("shape, plan", [((1, 28, 28), (2, 7, 7)), ((3, 32, 32), (3, 4, 4)),
                                         ((3, 64, 64), (4, 4, 4)), ((1, 28, 20), (2, 7, 5))])
def test_dcgan_nets_are_derived_from_the_shape(shape, plan):
    assert conv_plan(shape) == plan
    m = GAN(GANConfig(shape=shape, arch="conv", width=8, latent_dim=5)).eval()
    x = m.sample(3)
    assert x.shape == (3, *shape) and (x >= 0).all() and (x <= 1).all()
    assert m.discriminate(x).shape == (3,)
    assert m.decode_mean(torch.randn(2, 3, 5)).shape == (2, 3, *shape)  # leading dims pass through
    n_convt = sum(isinstance(mod, torch.nn.ConvTranspose2d) for mod in m.generator.modules())
    assert n_convt == plan[0]
    with pytest.raises(VaelabError, match="--arch mlp"):
        conv_plan((1, 7, 7))


def test_learning_rates_of_the_two_players():
    m = _gan(d_lr=1e-3)
    opts = m.optimizers(TrainConfig(lr=2e-4))
    assert opts["d"].param_groups[0]["lr"] == 1e-3 and opts["g"].param_groups[0]["lr"] == 2e-4
    assert opts["g"].param_groups[0]["betas"] == (0.5, 0.999)
    m = _gan(optimizer="sgd", momentum=0.7)
    opts = m.optimizers(TrainConfig(lr=0.1))
    assert isinstance(opts["d"], torch.optim.SGD) and opts["g"].param_groups[0]["momentum"] == 0.7
    cfg = vaelab.make_config(model="gan")  # the model's own defaults: DCGAN's rate, grey levels
    assert cfg.train.lr == 2e-4 and cfg.model.binarize == "none"
    assert vaelab.make_config(model="gan", lr=1e-3).train.lr == 1e-3


# --------------------------------------------------------------------------------------------
# the training loop: resume, pictures, the game's record
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_resume_is_exact_for_both_players(arch, tmp_path):
    if arch == "conv" and torch.cuda.is_available():
        pytest.skip("on a GPU, cuDNN's transposed-convolution backward is not bitwise deterministic")
    base = {**TINY, "arch": arch, "k": 2}  # batch norm buffers and two optimizers
    if arch == "conv":
        del base["hidden"]
        base["width"] = 4
    full = vaelab.train(vaelab.make_config(**base, out=str(tmp_path / "full")), log=lambda m: None)
    half = vaelab.train(vaelab.make_config(**{**base, "epochs": 2}, out=str(tmp_path / "half")),
                        log=lambda m: None)
    vaelab.train(vaelab.make_config(**base), resume=half, log=lambda m: None)
    a = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (half / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for key in ("train_d_loss", "train_g_loss", "train_d_real", "train_d_fake", "val"):
            assert ra[key] == rb[key], key
    wa, wb = load_file(str(full / "model.safetensors")), load_file(str(half / "model.safetensors"))
    assert wa.keys() == wb.keys() and any(k.endswith("running_mean") for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert torch.equal(wa[next(iter(wa))], load_file(str(full / "best.safetensors"))[next(iter(wa))])


def test_gan_run_records_the_game_and_draws_its_progress(tmp_path):
    run = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 3}, out=str(tmp_path / "g")), log=lambda m: None)
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for h in hist:
        assert 0 < h["train_d_real"] < 1 and 0 < h["train_d_fake"] < 1 and 0 < h["val"] < 1
        assert h["train_loss"] == h["train_d_loss"] and math.isfinite(h["train_g_loss"])
    grids = sorted((run / "progress").glob("epoch-*.png"))
    assert [g.name for g in grids] == ["epoch-0001.png", "epoch-0002.png", "epoch-0003.png"]
    # the progress strip holds the first row of each epoch's 8x8 grid of 8x8 digits drawn 4x, each
    # labelled with its epoch on the left
    with Image.open(run / "progress.png") as im:
        strip = np.asarray(im)
    assert strip.shape[0] == 3 * 36 and strip.shape[1] > 8 * 34 + 2 + 40
    first_rows = [np.asarray(Image.open(g))[:36] for g in grids]
    assert np.array_equal(strip[:, -(8 * 34 + 2):], np.concatenate(first_rows))
    assert (strip[:, :40] < 128).any()  # ink: the labels
    for name in ("game.png", "samples.png", "interpolation.png", "curves.png"):
        assert (run / name).is_file(), name
    assert not (run / "reconstructions.png").exists()
    # the fixed noise batch gives the same grid when drawn again from the final weights
    model = vaelab.load(run, "last")
    again = save_grid(model.epoch_grid(), tmp_path / "again.png", nrow=8)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(grids[-1])))


def test_gan_bad_input(tmp_path, capsys):
    def fails(args, *needles):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err and all(n in err for n in needles), err

    common = ["train", "--model", "gan", "--data", "digits", "--no-progress"]
    fails([*common, "--k", "0"], "--k")
    fails([*common, "--k", "50", "--out", str(tmp_path / "k")], "--model gan takes 50 minibatches")
    assert not (tmp_path / "k").exists()  # nothing written
    fails([*common, "--beta", "0.5"], "--beta", "gan")
    fails([*common, "--iw-samples", "5"], "--iw-samples")
    fails([*common, "--g-loss", "wasserstein"], "--g-loss")
    fails([*common, "--beta1", "1.5"], "--beta1")
    fails([*common, "--d-lr", "-1"], "--d-lr")
    fails(["train", "--model", "vae", "--data", "digits", "--k", "3"], "--k", "does not apply")
    run = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 1}, out=str(tmp_path / "g")), log=lambda m: None)
    for cmd in ("reconstruct", "probe", "finetune"):
        fails([cmd, str(run)], "no encoder", cmd)
    assert main(["interpolate", str(run), "-o", str(tmp_path / "i.png"), "--pairs", "2", "--steps", "5"]) == 0
    top = label_margins(10, (8, 8), 5, col_labels=["0"])[1]  # the steps labelled above the columns
    with Image.open(tmp_path / "i.png") as im:
        assert im.size == (5 * 34 + 2, 2 * 34 + 2 + top) and top > 0


def test_gan_is_registered_with_what_it_can_do():
    cls = MODELS["gan"]
    assert cls is GAN and cls.config_cls is GANConfig
    assert cls.capabilities == {SAMPLE} and cls.higher_is_better is None  # no encoder, no likelihood
    assert GAN(GANConfig(k=5, hidden=(8,), latent_dim=2)).batches_per_step == 5


def test_a_dropped_step_leaves_no_trace_and_the_steps_before_it_stand():
    model = _gan("conv")  # batch norm in both nets
    opts = model.optimizers(TrainConfig(lr=1e-2))
    d0 = [p.detach().clone() for p in model.discriminator.parameters()]
    g0 = [p.detach().clone() for p in model.generator.parameters()]
    good, bad = torch.rand(4, 1, 8, 8), torch.full((4, 1, 8, 8), float("nan"))
    after_good = {}

    def spy(real_step):
        def step(*a, **kw):
            out = real_step(*a, **kw)
            # the state after the first (good) step; a fused step is called for the bad one too
            after_good.setdefault("bufs", {k: v.clone() for k, v in model.state_dict().items()})
            return out
        return step
    opts["d"].step = spy(opts["d"].step)
    m = gan_step(model, opts, [good, bad])
    assert m["skipped"].item() == 1
    assert not _equal([p.detach() for p in model.discriminator.parameters()], d0)  # the first D step stands
    assert all(s["step"].item() == 1 for s in opts["d"].state.values())             # one D step, no second
    assert all(s["step"].item() == 0 for s in opts["g"].state.values())             # no G step
    assert _equal([p.detach() for p in model.generator.parameters()], g0)
    now = model.state_dict()  # the NaN pass's batch-norm statistics were restored
    assert all(torch.equal(now[k], v) for k, v in after_good["bufs"].items())


def test_a_one_image_last_minibatch_is_dropped(tmp_path):
    from vaelab.data import load_dataset
    n = len(load_dataset("digits", None).train)
    bs = next(b for b in range(300, 400) if n % b == 1)  # the last minibatch would hold one image
    run = vaelab.train(vaelab.make_config(**{**TINY, "epochs": 1, "batch_size": bs}, out=str(tmp_path / "g")),
                       log=lambda m: None)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["skipped_steps"] == 0


@pytest.mark.parametrize("flags, needle", [
    (dict(arch="conv", dropout=0.3), "--dropout applies with --arch mlp"),
    (dict(arch="conv", hidden="64"), "--hidden applies with --arch mlp"),
    (dict(width=32), "--width applies with --arch conv"),
    (dict(momentum=0.9), "--momentum applies with --optimizer sgd"),
    (dict(optimizer="sgd", beta1=0.9), "--beta1 applies with --optimizer adam"),
    (dict(batch_size=1), "--batch-size must be at least 2"),
])
def test_gan_options_that_nothing_would_read_are_errors(flags, needle):
    with pytest.raises(VaelabError, match=needle):
        vaelab.make_config(model="gan", **flags)


def _state(model, opts):
    out = {f"m.{k}": v.clone() for k, v in model.state_dict().items()}
    for name, o in opts.items():
        for i, st in enumerate(o.state.values()):
            out.update({f"{name}.{i}.{k}": v.clone() for k, v in st.items() if torch.is_tensor(v)})
    return out


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_dropped_iteration_changes_nothing_the_next_one_sees(optimizer):
    """A NaN minibatch, then a good one == the good one alone, bitwise: weights, batch-norm
    statistics and optimizer state (fused SGD's momentum included, which a dropped first step
    would otherwise leave as uninitialised memory)."""
    good, bad = torch.rand(4, 1, 8, 8), torch.full((4, 1, 8, 8), float("nan"))
    runs = []
    for batches in ([bad, good], [good]):
        model = _gan("conv", optimizer=optimizer, momentum=0.9)
        opts = model.optimizers(TrainConfig(lr=1e-2))
        for x in batches:
            torch.manual_seed(5)  # the same noise for the good iteration in both runs
            m = gan_step(model, opts, x)
        assert m["skipped"].item() == 0
        runs.append(_state(model, opts))
    a, b = runs
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        [k for k in a if not torch.equal(a[k], b[k])]
