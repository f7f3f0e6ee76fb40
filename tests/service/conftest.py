"""Fixtures the service tests share: the real broker and Redis, and tiny trained models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.localstack import LocalStack
from service.model import ServingModel
from service.topics import create_topic
from tests.helpers.grpc_service import TOPIC, Running, running
from tests.helpers.tiny_model import write_tiny_model
from trainer import artifact


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """A tansu broker and a redis-server for the test module."""
    with LocalStack(kafka=True, redis=True) as started:
        yield started


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's artifact: 60 users, 40 items, dim 8."""
    return write_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_dir: Path) -> ServingModel:
    return ServingModel(artifact.load(model_dir))


@pytest.fixture(scope="module")
def stream_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger tiny model for the event path: 200 users, 100 items, dim 16."""
    return write_tiny_model(tmp_path_factory.mktemp("stream"), users=200, items=100, dim=16)


@pytest.fixture(scope="module")
def stream_model(stream_model_dir: Path) -> ServingModel:
    return ServingModel(artifact.load(stream_model_dir))


@pytest.fixture(scope="module")
def service(model: ServingModel, stack: LocalStack) -> Iterator[Running]:
    """The gRPC service on the stack, producing to TOPIC, at most 5 events a stream; an
    event's item must be in the catalogue (--unknown-items dead_letter)."""
    create_topic(stack.kafka_bootstrap, TOPIC, 2)
    with running(
        model, stack, stack.redis_url, max_events=5, register_unknown_items=False
    ) as started:
        yield started
