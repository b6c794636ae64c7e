#!/usr/bin/env bash
# One prepared GPU script (run from the repo root; expects .gpu/omniglot-py.tar.gz, a tar of shared/data/omniglot-py): seed-preset scenarios, then the benchmark suite. Copies small results to $OUT.
set -x
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" | tee -a $OUT/gpu.txt
mkdir -p /tmp/data && tar xzf .gpu/omniglot-py.tar.gz -C /tmp/data
timeout 330 python3 -m benchmarks.seed_preset --data-root /tmp/data --cache-dir /tmp/cache --maml-iterations 100 \
    --results-dir /tmp/res 2>&1 | tee $OUT/seed_preset.log
cp /tmp/res/seed_preset_comparison.csv $OUT/ 2>/dev/null
timeout 260 python3 -m benchmarks.run --sizes 105 28 --repeats 10 --warmup 3 --methods per_task seed maml_so \
    --anil-layouts loop vmap grouped \
    --out /tmp/bench 2>&1 | tee $OUT/bench.log
cp /tmp/bench/benchmark.csv /tmp/bench/benchmark.json $OUT/ 2>/dev/null
