"""Hill-climbing a lattice of step settings on a validation score.

Shared by mf_finetune's fine-tuning rule, coldstart's step calibration (a step
size and a prior strength, tuned on validation users) and the new-item step's
(a vector rate, a bias rate and a prior strength, tuned on validation items):
one lattice step at a time along one axis, stopping where no neighbour scores
higher.
"""

from __future__ import annotations

from collections.abc import Callable

Point = tuple[int, ...]


def climb(value: Callable[[Point], float], start: Point, reach: int) -> Point:
    """The first point from `start` with no better neighbour (|coordinates| <= reach).
    `value` is called repeatedly on the same points: cache it."""
    point = start
    while True:
        steps = [
            (*point[:axis], point[axis] + move, *point[axis + 1 :])
            for axis in range(len(point))
            for move in (1, -1)
        ]
        step = max((s for s in steps if max(map(abs, s)) <= reach), key=value)
        if value(step) <= value(point):
            return point
        point = step
