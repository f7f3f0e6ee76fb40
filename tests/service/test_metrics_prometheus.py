"""Metrics: every name the monitoring contract promises, Prometheus conventions checked by
promtool on a scrape taken after traffic, private registries, bounded labels, and the HTTP
endpoint."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest

from service.metrics import Metrics, reason_label
from service.observer import StreamObserver

EXPECTED = {
    "coldstart_grpc_requests_total",
    "coldstart_grpc_request_duration_seconds_bucket",
    "coldstart_recommend_responses_total",
    "coldstart_events_ingested_total",
    "coldstart_events_rejected_total",
    "coldstart_events_consumed_total",
    "coldstart_events_applied_total",
    "coldstart_events_dead_lettered_total",
    "coldstart_events_replayed_total",
    "coldstart_consumer_lag_records",
    "coldstart_adaptation_batch_users_bucket",
    "coldstart_adaptation_duration_seconds_bucket",
    "coldstart_event_freshness_seconds_bucket",
    "coldstart_redis_errors_total",
    "coldstart_online_hit_checks_total",
    "coldstart_online_hits_total",
    "coldstart_model_info",
}


def traffic(metrics: Metrics) -> None:
    metrics.set_model("abc123", n_items=300, dim=64)
    for code, seconds in (("OK", 0.0004), ("OK", 0.002), ("INVALID_ARGUMENT", 0.0001)):
        metrics.observe_request("Recommend", code, seconds)
    metrics.observe_request("RecordEvents", "OK", 0.01)
    for state in ("cold", "adapted", "adapted", "degraded"):
        metrics.on_response(state)
    metrics.on_ingested(3)
    metrics.on_rejected("unknown_item")
    metrics.on_consumed(5)
    metrics.on_batch(4, 0.003)
    metrics.on_event_applied(4)
    metrics.on_dead_letter("bad_json")
    metrics.on_replayed(2)
    metrics.on_freshness(0.12)
    metrics.on_freshness(-0.5)  # clock skew: counted as fresh, never negative
    metrics.on_redis_error()
    metrics.on_lag(0, 12)
    metrics.on_lag(1, 0)
    metrics.on_hit(True)
    metrics.on_hit(False)


def base_names(metrics: Metrics) -> set[str]:
    return {name.split("{")[0] for name in metrics.values()}


def test_every_promised_metric_is_exposed_after_traffic() -> None:
    metrics = Metrics()
    traffic(metrics)
    assert base_names(metrics) >= EXPECTED
    values = metrics.values()
    assert values['coldstart_grpc_requests_total{code="OK",method="Recommend"}'] == 2
    bucket = (
        'coldstart_grpc_request_duration_seconds_bucket{code="OK",le="0.00025",method="Recommend"}'
    )
    assert bucket in values  # latency buckets start at 0.25 ms
    assert (
        values[
            'coldstart_grpc_request_duration_seconds_bucket{code="OK",le="0.0005",method="Recommend"}'
        ]
        == 1
    )
    assert values['coldstart_recommend_responses_total{state="adapted"}'] == 2
    assert values['coldstart_consumer_lag_records{partition="0"}'] == 12
    assert values["coldstart_online_hits_total"] == 1
    assert values["coldstart_online_hit_checks_total"] == 2
    assert values["coldstart_event_freshness_seconds_sum"] == pytest.approx(0.12)
    assert values['coldstart_model_info{dim="64",items="300",version="abc123"}'] == 1


def test_names_follow_prometheus_conventions() -> None:
    metrics = Metrics()
    traffic(metrics)
    for family in metrics.registry.collect():
        assert family.name.startswith("coldstart_"), family.name
        assert family.documentation
        assert "millis" not in family.name and "_ms" not in family.name


def test_promtool_finds_nothing_to_complain_about() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    metrics = Metrics(process=True)
    traffic(metrics)
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=metrics.scrape(), capture_output=True
    )
    assert checked.stdout + checked.stderr == b""
    assert checked.returncode == 0


def test_registries_are_private() -> None:
    first, second = Metrics(), Metrics()
    first.on_redis_error()
    assert first.values()["coldstart_redis_errors_total"] == 1
    assert second.values()["coldstart_redis_errors_total"] == 0


def test_reason_labels_are_bounded() -> None:
    assert reason_label("unknown_item") == "unknown_item"
    assert (
        reason_label("Item 'x' is not in the catalogue: whatever")
        == "item_x_is_not_in_the_catalogue"
    )
    assert len(reason_label("z" * 1000)) <= 40
    assert reason_label("!!!") == "unknown"


def test_metrics_implements_the_stream_observer() -> None:
    observer: StreamObserver = Metrics()
    for method in ("on_batch", "on_event_applied", "on_dead_letter", "on_replayed"):
        assert callable(getattr(observer, method))
    for method in ("on_freshness", "on_redis_error", "on_lag", "on_revoked", "on_hit"):
        assert callable(getattr(observer, method))


def test_a_revoked_partition_stops_reporting_its_lag() -> None:
    metrics = Metrics()
    metrics.on_lag(0, 5)
    metrics.on_lag(1, 7)
    metrics.on_revoked(1)
    metrics.on_revoked(3)  # never reported: nothing to remove, no error
    lags = {k: v for k, v in metrics.values().items() if "consumer_lag" in k}
    assert lags == {'coldstart_consumer_lag_records{partition="0"}': 5}


def test_http_endpoint_serves_the_registry() -> None:
    metrics = Metrics()
    traffic(metrics)
    server = metrics.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'coldstart_model_info{dim="64",items="300",version="abc123"} 1.0' in body
