"""service.heap: garbage goes before the freeze, and what is left is frozen."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from service import heap
from service.model import ServingModel
from tests.helpers.tiny_model import write_tiny_model
from trainer import artifact


class Node:
    link: Node | None = None


def test_settle_collects_cycles_then_freezes_what_is_left() -> None:
    cycle = Node()
    cycle.link = cycle
    gone = weakref.ref(cycle)
    kept = Node()
    del cycle
    try:
        heap.settle()
        assert gone() is None  # collected, not frozen: a swapped-out model must not leak
        assert gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects())  # frozen: out of the passes
    finally:
        gc.unfreeze()
    assert any(obj is kept for obj in gc.get_objects())


def test_a_dropped_model_is_freed_without_the_collector(tmp_path: Path) -> None:
    """A model swap settles the heap while the consumer may still hold the old model until
    its next batch, so the old model can end up frozen. That is harmless only if nothing of
    it sits in a reference cycle: reference counting alone must free it."""
    model_dir = write_tiny_model(tmp_path)
    ServingModel(artifact.load(model_dir))  # torch's first meta-device build leaves a cycle
    gc.collect()
    gc.disable()
    try:
        model = ServingModel(artifact.load(model_dir))
        vector = model.adapt([[(0, 4.0), (1, None)]])[0].numpy()  # used, as the service uses it
        assert len(model.top_k(vector, 5, exclude=[0, 1])) == 5
        parts = [model, model._model, model.tables.vectors, model.tables.rating_vectors]
        refs = [weakref.ref(part) for part in parts]
        del model, parts
        assert [ref() for ref in refs] == [None] * len(refs)
    finally:
        gc.enable()
