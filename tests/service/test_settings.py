"""Settings: flags beat COLDSTART_* variables beat defaults; bad values stop start-up with a
message naming the setting and why; a Redis password never reaches what is logged."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.cli import build_parser
from service.settings import Settings, SettingsError, add_flags, redact_url, resolve


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    (tmp_path / "manifest.json").write_text("{}")
    return tmp_path


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(list(flags))


def test_defaults_apply_when_nothing_is_given(manifest_dir: Path) -> None:
    settings = resolve(parse("--model", str(manifest_dir)), env={})
    assert settings == Settings(model=manifest_dir)
    assert (settings.grpc_port, settings.metrics_port) == (50051, 9464)
    assert settings.topic == "coldstart.events"
    assert settings.kafka_bootstrap is None and settings.redis_url is None


def test_environment_sets_and_flags_override(manifest_dir: Path) -> None:
    env = {
        "COLDSTART_MODEL": str(manifest_dir),
        "COLDSTART_GRPC_PORT": "6000",
        "COLDSTART_METRICS_PORT": "6001",
        "COLDSTART_REDIS_URL": "redis://cache:6379/2",
        "COLDSTART_HISTORY_LIMIT": "20",
        "COLDSTART_GRACE_S": "2.5",
    }
    from_env = resolve(parse(), env=env)
    assert (from_env.model, from_env.grpc_port, from_env.metrics_port) == (manifest_dir, 6000, 6001)
    assert (from_env.redis_url, from_env.history_limit, from_env.grace_s) == (
        "redis://cache:6379/2",
        20,
        2.5,
    )
    overridden = resolve(parse("--grpc-port", "7000", "--history-limit", "5"), env=env)
    assert (overridden.grpc_port, overridden.history_limit) == (7000, 5)
    assert overridden.metrics_port == 6001


def test_a_true_false_flag_alone_means_true(manifest_dir: Path) -> None:
    env = {"COLDSTART_REDIS_CLUSTER": "true"}
    assert resolve(parse("--model", str(manifest_dir), "--redis-cluster"), env={}).redis_cluster
    off = parse("--model", str(manifest_dir), "--redis-cluster", "false")
    assert not resolve(off, env=env).redis_cluster


def test_an_empty_variable_counts_as_unset(manifest_dir: Path) -> None:
    settings = resolve(parse("--model", str(manifest_dir)), env={"COLDSTART_KAFKA_BOOTSTRAP": ""})
    assert settings.kafka_bootstrap is None


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        (
            ["--grpc-port", "70000"],
            {},
            "--grpc-port / COLDSTART_GRPC_PORT: 70000 is not a TCP port",
        ),
        (
            [],
            {"COLDSTART_METRICS_PORT": "-1"},
            "--metrics-port / COLDSTART_METRICS_PORT: -1 is not",
        ),
        (
            [],
            {"COLDSTART_GRPC_PORT": "fifty"},
            "--grpc-port / COLDSTART_GRPC_PORT: 'fifty' is not a whole number "
            "(from COLDSTART_GRPC_PORT)",
        ),
        (["--metrics-port", "50051"], {}, "COLDSTART_METRICS_PORT: 50051 is also the gRPC port"),
        (["--redis-url", "http://cache:6379"], {}, "--redis-url / COLDSTART_REDIS_URL: "),
        (["--redis-url", "redis://"], {}, "'redis://' names no host"),
        (["--redis-url", "redis://cache:99999"], {}, "is not a valid URL"),
        (["--redis-url", "redis://cache:6379/x"], {}, "must be a database number"),
        (["--kafka-bootstrap", "broker"], {}, "'broker' is not host:port"),
        (["--kafka-bootstrap", "a:9092,"], {}, "not a comma-separated list of host:port"),
        (["--topic", "bad topic!"], {}, "--topic / COLDSTART_TOPIC: 'bad topic!' must be"),
        (["--history-limit", "0"], {}, "COLDSTART_HISTORY_LIMIT: 0 is below the minimum 1"),
        (["--grace-s", "0"], {}, "COLDSTART_GRACE_S: 0.0 is not a number of seconds from 0.001"),
        (["--grace-s", "inf"], {}, "COLDSTART_GRACE_S: inf is not a number of seconds"),
        (["--redis-timeout-s", "1e300"], {}, "1e+300 is not a number of seconds from 0.001 to 60"),
        ([], {"COLDSTART_MODEL_RELOAD_S": "nan"}, "COLDSTART_MODEL_RELOAD_S: nan is not a number"),
        (["--model-reload-s", "-1"], {}, "-1.0 is not a number of seconds from 0.0 to 86400.0"),
        (["--grpc-workers", "1"], {}, "COLDSTART_GRPC_WORKERS: 1 is below the minimum 2"),
    ],
)
def test_bad_values_name_the_setting_and_why(
    manifest_dir: Path, flags: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        resolve(parse("--model", str(manifest_dir), *flags), env=env)
    assert message in str(raised.value)


def test_model_dir_must_exist_and_hold_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="--model / COLDSTART_MODEL: required"):
        resolve(parse(), env={})
    with pytest.raises(SettingsError, match=r"COLDSTART_MODEL: \S+ does not exist"):
        resolve(parse("--model", str(tmp_path / "absent")), env={})
    with pytest.raises(SettingsError, match=r"has no manifest\.json"):
        resolve(parse("--model", str(tmp_path)), env={})


def test_every_problem_is_reported_at_once(manifest_dir: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        resolve(parse("--model", str(manifest_dir), "--grpc-port", "0x", "--poll-batch-size", "x"))
    lines = str(raised.value).splitlines()
    assert lines[0] == "invalid settings:"
    assert len(lines) == 3


def test_redis_password_is_masked_in_what_is_logged(manifest_dir: Path) -> None:
    url = "redis://user:hunter2@cache:6379/0"
    settings = resolve(parse("--model", str(manifest_dir), "--redis-url", url), env={})
    assert settings.redis_url == url
    described = settings.describe()
    assert "hunter2" not in repr(described)
    assert described["redis_url"] == "redis://user:***@cache:6379/0"
    assert redact_url("redis://:s3cret@cache") == "redis://:***@cache"
    with pytest.raises(SettingsError) as raised:
        resolve(parse("--model", str(manifest_dir), "--redis-url", "http://:hunter2@x"), env={})
    assert "hunter2" not in str(raised.value)


def test_serve_command_has_a_flag_per_setting() -> None:
    args = build_parser().parse_args(["serve", "--model", "m", "--grpc-port", "1"])
    assert (args.model, args.grpc_port, args.redis_url) == ("m", "1", None)
