"""results.md: what a reader of an evaluation sees."""

from pathlib import Path

from trainer.report import write_markdown


def _results(seeds: list[int], counts: list[int]) -> dict:
    row = {"ndcg@20": 0.5, "ndcg@20_std": 0.01, "recall@20": 0.4, "mae": None, "rmse": None}
    better = row | {"ndcg@20": 0.55}
    return {
        "dataset": "toy",
        "protocol": {"name": "coldstart"},
        "seeds": seeds,
        "per_seed": [{"n_test_users": n} for n in counts],
        "methods": {
            "popularity": {"3": row},
            "coldstart": {"3": better},
            "coldstart_as_served": {"3": row | {"ndcg@20": 0.52}},
        },
    }


def test_the_table_gives_each_seeds_test_users_and_the_spread_over_seeds(tmp_path: Path) -> None:
    write_markdown(_results([0, 1], [162, 158]), tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "162 / 158 test users in seeds [0, 1]" in text
    assert "| coldstart | 0.5500 ± 0.0100 |" in text
    assert "| mae |" not in text  # no method predicts ratings here
    assert "k=3: +10.0% vs popularity" in text  # our own as-served row is not a baseline


def test_one_seed_has_no_spread_to_show(tmp_path: Path) -> None:
    write_markdown(_results([0], [162]), tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "±" not in text and "| coldstart | 0.5500 |" in text


def test_a_best_baseline_at_zero_has_no_relative_gain(tmp_path: Path) -> None:
    results = _results([0], [162])
    results["methods"]["popularity"]["3"]["ndcg@20"] = 0.0
    write_markdown(results, tmp_path / "r.md")
    assert "k=3: n/a vs popularity" in (tmp_path / "r.md").read_text()
