"""scripts/slurm.sh (issue 16): it parses, and it hands torchrun the rendezvous taken from SLURM's
variables. Run with stand-ins for scontrol, srun and torchrun on PATH that print what they get."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm.sh"
FAKES = {
    # `scontrol show hostnames gpu[07-08]`: one host a line, as SLURM expands the list
    "scontrol": 'echo gpu07; echo gpu08',
    # srun: say what it got, then run the command after its own --flags, as on one node
    "srun": 'echo "srun $*"; while [[ "$1" == --* ]]; do shift; done; exec "$@"',
    "torchrun": 'echo "torchrun $*"',
}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def _run(tmp_path, *args, **env):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in FAKES.items():
        (bin_ / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    slurm = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
             "SLURM_JOB_NAME": "vaelab", "SLURM_GPUS_ON_NODE": "4"}
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DATA_DIR", "RUNS_DIR", "NPROC"))}
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, check=True,
                          env={**keep, **slurm, **env, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"})
    return done.stdout.splitlines()


def test_torchrun_gets_the_rendezvous_from_slurm(tmp_path):
    srun, torchrun = _run(tmp_path, "--model", "vae", "--data", "mnist", DATA_DIR="/fs/data", RUNS_DIR="/fs/runs")
    assert srun.startswith("srun --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun ")
    assert torchrun == ("torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint gpu07:29500 "
                        "--rdzv-id 4242 -m vaelab train --data-dir /fs/data --out /fs/runs/vaelab-4242 "
                        "--model vae --data mnist")


def test_ranks_a_node_and_the_port_can_be_set(tmp_path):
    torchrun = _run(tmp_path, "--out", "/fs/runs/mine", NPROC_PER_NODE="2", PORT="29999")[1]
    assert "--nproc-per-node 2 " in torchrun and "--rdzv-endpoint gpu07:29999 " in torchrun
    assert torchrun.endswith("--out /fs/runs/mine")  # the user's --out comes last: argparse keeps it


@pytest.mark.parametrize("resume", [["--resume", "/fs/runs/vaelab-4242"], ["--resume=/fs/runs/vaelab-4242"]])
def test_a_resumed_run_gets_no_out(tmp_path, resume):
    """--resume continues the run in its own folder, and vaelab refuses --out with it."""
    torchrun = _run(tmp_path, *resume, "--epochs", "60", DATA_DIR="/fs/data")[1]
    assert torchrun.endswith("-m vaelab train --data-dir /fs/data " + " ".join(resume) + " --epochs 60")
    assert "--out" not in torchrun
