"""Keeps the cyclic garbage collector's full passes off the serving and consuming paths.

Why: once torch, grpc, kafka-python and a model are loaded, about 200,000 objects
are tracked, and a full collection walks every one of them with all threads
stopped (106 ms measured). The consumer keeps each batch's decoded records alive
long enough to trigger full passes often: freezing the startup heap took the
ingestion benchmark's consumer from 1,565 to 2,115 events/s (0.62 to 0.46 ms of
CPU per event, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collects garbage, then freezes every object left out of the collector's passes.

    Run once the process holds its model, and again after a model swap: unfreezing
    first lets the old model's reference cycles go (one full pass per deploy).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
