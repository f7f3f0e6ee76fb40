"""Unit: replay's and demo's bad flags, and a port that cannot be bound, are one-line errors
(exit 2) before anything starts, not tracebacks after minutes of work."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError

from service import replay as replay_module
from service.cli import main
from service.metrics import Metrics
from service.replay import ReplayError, replay
from trainer.synth import write_synthetic


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--meta-steps", "0"], "--meta-steps must be at least 1, got 0"),
        (["--replay-users", "-1"], "--replay-users must be 0 or more, got -1"),
        (["--grpc-port", "99999"], "--grpc-port: 99999 is not a TCP port"),
        (["--metrics-port", "-2"], "--metrics-port: -2 is not a TCP port"),
    ],
)
def test_demo_refuses_bad_flags_before_it_trains(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"coldstart: error: {message}")
    assert "[1/5]" not in error


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kafka-bootstrap", "foo"], "--kafka-bootstrap: 'foo' is not host:port"),
        (["--topic", "bad topic!"], "--topic: 'bad topic!' must be at most 200"),
        (["--topic", ""], "--topic: must not be empty"),
    ],
)
def test_replay_refuses_bad_flags(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    given = ["replay", "--data", str(tmp_path), "--kafka-bootstrap", "127.0.0.1:9", *flags]
    assert main(given) == 2
    assert capsys.readouterr().err.startswith(f"coldstart: error: {message}")


def test_replay_and_demo_take_a_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The loaders' 'pass --format to choose' must name a flag these commands have."""
    given = ["replay", "--data", str(tmp_path), "--format", "ml-1m", "--kafka-bootstrap", "h:1"]
    assert main(given) == 2
    assert "ml-1m directory" in capsys.readouterr().err  # the forced layout's complaint
    assert main(["demo", "--data", str(tmp_path), "--format", "ml-1m"]) == 2
    assert "ml-1m directory" in capsys.readouterr().err


def test_a_replay_with_no_broker_is_a_replay_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_broker(**_: object) -> None:
        raise KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9")

    write_synthetic(tmp_path, n_users=60, n_items=50, seed=3)
    monkeypatch.setattr(replay_module, "KafkaProducer", no_broker)
    with pytest.raises(
        ReplayError, match=r"cannot reach Kafka at 127\.0\.0\.1:9: .*Unable to bootstrap"
    ):
        replay(tmp_path, "127.0.0.1:9", "events", users=5)


def test_a_taken_metrics_port_names_its_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port} \\(--metrics-host / --metrics-port"):
            Metrics().serve("127.0.0.1", port)
