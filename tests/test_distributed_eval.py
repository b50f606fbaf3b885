"""`vaelab eval` split across ranks (issue 16): two gloo processes on 127.0.0.1 give the
one-process figures (the NLL, ELBO, bits/dim, reconstruction error and Fréchet distance to the
last bit, the Parzen log-likelihood to float rounding), and rank 0 alone prints and writes."""
import json
import os
import socket
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vaelab
from vaelab import distributed
from vaelab.cli import main
from vaelab.errors import VaelabError
from vaelab.evaluation import frechet, likelihood, samples
from vaelab.training.trainer import train as train_loop

FAST_CLASSIFIER = 40  # Adam steps of the Fréchet classifier (MIN_UPDATES): any classifier will do here
# 2,000 samples: two blocks of 1,000, one a rank; gmm:3: a sampler that rank 0 fits first; one
# thread, in the ranks as in the one-process reference, for the same sums
EVAL = ["-k", "30", "--samples", "2000", "--sampler", "gmm:3", "--seed", "3", "--nll-precision", "fp32",
        "--threads", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refuse():
    raise VaelabError("rank 0 refused.")


def _rank(r: int, world: int, port: int, argv: list, out: str) -> None:
    """One rank of `vaelab eval` under a torchrun-like environment: what it returned, wrote,
    printed and logged, saved as rank<r>.json in ``out``."""
    os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    frechet.MIN_UPDATES = FAST_CLASSIFIER
    from vaelab import api
    wrote, returned, work = [], [], {"nll_images": 0, "samples": 0, "feature_rows": []}
    write_json, evaluate = api.write_json, api.evaluate
    api.write_json = lambda path, doc: (wrote.append(os.path.basename(path)), write_json(path, doc))
    api.evaluate = lambda *a, **kw: returned.append(evaluate(*a, **kw)) or returned[-1]
    # the work this rank did: images of the NLL, samples drawn, rows through the classifier
    is_nll, draw, features = likelihood.log_likelihood_is, samples.draw_samples, frechet._batched

    def counted_nll(model, x, *a, **kw):
        work["nll_images"] += len(x)
        return is_nll(model, x, *a, **kw)

    def counted_draw(*a, **kw):
        out = draw(*a, **kw)
        work["samples"] += len(out[0])
        return out

    def counted_features(fn, net, x, *a):
        if getattr(fn, "__name__", "") == "features":  # not the classifier's accuracy
            work["feature_rows"].append(len(x))
        return features(fn, net, x, *a)
    likelihood.log_likelihood_is, samples.draw_samples, frechet._batched = counted_nll, counted_draw, counted_features
    with open(f"{out}/out{r}", "w") as so, open(f"{out}/err{r}", "w") as se, redirect_stdout(so), redirect_stderr(se):
        code = main(["eval", *argv])
    try:  # a user's mistake met on rank 0 alone is raised on every rank, not waited for
        distributed.from_main(_refuse)
        refused = None
    except VaelabError as e:
        refused = str(e)
    dist.destroy_process_group()
    with open(f"{out}/out{r}") as so, open(f"{out}/err{r}") as se:
        doc = {"code": code, "returned": returned, "wrote": wrote, "stdout": so.read(), "stderr": se.read(),
               "refused": refused, "work": work}
    with open(f"{out}/rank{r}.json", "w") as f:
        json.dump(doc, f)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A VAE on the bundled digits, one epoch (seconds), and a classifier cache of its own so that
    rank 0 trains the Fréchet classifier while the other rank waits."""
    tmp = tmp_path_factory.mktemp("ddp-eval")
    # one thread, as the ranks and the one-process reference (conftest): no thread pool of
    # torch's running when the ranks are forked, and the same sums
    torch.set_num_threads(1)
    mp_ = pytest.MonkeyPatch()
    mp_.setenv("VAELAB_CACHE", str(tmp / "cache"))  # the spawned ranks inherit it
    # the training loop alone: checkpoints and config, without the final evaluation and pictures
    out = train_loop(vaelab.make_config(data="digits", hidden=(16,), latent_dim=2, epochs=1, progress=False,
                                        out=str(tmp / "run")), log=lambda m: None)
    yield out
    mp_.undo()


@pytest.fixture(scope="module")
def ranks(run, tmp_path_factory):
    """Two gloo ranks of `vaelab eval` on the run (one launch shared by the tests below), forked:
    they start with torch imported (spawned, each would import it again: seconds)."""
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_rank, args=(2, _free_port(), [str(run), *EVAL], str(out)), nprocs=2, start_method="fork")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_ranks_give_the_one_process_figures(run, ranks, capsys, monkeypatch):
    monkeypatch.setattr(frechet, "MIN_UPDATES", FAST_CLASSIFIER)  # (it reads rank 0's cached classifier)
    assert main(["eval", str(run), *EVAL]) == 0
    one = json.loads(capsys.readouterr().out)
    r0, r1 = (r["returned"][0] for r in ranks)
    assert r0 == r1  # every rank returns the same dict
    timing = {"samples_per_s"}
    rounding = {"parzen_ll", "parzen_se"}  # the ranks' log-sums merged by a logsumexp over the ranks
    assert {k: v for k, v in r0.items() if k not in timing | rounding} == \
        {k: v for k, v in one.items() if k not in timing | rounding}  # nll, elbo, bpd, mse, frechet: exactly
    for k in rounding:
        assert r0[k] == pytest.approx(one[k], rel=1e-12, abs=0)
    assert r0["parzen_samples"] == 2000 and r0["samples_per_s"] > 0
    assert {"nll", "elbo", "bpd", "kl", "mse", "parzen_ll", "frechet"} <= set(r0)


def test_the_ranks_share_the_work(run, ranks):
    """Blocks of 100 test images for the NLL (360: 200 and 160), of 1,000 samples (one each), and
    whole batches of 500 images through the classifier: the 360 test images (one batch) on rank 0,
    and each rank's own samples."""
    w0, w1 = (r["work"] for r in ranks)
    assert (w0["nll_images"], w1["nll_images"]) == (200, 160)
    assert (w0["samples"], w1["samples"]) == (1000, 1000)
    assert w0["feature_rows"] == [360, 1000] and w1["feature_rows"] == [1000]


def test_rank_0_alone_writes_prints_and_logs(run, ranks):
    r0, r1 = ranks
    assert r0["code"] == r1["code"] == 0
    assert r0["wrote"] == ["eval-test-best-k30-gmm-3-n2000-seed3.json"] and r1["wrote"] == []
    assert json.loads(r0["stdout"]) == r0["returned"][0]
    assert "NLL path" in r0["stderr"] and "feature classifier for digits: training" in r0["stderr"]
    assert r1["stdout"] == "" and r1["stderr"] == ""
    assert r0["refused"] == r1["refused"] == "rank 0 refused."


def test_too_few_samples_for_the_ranks_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    samples.check_samples(2001, (1, 8, 8))
    with pytest.raises(VaelabError, match=r"--samples 2000 is fewer than one block of 1000 for each of the 3 "
                                          r"processes; give at least 2001 or run fewer\."):
        samples.check_samples(2000, (1, 8, 8))
