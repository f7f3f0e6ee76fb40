#!/usr/bin/env bash
# The live catalogue's service benchmarks: bench_items.py (registration, a first event
# and retirement reaching two replicas; Recommend CPU with a tenth of the catalogue
# registered; Redis bytes per item), then bench_ingest.py without and with a fifth of the
# events on items registered at their first event (warmed in the consumer), alternately,
# twice, so the two are compared under the same load. Writes
# benchmarks/results/item-service-*.json. About 8 minutes on an idle 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results
python benchmarks/bench_items.py > "$out/item-service-items.json"
for round in 1 2; do
    for share in 0 0.2; do
        python benchmarks/bench_ingest.py --events 30000 --paced-seconds 10 \
            --new-item-share "$share" > "$out/item-service-ingest-$share-$round.json"
    done
done
