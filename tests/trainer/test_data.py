"""Loaders: every layout on tiny files written here, every malformed case, and real ml-100k."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from trainer.data import detect_format, load_dataset
from trainer.errors import DataError
from trainer.features import AGE_BRACKETS, UNKNOWN

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime"]
GENRES_100K += ["Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery"]
GENRES_100K += ["Romance", "Sci-Fi", "Thriller", "War", "Western"]


def write(root: Path, files: dict[str, str | bytes], encoding: str = "utf-8") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        data = text if isinstance(text, bytes) else text.encode(encoding)
        (root / name).write_bytes(data)
    return root


def flags(*on: int) -> str:
    return "|".join("1" if j in on else "0" for j in range(19))


ML100K = {
    "u.data": "7\t50\t5\t881250949\n3\t50\t3\t881250950\n7\t12\t4\t881250951\n",
    "u.user": "7|17|M|student|85711\n3|60|F|other|94043\n9|30|F|writer|1\n",
    "u.item": f"50|Star Wars (1977)||||{flags(1, 2)}\n12|Café (1995) (V)||||{flags(5)}\n",
    "u.genre": "".join(f"{g}|{j}\n" for j, g in enumerate(GENRES_100K)) + "\n",
}
ML1M = {
    "ratings.dat": "5::20::4::978300760\n6::21::2::978300761\n5::22::5::978300762\n",
    "users.dat": "5::F::1::10::48067\n6::M::56::16::70072\n",
    "movies.dat": "20::Amélie (2001)::Comedy|Romance\n21::Heat (1995)::Action|Crime\n",
}
CSV = {
    "interactions.csv": "item_id,note,user_id,timestamp,rating\nb,x,alice,10,4.5\na,y,bob,11,1\n",
    "users.csv": "user_id,plan,region\nalice,pro,\nbob,free,eu\n",
    "items.csv": 'item_id,title,genres,year\na,"A, the film",Drama|War,1984\nb,B,,\n',
}


def ml100k(tmp_path: Path, **changes: str) -> Path:
    return write(tmp_path / "ml-100k", ML100K | changes, encoding="iso-8859-1")


def test_ml100k_layout(tmp_path: Path) -> None:
    data = load_dataset(ml100k(tmp_path))
    assert data.name == "ml-100k"
    assert data.user_ids == ["7", "3"]  # first appearance, not sorted
    assert data.item_ids == ["50", "12"]
    assert data.users.tolist() == [0, 1, 0] and data.items.tolist() == [0, 0, 1]
    assert data.ratings.dtype == np.float32 and data.ratings.tolist() == [5, 3, 4]
    assert data.timestamps.dtype == np.int64 and data.timestamps[0] == 881250949
    assert data.user_vocab["age"] == [UNKNOWN, "1", "25", "56"]  # buckets of 17, 30 and 60
    age = [data.user_vocab["age"][c] for c in data.user_features["age"]]
    assert age == ["1", "56"]  # user 9 never rated, so only in the vocabulary
    assert [data.user_vocab["gender"][c] for c in data.user_features["gender"]] == ["m", "f"]
    assert data.user_raw == {
        "age": ["17", "60"],
        "gender": ["M", "F"],
        "occupation": ["student", "other"],
    }
    assert data.user_brackets == {"age": list(AGE_BRACKETS)}
    assert data.user_vocab["occupation"] == [UNKNOWN, "other", "student", "writer"]
    names = data.item_feature_names
    assert names == [f"genre={g}" for g in GENRES_100K] + ["decade=1970", "decade=1990"]
    hot = [[names[j] for j in np.flatnonzero(row)] for row in data.item_features]
    assert hot == [
        ["genre=Action", "genre=Adventure", "decade=1970"],
        ["genre=Comedy", "decade=1990"],  # year from "(1995) (V)"
    ]


def test_ml100k_without_side_files(tmp_path: Path) -> None:
    data = load_dataset(write(tmp_path, {"u.data": ML100K["u.data"]}))
    assert data.user_features == {} and data.user_vocab == {}
    assert data.item_features is None and data.item_feature_names == []


def test_ml100k_user_and_item_missing_from_side_files(tmp_path: Path) -> None:
    root = ml100k(tmp_path, **{"u.data": "8\t99\t1\t5\n7\t50\t2\t6\n"})
    data = load_dataset(root)
    assert data.user_features["age"].tolist() == [0, 1]
    assert data.item_features[0].sum() == 0 and data.item_features[1].sum() == 3


def test_ml1m_layout_with_timestamps(tmp_path: Path) -> None:
    data = load_dataset(write(tmp_path, ML1M, encoding="iso-8859-1"))
    assert data.name == "ml-1m"
    assert data.user_ids == ["5", "6"] and data.item_ids == ["20", "21", "22"]
    assert data.timestamps.tolist() == [978300760, 978300761, 978300762]
    assert data.user_vocab == {
        "age": [UNKNOWN, "1", "56"],
        "gender": [UNKNOWN, "f", "m"],
        "occupation": [UNKNOWN, "10", "16"],
    }
    assert data.user_features["occupation"].tolist() == [1, 2]
    assert data.item_feature_names == [
        "genre=Action",
        "genre=Comedy",
        "genre=Crime",
        "genre=Romance",
        "decade=1990",
        "decade=2000",
    ]
    assert data.item_features.tolist() == [[0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 0], [0] * 6]


def test_ml1m_ratings_csv_has_no_timestamps(tmp_path: Path) -> None:
    files = {"ratings.csv": "user_id,item_id,rating\n5,20,4\n6, 20 ,3\n"}
    data = load_dataset(write(tmp_path, files))
    assert data.name == "ml-1m" and data.timestamps is None
    assert data.ratings.tolist() == [4, 3]
    assert data.item_ids == ["20"]  # csv ids lose surrounding blanks, as in the csv layout
    assert data.user_features == {}  # no users.dat


def test_ml1m_ratings_csv_ids_are_whole_numbers(tmp_path: Path) -> None:
    files = {"ratings.csv": "user_id,item_id,rating\n5,20,4\nu 6,20,3\n"}
    message = f"{tmp_path / 'ratings.csv'} line 3: user id 'u 6' is not a whole number"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        load_dataset(write(tmp_path, files))


def test_ml1m_with_two_ratings_files_is_refused(tmp_path: Path) -> None:
    files = ML1M | {"ratings.csv": "user_id,item_id,rating\n5,20,4\n"}
    with pytest.raises(DataError, match=r"has both ratings\.dat and ratings\.csv: keep one$"):
        load_dataset(write(tmp_path, files, encoding="iso-8859-1"))


def test_csv_ids_lose_surrounding_blanks_but_keep_inner_ones(tmp_path: Path) -> None:
    files = {
        "interactions.csv": "user_id,item_id\nann lee, i91 \nann lee,i91\n bob ,i92\n",
        "users.csv": "user_id,plan\n bob ,pro\n",
    }
    data = load_dataset(write(tmp_path, files))
    assert data.user_ids == ["ann lee", "bob"] and data.item_ids == ["i91", "i92"]
    assert len(data.items) == 2  # ann lee's second i91 is the first one repeated
    assert data.user_vocab["plan"][data.user_features["plan"][1]] == "pro"


def test_csv_feature_values_lose_surrounding_blanks_and_name_no_empty_genre(
    tmp_path: Path,
) -> None:
    files = CSV | {
        "users.csv": "user_id,plan\nalice, pro\nbob,pro \n",
        "items.csv": "item_id,genres\na,Drama||War\nb, Drama |\n",
    }
    data = load_dataset(write(tmp_path, files))
    assert data.user_vocab["plan"] == [UNKNOWN, "pro"]
    assert data.item_feature_names == ["genre=Drama", "genre=War"]
    rows = dict(zip(data.item_ids, data.item_features.tolist(), strict=True))
    assert rows == {"a": [1, 1], "b": [1, 0]}


def test_side_file_rows_that_do_not_match_the_interactions_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = CSV | {"users.csv": "user_id,plan\nalice,pro\ncarol,free\ndave,free\n"}
    with caplog.at_level(logging.INFO, logger="trainer.data"):
        data = load_dataset(write(tmp_path, files))
    assert "users.csv: 2 user ids have no interactions; 1 without a row" in caplog.text
    assert data.user_features["plan"][data.user_ids.index("bob")] == 0  # unknown


def test_csv_layout(tmp_path: Path) -> None:
    data = load_dataset(write(tmp_path, CSV))
    assert data.name == "csv"
    assert data.user_ids == ["alice", "bob"] and data.item_ids == ["b", "a"]
    assert data.ratings.tolist() == [4.5, 1.0] and data.timestamps.tolist() == [10, 11]
    assert data.user_vocab == {"plan": [UNKNOWN, "free", "pro"], "region": [UNKNOWN, "eu"]}
    assert data.user_features["region"].tolist() == [0, 1]  # a blank cell is unknown
    assert data.item_feature_names == ["genre=Drama", "genre=War", "decade=1980"]
    assert data.item_features.tolist() == [[0, 0, 0], [1, 1, 1]]


def test_csv_implicit_without_side_files(tmp_path: Path) -> None:
    data = load_dataset(write(tmp_path, {"interactions.csv": "user_id,item_id\n1,2\n1,3\n"}))
    assert data.ratings is None and data.timestamps is None
    assert data.user_features == {} and data.item_features is None
    assert data.n_users == 1 and data.n_items == 2


def test_a_csv_column_the_loader_does_not_read_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = "user_id,item_id,ts\n1,2,100\n1,3,50\n"
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        data = load_dataset(write(tmp_path, {"interactions.csv": rows}))
    assert data.timestamps is None  # "ts" is not "timestamp": the user must hear of it
    assert "interactions.csv: ignoring column 'ts'; the columns read are user_id" in caplog.text


def test_repeated_user_item_pair_keeps_the_earliest(tmp_path: Path) -> None:
    rows = "user_id,item_id,rating,timestamp\n1,a,2,30\n1,b,4,20\n1,a,5,10\n2,a,1,40\n"
    data = load_dataset(write(tmp_path, {"interactions.csv": rows}))
    assert data.items.tolist() == [1, 0, 0]  # b, then user 1's a at time 10, then user 2's a
    assert data.ratings.tolist() == [4, 5, 1] and data.timestamps.tolist() == [20, 10, 40]


def test_repeated_pair_without_time_keeps_the_first_line(tmp_path: Path) -> None:
    rows = "user_id,item_id\n1,a\n1,b\n1,a\n"
    data = load_dataset(write(tmp_path, {"interactions.csv": rows}))
    assert data.users.tolist() == [0, 0] and data.items.tolist() == [0, 1]


def test_csv_accepts_crlf_and_byte_order_mark(tmp_path: Path) -> None:
    text = b"\xef\xbb\xbfuser_id,item_id\r\n1,2\r\n"
    data = load_dataset(write(tmp_path, {"interactions.csv": text}))
    assert data.user_ids == ["1"] and data.item_ids == ["2"]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (ML100K, "ml-100k"),
        (ML1M, "ml-1m"),
        ({"ratings.csv": "user_id,item_id\n1,2\n"}, "ml-1m"),
        (CSV, "csv"),
    ],
)
def test_detects_layout(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    assert detect_format(write(tmp_path, files, encoding="iso-8859-1")) == expected


def test_fmt_forces_layout(tmp_path: Path) -> None:
    root = write(tmp_path, ML100K | CSV, encoding="iso-8859-1")
    with pytest.raises(
        DataError, match="holds files of the ml-100k and csv layouts: pass --format"
    ):
        load_dataset(root)
    assert load_dataset(root, fmt="ml-100k").name == "ml-100k"
    assert load_dataset(root, fmt="csv").name == "csv"


def test_fmt_forced_on_wrong_directory_names_missing_file(tmp_path: Path) -> None:
    root = write(tmp_path, CSV)
    with pytest.raises(
        DataError, match=r"^ml-1m directory .* has no ratings\.dat or ratings\.csv$"
    ):
        load_dataset(root, fmt="ml-1m")
    with pytest.raises(DataError, match=r"^ml-100k directory .* has no u\.data$"):
        load_dataset(root, fmt="ml-100k")


def test_unknown_fmt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data format 'parquet'; expected one of ml-100k"):
        load_dataset(write(tmp_path, CSV), fmt="parquet")


def test_undetectable_directory_names_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"expected u\.data .*interactions\.csv .*ratings\.dat"):
        load_dataset(write(tmp_path, {"notes.txt": "hi"}))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_ml1m_side_files_without_ratings(tmp_path: Path) -> None:
    root = write(tmp_path, {"users.dat": ML1M["users.dat"]})
    with pytest.raises(DataError, match=r"has no ratings\.dat or ratings\.csv"):
        load_dataset(root)


MALFORMED = [
    (
        "ml-100k",
        {"u.data": b"7\t50\t5\t881250949\n\xe95\t50\t3\t881250950\n"},
        "u.data line 2: user id '\xe95' is not a whole number",
    ),
    (
        "ml-1m",
        {"ratings.dat": "5::20::4::978300760\n6::x21::2::978300761\n"},
        "ratings.dat line 2: item id 'x21' is not a whole number",
    ),
    (
        "ml-100k",
        {"u.user": "7|17|M|student|85711\nx3|60|F|other|94043\n"},
        "u.user line 2: user id 'x3' is not a whole number",
    ),
    (
        "ml-1m",
        {"movies.dat": "20 ::Amélie (2001)::Comedy\n"},
        "movies.dat line 1: item id '20 ' is not a whole number",
    ),
    ("ml-100k", {"u.user": ""}, "u.user: no data lines"),
    ("ml-100k", {"u.genre": ""}, "u.genre: no data lines"),
    (
        "ml-1m",
        {"users.dat": "5::F::old::10::48067\n"},
        "users.dat line 1: age 'old' is not a whole number",
    ),
    ("csv", {"users.csv": "user_id,plan\n"}, "users.csv: no data lines"),
    (
        "ml-100k",
        {"u.data": "1\t2\t3\t4\n1\t2\t3\n"},
        "u.data line 2: expected 4 tab-separated fields, got 3",
    ),
    (
        "ml-100k",
        {"u.data": "1\t2\t3\t4\n\n1\t2\t3\t4\n"},
        "u.data line 2: expected 4 tab-separated fields, got 1",
    ),
    ("ml-100k", {"u.data": "1\t2\tx\t4\n"}, "u.data line 1: rating 'x' is not a number"),
    (
        "ml-100k",
        {"u.data": "1\t2\t3\t4\n1\t3\t3\tnoon\n"},
        "u.data line 2: timestamp 'noon' is not a whole number",
    ),
    ("ml-100k", {"u.data": ""}, "u.data: no interactions"),
    (
        "ml-100k",
        {"u.user": "7|old|M|student|1\n"},
        "u.user line 1: age 'old' is not a whole number",
    ),
    (
        "ml-100k",
        {"u.item": "50|Star Wars (1977)||||0|1\n"},
        "u.item line 1: expected 24 '|'-separated fields, got 7",
    ),
    (
        "ml-100k",
        {"u.item": f"50|X (1977)||||{flags()[:-1]}y\n"},
        "u.item line 1: genre flag 'y' is not a whole number",
    ),
    (
        "ml-1m",
        {"ratings.dat": "1::2::3::4\n1::2::3\n"},
        "ratings.dat line 2: expected 4 '::'-separated fields, got 3",
    ),
    (
        "ml-1m",
        {"ratings.dat": "1::2::3::4.5\n"},
        "ratings.dat line 1: timestamp '4.5' is not a whole number",
    ),
    (
        "ml-1m",
        {"users.dat": "5::F::1::10\n"},
        "users.dat line 1: expected 5 '::'-separated fields, got 4",
    ),
    (
        "ml-1m",
        {"movies.dat": "20::Amélie (2001)\n"},
        "movies.dat line 1: expected 3 '::'-separated fields, got 2",
    ),
    (
        "ml-1m",
        {"users.dat": "5::F::1::10::1\n5::M::1::10::1\n"},
        "users.dat line 2: user '5' appears twice (first on line 1)",
    ),
    (
        "csv",
        {"interactions.csv": "user_id,item_id,rating\n1,2,3\n1,3,x\n"},
        "interactions.csv line 3: rating 'x' is not a number",
    ),
    (
        "csv",
        {"interactions.csv": "user_id,item_id,rating\n1,2,nan\n"},
        "interactions.csv line 2: rating 'nan' is not a finite number",
    ),
    (
        "csv",
        {"interactions.csv": "user_id,item_id,timestamp\n1,2,1e9\n"},
        "interactions.csv line 2: timestamp '1e9' is not a whole number",
    ),
    (
        "csv",
        {"interactions.csv": "user_id,item_id,timestamp\n1,2,99999999999999999999\n"},
        "interactions.csv line 2: timestamp '99999999999999999999' is out of range",
    ),
    (
        "csv",
        {"interactions.csv": "user_id,item_id\n1,2\n1,2,3\n"},
        "interactions.csv line 3: expected 2 comma-separated fields, got 3",
    ),
    (
        "csv",
        {"interactions.csv": 'user_id,item_id\n1,2\n1,"3\n2,4\n2,5\n'},
        "interactions.csv line 3: a quoted field runs past the end of the line",
    ),
    (
        "csv",
        {"interactions.csv": 'user_id,item_id\n1,2\n1,"3\n' + "2,4\n" * 60_000},
        "interactions.csv line 3: a quoted field runs past the end of the line",
    ),
    (
        "csv",
        {"interactions.csv": "user_id,item_id\r1,2\r1,3\r"},
        "interactions.csv line 1: a carriage return inside a line",
    ),
    (
        "csv",
        {"interactions.csv": "user_id,item_id\n1,2\n1," + "x" * 200_000 + "\n"},
        "interactions.csv line 3: field larger than field limit (131072)",
    ),
    (
        "csv",
        {"users.csv": "user_id,plan\nalice,pro\n ,free\n"},
        "users.csv line 3: empty user",
    ),
    (
        "csv",
        {"users.csv": "user_id,age,age\nalice,30,31\n"},
        "users.csv line 1: column 'age' appears twice in the header",
    ),
    (
        "csv",
        {"interactions.csv": "user,item_id\n1,2\n"},
        "interactions.csv line 1: header has no column 'user_id' (has user,item_id)",
    ),
    ("csv", {"interactions.csv": "user_id,item_id\n"}, "interactions.csv: no interactions"),
    ("csv", {"interactions.csv": ""}, "interactions.csv: empty file, expected a header line"),
    (
        "csv",
        {"interactions.csv": "user_id,item_id\n1,2\n,3\n"},
        "interactions.csv line 3: empty user id",
    ),
    (
        "csv",
        {"interactions.csv": b"user_id,item_id\n1,2\n1,\xe9\n"},
        "interactions.csv line 3: not valid UTF-8",
    ),
    ("csv", {"users.csv": b"user_id,plan\nalice,\xff\n"}, "users.csv line 2: not valid UTF-8"),
    (
        "csv",
        {"users.csv": "id,plan\nalice,pro\n"},
        "users.csv line 1: header has no column 'user_id' (has id,plan)",
    ),
    (
        "csv",
        {"items.csv": "item_id,year\na,1984\nb,soon\n"},
        "items.csv line 3: year 'soon' is not a whole number",
    ),
    (
        "csv",
        {"items.csv": "item_id,year\na,1984\na,1985\n"},
        "items.csv line 3: item 'a' appears twice (first on line 2)",
    ),
]


@pytest.mark.parametrize(("fmt", "changes", "message"), MALFORMED)
def test_malformed_input_names_file_and_line(
    tmp_path: Path, fmt: str, changes: dict[str, str | bytes], message: str
) -> None:
    base = {"ml-100k": ML100K, "ml-1m": ML1M, "csv": CSV}[fmt]
    root = write(tmp_path, base | changes, encoding="iso-8859-1" if fmt != "csv" else "utf-8")
    with pytest.raises(DataError) as caught:
        load_dataset(root)
    assert str(caught.value) == f"{root}/{message}"  # the path as given, then the problem


@pytest.mark.skipif(not (SHARED_DATA / "ml-100k").is_dir(), reason="no ../shared/data/ml-100k")
def test_real_ml100k() -> None:
    data = load_dataset(SHARED_DATA / "ml-100k")
    assert len(data.users) == len(data.items) == 100_000
    assert (data.n_users, data.n_items) == (943, 1682)
    assert data.timestamps is not None and data.timestamps.min() > 8e8
    assert set(np.unique(data.ratings)) == {1, 2, 3, 4, 5}
    genres = [n for n in data.item_feature_names if n.startswith("genre=")]
    assert len(genres) == 19
    assert data.item_features.shape == (1682, len(data.item_feature_names))
    assert (data.item_features[:, : len(genres)].sum(axis=1) > 0).all()
    assert all((codes > 0).all() for codes in data.user_features.values())


def test_item_text_comes_from_titles_and_the_csv_text_column(tmp_path: Path) -> None:
    data = load_dataset(ml100k(tmp_path / "a"))
    assert data.item_text == ["Star Wars (1977)", "Café (1995) (V)"]
    items = 'item_id,title,text,genres\na,"A, the film","War, then peace",Drama\nb,,,\n'
    data = load_dataset(write(tmp_path / "b", CSV | {"items.csv": items}))
    assert data.item_text == ["", "A, the film. War, then peace"]  # b first: file order
    only_text = "item_id,text\na,about a\nb,\n"
    data = load_dataset(write(tmp_path / "c", CSV | {"items.csv": only_text}))
    assert data.item_text == ["", "about a"]


def test_side_file_items_without_interactions_are_kept_as_unseen(tmp_path: Path) -> None:
    items = "item_id,title,genres,year\na,A,Drama,1984\nb,B,,\nz,Zed,War|Drama,2001\n"
    data = load_dataset(write(tmp_path, CSV | {"items.csv": items}))
    assert data.item_ids == ["b", "a"] and data.unseen_item_ids == ["z"]
    assert data.unseen_item_text == ["Zed"]
    names = data.item_feature_names
    assert data.unseen_item_features.tolist() == [
        [1.0 if n in ("genre=Drama", "genre=War", "decade=2000") else 0.0 for n in names]
    ]


def test_a_long_description_and_a_quoted_separator_are_read_whole(tmp_path: Path) -> None:
    long = "x" * 100_000
    items = f'item_id,text,genres\na,{long},"Drama|War"\nb,"one, two",Sci-Fi\n'
    data = load_dataset(write(tmp_path, CSV | {"items.csv": items}))
    assert data.item_text == ["one, two", long]  # the encoder cuts it (trainer.text)
    assert data.item_feature_names == ["genre=Drama", "genre=Sci-Fi", "genre=War"]
