#!/usr/bin/env bash
# The CUDA paths, checked on a GPU machine in one go (no install: the package runs from src/).
#   VAELAB_DATA=<folder with mnist/> OUT=<results folder> bash benchmarks/gpu_check.sh
# 1. the whole test suite with --device auto resolving to the GPU;
# 2. a VAE and a DCGAN trained on MNIST on the GPU, evaluated, resumed; epoch times recorded.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 VAELAB_CACHE=$OUT/cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a $OUT/gpu.txt
timeout 300 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -25 | tee $OUT/tests.txt
v() { python3 -m vaelab.cli "$@"; }
R=$OUT/runs
v train --model vae --data mnist --preset iwae --epochs 3 --device cuda --no-progress --nll-samples 100 --out $R/vae 2>&1 | tail -6
v train --epochs 4 --device cuda --no-progress --resume $R/vae 2>&1 | tail -3
v train --model gan --data mnist --arch conv --epochs 3 --k 1 --device cuda --no-progress --out $R/gan 2>&1 | tail -12
v train --epochs 4 --device cuda --no-progress --resume $R/gan 2>&1 | tail -3
v eval $R/vae -k 1000 --device cuda 2>&1 | tail -2
cp $R/gan/samples.png $OUT/gan_conv_samples.png 2>/dev/null; cp $R/gan/progress.png $OUT/gan_conv_progress.png 2>/dev/null
cat $R/*/metrics.jsonl | cut -c1-200 > $OUT/metrics.txt; rm -rf $R $OUT/cache
