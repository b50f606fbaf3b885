"""Run by tests/test_distributed.py under torchrun: ``ddp_cli.py OUT CMD...``, each CMD a JSON
list, one ``vaelab`` command line, run in turn as ``python -m vaelab`` runs it, every command in
the one process group (one launch, not one per command: each costs seconds of imports). Each
rank writes OUT/codes-<rank>.json, the commands' exit codes, and OUT/agree-<rank>.json, a
[command, agreed] pair for each epoch's end: whether every rank then held the same weights and
buffers; both after each command, so a launch that dies keeps what came before. The samples'
scores, the fitted samplers and the curves are left out.

A hook of the tests, not vaelab's: with DDP_CLI_EXIT=COMMAND:STEP, rank 1 dies (os._exit(1), as
a crashed or killed node's process would) at step STEP (0-based) of command COMMAND (0-based, a
fresh run), having written the time to OUT/died-1."""
import hashlib
import json
import os
import runpy
import sys
import time
from pathlib import Path

from vaelab import api
from vaelab import distributed as dist
from vaelab.evaluation import samples
from vaelab.report import pictures
from vaelab.training import trainer

# the final evaluation of a model that samples scores 10,000 samples (Parzen, Fréchet), the
# VQ-VAE's fits a PixelCNN to draw them, and every run's curves.png takes matplotlib: tens of
# seconds here, and the evaluation's and the pictures' to test, not training's (the model's own
# sample() draws the samples' picture)
samples.sample_metrics = lambda *a, **kw: {}
api.sampler_for = pictures.sampler_for = lambda run_dir, model, *a, **kw: model
pictures.plot_curves = lambda history, path, *a: Path(path)

out, commands = Path(sys.argv[1]), sys.argv[2:]
rank = os.environ["RANK"]
codes, agree = [], []
reduce_epoch, take_step = trainer._sum_over_ranks, trainer.take_step
die = [int(v) for v in os.environ["DDP_CLI_EXIT"].split(":")] if "DDP_CLI_EXIT" in os.environ else None


def checked(sums, seconds, measured, *rest):
    digest = hashlib.sha256()
    for v in measured.state_dict().values():
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    agree.append([len(codes), len(set(dist.all_gather_object(digest.hexdigest()))) == 1])
    return reduce_epoch(sums, seconds, measured, *rest)


def dying(model, optimizers, batch, info, fast):
    if rank == "1" and [len(codes), info.step] == die:
        (out / "died-1").write_text(repr(time.time()))
        os._exit(1)
    return take_step(model, optimizers, batch, info, fast)


trainer._sum_over_ranks, trainer.take_step = checked, dying
for cmd in commands:
    sys.argv = ["vaelab", *json.loads(cmd)]
    try:
        runpy.run_module("vaelab", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        codes.append(e.code or 0)
    # renamed into place: torchrun ends rank 0 when rank 1 dies, maybe while it writes here, and
    # a file cut short (it was once empty) must not stand for the commands that came before
    for name, value in (("codes", codes), ("agree", agree)):
        (out / f"{name}-{rank}.tmp").write_text(json.dumps(value))
        os.replace(out / f"{name}-{rank}.tmp", out / f"{name}-{rank}.json")
