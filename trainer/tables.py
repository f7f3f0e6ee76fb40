"""Strict reading of delimited text files: rows, columns, numbers and ids, checked line by line.

Every layout trainer.data loads is such a file (tab, '|', '::' or csv separated), and
every problem in one should reach the user as the same kind of message: a DataError that
names the file, the line and what is wrong with it. Kept apart from the layouts so that
each loader gets every check (field counts, encodings, carriage returns, unclosed quotes,
numbers, empty and repeated ids) by calling these functions, not by repeating them.
"""

from __future__ import annotations

import csv
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.errors import DataError

_SEPARATOR_NAMES = {"\t": "tab", "|": "'|'", "::": "'::'", ",": "comma"}


@dataclass(frozen=True)
class Table:
    """The rows of one text file, kept with where they came from so later checks name the line."""

    file: str  # the file's path, as messages show it
    rows: list[list[str]]  # fields of each data line (header excluded)
    first_line: int  # 1-based line number of rows[0]
    header: list[str] = field(default_factory=list)  # column names, for files that have them

    def error(self, row: int, problem: str) -> DataError:
        return DataError(f"{self.file} line {row + self.first_line}: {problem}")

    def column(self, index: int) -> list[str]:
        return [r[index] for r in self.rows]

    def named(self, name: str) -> list[str] | None:
        """The column under a header name, or None when the file does not have it."""
        return self.column(self.header.index(name)) if name in self.header else None

    def require(self, *names: str) -> list[list[str]]:
        for name in names:
            if name not in self.header:
                found = ",".join(self.header)
                raise DataError(f"{self.file} line 1: header has no column {name!r} (has {found})")
        return [self.column(self.header.index(n)) for n in names]


@contextmanager
def _no_gc() -> Iterator[None]:
    """Parsing allocates millions of small lists that create no cycles; the collector's
    repeated full passes over them would cost more than the parsing itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_table(path: Path, sep: str, encoding: str, n_fields: int | None = None) -> Table:
    """Split a `sep`-separated file into fields, checking every line has the same number.

    With `n_fields` None the first line is a header and fixes the count; "," means csv, with
    quoting. Blank lines are an error like any other malformed line, so line numbers stay exact.
    """
    raw, file = path.read_bytes(), str(path)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{file} line {line}: not valid UTF-8") from None
    text = text.replace("\r\n", "\n")
    if "\r" in text:  # a line break to some readers and part of a field to others
        line = text.count("\n", 0, text.index("\r")) + 1
        raise DataError(f"{file} line {line}: a carriage return inside a line")
    # str.splitlines would also break at \x85 and \x1c, which are characters in ISO-8859-1.
    lines = text.rstrip("\n").split("\n") if text.strip() else []
    with _no_gc():
        rows = _csv_rows(lines, file) if sep == "," else [line.split(sep) for line in lines]
    header: list[str] = []
    if n_fields is None:
        if not rows:
            raise DataError(f"{file}: empty file, expected a header line")
        header = [name.strip() for name in rows.pop(0)]
        n_fields = len(header)
        repeated = next((name for i, name in enumerate(header) if name in header[:i]), None)
        if repeated is not None:
            raise DataError(f"{file} line 1: column {repeated!r} appears twice in the header")
    table = Table(file, rows, 2 if header else 1, header)
    if not set(map(len, rows)) <= {n_fields}:
        bad = next(i for i, r in enumerate(rows) if len(r) != n_fields)
        kind = _SEPARATOR_NAMES[sep]
        raise table.error(bad, f"expected {n_fields} {kind}-separated fields, got {len(rows[bad])}")
    return table


def read_side_table(path: Path, sep: str, encoding: str, n_fields: int | None = None) -> Table:
    """A side file (user or item features, genre names): one without rows is an error, as a
    missing interactions file is, rather than features silently all unknown."""
    table = read_table(path, sep, encoding, n_fields)
    if not table.rows:
        raise DataError(f"{path}: no data lines")
    return table


def _csv_rows(lines: list[str], file: str) -> list[list[str]]:
    """One csv row per line, with quoting. A quoted field may not run past its line: an
    unclosed quote would otherwise swallow the rest of the file into one field."""
    try:
        rows = list(csv.reader(lines))
    except csv.Error:
        rows = None
    if rows is None or len(rows) != len(lines):  # only on failure: the slower search
        raise DataError(_csv_problem(lines, file))
    return rows


def _csv_problem(lines: list[str], file: str) -> str:
    """The first row that does not end on its own line (an unclosed quote: in a large file
    the reader fails only at its field limit, thousands of lines on) or that the reader
    refuses on its line."""
    reader = csv.reader(lines)
    start = 1  # the line the row being read starts on
    try:
        for _ in reader:
            if reader.line_num != start:
                break
            start += 1
    except csv.Error as error:
        if reader.line_num == start:
            return f"{file} line {start}: {error}"
    return f"{file} line {start}: a quoted field runs past the end of the line"


def numbers(table: Table, values: list[str], dtype: type, what: str) -> np.ndarray:
    """Convert a column in one vectorised step; only on failure look for the line to blame."""
    kind = "a whole number" if np.dtype(dtype).kind == "i" else "a number"
    try:
        array = np.array(values).astype(dtype)
    except (ValueError, OverflowError):
        for i, value in enumerate(values):
            try:
                np.array(value).astype(dtype)
            except ValueError:
                raise table.error(i, f"{what} {value!r} is not {kind}") from None
            except OverflowError:
                raise table.error(i, f"{what} {value!r} is out of range") from None
        raise
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise table.error(bad, f"{what} {values[bad]!r} is not a finite number")
    return array


def dense_index(table: Table, raw: list[str], what: str) -> tuple[list[str], np.ndarray]:
    """Dense indices in order of first appearance, and the raw id of each index."""
    positions: dict[str, int] = {}
    with _no_gc():
        codes = np.array([positions.setdefault(r, len(positions)) for r in raw], dtype=np.int64)
    if "" in positions:
        raise table.error(raw.index(""), f"empty {what}")
    return list(positions), codes


def row_of_each_id(table: Table, raw_ids: list[str], what: str) -> dict[str, int]:
    """Row of each id in a side file; a repeated or empty id is an error, as in the
    interactions, not a silent overwrite or a user nobody can name."""
    rows: dict[str, int] = {}
    for i, raw in enumerate(raw_ids):
        if not raw:
            raise table.error(i, f"empty {what}")
        if rows.setdefault(raw, i) != i:
            raise table.error(
                i, f"{what} {raw!r} appears twice (first on line {rows[raw] + table.first_line})"
            )
    return rows


def integer_ids(table: Table, values: list[str], what: str) -> list[str]:
    """Ids that must be decimal integers (GroupLens'): anything else is a damaged line (a
    stray byte in a latin-1 file still decodes), not a new user or item."""
    # Deleting every digit leaves nothing but the separators (an empty id is dense_index's error).
    if "\n".join(values).encode().translate(None, b"0123456789\n"):
        bad = next(i for i, v in enumerate(values) if v and not (v.isascii() and v.isdigit()))
        raise table.error(bad, f"{what} {values[bad]!r} is not a whole number")
    return values


def stripped(values: list[str]) -> list[str]:
    """Values without surrounding blanks: "i91" and " i91 " are one item, "M" and " M" one
    gender."""
    return [v.strip() for v in values]
