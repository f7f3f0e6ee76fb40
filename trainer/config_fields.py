"""Checks of the config dataclasses' fields, run when a config is built.

Configs arrive from command-line flags and from artifact manifests; a bad value
(a string, a zero step count, a negative rate) is refused there with the field's
name, instead of surfacing later as a crash inside training or adaptation.
"""

from __future__ import annotations

import dataclasses
import math

_TYPES = {"int": int, "float": float, "bool": bool}  # annotations are strings here


def check_fields(config, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
    """Raises ValueError naming the first field of the wrong type or out of its range."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind = _TYPES[field.type]
        if not _is_a(value, kind):
            raise ValueError(f"{field.name} must be {kind.__name__}, got {value!r}")
        if kind is not bool and not math.isfinite(value):
            raise ValueError(f"{field.name} must be finite, got {value!r}")
        if field.name in positive and not value > 0:
            raise ValueError(f"{field.name} must be > 0, got {value!r}")
        if field.name in non_negative and not value >= 0:
            raise ValueError(f"{field.name} must be >= 0, got {value!r}")


def _is_a(value: object, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):  # bool is an int to Python, not to a config
        return kind is bool and isinstance(value, bool)
    return isinstance(value, int if kind is int else int | float)
