#!/usr/bin/env bash
# The quality benchmark: every method on ml-100k (time order) and ml-1m (seeded order),
# 3 seeds each, then the MeLU protocol on ml-1m. Writes benchmarks/eval/<name>/results.*.
# 20 to 50 minutes on a 2-core CPU, with its load (twelfth session: ml-100k 2, ml-1m 28,
# MeLU protocol 20, beside other work). DATA defaults to ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data}
coldstart evaluate --data "$data/ml-100k" --out benchmarks/eval/ml-100k --seeds 0,1,2
coldstart evaluate --data "$data/ml-1m" --out benchmarks/eval/ml-1m --seeds 0,1,2
coldstart evaluate --data "$data/ml-1m" --out benchmarks/eval/ml-1m-melu --seeds 0 --protocol melu
