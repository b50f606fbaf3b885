"""Run by tests/test_distributed.py under torchrun: ``ddp_cli.py OUT CMD...``, each CMD a JSON
list, one ``vaelab`` command line, run in turn as ``python -m vaelab`` runs it, every command in
the one process group (one launch, not one per command: each costs seconds of imports). Each
rank writes OUT/codes-<rank>.json, the commands' exit codes, and OUT/agree-<rank>.json, whether
at each epoch's end every rank held the same weights and buffers. The GAN's sample scores are
left out."""
import hashlib
import json
import os
import runpy
import sys
from pathlib import Path

from vaelab import distributed as dist
from vaelab.evaluation import samples
from vaelab.training import trainer

# the GAN's final evaluation scores 10,000 samples (Parzen, Fréchet): tens of seconds here, and
# the evaluation's to test, not training's
samples.sample_metrics = lambda *a, **kw: {}

agree = []
reduce_epoch = trainer._sum_over_ranks


def checked(sums, seconds, measured, *rest):
    digest = hashlib.sha256()
    for v in measured.state_dict().values():
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    agree.append(len(set(dist.all_gather_object(digest.hexdigest()))) == 1)
    return reduce_epoch(sums, seconds, measured, *rest)


trainer._sum_over_ranks = checked
codes = []
out, commands = Path(sys.argv[1]), sys.argv[2:]
for cmd in commands:
    sys.argv = ["vaelab", *json.loads(cmd)]
    try:
        runpy.run_module("vaelab", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        codes.append(e.code or 0)
rank = os.environ["RANK"]
(out / f"codes-{rank}.json").write_text(json.dumps(codes))
(out / f"agree-{rank}.json").write_text(json.dumps(agree))
