#!/usr/bin/env bash
# Data-parallel training on a SLURM cluster: srun starts one torchrun launcher on each node, each
# launcher starts one rank per GPU, and all ranks meet at a c10d rendezvous on the job's first node.
#
#   sbatch scripts/slurm.sh --model vae --data mnist --epochs 50
#   sbatch --nodes 4 --gpus-per-node 8 scripts/slurm.sh --model gan --data mnist --out /shared/runs/gan
#   sbatch scripts/slurm.sh --resume /shared/runs/gan --epochs 100     # continue it (perhaps on other nodes)
#
# The arguments are `vaelab train`'s own (given after the defaults below, so --data-dir and --out
# given here win). Activate the environment that has torch and vaelab before sbatch: the job
# inherits it (sbatch's default --export=ALL). sbatch's own flags override the #SBATCH lines.
#
# Nodes x GPUs a node. --batch-size stays the global batch: each of the nodes x GPUs ranks takes its
# share of every minibatch. One task a node: it is torchrun, which starts the ranks itself.
#SBATCH --job-name=vaelab
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

# Folders every node must see at the same path (a shared filesystem): each rank reads the dataset
# itself; rank 0 alone writes the run (checkpoints, metrics, pictures), and a resumed job, which
# may land on other nodes, reads it back.
DATA_DIR=${DATA_DIR:-/shared/data}    # one sub-folder a dataset: mnist/, cifar-10-batches-py/, ...
RUNS_DIR=${RUNS_DIR:-/shared/runs}    # the run directory: $RUNS_DIR/<job name>-<job id> unless --out
VAELAB_SRC=${VAELAB_SRC:-}            # a vaelab checkout to run from (its src/), else the installed one
# Ranks a node: its GPUs (one rank each, nccl); on CPU-only nodes give NPROC_PER_NODE (gloo, one
# thread a rank unless OMP_NUM_THREADS says otherwise).
NPROC_PER_NODE=${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
PORT=${PORT:-29500}                   # the rendezvous port on the first node

if [ -n "$VAELAB_SRC" ]; then export PYTHONPATH="$VAELAB_SRC/src${PYTHONPATH:+:$PYTHONPATH}"; fi

# The rendezvous, from SLURM's variables: the first host of the allocation (node[01-04] -> node01)
# listens on PORT; the job id names the rendezvous, so two jobs never join each other's. (sed reads
# the whole list: `head -n 1` would end scontrol by SIGPIPE, which pipefail makes fatal.)
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)

# A resumed run keeps its folder: `--resume RUN_DIR` takes no --out (vaelab refuses one with it).
# (${OUT[@]+...}: an empty array is "unbound" to set -u in bash before 4.4.)
OUT=(--out "$RUNS_DIR/${SLURM_JOB_NAME:-vaelab}-$SLURM_JOB_ID")
for arg in "$@"; do
  if [[ "$arg" == --resume || "$arg" == --resume=* ]]; then OUT=(); fi
done

# --kill-on-bad-exit: a node whose launcher fails ends the job instead of leaving the others
# waiting at a collective (they would stop at vaelab's collective timeout anyway).
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  torchrun --nnodes "$SLURM_NNODES" --nproc-per-node "$NPROC_PER_NODE" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD:$PORT" --rdzv-id "$SLURM_JOB_ID" \
    -m vaelab train --data-dir "$DATA_DIR" ${OUT[@]+"${OUT[@]}"} "$@"
