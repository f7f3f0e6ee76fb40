"""Integration: GetUserState through gRPC against a real redis-server."""

from __future__ import annotations

import grpc
import pytest
from coldstart.v1 import recommender_pb2

from service.model import ServingModel
from tests.helpers.grpc_service import (
    Running,
    adapted_user,
)

Code = grpc.StatusCode


def test_get_user_state_summarises_stored_and_unknown_users(
    service: Running, model: ServingModel
) -> None:
    adapted_user(service, model, "state-user", model.item_ids[:4])
    stored = service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id="state-user"))
    assert stored.state == recommender_pb2.ADAPTED
    assert (stored.history_length, stored.state_version) == (4, 1)
    assert (stored.model_version, stored.updated_at_ms) == (model.version, 1_700_000_000_000)
    unknown = service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id="ghost"))
    assert unknown.state == recommender_pb2.COLD
    assert (unknown.history_length, unknown.state_version, unknown.updated_at_ms) == (0, 0, 0)
    with pytest.raises(grpc.RpcError) as raised:
        service.stub.GetUserState(recommender_pb2.GetUserStateRequest(user_id=""))
    assert raised.value.code() == Code.INVALID_ARGUMENT
