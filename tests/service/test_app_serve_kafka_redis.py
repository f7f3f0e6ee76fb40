"""Integration: `coldstart serve` as a real process that starts its own tansu broker and
redis-server (no endpoints given), serves gRPC and metrics, turns a cold user ADAPTED after
their events, and drains cleanly on SIGTERM, leaving no engine process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from coldstart.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.localstack import free_port
from tests.helpers.waiting import eventually

COLDSTART = [sys.executable, "-c", "from service.cli import main; raise SystemExit(main())"]


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return ""


def serving(channel: grpc.Channel) -> bool:
    health = health_pb2_grpc.HealthStub(channel)
    try:
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
    except grpc.RpcError:
        return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def served(model_dir: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, int, Path]]:
    grpc_port, metrics_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "COLDSTART_MODEL": str(model_dir), "COLDSTART_GRACE_S": "2"}
    command = [*COLDSTART, "serve", "--grpc-port", str(grpc_port)]
    command += ["--grpc-host", "127.0.0.1", "--metrics-port", str(metrics_port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process, grpc_port, metrics_port, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_starts_its_stack_adapts_a_user_and_drains_on_sigterm(served) -> None:
    process, grpc_port, metrics_port, log = served
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        eventually(lambda: serving(channel), 60, f"health SERVING; log:\n{log.read_text()}")
        eventually(lambda: "coldstart_consumer_lag_records{" in scrape(metrics_port), 60, "join")
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        request = recommender_pb2.RecommendRequest(user_id="walk-in", k=5)
        assert stub.Recommend(request, timeout=5).state == recommender_pb2.COLD
        events = [
            event_pb2.Event(
                event_id=f"w{n}",
                user_id="walk-in",
                item_id=f"i{n}",
                type=event_pb2.CLICK,
                value=1.0,
                ts=time.time_ns() // 1_000_000,
            )
            for n in range(2)
        ]
        assert stub.RecordEvents(iter(events), timeout=10).accepted == 2

        def adapted() -> bool:
            answer = stub.Recommend(request, timeout=5)
            return answer.state == recommender_pb2.ADAPTED and answer.interactions_used == 2

        waited = eventually(adapted, 10, "ADAPTED after two events")
        print(f"events to ADAPTED in {waited * 1000:.0f} ms")
        body = scrape(metrics_port)
        assert "coldstart_events_applied_total 2.0" in body
        assert 'coldstart_recommend_responses_total{state="adapted"} 1.0' in body
    finally:
        channel.close()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    text = log.read_text()
    assert "SIGTERM: shutting down" in text
    assert "consumer closed" in text
    pids = [int(pid) for pid in re.findall(r"started (?:tansu|redis-server) \(pid (\d+)\)", text)]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_serve_refuses_bad_settings_with_a_message(model_dir: Path) -> None:
    command = [*COLDSTART, "serve", "--model", str(model_dir)]
    command += ["--grpc-port", "99999", "--redis-url", "http://nope"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--grpc-port / COLDSTART_GRPC_PORT: 99999 is not a TCP port" in done.stderr
    assert (
        "--redis-url / COLDSTART_REDIS_URL: 'http://nope' must start with redis://" in done.stderr
    )
