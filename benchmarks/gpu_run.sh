#!/usr/bin/env bash
# One prepared GPU run (issue 14), from the repository root, about 7 minutes (at most ~12: every step is under
# `timeout`, and the optional compile step comes last). Needs .gpu/omniglot-py.tar.gz (a tar of
# shared/data/omniglot-py) and torch with CUDA; no internet, papermill or Jupyter. Writes at most 10 files to $OUT, named after the GPU, for benchmarks/measured/:
#   <gpu>_device.txt, <gpu>_benchmark.csv (S1/S2 at 28 and 105, CUDA graph on and off, auto and grouped layouts,
#   a/b against the floor; batched MAML with its graph on and off),
#   <gpu>_batchnorm.csv (one per-set BatchNorm layer at 105x105, three ways),
#   <gpu>_benchmark_levers.csv (S1/S2 105x105, graph on: grouped layout with GroupedNorm, with autograd's BatchNorm
#   formula, with channels_last; vmap layout), <gpu>_benchmark_compile.csv (the same with torch.compile),
#   <gpu>_train_throughput.csv (train() it/s, S2 at 28 and 105, graph on and off),
#   <gpu>_seed_preset_comparison.csv, <gpu>_seed_vs_run.csv, <gpu>_run.log (all output).
set -x
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT" /tmp/data /tmp/work
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' '_' | sed 's/_*$//')
GPU=${GPU:-unknown_gpu}
LOG="$OUT/${GPU}_run.log"
{
  timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  timeout 30 python3 -c "import torch, torchvision; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'cudnn', torch.backends.cudnn.version(), 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/${GPU}_device.txt"

{
  timeout 30 tar xzf .gpu/omniglot-py.tar.gz -C /tmp/data && ls /tmp/data/omniglot-py

  # (c) a/b against the floor, graph on and off (anil_ms is graph on); batched MAML with its graph on and off
  timeout 120 python3 -m benchmarks.run --device cuda --sizes 28 105 --scenarios S1 S2 --cuda-graph on off \
      --anil-layouts grouped --methods maml_fo_vmap maml_so_vmap --maml-at-105 --repeats 15 --warmup 3 \
      --out /tmp/work/bench
  cp /tmp/work/bench/benchmark.csv "$OUT/${GPU}_benchmark.csv"

  # (3) per-set BatchNorm alone at conv4's first layer, 16 sets of 30 images: cuDNN over one batch (the floor's),
  # GroupedNorm, autograd's formula (passes and ms)
  timeout 60 python3 -m benchmarks.batchnorm --device cuda --sets 16 --images 30 --size 105 --repeats 20 \
      --out /tmp/work/bn
  cp /tmp/work/bn/batchnorm.csv "$OUT/${GPU}_batchnorm.csv"

  # (3a) levers for the 105x105 gap, graph on: the grouped layout (GroupedNorm, its written-out BatchNorm backward)
  # against the same layout with autograd's BatchNorm formula, with channels_last, and the vmap layout (auto)
  timeout 90 python3 -m benchmarks.run --device cuda --sizes 105 --scenarios S2 S1 --cuda-graph on \
      --anil-layouts grouped vmap --anil-levers autograd_bn channels_last --methods --repeats 15 --warmup 3 \
      --out /tmp/work/levers
  cp /tmp/work/levers/benchmark.csv "$OUT/${GPU}_benchmark_levers.csv"

  # (e) the notebook's pipeline, headless, at the seed preset (125 iterations, MAML included; issue 12)
  timeout 200 python3 -m benchmarks.seed_preset --data-root /tmp/data --cache-dir /tmp/cache --preset seed \
      --pretrained omniglot --results-dir /tmp/work/seed
  cp /tmp/work/seed/seed_preset_comparison.csv "$OUT/${GPU}_seed_preset_comparison.csv"
  cp /tmp/work/seed/seed_seed_vs_run.csv "$OUT/${GPU}_seed_vs_run.csv"

  # (d) train() throughput, sampling and logging included (the background split is decoded above)
  timeout 80 python3 -m benchmarks.train_throughput --data-root /tmp/data --cache-dir /tmp/cache --sizes 28 105 \
      --cuda-graph on off --iterations 200 --warmup 10 --out /tmp/work/tp
  cp /tmp/work/tp/train_throughput.csv "$OUT/${GPU}_train_throughput.csv"

  # CUDA tests of the graph (replay == eager for ANIL auto/grouped and MAML vmap, resume recaptures, pinned
  # batches), when pytest is installed
  python3 -c "import pytest" && OMNIGLOT_ROOT=/tmp/data timeout 60 python3 -m pytest -q -p no:cacheprovider \
      tests/test_gpu_step.py -k "replayed or pinned or resumes"

  # (3b) torch.compile of the grouped body (slowest to start: a compile per process), last so it cannot cost the rest
  timeout 240 python3 -m benchmarks.run --device cuda --sizes 105 --scenarios S2 S1 --cuda-graph on \
      --anil-layouts grouped --anil-levers compile --methods --repeats 15 --warmup 3 --out /tmp/work/compile
  cp /tmp/work/compile/benchmark.csv "$OUT/${GPU}_benchmark_compile.csv"
  ls -la "$OUT"
} 2>&1 | tee "$LOG"
