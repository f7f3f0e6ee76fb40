"""A new model written into the model directory is served without a restart, users adapted
under the old one keep their personalisation (re-adapted from their stored history), and a
torn or corrupt artifact is refused while the current model keeps serving.

The whole service runs, on its embedded broker and Redis."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from coldstart.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc

from service.app import Service
from service.settings import resolve
from tests.helpers.tiny_model import write_tiny_model
from tests.helpers.waiting import eventually
from trainer import artifact


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Service, recommender_pb2_grpc.RecommenderStub]]:
    model_dir = write_tiny_model(tmp_path / "first", dim=8)
    settings = resolve(
        {"model": model_dir, "grpc_port": 0, "metrics_port": 0, "model_reload_s": 0.1}, env={}
    )
    with (
        Service(settings) as service,
        grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel,
    ):
        yield service, recommender_pb2_grpc.RecommenderStub(channel)


def recommend(stub: recommender_pb2_grpc.RecommenderStub) -> recommender_pb2.RecommendResponse:
    return stub.Recommend(recommender_pb2.RecommendRequest(user_id="u-reload", k=5), timeout=5)


def test_a_new_model_is_picked_up_and_users_keep_their_history(served) -> None:
    service, stub = served
    model_dir = service.settings.model
    first = artifact.version_of(model_dir)
    events = [
        event_pb2.Event(
            event_id=f"r{n}",
            user_id="u-reload",
            item_id=item,
            type=event_pb2.CLICK,
            value=1.0,
            ts=1_700_000_000_000 + n,
        )
        for n, item in enumerate(["i1", "i2", "i3"])
    ]
    assert stub.RecordEvents(iter(events), timeout=15).accepted == 3
    eventually(lambda: recommend(stub).state == recommender_pb2.ADAPTED, 15, "adapted")
    assert recommend(stub).model_version == first

    # The trainer Job writes a new artifact into the same directory.
    second_dir = write_tiny_model(model_dir.parent / "second", dim=12)
    second = artifact.version_of(second_dir)
    assert second != first
    for name in (artifact.WEIGHTS, artifact.MANIFEST):  # the order artifact.save writes them
        shutil.copy(second_dir / name, model_dir / name)
    eventually(lambda: recommend(stub).model_version == second, 10, "the new model served")
    answer = recommend(stub)
    assert (answer.state, answer.interactions_used) == (recommender_pb2.ADAPTED, 3)
    assert {item.item_id for item in answer.items}.isdisjoint({"i1", "i2", "i3"})
    assert f'version="{second}"' in service.metrics.scrape().decode()


def test_a_corrupt_artifact_is_refused_and_the_current_model_keeps_serving(
    served, caplog: pytest.LogCaptureFixture
) -> None:
    service, stub = served
    model_dir = service.settings.model
    current = artifact.version_of(model_dir)
    other = write_tiny_model(model_dir.parent / "other", dim=12)
    shutil.copy(other / artifact.MANIFEST, model_dir / artifact.MANIFEST)  # weights not matching
    eventually(lambda: "new model refused" in caplog.text, 10, "the refusal logged")
    assert "contents do not match the manifest" in caplog.text
    assert recommend(stub).model_version == current
    assert service.model is not None and service.model.version == current
