"""Keeps the cyclic garbage collector's full passes off the serving and consuming paths.

Why: once torch, grpc, kafka-python and a model are loaded, a few hundred thousand
objects are tracked, and a full collection walks every one of them with all threads
stopped. The consumer keeps each batch's decoded records alive long enough to trigger
full passes often; freezing the startup heap takes them out of every pass (the gain
is in benchmarks/RESULTS.md, Ingestion).
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
