"""The item cold-start protocol: the split, what training may see, the cold items' order,
and a whole evaluation on synthetic data with every method and its report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from service.cli import main
from trainer.data import Dataset
from trainer.item_protocol import cold_items, split_items, warm_only


def test_items_split_by_hash_into_warm_validation_and_test(
    synthetic_data: Callable[..., Dataset],
) -> None:
    data = synthetic_data(300, 400)
    split = split_items(data, 0)
    parts = [split.warm, split.valid, split.test]
    assert sum(map(len, parts)) == data.n_items
    assert len(np.unique(np.concatenate(parts))) == data.n_items
    assert [round(len(p) / data.n_items, 1) for p in parts] == [0.7, 0.1, 0.2]
    assert not np.array_equal(split_items(data, 1).test, split.test)


def test_training_sees_no_cold_item(synthetic_data: Callable[..., Dataset]) -> None:
    data = synthetic_data(300, 120)
    split = split_items(data, 0)
    warm = warm_only(data, split.warm)
    assert warm.item_ids == [data.item_ids[i] for i in split.warm]
    assert warm.n_items == len(split.warm) and warm.items.max() < warm.n_items
    kept = np.isin(data.items, split.warm)
    assert len(warm.items) == kept.sum()
    original = np.array(data.item_ids)[data.items[kept]]
    assert (np.array(warm.item_ids)[warm.items] == original).all()  # the same interactions
    assert np.array_equal(warm.item_features, data.item_features[split.warm])


def test_a_cold_item_s_users_come_in_time_order(synthetic_data: Callable[..., Dataset]) -> None:
    data = synthetic_data(300, 120)
    item = int(np.bincount(data.items).argmax())
    cold, chosen = cold_items(data, np.array([item]), 0, torch.zeros(data.n_items, 0))
    assert chosen.tolist() == [item]
    mine = np.flatnonzero(data.items == item)
    by_time = data.users[mine[np.argsort(data.timestamps[mine], kind="stable")]]
    assert cold.users[0].tolist() == by_time.tolist()
    few, _ = cold_items(data, np.array([item]), 0, torch.zeros(data.n_items, 0), len(mine) + 1)
    assert few.users == []


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("item-eval")
    data, out = root / "data", root / "eval"
    assert main(["synth", "--out", str(data), "--users", "400", "--items", "150"]) == 0
    command = ["evaluate", "--data", str(data), "--out", str(out), "--device", "cpu"]
    fast = ["--meta-steps", "40", "--eval-every", "20", "--item-start-steps", "40"]
    flags = ["--protocol", "item-coldstart", "--seeds", "0,1", "--support-sizes", "0,1,3"]
    assert main([*command, *fast, *flags, "--dim", "16"]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_every_method_is_scored_where_it_applies(evaluated: tuple[Path, dict]) -> None:
    _, results = evaluated
    assert results["protocol"]["name"] == "item-coldstart" and results["seeds"] == [0, 1]
    methods = results["methods"]
    expected = ["random", "feature_popularity", "cold_popularity", "content_knn"]
    assert list(methods) == [*expected, "content_map", "mf_foldin", "coldstart"]
    for name, by_n in methods.items():
        assert list(by_n) == ["0", "1", "3"]
        needs_support = name in ("cold_popularity", "mf_foldin")
        assert (by_n["0"] is None) == needs_support
        for row in by_n.values():
            if row is None:
                continue
            for metric in ("recall@20", "ndcg@20", "mixed_ndcg@20", "mixed_cold_share@20"):
                assert 0.0 <= row[metric] <= 1.0, (name, metric)


def test_our_model_learns_from_an_item_s_first_users(evaluated: tuple[Path, dict]) -> None:
    ours = evaluated[1]["methods"]["coldstart"]
    random = evaluated[1]["methods"]["random"]
    assert ours["3"]["ndcg@20"] > ours["0"]["ndcg@20"]
    assert ours["3"]["ndcg@20"] > random["3"]["ndcg@20"]


def test_the_report_reads_n_and_marks_what_does_not_apply(evaluated: tuple[Path, dict]) -> None:
    out, _ = evaluated
    report = (out / "results.md").read_text()
    assert "# csv: item-coldstart protocol" in report
    assert "| ndcg@20 | n=0 | n=1 | n=3 |" in report
    assert "| mixed_cold_share@20 | n=0 | n=1 | n=3 |" in report
    mf_row = next(line for line in report.splitlines() if line.startswith("| mf_foldin | -"))
    assert mf_row.count(" - ") == 1
    assert (out / "ndcg.png").stat().st_size > 0


def test_the_item_protocol_trains_its_own_models(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    args += ["--model", str(tmp_path), "--protocol", "item-coldstart"]
    assert main(args) == 2
    assert (
        "trains its own models on each seed's warm items; drop --model" in capsys.readouterr().err
    )
