"""Interaction data sets: the one in-memory form, and the loaders of the on-disk layouts.

Three layouts are read (GroupLens ml-100k, ml-1m, and a generic csv layout), each into a
`Dataset` with users and items indexed densely, so nothing downstream knows which layout
the data came from. How a layout's files are split into checked fields is trainer.tables'
job; this module says which files a layout has, which columns mean what, and how side
files become features. Every problem with the input is a `DataError` naming file, line
and problem.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.errors import DataError
from trainer.features import AGE_BRACKETS, UNKNOWN, read_value
from trainer.tables import (
    Table,
    dense_index,
    integer_ids,
    numbers,
    read_side_table,
    read_table,
    row_of_each_id,
    stripped,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """Interactions plus side features, with users and items re-indexed densely from 0."""

    name: str  # a short label for reports, e.g. "ml-100k"
    user_ids: list[str]  # dense user index -> raw id as in the files
    item_ids: list[str]  # dense item index -> raw id as in the files
    users: np.ndarray  # (N,) int64 user index of each interaction
    items: np.ndarray  # (N,) int64 item index of each interaction
    ratings: np.ndarray | None  # (N,) float32 explicit rating, None for implicit data
    timestamps: np.ndarray | None  # (N,) int64 seconds, None when the data has no time
    # Categorical user side features: name -> (n_users,) int64 codes into user_vocab[name],
    # the values as trainer.features reads them; code 0 is always "unknown".
    user_features: dict[str, np.ndarray] = field(default_factory=dict)
    user_vocab: dict[str, list[str]] = field(default_factory=dict)
    user_brackets: dict[str, list[int]] = field(default_factory=dict)  # bracketed features
    # Each user's profile as the side file holds it: name -> (n_users,) raw strings ("": none).
    user_raw: dict[str, list[str]] = field(default_factory=dict)
    # Item side features as a multi-hot matrix (n_items, F) float32 (genres, release decade).
    item_features: np.ndarray | None = None
    item_feature_names: list[str] = field(default_factory=list)
    item_text: list[str] = field(default_factory=list)  # title or description; "" for none
    # Items the side file lists but no interaction names: the catalogue's cold items, kept
    # with their features (columns as item_features) and text.
    unseen_item_ids: list[str] = field(default_factory=list)
    unseen_item_features: np.ndarray | None = None
    unseen_item_text: list[str] = field(default_factory=list)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def profile(self, user: int) -> dict[str, str]:
        """The user's profile as the side file holds it: what a client would send."""
        return {name: values[user] for name, values in self.user_raw.items() if values[user]}


# Loaders. Users and items are indexed in order of first appearance in the interactions
# file: that needs no assumption about what raw ids look like (sorting "10" before "9" as
# strings, or guessing they are numbers), and reading the file again gives the same indices.

_LATIN1 = "iso-8859-1"  # GroupLens files; every byte string decodes, so it never fails
_UTF8 = "utf-8-sig"  # our csv layout; a byte-order mark from spreadsheet exports is accepted

# Raw interaction columns: user, item, rating (None: implicit), timestamp (None: no time).
_Columns = tuple[list[str], list[str], list[str] | None, list[str] | None]


@dataclass(frozen=True)
class _UserSide:
    """A user side file: raw values, each feature a column; "" means unknown."""

    table: Table
    ids: list[str]
    columns: dict[str, list[str]]
    brackets: dict[str, list[int]] = field(default_factory=dict)  # read as trainer.features


@dataclass(frozen=True)
class _ItemSide:
    """An item side file reduced to what the item features are made of."""

    table: Table
    ids: list[str]
    genres: list[list[str]]
    years: list[int | None]
    genre_names: list[str]  # column order of the genre features
    texts: list[str]  # title and description, "" where neither is given


def _log_coverage(file: str, listed: dict[str, int], known: list[str], what: str) -> None:
    """Say how far a side file and the interactions disagree: its rows for ids that never
    interact are unused, and ids without a row get unknown features. Neither is an error
    (a user list often outgrows a log), but a user should see it."""
    unused = len(listed.keys() - set(known))
    missing = sum(1 for raw in known if raw not in listed)
    if unused or missing:
        log.info(
            "%s: %d %s ids have no interactions; %d without a row get unknown features",
            file,
            unused,
            what,
            missing,
        )


def _user_features(user_ids: list[str], side: _UserSide) -> dict[str, dict[str, list]]:
    """Per feature: each user's raw value, the learned read values (UNKNOWN first) and each
    user's code, all read by trainer.features as the service reads a client's values."""
    rows = row_of_each_id(side.table, side.ids, "user")
    _log_coverage(side.table.file, rows, user_ids, "user")
    row_of_user = [rows.get(u) for u in user_ids]
    features: dict[str, dict[str, list]] = {}
    for name, values in side.columns.items():
        brackets = side.brackets.get(name, ())
        read = [read_value(value, brackets) for value in values]  # every row's, as learned
        words = [UNKNOWN, *sorted(set(read) - {"", UNKNOWN})]
        code = {w: c for c, w in enumerate(words)} | {"": 0}
        features[name] = {
            "raw": ["" if row is None else values[row] for row in row_of_user],
            "vocab": words,
            "codes": [0 if row is None else code[read[row]] for row in row_of_user],
        }
    return features


@dataclass(frozen=True)
class _ItemContent:
    features: np.ndarray | None  # (n, F) multi-hot
    names: list[str]  # its columns
    text: list[str]
    unseen_ids: list[str]
    unseen_features: np.ndarray | None
    unseen_text: list[str]


def item_columns(genres: Iterable[str], year: int | None) -> list[str]:
    """The feature columns an item of these genres and release year sets: one reading for
    the item side files and for items registered while the service runs."""
    hot = [f"genre={genre}" for genre in genres]
    if year is not None:
        hot.append(f"decade={year // 10 * 10}")
    return hot


def _item_content(item_ids: list[str], side: _ItemSide) -> _ItemContent:
    """The items' features and text, and those of the side file's items no interaction
    names (in file order): a catalogue's launches, kept as cold items."""
    decades = sorted({y // 10 * 10 for y in side.years if y is not None})
    names = [f"genre={g}" for g in side.genre_names] + [f"decade={d}" for d in decades]
    column = {n: j for j, n in enumerate(names)}
    rows = row_of_each_id(side.table, side.ids, "item")
    _log_coverage(side.table.file, rows, item_ids, "item")
    known = set(item_ids)
    unseen = [raw for raw in rows if raw not in known]

    def matrix(ids: list[str]) -> np.ndarray:
        out = np.zeros((len(ids), len(names)), dtype=np.float32)  # (n, F)
        for i, raw in enumerate(ids):
            row = rows.get(raw)
            if row is None:
                continue
            out[i, [column[h] for h in item_columns(side.genres[row], side.years[row])]] = 1.0
        return out

    def texts(ids: list[str]) -> list[str]:
        return [side.texts[rows[raw]] if raw in rows else "" for raw in ids]

    return _ItemContent(
        matrix(item_ids), names, texts(item_ids), unseen, matrix(unseen), texts(unseen)
    )


def _first_of_each_pair(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None
) -> np.ndarray:
    """Positions, in file order, of each user's first interaction with each item (earliest
    in time, then in the file).

    The protocol treats a history as a set (any interaction is relevant): a repeated item
    would sit in both the support set, hidden from the ranking, and the query, where it
    would still count as a relevant item no method can rank.
    """
    position = np.arange(len(users))
    when = position if timestamps is None else timestamps
    order = np.lexsort((position, when, items, users))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (np.diff(users[order]) != 0) | (np.diff(items[order]) != 0)
    return np.sort(order[first])


def _dataset(
    name: str,
    table: Table,
    columns: _Columns,
    user_side: _UserSide | None,
    item_side: _ItemSide | None,
) -> Dataset:
    """Assemble a Dataset from the interaction columns (user, item, rating, timestamp)."""
    raw_users, raw_items, raw_ratings, raw_times = columns
    if not table.rows:
        raise DataError(f"{table.file}: no interactions")
    user_ids, users = dense_index(table, raw_users, "user id")
    item_ids, items = dense_index(table, raw_items, "item id")
    ratings = None if raw_ratings is None else numbers(table, raw_ratings, np.float32, "rating")
    times = None if raw_times is None else numbers(table, raw_times, np.int64, "timestamp")
    kept = _first_of_each_pair(users, items, times)
    if len(kept) < len(users):
        log.info(
            "%s: kept the first of each repeated (user, item) pair, %d of %d interactions",
            table.file,
            len(kept),
            len(users),
        )
    features = _user_features(user_ids, user_side) if user_side else {}
    content = _item_content(item_ids, item_side) if item_side else None
    return Dataset(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        users=users[kept],
        items=items[kept],
        ratings=None if ratings is None else ratings[kept],
        timestamps=None if times is None else times[kept],
        user_features={n: np.array(f["codes"], dtype=np.int64) for n, f in features.items()},
        user_vocab={n: f["vocab"] for n, f in features.items()},
        user_brackets={n: list(user_side.brackets[n]) for n in features if n in user_side.brackets}
        if user_side
        else {},
        user_raw={n: f["raw"] for n, f in features.items()},
        item_features=content.features if content else None,
        item_feature_names=content.names if content else [],
        item_text=content.text if content else [""] * len(item_ids),
        unseen_item_ids=content.unseen_ids if content else [],
        unseen_item_features=content.unseen_features if content else None,
        unseen_item_text=content.unseen_text if content else [],
    )


def _title_year(title: str) -> int | None:
    """MovieLens titles end in "(1995)", sometimes followed by a note such as "(V)"."""
    years = re.findall(r"\((\d{4})\)", title)
    return int(years[-1]) if years else None


def _optional_years(table: Table, values: list[str]) -> list[int | None]:
    """A blank year is unknown, not an error; anything else must be an integer."""
    blank = [not v.strip() for v in values]
    parsed = numbers(
        table, ["0" if b else v for v, b in zip(values, blank, strict=True)], np.int64, "year"
    )
    return [None if b else int(y) for y, b in zip(parsed, blank, strict=True)]


_CSV_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


def _csv_interactions(path: Path) -> tuple[Table, _Columns]:
    table = read_table(path, ",", _UTF8)
    users, items = (stripped(ids) for ids in table.require("user_id", "item_id"))
    ignored = [name for name in table.header if name not in _CSV_COLUMNS]
    if ignored:  # a time column named "ts" would otherwise drop time order without a word
        log.warning(
            "%s: ignoring column %s; the columns read are %s",
            path,
            ", ".join(map(repr, ignored)),
            ", ".join(_CSV_COLUMNS),
        )
    return table, (users, items, table.named("rating"), table.named("timestamp"))


def _grouplens_columns(table: Table, columns: _Columns) -> _Columns:
    """The interaction columns of a GroupLens layout, its user and item ids checked."""
    users, items, ratings, times = columns
    return (
        integer_ids(table, users, "user id"),
        integer_ids(table, items, "item id"),
        ratings,
        times,
    )


def _four_columns(table: Table) -> _Columns:
    """user, item, rating, timestamp: the four fields of u.data and ratings.dat."""
    return table.column(0), table.column(1), table.column(2), table.column(3)


def _required(root: Path, fmt: str, *names: str) -> Path:
    """The one of `names` present in `root`: the file a layout cannot do without."""
    present = [root / name for name in names if (root / name).is_file()]
    if not present:
        raise DataError(f"{fmt} directory {root} has no {' or '.join(names)}")
    if len(present) > 1:
        found = " and ".join(p.name for p in present)
        raise DataError(f"{fmt} directory {root} has both {found}: keep one")
    return present[0]


def _grouplens_users(path: Path, sep: str, age: int, gender: int) -> _UserSide:
    """u.user and users.dat: five fields, the id first and the occupation fourth; age and
    gender sit in either order."""
    users = read_side_table(path, sep, _LATIN1, 5)
    numbers(users, users.column(age), np.int64, "age")  # a line without a whole-number age fails
    features = {
        "age": users.column(age),
        "gender": users.column(gender),
        "occupation": users.column(3),
    }
    ids = integer_ids(users, users.column(0), "user id")
    return _UserSide(users, ids, features, {"age": list(AGE_BRACKETS)})


def _load_ml100k(root: Path) -> Dataset:
    table = read_table(_required(root, "ml-100k", "u.data"), "\t", _LATIN1, 4)
    user_side = item_side = None
    if (root / "u.user").exists():  # id|age|gender|occupation|zip
        user_side = _grouplens_users(root / "u.user", "|", age=1, gender=2)
    if (root / "u.item").exists():
        names = [str(j) for j in range(19)]  # the standard 19, named by index without u.genre
        if (root / "u.genre").exists():
            names = read_side_table(root / "u.genre", "|", _LATIN1, 2).column(0)
        movies = read_side_table(root / "u.item", "|", _LATIN1, 5 + len(names))
        flags = [
            numbers(movies, movies.column(5 + j), np.int64, "genre flag") for j in range(len(names))
        ]
        hot = np.stack(flags, axis=1) != 0  # (n_movies, n_genres)
        genres = [[names[j] for j in np.flatnonzero(row)] for row in hot]
        titles = movies.column(1)
        years = [_title_year(t) for t in titles]
        ids = integer_ids(movies, movies.column(0), "item id")
        item_side = _ItemSide(movies, ids, genres, years, names, stripped(titles))
    columns = _grouplens_columns(table, _four_columns(table))
    return _dataset("ml-100k", table, columns, user_side, item_side)


def _load_ml1m(root: Path) -> Dataset:
    ratings = _required(root, "ml-1m", "ratings.dat", "ratings.csv")
    if ratings.suffix == ".dat":
        table = read_table(ratings, "::", _LATIN1, 4)
        columns = _four_columns(table)
    else:
        table, columns = _csv_interactions(ratings)
    columns = _grouplens_columns(table, columns)
    user_side = item_side = None
    if (root / "users.dat").exists():  # id::gender::age::occupation::zip
        user_side = _grouplens_users(root / "users.dat", "::", age=2, gender=1)
    if (root / "movies.dat").exists():
        movies = read_side_table(root / "movies.dat", "::", _LATIN1, 3)
        genres = [g.split("|") if g else [] for g in movies.column(2)]
        titles = movies.column(1)
        years = [_title_year(t) for t in titles]
        names = sorted({g for gs in genres for g in gs})
        ids = integer_ids(movies, movies.column(0), "item id")
        item_side = _ItemSide(movies, ids, genres, years, names, stripped(titles))
    return _dataset("ml-1m", table, columns, user_side, item_side)


def _load_csv(root: Path) -> Dataset:
    table, columns = _csv_interactions(_required(root, "csv", "interactions.csv"))
    user_side = item_side = None
    if (root / "users.csv").exists():
        users = read_side_table(root / "users.csv", ",", _UTF8)
        ids = stripped(*users.require("user_id"))
        features = {
            n: stripped(users.column(j)) for j, n in enumerate(users.header) if n != "user_id"
        }
        # An "age" column holds ages, read into the brackets the GroupLens layouts use.
        brackets = {"age": list(AGE_BRACKETS)} if "age" in features else {}
        user_side = _UserSide(users, ids, features, brackets)
    if (root / "items.csv").exists():
        items = read_side_table(root / "items.csv", ",", _UTF8)
        ids = stripped(*items.require("item_id"))
        blank = [""] * len(ids)
        genres = [stripped(g.split("|")) for g in items.named("genres") or blank]
        genres = [[g for g in gs if g] for gs in genres]  # "" and "a||b" name no empty genre
        years = _optional_years(items, items.named("year") or blank)
        names = sorted({g for gs in genres for g in gs})
        item_side = _ItemSide(items, ids, genres, years, names, _csv_item_text(items))
    return _dataset("csv", table, columns, user_side, item_side)


def _csv_item_text(items: Table) -> list[str]:
    """items.csv's `title` and `text` columns, either optional, joined where both are given."""
    blank = [""] * len(items.rows)
    pairs = zip(items.named("title") or blank, items.named("text") or blank, strict=True)
    return [". ".join(part for part in stripped(pair) if part) for pair in pairs]


_LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "ml-100k": _load_ml100k,
    "ml-1m": _load_ml1m,
    "csv": _load_csv,
}
FORMATS = tuple(_LOADERS)  # the names `fmt` accepts


# Files that only one layout has, checked in this order. Any ml-1m file marks the layout, so
# a directory with users.dat but no ratings gets the loader's precise "has no ratings" error.
_MARKERS = {
    "ml-100k": ("u.data",),
    "csv": ("interactions.csv",),
    "ml-1m": ("ratings.dat", "ratings.csv", "users.dat", "movies.dat"),
}


def detect_format(root: Path) -> str:
    """Name the layout of a data directory by the files in it; files of two layouts are an
    error rather than a silent choice."""
    found = [fmt for fmt, markers in _MARKERS.items() if any((root / m).is_file() for m in markers)]
    if len(found) > 1:
        raise DataError(
            f"{root} holds files of the {' and '.join(found)} layouts: pass --format to choose"
        )
    if found:
        return found[0]
    expected = "; ".join(f"{' or '.join(m)} ({fmt})" for fmt, m in _MARKERS.items())
    raise DataError(f"cannot tell the data layout of {root}: expected {expected}")


def load_dataset(path: str | Path, fmt: str | None = None) -> Dataset:
    """Load a data directory, detecting its layout unless `fmt` names one of FORMATS."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist or is not a directory")
    fmt = fmt or detect_format(root)
    if fmt not in _LOADERS:
        raise DataError(f"unknown data format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return _LOADERS[fmt](root)
