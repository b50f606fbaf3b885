"""The adversarial autoencoder (aae) and VAE-GAN (vaegan): each player's update moves its own
weights only, the losses against binary_cross_entropy_with_logits and torch.distributions, the
feature-space reconstruction error against a hand-written forward pass, the paper's net, and
bad input."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

import vaelab
from vaelab.data import Batch
from vaelab.cli import main
from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.losses import discriminator_loss, generator_loss
from vaelab.models import MODELS
from vaelab.models.aae import AAE, AAEConfig
from vaelab.models.base import ENCODE, SAMPLE, StepInfo
from vaelab.models.vaegan import VAEGAN, VAEGANConfig, feature_nll
from vaelab.training.update import apply_update

INFO = StepInfo(epoch=0, step=0, steps_per_epoch=10, dataset_size=640)


def _aae(**kw):
    torch.manual_seed(0)
    return AAE(AAEConfig(shape=(1, 8, 8), hidden=(12,), latent_dim=3, **kw)).train()


def _vaegan(**kw):
    torch.manual_seed(0)
    return VAEGAN(VAEGANConfig(shape=(1, 8, 8), hidden=(12,), latent_dim=3, **kw)).train()


def _x(n=6, seed=1):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _bce(logits, target: float):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


# --------------------------------------------------------------------------------------------
# the players: each update moves its own parameters only
# --------------------------------------------------------------------------------------------

def _owned(model, opt):
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("make, order, owners", [
    (_aae, ["autoencoder", "discriminator", "generator"],
     {"autoencoder": ("encoder.", "decoder."), "discriminator": ("discriminator.",), "generator": ("encoder.",)}),
    (_vaegan, ["encoder", "decoder", "discriminator"],
     {"encoder": ("encoder.",), "decoder": ("decoder.",), "discriminator": ("discriminator.",)}),
])
def test_each_player_steps_only_its_own_parameters(make, order, owners):
    model = make()
    opts = model.optimizers(TrainConfig(lr=1e-2))
    params = dict(model.named_parameters())
    assert list(opts) == order
    for name, opt in opts.items():  # who owns what: the paper's split of the weights
        assert _owned(model, opt) == {n for n in params if n.startswith(owners[name])}, name
    # a sentinel gradient everywhere, so "untouched" can fail for a parameter no update owns yet
    for p in params.values():
        p.grad = torch.randn_like(p)
    seen = []
    updates = model.step(Batch(_x()), INFO)
    for update in updates:
        seen.append(update.optimizer)
        mine = _owned(model, opts[update.optimizer])
        before = {n: (p.detach().clone(), p.grad.clone()) for n, p in params.items()}
        assert apply_update(update.loss, opts[update.optimizer], None).item() == 0
        for n, p in params.items():
            if n in mine:
                continue
            assert torch.equal(p, before[n][0]) and torch.equal(p.grad, before[n][1]), (update.optimizer, n)
        assert any(not torch.equal(params[n], before[n][0]) for n in mine), update.optimizer
    assert seen == order


@pytest.mark.parametrize("make, objective, reaches", [
    (_aae, lambda m, x: m.objective(x)[0], ("encoder.", "decoder.")),                  # reconstruction phase
    (_aae, lambda m, x: m.d_objective(x)[0], ("discriminator.",)),                    # codes detached
    (_aae, lambda m, x: m.g_objective(x), ("encoder.", "discriminator.")),            # through D to the encoder
    # KL + L_llike: through the decoder and Dis's hidden layers (Dis_l), not its head
    (_vaegan, lambda m, x: m.encoder_objective(x)[0], ("encoder.", "decoder.", "discriminator.features.")),
    (_vaegan, lambda m, x: m.decoder_objective(x)[0], ("decoder.", "discriminator.")),  # z detached
    (_vaegan, lambda m, x: m.d_objective(x)[0], ("discriminator.",)),                 # fakes detached
])
def test_where_each_loss_has_a_gradient(make, objective, reaches):
    # with a plain backward (no inputs=), the nets each loss flows through; the trainer's
    # backward(inputs=...) then keeps it to the player's own
    model = make()
    objective(model, _x()).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == n.startswith(reaches), n


# --------------------------------------------------------------------------------------------
# the losses against independent computations
# --------------------------------------------------------------------------------------------

def test_game_losses_against_binary_cross_entropy():
    real = torch.tensor([-3.0, -0.5, 0.0, 2.0, 30.0], dtype=torch.float64)
    fake = torch.tensor([-30.0, -1.0, 0.0, 0.7, 3.0], dtype=torch.float64)
    more = torch.tensor([1.5, -2.0, 0.25, 4.0, -0.1], dtype=torch.float64)
    assert discriminator_loss(real, fake).item() == pytest.approx((_bce(real, 1) + _bce(fake, 0)).item(), rel=1e-12)
    assert discriminator_loss(real, fake, more).item() == pytest.approx(
        (_bce(real, 1) + _bce(fake, 0) + _bce(more, 0)).item(), rel=1e-12)
    assert generator_loss(fake, "non-saturating").item() == pytest.approx(_bce(fake, 1).item(), rel=1e-12)
    assert generator_loss(fake, "minimax").item() == pytest.approx(-_bce(fake, 0).item(), rel=1e-12)
    # D = 1/2 on one real and two fake batches: log 2 each
    zero = torch.zeros(4)
    assert discriminator_loss(zero, zero, zero).item() == pytest.approx(3 * math.log(2))


def test_aae_losses_against_binary_cross_entropy():
    model, x = _aae(), _x()
    codes = model.encoder(x)
    # reconstruction phase: the Bernoulli cross-entropy summed over pixels, mean over the batch
    want = F.binary_cross_entropy_with_logits(model.decoder(codes), x, reduction="sum") / len(x)
    assert model.objective(x)[0].item() == pytest.approx(want.item(), rel=1e-6)
    # discriminator: prior draws real (the first draw after the seed), the codes of x fake
    torch.manual_seed(5)
    loss, real_logits, fake_logits = model.d_objective(x)
    torch.manual_seed(5)
    z = torch.randn(len(x), 3)
    d = lambda t: model.discriminator(t)[0]  # noqa: E731
    assert torch.allclose(real_logits, d(z)) and torch.allclose(fake_logits, d(codes))
    assert loss.item() == pytest.approx((_bce(d(z), 1) + _bce(d(codes), 0)).item(), rel=1e-6)
    # generator (the encoder): -log D(enc(x))
    assert model.g_objective(x).item() == pytest.approx(_bce(d(codes), 1).item(), rel=1e-6)


def test_feature_nll_is_a_unit_gaussian_in_feature_space():
    g = torch.Generator().manual_seed(2)
    real, recon = (torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(2))
    want = -Normal(recon, 1.0).log_prob(real).sum(-1)
    assert torch.allclose(feature_nll(real, recon), want, rtol=1e-12)
    assert torch.allclose(feature_nll(real, real), torch.full((5,), 3.5 * math.log(2 * math.pi), dtype=torch.float64))


def _features_by_hand(model, x):
    """Dis_l by hand: 2x - 1 through the mlp discriminator's hidden Linear layers, LeakyReLU(0.2)."""
    h = 2 * x.flatten(1) - 1
    linears = [m for m in model.discriminator.modules() if isinstance(m, torch.nn.Linear)]
    for lin in linears[:-1]:
        h = F.leaky_relu(F.linear(h, lin.weight, lin.bias), 0.2)
    return h, F.linear(h, linears[-1].weight, linears[-1].bias).squeeze(-1)


@pytest.mark.parametrize("g_loss", ["non-saturating", "minimax"])
def test_vaegan_losses_against_independent_computations(g_loss):
    model, x, gamma = _vaegan(g_loss=g_loss, gamma=0.3, d_hidden=(10, 9)), _x(), 0.3
    n = len(x)
    f_real, logit_real = _features_by_hand(model, x)
    mu, logvar = model.encoder(x).chunk(2, -1)
    q = Normal(mu, torch.exp(0.5 * logvar))
    decode = lambda z: torch.sigmoid(model.decoder(z))  # noqa: E731
    # encoder: KL(q || N(0, I)) + L_llike, one z ~ q drawn after the seed
    torch.manual_seed(7)
    loss, m = model.encoder_objective(x)
    torch.manual_seed(7)
    f_rec, _ = _features_by_hand(model, decode(mu + q.scale * torch.randn(n, 3)))
    kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    llike = -Normal(f_rec, 1.0).log_prob(f_real).sum(-1)
    assert loss.item() == pytest.approx((kl + llike).mean().item(), rel=1e-5)
    assert m["kl"].item() == pytest.approx(kl.mean().item(), rel=1e-5)
    def fakes(seed):
        """(features, logits) of x~ and of decoded prior draws, drawn as the model draws them."""
        torch.manual_seed(seed)
        eps, z_p = torch.randn(n, 3), torch.randn(n, 3)
        return _features_by_hand(model, decode(mu + q.scale * eps)), _features_by_hand(model, decode(z_p))

    # decoder: gamma L_llike + the generator loss on x~ and on decoded prior draws
    torch.manual_seed(8)
    loss = model.decoder_objective(x)[0]
    (f_rec, logit_rec), (_, logit_p) = fakes(8)
    llike = -Normal(f_rec, 1.0).log_prob(f_real).sum(-1).mean()
    gan = (_bce(logit_rec, 1) + _bce(logit_p, 1) if g_loss == "non-saturating"
           else -_bce(logit_rec, 0) - _bce(logit_p, 0))
    assert loss.item() == pytest.approx((gamma * llike + gan).item(), rel=1e-5)
    # discriminator: x real, both kinds of fakes
    torch.manual_seed(9)
    loss = model.d_objective(x)[0]
    (_, logit_rec), (_, logit_p) = fakes(9)
    want = _bce(logit_real, 1) + _bce(logit_rec, 0) + _bce(logit_p, 0)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# the models as the rest of vaelab sees them
# --------------------------------------------------------------------------------------------

def test_registered_with_what_they_can_do():
    for name, cls in (("aae", AAE), ("vaegan", VAEGAN)):
        assert MODELS[name] is cls and cls.capabilities == {ENCODE, SAMPLE} and cls.normal_prior


def test_aae_paper_preset_is_the_papers_mnist_net():
    def linear(net):
        return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, torch.nn.Linear)]

    cfg = vaelab.make_config(model="aae", preset="paper").model  # as --preset paper sets it
    model = AAE(dataclasses.replace(cfg, shape=(1, 28, 28)))
    assert linear(model.encoder) == [(784, 1000), (1000, 1000), (1000, 8)]
    assert linear(model.decoder) == [(8, 1000), (1000, 1000), (1000, 784)]
    assert linear(model.discriminator) == [(8, 1000), (1000, 1000), (1000, 1)]
    acts = [type(m) for m in model.modules() if type(m).__module__ == "torch.nn.modules.activation"]
    assert acts == [torch.nn.ReLU] * 6  # two hidden layers in each of the three nets


def test_bad_input_is_one_sentence(tmp_path, capsys):
    for kw, needle in (({"code_activation": "sigmoid"}, "--code-activation"), ({"d_hidden": ()}, "--d-hidden"),
                       ({"reg_lr": 0.0}, "--reg-lr"), ({"beta1": 1.0}, "--beta1")):
        with pytest.raises(VaelabError, match=needle):
            AAEConfig(**kw).check()
    for kw, needle in (({"gamma": -1.0}, "--gamma"), ({"arch": "conv", "d_hidden": (8,)}, "--d-hidden"),
                       ({"d_lr": -1.0}, "--d-lr")):
        with pytest.raises(VaelabError, match=needle):
            VAEGANConfig(**kw).check()
    code = main(["train", "--model", "aae", "--data", "digits", "--code-activation", "relu",
                 "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--code-activation" in err and not (tmp_path / "r").exists()

