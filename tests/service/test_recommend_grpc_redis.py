"""Integration: Recommend through gRPC against a real redis-server: the cold, adapted and
re-adapted paths, seen-item filtering, candidates, every INVALID_ARGUMENT and its message,
DEGRADED when Redis is gone (never UNKNOWN), and a property test over the request's fields."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest
import torch
from coldstart.v1 import recommender_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import model as service_model
from service.history import History, HistoryEntry
from service.localstack import LocalStack
from service.model import ServingModel
from service.recommend import ThrottledWarning
from service.state import UserRecord
from service.store import user_key
from tests.helpers.grpc_service import (
    N_ITEMS,
    Running,
    adapted_user,
    ids,
    recommend,
    running,
)

Code = grpc.StatusCode

names = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)


def test_unknown_user_is_cold_from_the_prior(service: Running, model: ServingModel) -> None:
    response = recommend(service, user_id="nobody", k=10)
    assert response.state == recommender_pb2.COLD
    assert response.model_version == model.version
    assert (response.interactions_used, response.state_version) == (0, 0)
    assert ids(response) == [item for item, _ in model.top_k(model.prior, 10)]
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True)


def test_cold_user_with_features_is_conditioned_on_them(
    service: Running, model: ServingModel
) -> None:
    features = {name: "x" for name in model.feature_names}
    first = model.feature_names[0]
    features[first] = model.features.values[first][1].upper()  # a known value, as sent
    response = recommend(service, user_id="newcomer", k=5, features=features)
    expected = model.top_k(model.cold_vector(features), 5)
    assert response.state == recommender_pb2.COLD
    assert ids(response) == [item for item, _ in expected]
    assert list(response.features_used) == [first]


def test_a_request_without_k_gets_ten_items(service: Running) -> None:
    assert len(recommend(service, user_id="no-k").items) == 10


def test_adapted_user_is_scored_from_the_stored_vector_without_seen_items(
    service: Running, model: ServingModel
) -> None:
    seen = model.item_ids[:3]
    record = adapted_user(service, model, "adapted-1", seen)
    response = recommend(service, user_id="adapted-1", k=N_ITEMS)
    assert response.state == recommender_pb2.ADAPTED
    assert (response.interactions_used, response.state_version) == (3, 1)
    assert not set(ids(response)) & set(seen)
    assert len(response.items) == N_ITEMS - 3
    expected = model.top_k(torch.from_numpy(record.vector), 10, exclude=[0, 1, 2])
    # Compared by score: items with equal scores may come in either order.
    returned = [item.score for item in response.items[:10]]
    np.testing.assert_allclose(returned, [score for _, score in expected], rtol=1e-5)
    scores = model.scores(torch.from_numpy(record.vector))
    for item in response.items[:10]:
        assert item.score == pytest.approx(float(scores[model.item_index[item.item_id]]), rel=1e-5)


def test_include_seen_returns_history_items_too(service: Running, model: ServingModel) -> None:
    adapted_user(service, model, "adapted-2", model.item_ids[:3])
    response = recommend(service, user_id="adapted-2", k=N_ITEMS, include_seen=True)
    assert response.state == recommender_pb2.ADAPTED
    assert set(ids(response)) == set(model.item_ids)


def test_candidates_restrict_the_ranking_and_still_drop_seen(
    service: Running, model: ServingModel
) -> None:
    adapted_user(service, model, "adapted-3", model.item_ids[:2])
    candidates = model.item_ids[:6]
    response = recommend(service, user_id="adapted-3", k=10, candidate_item_ids=candidates)
    assert sorted(ids(response)) == sorted(candidates[2:])
    cold = recommend(service, user_id="cold-3", k=3, candidate_item_ids=candidates)
    assert len(cold.items) == 3 and set(ids(cold)) <= set(candidates)


def test_candidates_the_model_does_not_know_are_ignored(
    service: Running, model: ServingModel
) -> None:
    known = model.item_ids[:3]
    response = recommend(service, user_id="cold-4", k=10, candidate_item_ids=[*known, "new-item"])
    assert sorted(ids(response)) == sorted(known)
    assert recommend(service, user_id="cold-4", k=10, candidate_item_ids=["new-item"]).items == []


def count_adaptations(model: ServingModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that gains an entry at each call of model.adapt (for this test only)."""
    adapt, calls = model.adapt, []
    monkeypatch.setattr(model, "adapt", lambda *args: calls.append(1) or adapt(*args))
    return calls


def test_state_of_another_model_version_is_re_adapted_from_its_history(
    service: Running, model: ServingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = adapted_user(service, model, "old-model-user", model.item_ids[5:9], version="old")
    adapted = model.adapt([model.interactions(record.history)])[0]
    expected = model.top_k(adapted, 10, exclude=[5, 6, 7, 8])
    calls = count_adaptations(model, monkeypatch)
    for _ in range(2):  # the second read is served from the first's re-adaptation
        response = recommend(service, user_id="old-model-user", k=10)
        assert response.state == recommender_pb2.ADAPTED
        assert response.interactions_used == 4
        assert ids(response) == [item for item, _ in expected]
    assert len(calls) == 1
    # A new write of the user (still from the old model) is adapted afresh.
    newer = replace(
        record, history=History([HistoryEntry(model.item_ids[9], None)]), state_version=2
    )
    assert service.store.put_many([newer]) == {"old-model-user"}
    response = recommend(service, user_id="old-model-user", k=10)
    assert (response.interactions_used, response.state_version, len(calls)) == (1, 2, 2)
    assert model.item_ids[9] not in ids(response)


def test_re_adapted_vectors_are_kept_for_a_bounded_number_of_users(
    model: ServingModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_model, "READAPTED_CACHE", 2)
    calls = count_adaptations(model, monkeypatch)
    stale = [
        UserRecord(
            f"b{n}", np.zeros(model.dim, np.float32), History([HistoryEntry(item, None)]), "old", 1
        )
        for n, item in enumerate(model.item_ids[:3])
    ]
    for record in [*stale, stale[2], stale[0]]:
        model.vector(record, model.interactions(record.history))
    assert len(calls) == 4  # b2 was kept; b0, the oldest of three, was not


def test_an_unreadable_stored_state_answers_degraded_from_the_prior(
    service: Running, model: ServingModel
) -> None:
    adapted_user(service, model, "torn", model.item_ids[:2])
    adapted_user(service, model, "torn-older", model.item_ids[:2], version="older")  # re-adapts
    for user_id in ("torn", "torn-older"):
        service.store.client.hset(user_key(user_id), "h0", f"{model.item_ids[0]}\x1ffour")
    service.store.client.hset(user_key("no-vector"), mapping={"s": b"1"})
    for user_id in ("torn", "torn-older", "no-vector"):
        response = recommend(service, user_id=user_id, k=5)
        assert response.state == recommender_pb2.DEGRADED
        assert ids(response) == [item for item, _ in model.top_k(model.prior, 5)]
        state = service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id=user_id))
        assert state.state == recommender_pb2.DEGRADED
    torn = service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id="torn"))
    assert (torn.history_length, torn.state_version) == (1, 1)  # the stored, corrupt entry


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": "u", "k": -3}, "k must be between 1 and 1000 (or 0 for 10), got -3"),
        ({"user_id": "u", "k": 1001}, "k must be between 1 and 1000 (or 0 for 10), got 1001"),
        ({"user_id": "   ", "k": 5}, "user_id is blank"),
        ({"user_id": "u", "features": {"age": "2" * 10_000}}, "has 10000 characters"),
        ({"user_id": "", "k": 5}, "user_id is empty"),
        ({"user_id": "u" * 257, "k": 5}, "user_id has 257 characters, more than the limit of 256"),
        ({"user_id": "u\tv", "k": 5}, "user_id contains a control character"),
        (
            {"user_id": "u", "k": 5, "candidate_item_ids": ["i1"] * 10_001},
            "candidate_item_ids has 10001 ids, more than the limit of 10000",
        ),
        ({"user_id": "u", "k": 5, "features": {"shoe_size": "9"}}, "unknown feature shoe_size"),
        (  # many long unknown names: a few listed, each cut short, and a count
            {"user_id": "u", "k": 5, "features": {f"f{n:03d}" + "x" * 60: "1" for n in range(30)}},
            f"f004{'x' * 36}... and 25 more; this model knows",
        ),
    ],
)
def test_bad_requests_are_invalid_argument_with_a_message(
    service: Running, fields: dict, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        recommend(service, **fields)
    assert raised.value.code() == Code.INVALID_ARGUMENT
    assert message in raised.value.details()
    assert len(raised.value.details()) < 1024


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    user_id=st.one_of(names, st.sampled_from(["adapted-1", "old-model-user", "nobody"])),
    k=st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(-2, 1002)),
    include_seen=st.booleans(),
    features=st.dictionaries(
        st.one_of(st.sampled_from(["age", "gender", "occupation"]), names),
        names,
        max_size=4,
    ),
    candidates=st.lists(
        st.one_of(st.sampled_from([f"i{n}" for n in range(50)]), names), max_size=20
    ),
)
def test_no_request_sees_unknown_or_internal(
    service: Running, user_id: str, k: int, include_seen: bool, features: dict, candidates: list
) -> None:
    request = recommender_pb2.RecommendRequest(
        user_id=user_id,
        k=k,
        include_seen=include_seen,
        features=features,
        candidate_item_ids=candidates,
    )
    try:
        response = service.stub.Recommend(request, timeout=5)
    except grpc.RpcError as error:
        assert error.code() == Code.INVALID_ARGUMENT, error.details()
        assert error.details()
        return
    assert response.state in (recommender_pb2.COLD, recommender_pb2.ADAPTED)
    assert len(response.items) <= (k or 10)  # fewer when the candidates are all seen
    if candidates:
        assert set(ids(response)) <= set(candidates)


def test_redis_stopped_answers_degraded_never_unknown(
    model: ServingModel, stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.recommend")
    with LocalStack(kafka=False, redis=True) as own, running(model, stack, own.redis_url) as svc:
        adapted_user(svc, model, "will-degrade", model.item_ids[:3])
        assert recommend(svc, user_id="will-degrade", k=5).state == recommender_pb2.ADAPTED
        own.stop()  # the Redis process is gone; the pooled connection breaks
        for _ in range(3):
            started = time.perf_counter()
            response = recommend(svc, user_id="will-degrade", k=5)
            assert time.perf_counter() - started < 1.0
            assert response.state == recommender_pb2.DEGRADED
            assert ids(response) == [item for item, _ in model.top_k(model.prior, 5)]
        state = svc.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id="will-degrade"))
        assert state.state == recommender_pb2.DEGRADED
        values = svc.metrics.values()
        assert values["coldstart_redis_errors_total"] >= 4
        assert values['coldstart_recommend_responses_total{state="degraded"}'] == 3
    degraded_lines = [r for r in caplog.records if "answering from the prior" in r.getMessage()]
    assert len(degraded_lines) == 1  # four degraded answers, one line: an outage is not a flood


def test_a_throttled_warning_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.recommend")
    warn = ThrottledWarning(interval_s=0.2)
    for n in range(5):
        warn("degraded %s", n)
    time.sleep(0.25)
    warn("degraded %s", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "degraded 0",
        "degraded 5 (4 more such answers since the last line)",
    ]


def test_a_stored_profile_the_model_cannot_read_gives_way_to_the_requests_features(
    service: Running, model: ServingModel
) -> None:
    """A profile kept from an earlier model, naming features this one lacks."""
    stale = UserRecord("stale-profile", model.prior.numpy(), History(), model.version, 1)
    assert service.store.put_many([replace(stale, profile={"zip": "10001"})])
    first = model.feature_names[0]
    features = {first: model.features.values[first][1]}
    response = recommend(service, user_id="stale-profile", k=5, features=features)
    assert response.state == recommender_pb2.COLD
    assert list(response.features_used) == [first]
