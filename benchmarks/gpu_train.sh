#!/usr/bin/env bash
# On a CUDA machine: meta-train on ml-1m on the GPU and on the CPU, same seed and
# config, keep both results as JSON in benchmarks/gpu_train.json, then run the
# trainer's GPU tests (tests/trainer/test_cuda.py, skipped in CI). Run from the
# repository root; DATA defaults to ../shared/data/ml-1m.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data/ml-1m}
out=${OUT_JSON:-benchmarks/gpu_train.json}
gpu=$(python3 benchmarks/bench_train.py --data "$data" --device cuda)
cpu=$(python3 benchmarks/bench_train.py --data "$data" --device cpu)
printf '{"cuda": %s,\n "cpu": %s}\n' "$gpu" "$cpu" | tee "$out"
python3 -m pytest -q -p no:cacheprovider tests/trainer/test_cuda.py
