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


def _curves(ndcg: dict[str, list[float]], mae: dict[str, list[float | None]]) -> dict:
    """Results at k = 0, 5, 10, 20 from each method's NDCG@20 and MAE there."""
    keys = ["0", "5", "10", "20"]

    def row(n: float, m: float | None) -> dict:
        return {"ndcg@20": n, "ndcg@20_std": 0.0, "recall@20": n, "mae": m, "rmse": m}

    return {
        "dataset": "toy",
        "protocol": {"name": "coldstart"},
        "seeds": [0],
        "per_seed": [{"n_test_users": 100}],
        "methods": {
            name: {k: row(n, m) for k, n, m in zip(keys, curve, mae[name], strict=True)}
            for name, curve in ndcg.items()
        },
    }


def _notes(results: dict, tmp_path: Path) -> str:
    write_markdown(results, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    return text[text.index("## Notes") :] if "## Notes" in text else ""


def test_a_note_explains_why_every_method_falls_once_k_is_large(tmp_path: Path) -> None:
    ndcg = {"popularity": [0.5, 0.48, 0.46, 0.42], "coldstart": [0.5, 0.6, 0.62, 0.61]}
    no_mae = dict.fromkeys(ndcg, [None] * 4)
    notes = _notes(_curves(ndcg, no_mae), tmp_path)
    assert "Every method's NDCG@20 falls from k=10 to k=20." in notes
    assert "the query set is the interactions after the first k" in notes.lower()
    assert "k=5 to" not in notes  # coldstart still rises there


def test_adjacent_falls_are_one_span_and_a_rising_method_means_no_note(tmp_path: Path) -> None:
    ndcg = {"popularity": [0.5, 0.48, 0.46, 0.42], "coldstart": [0.5, 0.6, 0.58, 0.55]}
    no_mae = dict.fromkeys(ndcg, [None] * 4)
    assert "falls from k=5 to k=20." in _notes(_curves(ndcg, no_mae), tmp_path)
    ndcg["coldstart"] = [0.5, 0.6, 0.62, 0.63]
    assert "falls" not in _notes(_curves(ndcg, no_mae), tmp_path)


def test_a_note_names_the_metrics_and_ks_where_a_baseline_beats_ours(tmp_path: Path) -> None:
    ndcg = {"popularity": [0.5, 0.4, 0.4, 0.4], "mf_finetune": [0.4] * 4, "coldstart": [0.6] * 4}
    ndcg["coldstart_as_served"] = [0.3] * 4  # our own variant is not a baseline
    mae = {
        "popularity": [0.78, 0.80, 0.80, 0.79],
        "mf_finetune": [0.70] * 4,
        "coldstart": [0.79, 0.79, 0.79, 0.79],
        "coldstart_as_served": [0.5] * 4,
    }
    notes = _notes(_curves(ndcg, mae), tmp_path)
    assert (
        "A baseline beats coldstart on mae (lower is better): popularity at k=0; "
        "mf_finetune at every k." in notes
    )
    assert "on ndcg@20" not in notes and "coldstart_as_served" not in notes


def test_no_note_where_ours_is_best_everywhere_and_no_curve_falls(tmp_path: Path) -> None:
    ndcg = {"popularity": [0.5] * 4, "coldstart": [0.6] * 4}
    mae = {"popularity": [0.9] * 4, "coldstart": [0.8] * 4}
    assert _notes(_curves(ndcg, mae), tmp_path) == ""
