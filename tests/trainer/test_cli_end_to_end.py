"""`coldstart synth`, `train` and `evaluate` end to end on synthetic data, and the
one-line errors a user sees for bad input."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from service.cli import main
from trainer.cli import _support_sizes


def test_train_then_evaluate_beats_popularity(
    tmp_path: Path, capsys, caplog, train_then_evaluate
) -> None:
    caplog.set_level(logging.INFO, logger="trainer.evaluate")
    run = train_then_evaluate("cpu")
    manifest, results = run.manifest, run.results
    assert manifest["seed"] == 0 and manifest["validation"]["valid_ndcg@20"] > 0
    assert 0 < manifest["validation"]["valid_ndcg@20_no_profile"] < 1
    assert results["per_seed"][0]["methods"]["item_knn"]["3"]["mae"] is None  # null, not NaN
    baselines = {"popularity", "item_knn", "mf_finetune", "melu"}
    assert set(results["methods"]) == baselines | {
        "coldstart",
        "coldstart_as_served",
        "coldstart_no_profile",
    }
    for name in results["methods"]:  # each fit says when it starts and how long it took
        assert f"seed 0: fitting {name}" in caplog.text
        assert f"seed 0: {name} fitted in " in caplog.text
    ours, popularity = results["methods"]["coldstart"], results["methods"]["popularity"]
    for k in ("3", "10"):
        assert ours[k]["ndcg@20"] > popularity[k]["ndcg@20"]
        assert ours[k]["mae"] is not None
    assert results["model_version"] == manifest["model_version"]
    assert results["seeds"] == [0]  # the model's own split: other seeds test its training users
    assert results["model_config"]["dim"] == 16  # the model's, not the flags' default
    assert (run.out / "ndcg.png").stat().st_size > 0
    assert "coldstart" in (run.out / "results.md").read_text()
    assert "| ndcg@20 |" in capsys.readouterr().out
    evaluate = run.evaluate
    assert main([*evaluate, "--seeds", "1"]) == 2
    assert "trained on the split of seed 0" in capsys.readouterr().err
    assert main([*evaluate, "--dim", "8", "--meta-steps", "7"]) == 2
    assert "own settings; drop --dim, --meta-steps" in capsys.readouterr().err
    shutil.copytree(run.data, tmp_path / "fewer")
    interactions = tmp_path / "fewer" / "interactions.csv"
    interactions.write_text("".join(interactions.read_text().splitlines(keepends=True)[:-1]))
    assert main([*evaluate[:2], str(tmp_path / "fewer"), *evaluate[3:]]) == 2
    assert "trained on different data" in capsys.readouterr().err
    shutil.copytree(run.data, tmp_path / "no_users")
    (tmp_path / "no_users" / "users.csv").unlink()
    assert main([*evaluate[:2], str(tmp_path / "no_users"), *evaluate[3:]]) == 2
    assert "other user features" in capsys.readouterr().err


def test_malformed_data_is_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "interactions.csv").write_text("user_id,item_id,rating\nu1,i1,x\n")
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith(f"coldstart: error: {tmp_path / 'interactions.csv'} line 2")
    assert "\n" not in error
    assert not (tmp_path / "m").exists()  # bad input leaves no empty --out behind


@pytest.fixture
def small(synthetic_dir) -> Path:
    """A synthetic data set of 50 users and 20 items: enough to get past the input checks."""
    return synthetic_dir(50, 20)


def test_a_corrupt_model_is_refused_with_exit_code_2(tmp_path: Path, small: Path, capsys) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("{")
    evaluate = ["evaluate", "--data", str(small), "--out", str(tmp_path / "e")]
    assert main([*evaluate, "--model", str(tmp_path / "model")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path, small: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", "--data", str(small), "--out", str(tmp_path / "m"), "--device", "cuda"])
    assert code == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()  # refused before --out was made


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("train", ["--meta-steps", "0"], "bad setting: meta_steps must be > 0, got 0"),
        ("train", ["--init-prior", "0"], "bad setting: init_prior must be > 0, got 0.0"),
        ("train", ["--support-sizes", "0,500"], "no validation user has the 505 interactions"),
        ("evaluate", ["--support-sizes", "0,500"], "no test user has at least 505 interactions"),
    ],
)
def test_impossible_settings_are_one_line_with_exit_code_2(
    tmp_path: Path, small: Path, capsys, command: str, flags: list[str], message: str
) -> None:
    code = main([command, "--data", str(small), "--out", str(tmp_path / "o"), *flags])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert message in error and "\n" not in error


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dim", "0"], "bad setting: dim must be > 0, got 0"),
        (["--users-per-step", "100000000"], "bad setting: users_per_step must be <= 16384"),
    ],
)
def test_a_bad_setting_is_refused_before_the_data_is_read(
    tmp_path: Path, capsys, command: str, flags: list[str], message: str
) -> None:
    """The data set may take minutes to load: a typo in a flag must not wait for it."""
    absent = tmp_path / "not-there"
    assert main([command, "--data", str(absent), "--out", str(tmp_path / "o"), *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"coldstart: error: {message}") and "\n" not in error


def test_a_path_of_the_wrong_kind_is_one_line_with_exit_code_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "a_file").write_text("")
    assert main(["synth", "--out", str(tmp_path / "a_file")]) == 2
    assert main(["synth", "--out", str(tmp_path / "d"), "--users", "40", "--items", "20"]) == 0
    (tmp_path / "d" / "users.csv").unlink()
    (tmp_path / "d" / "users.csv").mkdir()  # a side file that is a directory
    assert main(["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "m")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0].startswith("coldstart: error:") and "a_file" in errors[0]
    assert errors[1].startswith("coldstart: error:") and "users.csv" in errors[1]
    assert len(errors) == 2


def test_an_out_that_is_a_file_fails_before_any_work(tmp_path: Path, capsys) -> None:
    """Checked first: --data does not exist either, and the error is about --out."""
    (tmp_path / "a_file").write_text("")
    for command in ("train", "evaluate"):
        args = [command, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a_file")]
        assert main(args) == 2
        error = capsys.readouterr().err.strip()
        assert "a_file" in error and "nowhere" not in error


def test_no_training_user_with_two_interactions_is_one_line(tmp_path: Path, capsys) -> None:
    rows = "".join(f"u{u},i{u % 7}\n" for u in range(200))  # every user has one event
    (tmp_path / "interactions.csv").write_text("user_id,item_id\n" + rows)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    error = capsys.readouterr().err.strip()
    assert "no training user has 2 interactions" in error and "\n" not in error


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
@pytest.mark.parametrize("command", ["synth", "train"])
def test_a_seed_out_of_range_is_a_usage_error(
    tmp_path: Path, capsys, command: str, seed: str
) -> None:
    """numpy refuses negative seeds, and torch huge ones, with a traceback: argparse first."""
    args = [command, "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--seed", seed]
    with pytest.raises(SystemExit) as exited:  # argparse's exit, as for any bad flag
        main(args if command == "train" else [command, *args[3:]])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(f"argument --seed: '{seed}': need an integer from 0 to 4294967295")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--seeds", "0,0", "'0,0': a value is given twice"),
        ("--seeds", "0,,1", "'0,,1': an empty entry; write e.g. 0,1,3"),
        ("--support-sizes", "5,1,5", "'5,1,5': a value is given twice"),
        ("--support-sizes", "3,", "'3,': an empty entry; write e.g. 0,1,3"),
    ],
)
def test_a_list_flag_with_a_repeated_or_empty_entry_is_a_usage_error(
    tmp_path: Path, capsys, flag: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "o"), flag, value])
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"argument {flag}: {message}")


def test_support_sizes_are_taken_in_ascending_order() -> None:
    assert _support_sizes("5,0,1") == [0, 1, 5]


def test_synth_refuses_a_size_it_could_not_hold(tmp_path: Path, capsys) -> None:
    args = ["synth", "--out", str(tmp_path / "d"), "--users", str(10**12), "--items", "50"]
    assert main(args) == 2
    assert "--users is at most 2,000,000 and --items at most 20,000,000" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_an_out_directory_that_cannot_be_created_is_one_line(
    tmp_path: Path, small: Path, capsys
) -> None:
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "model"
    assert main(["train", "--data", str(small), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"coldstart: error: --out {out}: cannot create it (Not a directory)"


def test_train_keeps_side_file_items_without_interactions_as_cold_items(
    tmp_path: Path, capsys
) -> None:
    data, model = tmp_path / "data", tmp_path / "model"
    assert main(["synth", "--out", str(data), "--users", "300", "--items", "80"]) == 0
    items = data / "items.csv"
    genre = items.read_text().splitlines()[1].split(",")[1]
    items.write_text(items.read_text() + f"launch,{genre},2030\n")
    fast = ["--meta-steps", "20", "--eval-every", "10", "--item-start-steps", "20"]
    assert main(["train", "--data", str(data), "--out", str(model), *fast, "--dim", "8"]) == 0
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["cold_item_ids"] == ["launch"] and manifest["item_ids"][-1] == "launch"
    assert manifest["items"]["unseen_items"] == 1
    assert manifest["items"]["item_step"]["warm_after"] >= 1
    out = tmp_path / "eval"
    evaluate = ["evaluate", "--data", str(data), "--out", str(out), "--model", str(model)]
    assert main([*evaluate, "--support-sizes", "0,3"]) == 0
