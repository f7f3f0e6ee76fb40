"""Hill-climbing a two-dimensional lattice of step settings on a validation score.

Shared by mf_finetune's fine-tuning rule and coldstart's step calibration: both
tune a step size and a prior strength on validation users, one lattice step at
a time, and stop where no neighbour scores higher.
"""

from __future__ import annotations

from collections.abc import Callable

Point = tuple[int, int]


def climb(value: Callable[[Point], float], start: Point, reach: int) -> Point:
    """The first point from `start` with no better neighbour (|coordinates| <= reach).
    `value` is called repeatedly on the same points: cache it."""
    point = start
    while True:
        i, j = point
        steps = [(i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)]
        step = max((s for s in steps if max(map(abs, s)) <= reach), key=value)
        if value(step) <= value(point):
            return point
        point = step
