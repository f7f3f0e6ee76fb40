"""Integration: the gRPC server around the servicer, on a real redis-server: request
decoding, limits, health, reflection, request metrics, shutdown and port errors."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import grpc
import pytest
from coldstart.v1 import event_pb2, recommender_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from service.grpc_server import SERVICE_NAME
from service.localstack import LocalStack
from service.model import ServingModel
from tests.helpers.grpc_service import (
    NOT_UTF8_REQUEST,
    Running,
    adapted_user,
    event,
    held_stream,
    recommend,
    running,
)

Code = grpc.StatusCode


def test_a_request_that_is_not_valid_protobuf_is_invalid_argument_and_counted(
    service: Running,
) -> None:
    raw = service.channel.unary_unary(f"/{SERVICE_NAME}/Recommend")  # bytes in, bytes out
    labels = {"method": "Recommend", "code": "INVALID_ARGUMENT"}
    count = lambda: service.metrics.registry.get_sample_value(  # noqa: E731
        "coldstart_grpc_requests_total", labels
    )
    before = count() or 0.0
    with pytest.raises(grpc.RpcError) as raised:
        raw(NOT_UTF8_REQUEST, timeout=5)
    assert raised.value.code() == Code.INVALID_ARGUMENT
    assert "not a valid RecommendRequest" in raised.value.details()
    assert "bad UTF-8" in raised.value.details()
    assert count() == before + 1


def test_rpcs_beyond_the_concurrency_limit_are_refused_at_once(
    model: ServingModel, stack: LocalStack
) -> None:
    release = threading.Event()
    with running(model, stack, stack.redis_url, max_concurrent_rpcs=1) as started:
        # The stream holds the only RPC slot until released.
        held = started.stub.RecordEvents.future(held_stream(0, release), timeout=20)
        # Probing at once could take the slot first and get the stream itself refused.
        time.sleep(0.3)
        deadline = time.monotonic() + 10
        code = Code.OK
        while code is not Code.RESOURCE_EXHAUSTED and time.monotonic() < deadline:
            assert not held.done(), f"the held stream ended early: {held.exception()}"
            try:
                recommend(started, user_id="waiting", k=3)
            except grpc.RpcError as refused:
                code = refused.code()
        release.set()
        assert code is Code.RESOURCE_EXHAUSTED
        assert held.result().accepted == 2  # the RPC holding the slot was not disturbed
        # The server frees the slot just after the client has its answer: poll for it.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert recommend(started, user_id="after", k=3).state == recommender_pb2.COLD
                break
            except grpc.RpcError as refused:
                assert refused.code() is Code.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the slot was not freed"
                time.sleep(0.01)


def test_a_message_over_the_size_limit_is_resource_exhausted(
    model: ServingModel, stack: LocalStack
) -> None:
    with running(model, stack, stack.redis_url, max_message_bytes=1024) as started:
        assert recommend(started, user_id="small", k=3).state == recommender_pb2.COLD
        with pytest.raises(grpc.RpcError) as refused:
            recommend(started, user_id="big", k=3, candidate_item_ids=["i1"] * 1000)
    assert refused.value.code() == Code.RESOURCE_EXHAUSTED


def test_health_answers_serving(service: Running) -> None:
    health = health_pb2_grpc.HealthStub(service.channel)
    for name in ("", SERVICE_NAME):
        answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_the_services(service: Running) -> None:
    database = ProtoReflectionDescriptorDatabase(service.channel)
    services = database.get_services()
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(services)
    described = database.FindFileContainingSymbol(SERVICE_NAME)
    assert described.package == "coldstart.v1"
    assert "coldstart/v1/event.proto" in described.dependency


def test_metrics_count_requests_by_method_and_code_and_pass_promtool(
    service: Running, model: ServingModel
) -> None:
    """Makes its own traffic of each kind counted, so it passes alone or in any order."""
    adapted_user(service, model, "metrics-user", model.item_ids[:3])
    recommend(service, user_id="metrics-user", k=3)
    with pytest.raises(grpc.RpcError):
        recommend(service, user_id="metrics-user", k=-1)
    service.stub.RecordEvents(iter([event(0, type=event_pb2.EVENT_TYPE_UNSPECIFIED)]), timeout=15)
    with pytest.raises(grpc.RpcError):  # more events than the stream cap of 5
        service.stub.RecordEvents(iter([event(n) for n in range(8)]), timeout=15)
    values = service.metrics.values()
    assert values['coldstart_grpc_requests_total{code="OK",method="Recommend"}'] > 0
    assert values['coldstart_grpc_requests_total{code="INVALID_ARGUMENT",method="Recommend"}'] > 0
    assert values['coldstart_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="RecordEvents"}']
    assert values['coldstart_events_rejected_total{reason="unknown_type"}'] >= 1
    assert values['coldstart_recommend_responses_total{state="adapted"}'] > 0
    assert not any("UNKNOWN" in name or "INTERNAL" in name for name in values)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=service.metrics.scrape(), capture_output=True
    )
    assert checked.stdout + checked.stderr == b""
    assert checked.returncode == 0


def test_not_serving_after_shutdown_begins(model: ServingModel, stack: LocalStack) -> None:
    with running(model, stack, stack.redis_url) as svc:
        svc.server.not_serving()
        health = health_pb2_grpc.HealthStub(svc.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_a_port_another_program_holds_is_an_error_naming_the_flags(
    model: ServingModel, stack: LocalStack
) -> None:
    """(Replicas share a port through SO_REUSEPORT; a program without it blocks the port.)"""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = f"127.0.0.1:{port} \\(--grpc-host / --grpc-port\\)"
        with pytest.raises(OSError, match=flags), running(model, stack, stack.redis_url, port=port):
            pass
