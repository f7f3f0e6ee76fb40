"""The lattice climb the step calibrations share, in two and three dimensions."""

from __future__ import annotations

from trainer.lattice import climb


def test_climbs_to_the_peak_one_axis_at_a_time() -> None:
    def value(point: tuple[int, ...]) -> float:
        return -sum((p - t) ** 2 for p, t in zip(point, (2, -1, 3), strict=True))

    assert climb(value, (0, 0, 0), 8) == (2, -1, 3)


def test_stops_at_the_reach() -> None:
    assert climb(lambda point: float(point[0] + point[1]), (0, 0), 3) == (3, 3)
