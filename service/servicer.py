"""The `coldstart.v1.Recommender` servicer: protobuf in, a domain call, protobuf out.

Every method runs under `_rpc`, the one place where a domain error becomes a gRPC status
(the `STATUS` table) and where each call is timed and counted by method and code. The
domain calls are `service.recommend` (Recommend, GetUserState) and `service.ingest`
(RecordEvents); `service.grpc_server` starts the server around this servicer.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from coldstart.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc

from service.errors import (
    ConflictError,
    IngestUnavailable,
    InvalidEvent,
    InvalidRequest,
    StoreError,
    StoreUnavailable,
    StreamTooLong,
    TooManyStreams,
    UnknownFeatureError,
    UnknownItemError,
)
from service.events import UNDECODABLE
from service.ingest import Ingestor
from service.item_registry import ItemRegistry
from service.metrics import Metrics
from service.profiles import ProfileWriter
from service.recommend import Recommender, RecommendQuery

logger = logging.getLogger(__name__)

# The one table from domain error to gRPC status; the first matching class wins.
STATUS: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownFeatureError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidEvent, grpc.StatusCode.INVALID_ARGUMENT),
    (StreamTooLong, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TooManyStreams, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (IngestUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConflictError, grpc.StatusCode.ABORTED),
    (UnknownItemError, grpc.StatusCode.NOT_FOUND),
)
STATE_KIND = {
    "cold": recommender_pb2.COLD,
    "adapted": recommender_pb2.ADAPTED,
    "degraded": recommender_pb2.DEGRADED,
}
ITEM_STATE_KIND = {
    "trained": recommender_pb2.ITEM_STATE_TRAINED,
    "cold": recommender_pb2.ITEM_STATE_COLD,
    "warming": recommender_pb2.ITEM_STATE_WARMING,
}
Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True)
class Undecodable:
    """A request message that is not valid protobuf, e.g. a string field that is not UTF-8."""

    reason: str


def status_for(error: Exception) -> grpc.StatusCode:
    """The gRPC status of a domain error (INTERNAL for anything unexpected)."""
    for kind, code in STATUS:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _rpc(method: str) -> Callable[[Handler], Handler]:
    """Times and counts a servicer method by code, and turns domain errors into statuses."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def call(self: RecommenderServicer, request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                if isinstance(request, Undecodable):
                    raise InvalidRequest(request.reason)
                return handler(self, request, context)
            except Exception as error:
                code = status_for(error)
                if code is grpc.StatusCode.INTERNAL:
                    if not context.is_active():
                        code = grpc.StatusCode.CANCELLED
                        raise
                    logger.exception("%s failed", method)
                    context.abort(code, f"internal error in {method}")
                context.abort(code, str(error))
            finally:
                self.metrics.observe_request(method, code.name, time.perf_counter() - started)

        return call  # type: ignore[return-value]

    return decorate


# The JSON type of each EventType number. proto3 keeps a number it does not know (a newer
# client's), which stays a number here, for the parser to reject as unknown_type.
_EVENT_TYPES = {number: name.lower() for name, number in event_pb2.EventType.items()}
_EVENT_TYPES[0] = "unspecified"


def _event_document(event: event_pb2.Event | Undecodable) -> dict[str, Any] | InvalidEvent:
    """A protobuf Event as the JSON mapping the event parser checks."""
    if isinstance(event, Undecodable):
        return InvalidEvent(UNDECODABLE, event.reason)
    kind = _EVENT_TYPES.get(event.type, str(event.type))
    document: dict[str, Any] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "type": kind,
        "ts": event.ts,  # 0, proto3's unset, reads as absent
        "features": dict(event.features),
    }
    if event.HasField("value"):
        document["value"] = event.value
    return document


class RecommenderServicer(recommender_pb2_grpc.RecommenderServicer):
    """Protobuf in, domain call, protobuf out."""

    def __init__(
        self,
        recommender: Recommender,
        ingestor: Ingestor,
        profiles: ProfileWriter,
        metrics: Metrics,
        items: ItemRegistry,
    ) -> None:
        self.recommender = recommender
        self.ingestor = ingestor
        self.profiles = profiles
        self.metrics = metrics
        self.items = items

    @_rpc("Recommend")
    def Recommend(
        self, request: recommender_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.RecommendResponse:
        answer = self.recommender.recommend(
            RecommendQuery(
                user_id=request.user_id,
                k=request.k,
                include_seen=request.include_seen,
                features=dict(request.features),
                candidates=list(request.candidate_item_ids),
            )
        )
        return recommender_pb2.RecommendResponse(
            items=[recommender_pb2.ScoredItem(item_id=i, score=s) for i, s in answer.items],
            model_version=answer.model_version,
            state=STATE_KIND[answer.state],
            interactions_used=answer.interactions_used,
            state_version=answer.state_version,
            features_used=answer.features_used,
        )

    @_rpc("RecordEvents")
    def RecordEvents(
        self, request_iterator: Iterator[event_pb2.Event], context: grpc.ServicerContext
    ) -> recommender_pb2.RecordEventsResponse:
        result = self.ingestor.ingest(_event_document(event) for event in request_iterator)
        return recommender_pb2.RecordEventsResponse(
            accepted=result.accepted,
            rejected=result.rejected,
            rejections=[
                recommender_pb2.EventRejection(index=i, event_id=e, reason=r)
                for i, e, r in result.rejections
            ],
        )

    @_rpc("GetUserState")
    def GetUserState(
        self, request: recommender_pb2.GetUserStateRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.UserState:
        summary = self.recommender.user_state(request.user_id)
        return recommender_pb2.UserState(
            user_id=summary.user_id,
            state=STATE_KIND[summary.state],
            history_length=summary.history_length,
            state_version=summary.state_version,
            model_version=summary.model_version,
            updated_at_ms=summary.updated_at_ms,
            profile=summary.profile,
        )

    @_rpc("UpsertUser")
    def UpsertUser(
        self, request: recommender_pb2.UpsertUserRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.UpsertUserResponse:
        update = self.profiles.upsert(request.user_id, dict(request.features))
        return recommender_pb2.UpsertUserResponse(
            profile=update.profile,
            features_used=update.features_used,
            state_version=update.state_version,
        )

    @_rpc("GetModelInfo")
    def GetModelInfo(
        self, request: recommender_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.ModelInfo:
        model = self.recommender.model
        return recommender_pb2.ModelInfo(
            model_version=model.version,
            items=len(model.item_ids),
            dim=model.dim,
            user_features=[
                recommender_pb2.UserFeature(name=name, values=values, rule=rule)
                for name, values, rule in model.describe_features()
            ],
            item_features=model.item_feature_names,
            live_items=len(model.live),
        )

    @_rpc("UpsertItems")
    def UpsertItems(
        self, request: recommender_pb2.UpsertItemsRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.UpsertItemsResponse:
        result = self.items.upsert([_item_document(item) for item in request.items])
        return recommender_pb2.UpsertItemsResponse(
            accepted=result.accepted, registered=result.registered, retired=result.retired
        )

    @_rpc("GetItemState")
    def GetItemState(
        self, request: recommender_pb2.GetItemStateRequest, context: grpc.ServicerContext
    ) -> recommender_pb2.ItemState:
        summary = self.items.state(request.item_id)
        entry = summary.entry
        return recommender_pb2.ItemState(
            item_id=summary.item_id,
            state=ITEM_STATE_KIND[summary.state],
            interactions=summary.interactions,
            registered_at_ms=summary.registered_at_ms,
            features={
                name: recommender_pb2.FeatureValues(values=values)
                for name, values in (entry.features.items() if entry else ())
            },
            text=entry.text if entry else "",
            available=entry.available if entry else True,
            model_version=self.recommender.model.version,
        )


def _item_document(item: recommender_pb2.ItemUpsert) -> dict[str, Any]:
    """A protobuf ItemUpsert as the items topic's JSON fields; a field not set is absent."""
    document: dict[str, Any] = {"item_id": item.item_id}
    if item.features:
        document["features"] = {name: list(v.values) for name, v in item.features.items()}
    if item.HasField("text"):
        document["text"] = item.text
    if item.HasField("available"):
        document["available"] = item.available
    return document
