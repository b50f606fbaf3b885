"""What a user sees when something goes wrong under torchrun (issue 16, review): an error one
rank alone meets is printed once, whichever rank; rank 0's own long work is waited for past
--dist-timeout; the threads a rank takes; a batch too small for each rank's part; commands that
do not run under torchrun; GPUs fewer than ranks; a failed collective's message; the group left
at exit. Two launches of 2 gloo ranks forked from this process (no imports: fractions of a
second each), each sharing its process group between the checks."""
import atexit
import json
import os
import signal
import time
from contextlib import redirect_stderr

import pytest
import torch
import torch.multiprocessing as mp

import vaelab
from vaelab import distributed
from vaelab.cli import main
from vaelab.errors import VaelabError
from vaelab.training.trainer import train as train_loop

from test_distributed import BASE
from test_distributed_eval import _free_port

TIMEOUT_S = 3  # the patient launch's --dist-timeout: rank 0's own work below takes longer


def _join(r: int, port: int) -> None:
    """This forked process as rank r of 2 on one machine, as torchrun describes it."""
    os.environ.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)


def _launch(fn, *args) -> list[dict]:
    """``fn(rank, port, out, *args)`` on 2 forked ranks; what each wrote to out/rank<r>.json."""
    out = args[0]
    mp.start_processes(fn, args=(_free_port(), *args), nprocs=2, start_method="fork")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _patient_rank(r: int, port: int, out) -> None:
    _join(r, port)
    left = []  # what setup leaves for the exit
    atexit.register = lambda fn, *a, **kw: left.append(fn) or fn
    os.sched_getaffinity = lambda pid: set(range(8))  # 8 cores, 2 ranks on this machine
    distributed.setup(torch.device("cpu"), timeout_s=TIMEOUT_S)
    res = {"threads": torch.get_num_threads()}
    distributed.setup(torch.device("cpu"), timeout_s=TIMEOUT_S, threads=1)  # --threads wins
    res["threads_given"] = torch.get_num_threads()
    t0 = time.perf_counter()
    res["from_main"] = distributed.from_main(lambda: time.sleep(TIMEOUT_S + 2) or 7)
    res["waited"] = time.perf_counter() - t0

    def read():  # a cache rank 1 alone cannot read, after rank 0 wrote it
        if distributed.rank() == 1:
            raise VaelabError("rank 1 cannot read the cache.")
        return "fitted"
    try:
        res["main_first"] = distributed.main_first(read)
    except VaelabError as e:
        res["main_first"] = [str(e), distributed.prints(e)]
    res["own_error_printed"] = distributed.prints(VaelabError("met outside together()"))
    for fn in left:
        fn()
    res["left_the_group"] = not torch.distributed.is_initialized()
    (out / f"rank{r}.json").write_text(json.dumps(res))


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    return _launch(_patient_rank, tmp_path_factory.mktemp("patient"))


def test_others_wait_for_rank_0_past_the_timeout(patient):
    """Rank 0's own work (a download, the Fréchet classifier, a sampler's fit) takes longer
    than --dist-timeout; the others wait for it in together()'s own group and get its value."""
    for res in patient:
        assert res["from_main"] == 7 and res["waited"] >= TIMEOUT_S + 2


def test_threads_under_setup(patient):
    """Without --threads a rank takes its share of the machine's cores (8 // 2), not the one
    thread torchrun's OMP_NUM_THREADS=1 leaves it (vaelab eval had that); --threads wins."""
    assert [(res["threads"], res["threads_given"]) for res in patient] == [(4, 1), (4, 1)]


def test_a_failure_on_one_rank_is_said_once(patient):
    """main_first's second phase fails on rank 1 alone: every rank stops with its message,
    which rank 0 alone prints; an error a rank meets outside together() it prints itself."""
    r0, r1 = patient
    assert r0["main_first"] == ["rank 1: rank 1 cannot read the cache.", True]
    assert r1["main_first"] == ["rank 1 cannot read the cache.", False]
    assert r0["own_error_printed"] and r1["own_error_printed"]


def test_the_group_is_left_at_exit(patient):
    assert all(res["left_the_group"] for res in patient)


def _cli_rank(r: int, port: int, out, run) -> None:
    _join(r, port)
    distributed.setup(torch.device("cpu"), timeout_s=60)  # a check that fails here ends, not hangs
    from vaelab import api
    load = api.load

    def unreadable(*a, **kw):  # a node that cannot see the run folder
        raise VaelabError(f"cannot read {run}: no such folder on this node.")
    commands = {
        "unreadable": ["eval", str(run), "-k", "2", "--no-sample-metrics"],
        "gan": ["train", "--model", "gan", "--batch-size", "3", *BASE, "--out", str(out / "gan")],
        "wae": ["train", "--model", "wae", "--batch-size", "3", *BASE, "--out", str(out / "wae")],
    }
    res = {}
    for name, argv in commands.items():
        api.load = unreadable if name == "unreadable" and r == 1 else load
        with open(out / f"err{r}", "w") as err, redirect_stderr(err):
            code = main(argv)
        res[name] = [code, (out / f"err{r}").read_text()]
    (out / f"rank{r}.json").write_text(json.dumps(res))


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """`vaelab` commands on 2 ranks, on a one-epoch VAE trained here."""
    tmp = tmp_path_factory.mktemp("cli")
    torch.set_num_threads(1)  # no thread pool of torch's running when the ranks are forked
    run = train_loop(vaelab.make_config(data="digits", hidden=(16,), latent_dim=2, epochs=1, progress=False,
                                        out=str(tmp / "run")), log=lambda m: None)
    return _launch(_cli_rank, tmp, run)


def test_a_rank_that_cannot_read_the_run_is_heard(cli):
    """`vaelab eval` where rank 1 cannot read the run: both ranks stop (exit 2), and the message
    reaches stderr once, from rank 0, naming rank 1."""
    (c0, err0), (c1, err1) = (res["unreadable"] for res in cli)
    assert c0 == c1 == 2
    assert err0.count("no such folder on this node") == 1 and err0.startswith("error: rank 1: cannot read ")
    assert err1 == ""


@pytest.mark.parametrize("model, why", [("gan", "batch norm needs two images"),
                                        ("wae", "the MMD compares pairs of codes")])
def test_too_few_images_a_rank(cli, model, why):
    """--batch-size 3 on 2 ranks leaves rank 1 one image, which batch norm (GAN) and the MMD
    (WAE, InfoVAE) cannot take: one sentence and exit 2, not a traceback or a NaN "divergence"."""
    (c0, err0), (c1, err1) = (res[model] for res in cli)
    assert (c0, c1) == (2, 2) and err1 == ""
    assert err0 == (f"error: --batch-size 3 is the global minibatch, split across the 2 ranks: it must be at "
                    f"least 4 for {model} (2 images a rank: {why}).\n")


@pytest.mark.parametrize("model", ["gan", "wae", "infovae"])
def test_one_process_batch_of_one_is_refused(model):
    with pytest.raises(VaelabError, match=rf"^--batch-size must be at least 2 for {model} \(.+\), got 1\.$"):
        vaelab.make_config(data="digits", model=model, batch_size=1)


@pytest.mark.parametrize("cmd", ["sample", "reconstruct", "probe", "datasets"])
def test_commands_that_do_not_split_are_refused_under_torchrun(cmd, monkeypatch, capsys):
    """Under torchrun N copies of them would each do the whole work and write the same files."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main([cmd] + (["runs/x"] if cmd != "datasets" else [])) == 2
    assert capsys.readouterr().err == (f"error: vaelab {cmd} runs in one process: under torchrun only train and "
                                       "eval share their work between the ranks; run it without torchrun.\n")


def test_more_ranks_than_gpus(monkeypatch):
    """LOCAL_RANK 1 on a machine with one GPU: one sentence, before torch's 'invalid device
    ordinal'."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device was reached"))
    monkeypatch.setattr(distributed, "_joined", False)
    with pytest.raises(VaelabError, match=r"^LOCAL_RANK 1: torchrun started more ranks on this machine \(2\) than "
                                          r"it has GPUs \(1\): give --nproc-per-node 1 or fewer, or --device cpu\.$"):
        distributed.setup(torch.device("cuda"), threads=torch.get_num_threads())


def test_failed_collective_messages(monkeypatch):
    """A collective that timed out or lost a peer says so; any other failure is not blamed on
    a hung rank."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")

    def fails(msg):
        def op():
            raise RuntimeError(msg)
        with pytest.raises(VaelabError) as e:
            distributed._call(op)
        return str(e.value)
    assert fails("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation") \
        .startswith("rank 1 of 2: no answer from the other ranks within --dist-timeout ")
    for closed in ("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:62602",
                   "[gloo/transport/tcp/pair.cc:598] Connection reset by peer"):
        assert fails(closed).startswith("rank 1 of 2: another rank ended 0.0 s into a collective, its connection "
                                        "closed (")
    assert fails("op.preamble.length <= op.nbytes. 8 vs 4") == \
        "rank 1 of 2: a collective between the ranks failed in torch.distributed (op.preamble.length <= op.nbytes. 8 vs 4)."


def _killed_rank(r: int, port: int, out) -> None:
    """Rank 1 is killed (SIGKILL) while rank 0 waits for it in a collective."""
    _join(r, port)
    distributed.setup(torch.device("cpu"), timeout_s=60)
    distributed.all_reduce_(torch.ones(1))  # both are up
    if r == 1:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.perf_counter()
    try:
        distributed.all_reduce_(torch.ones(1))
        said = None
    except VaelabError as e:
        said = str(e)
    (out / "rank0.json").write_text(json.dumps([said, time.perf_counter() - t0]))
    os._exit(0)  # without the group's exit handlers, which would wait for the dead rank


def test_a_killed_rank_is_said_to_have_ended(tmp_path):
    """A rank killed under torchrun was reported as "no answer within --dist-timeout 300 s" half a
    second after the kill: the other rank's connection to it closed, and that is what it says."""
    ctx = mp.start_processes(_killed_rank, args=(_free_port(), tmp_path), nprocs=2, start_method="fork", join=False)
    for p in ctx.processes:
        p.join(60)
    assert [p.exitcode for p in ctx.processes] == [0, -signal.SIGKILL]
    said, waited = json.loads((tmp_path / "rank0.json").read_text())
    assert waited < 30 and said.startswith("rank 0 of 2: another rank ended "), said
    assert "it was killed or crashed" in said and "--dist-timeout" not in said


def test_several_minibatches_a_step_need_drop_last(monkeypatch, tmp_path):
    """A step of k minibatches takes one share of the global minibatch: they must all be whole."""
    from vaelab.models.gan import GAN
    monkeypatch.setattr(GAN, "drop_last", False)
    with pytest.raises(AssertionError, match="GAN takes 2 minibatches a step: it must set drop_last"):
        train_loop(vaelab.make_config(data="digits", model="gan", k=2, hidden=(8,), epochs=1, progress=False,
                                      out=str(tmp_path / "gan")), log=lambda m: None)
