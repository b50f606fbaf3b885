"""The importance-sampled NLL's paths (issue 14): the compiled chunk and the bf16 products give
the plain estimator's figure, the path follows the CPU's flags, and an evaluation is seeded."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from vaelab.cli import main
from vaelab.distributed import block_seed
from vaelab.errors import VaelabError
from vaelab.evaluation import likelihood as lk
from vaelab.evaluation.likelihood import NLLPath, choose_path, evaluate_likelihood
from vaelab.models.vae import VAE, VAEConfig

# figures that depend on the CPU: replayed on the generic kernels by test_cpu_paths.py
pytestmark = pytest.mark.cpu_paths


def _model(seed=0, shape=(1, 8, 8), hidden=(32, 32), latent=4):
    torch.manual_seed(seed)
    net = VAE(VAEConfig(shape=shape, hidden=hidden, latent_dim=latent, activation="tanh")).eval()
    with torch.no_grad():  # weights away from the init's small logits, so every term matters
        for p in net.parameters():
            p.mul_(3.0)
    return net


def _plain(net, x, k, seed):
    """An independent estimator with torch.distributions: blocks of NLL_BLOCK images, each with its
    draws from its own seed (block_seed), one encoder pass, chunks of chunk_size draws, log p(x|z)
    as minus the binary cross-entropy, one logsumexp over all K."""
    nll = []
    for b, i in enumerate(range(0, len(x), lk.NLL_BLOCK)):
        xb = x[i:i + lk.NLL_BLOCK]
        torch.manual_seed(block_seed(seed, b))
        mu, logvar = net.encoder(xb).chunk(2, -1)
        q, prior = Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)
        lws, chunk = [], lk.chunk_size(net, xb, k)
        for s in range(0, k, chunk):
            z = q.sample((min(chunk, k - s),))
            logits = net.decoder(z).flatten(2)
            xf = xb.flatten(1).expand_as(logits)
            lp = -F.binary_cross_entropy_with_logits(logits, xf, reduction="none").sum(-1)
            lws.append(lp + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1))
        nll.append(-(torch.logsumexp(torch.cat(lws), 0) - math.log(k)))
    return torch.cat(nll).mean().item()


@torch.no_grad()
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_fast_path_equals_a_plain_estimator_on_the_same_seed(compiled, monkeypatch):
    # blocks of 16 images (16, 16, 8 of the 40), chunks of 64 draws for 16 8x8 images, 128 for 8
    monkeypatch.setattr(lk, "NLL_BLOCK", 16)
    for name in ("CHUNK_ELEMENTS", "COMPILED_CHUNK_ELEMENTS"):
        monkeypatch.setattr(lk, name, 16 * 64 * 64)
    net = _model()
    x = (torch.rand(40, 1, 8, 8) < 0.4).float()
    k = 300
    assert lk.chunk_size(net, x[32:], k) < k  # several chunks in every block: their combination is checked too
    got = evaluate_likelihood(net, x, k, compile=compiled, precision="fp32", seed=7)
    want = _plain(net, x, k, 7)
    assert got["nll"] == pytest.approx(want, abs=1e-4)  # the same draws: rounding apart
    assert ("compiled" in got["nll_path"]) == compiled
    other = evaluate_likelihood(net, x, k, compile=compiled, precision="fp32", seed=8)
    assert abs(other["nll"] - want) > 1e-4  # another seed, other draws: the check above can fail


@torch.no_grad()
def test_bf16_products_agree_with_fp32_within_the_issues_tolerance():
    """bf16 matrix products, fp32 log-likelihoods and logsumexp: on a fixed 784-64-64-8 net
    (weights x3) the mean NLL over 64 images moves by less than 0.05 nats, the issue's bound
    (measured: 0.006), and it does move, so the bf16 path really ran."""
    net = _model(shape=(1, 28, 28), hidden=(64, 64), latent=8)
    x = (torch.rand(64, 1, 28, 28) < 0.3).float()
    fp32 = evaluate_likelihood(net, x, 50, compile=False, precision="fp32", seed=0)
    bf16 = evaluate_likelihood(net, x, 50, compile=False, precision="bf16", seed=0)
    assert "bf16" in bf16["nll_path"] and "fp32" in fp32["nll_path"]
    assert 0 < abs(bf16["nll"] - fp32["nll"]) < 0.05, (bf16["nll"], fp32["nll"])


def test_the_path_follows_the_cpu_flags_and_the_work(monkeypatch):
    monkeypatch.setattr(lk, "bf16_units", lambda: "AMX")
    p = choose_path("cpu", 10_000 * 5000)
    assert p == NLLPath("bf16", True, p.reason) and "AMX" in p.reason
    assert choose_path("cpu", 100, precision="fp32").precision == "fp32"
    monkeypatch.setattr(lk, "bf16_units", lambda: None)
    p = choose_path("cpu", 10_000 * 5000)
    assert (p.precision, p.compiled) == ("fp32", True) and "no bf16 units" in p.reason
    assert not choose_path("cpu", lk.COMPILE_MIN_SAMPLES - 1).compiled
    assert choose_path("cpu", 10, compile=True).compiled
    assert not choose_path("cpu", 10 ** 9, compile=False).compiled


def test_a_path_that_cannot_be_taken_is_refused_or_said():
    with pytest.raises(VaelabError, match="--nll-precision must be auto, fp32 or bf16"):
        choose_path("cpu", 10, precision="fp16")


def test_a_failed_compile_falls_back_to_eager_and_says_so(monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    def broken(*a, **k):
        raise TorchDynamoException("no compiler here")
    monkeypatch.setattr(lk, "_compiled_chunk", lambda: broken)
    monkeypatch.setattr(lk, "_COMPILE_FAILED", set())
    net, x, said = _model(), (torch.rand(4, 1, 8, 8) < 0.5).float(), []
    got = evaluate_likelihood(net, x, 10, compile=True, precision="fp32", log=said.append)
    want = evaluate_likelihood(net, x, 10, compile=False, precision="fp32")
    assert got["nll"] == want["nll"] and "eager" in got["nll_path"] and "failed" in said[-1]
    again = evaluate_likelihood(net, x, 10, compile=True, precision="fp32")  # not tried again
    assert "failed before" in again["nll_path"]


def test_bf16_units_reads_torch_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert lk.bf16_units() == "AVX512-BF16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert lk.bf16_units() is None


def test_eval_is_seeded_and_names_its_path(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lk, "bf16_units", lambda: None)  # the fp32 path, whatever this CPU has
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--hidden", "16", "--latent-dim", "2", "--epochs", "1",
                 "--nll-samples", "0", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    runs = []
    for seed in (0, 0, 1):
        assert main(["eval", str(out), "-k", "20", "--no-sample-metrics", "--seed", str(seed)]) == 0
        got = capsys.readouterr()
        runs.append(json.loads(got.out))
        assert "NLL path: fp32 products, eager" in got.err
    assert runs[0]["nll"] == runs[1]["nll"] != runs[2]["nll"]
    net = _model()
    state = torch.get_rng_state()
    evaluate_likelihood(net, torch.zeros(2, 1, 8, 8), 3)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left as it was
