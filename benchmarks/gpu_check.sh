#!/usr/bin/env bash
# The CUDA paths, checked on a GPU machine in one go (no install: the package runs from src/).
#   VAELAB_DATA=<folder with mnist/ and lfw3d_90.tgz> OUT=<results folder> bash benchmarks/gpu_check.sh [MINUTES]
# 1. the whole test suite with --device auto resolving to the GPU;
# 2. a VAE and a GAN on MNIST on the GPU, evaluated and resumed;
# 3. a conv VAE and a DCGAN on LFW at 64x64 for MINUTES each (default 1.5): their samples come back;
# 4. the fast paths of issue 7 on the GPU: seconds per epoch of each variant (not yet run on one).
set -uo pipefail
M=${1:-1.5}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 VAELAB_CACHE=/tmp/vaelab-cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/gpu.txt
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a $OUT/gpu.txt
timeout 240 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -15 | tee $OUT/tests.txt
v() { python3 -m vaelab.cli "$@"; }
R=/tmp/runs
v train --model vae --data mnist --preset iwae --epochs 2 --device cuda --no-progress --nll-samples 100 --out $R/vae 2>&1 | tail -3
v train --epochs 3 --device cuda --no-progress --resume $R/vae 2>&1 | tail -2
v train --model gan --data mnist --arch conv --epochs 2 --device cuda --no-progress --out $R/gan 2>&1 | grep -v '^ ' | tail -3
v train --epochs 3 --device cuda --no-progress --resume $R/gan 2>&1 | grep -v '^ ' | tail -2
F="--data lfw --image-size 64 --arch conv --binarize none --device cuda --no-progress --epochs 1000 --time-budget $M"
v train --model vae $F --channels 64,128,256,256 --latent-dim 64 --likelihood logistic-mixture --nll-samples 100 \
  --out $R/lfw-vae 2>&1 | tail -4
v train --model gan $F --out $R/lfw-gan 2>&1 | grep -v '^ ' | tail -4
for r in lfw-vae lfw-gan; do for p in samples reconstructions progress game; do
  [ -f $R/$r/$p.png ] && cp $R/$r/$p.png $OUT/$r-$p.png; done; done
for r in vae gan lfw-vae lfw-gan; do echo "== $r"; cut -c1-220 $R/$r/metrics.jsonl | tail -3; cat $R/$r/eval-test.json; done > $OUT/runs.txt
S='import json,sys; print([json.loads(l)["seconds"] for l in open(sys.argv[1])])'
for V in "" "--precision bf16" "--precision fp16" "--compile" "--precision bf16 --compile" "--channels-last false"; do
  for C in "--data mnist --preset pytorch-examples --batch-size 128" \
           "--data lfw --image-size 32 --arch conv --channels 64,128,256,256 --latent-dim 64 --binarize none --batch-size 64"; do
    v train --model vae $C --device cuda --no-progress --epochs 3 --nll-samples 0 --overwrite $V --out $R/fast \
      > /dev/null 2>&1 && echo "$C $V: s/epoch $(python3 -c "$S" $R/fast/metrics.jsonl)"
  done
done 2>&1 | tee $OUT/fast_paths.txt
