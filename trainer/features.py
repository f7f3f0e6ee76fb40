"""What a raw user feature value means to the model: one reading, shared by the data
loaders, evaluation, the service's RPCs and its consumer, and stored in the artifact.

A value is read as: surrounding blanks removed and case folded ("F " and "f" are one
value); for a bracketed feature such as age, a number read as the lower edge of the
bracket it falls in ("23" is "18", the bracket 18-24). The model learns one embedding
per read value; a value that reads as none it learned (or reads as nothing) is code 0,
the prior's own slot for "unknown". Training and serving then agree by construction: a
client sending the strings the data files hold gets the codes the model was trained on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

UNKNOWN = "<unk>"  # the learned value list's first entry: code 0
# MovieLens 1M's age brackets by lower edge (1: under 18); ml-100k's exact ages are read
# into them, so the feature means the same on both data sets.
AGE_BRACKETS = (1, 18, 25, 35, 45, 50, 56)


def read_value(raw: str, brackets: Sequence[int] = ()) -> str:
    """A raw value's read form; "" when it reads as nothing (blank, or not a number for a
    bracketed feature)."""
    text = raw.strip().casefold()
    if not brackets or not text:
        return text
    try:
        number = float(text)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    edge = brackets[0]
    for lower in brackets:
        if number >= lower:
            edge = lower
    return str(edge)


def describe_reading(brackets: Sequence[int] = ()) -> str:
    """How read_value reads a feature's values, in words for a client."""
    if not brackets:
        return "trimmed and case-folded"
    edges = list(brackets)
    ranges = [f"{lo} ({lo}-{hi - 1})" for lo, hi in itertools.pairwise(edges)]
    first = f"{edges[0]} (under {edges[1]})" if len(edges) > 1 else str(edges[0])
    return "a number, read as the lower edge of its bracket: " + ", ".join(
        [first, *ranges[1:], f"{edges[-1]} ({edges[-1]} and over)"]
    )


class FeatureReader:
    """A model's user features: their learned values and brackets, names in sorted order."""

    def __init__(
        self,
        values: Mapping[str, Sequence[str]],  # name -> learned read values, UNKNOWN first
        brackets: Mapping[str, Sequence[int]],  # name -> lower edges, for bracketed features
    ) -> None:
        self.names = sorted(values)
        self.values = {name: list(values[name]) for name in self.names}
        self.brackets = {name: list(edges) for name, edges in brackets.items()}
        self._codes = {
            name: {value: code for code, value in enumerate(self.values[name])}
            for name in self.names
        }

    def code(self, name: str, raw: str) -> int:
        """The code of a raw value of feature `name`; 0 when the model does not know it."""
        read = read_value(raw, self.brackets.get(name, ()))
        return self._codes[name].get(read, 0) if read else 0

    def codes(self, profile: Mapping[str, str]) -> list[int]:
        """(F,) codes in name order; a feature the profile lacks is 0. Names must be known."""
        return [self.code(name, profile[name]) if name in profile else 0 for name in self.names]

    def known(self, profile: Mapping[str, str]) -> list[str]:
        """The profile's features whose values the model knows, sorted."""
        return [n for n in sorted(profile) if n in self._codes and self.code(n, profile[n])]
