#!/usr/bin/env bash
# The quality benchmark: every method on ml-100k (time order) and ml-1m (seeded order),
# 3 seeds each, then the MeLU protocol on ml-1m. Writes benchmarks/eval/<name>/results.*.
# About 22 minutes on an idle 2-core CPU (ml-100k 2, ml-1m 15, MeLU protocol 5; see
# benchmarks/RESULTS.md), longer beside other work. DATA defaults to ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data}
coldstart evaluate --data "$data/ml-100k" --out benchmarks/eval/ml-100k --seeds 0,1,2
coldstart evaluate --data "$data/ml-1m" --out benchmarks/eval/ml-1m --seeds 0,1,2
coldstart evaluate --data "$data/ml-1m" --out benchmarks/eval/ml-1m-melu --seeds 0 --protocol melu
