#!/usr/bin/env bash
# Meta-train on ml-1m on the GPU and on the CPU, same seed and config, and keep both
# results as JSON in benchmarks/gpu_train.json. Run from the repository root on a
# machine with CUDA; DATA defaults to ../shared/data/ml-1m.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data/ml-1m}
out=${OUT_JSON:-benchmarks/gpu_train.json}
gpu=$(python benchmarks/bench_train.py --data "$data" --device cuda)
cpu=$(python benchmarks/bench_train.py --data "$data" --device cpu)
printf '{"cuda": %s,\n "cpu": %s}\n' "$gpu" "$cpu" | tee "$out"
