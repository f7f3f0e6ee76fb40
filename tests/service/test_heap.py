"""service.heap: garbage goes before the freeze, and what is left is frozen."""

from __future__ import annotations

import gc
import weakref

from service import heap


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
