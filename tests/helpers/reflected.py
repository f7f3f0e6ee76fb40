"""A gRPC client that knows the API only from the server's reflection service: what an
outside client (grpcurl, another language) has, with no generated code."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "coldstart.v1.Recommender"


class ReflectedClient:
    """Calls the Recommender's unary methods with requests and answers as JSON-like dicts."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        self.methods = pool.FindServiceByName(SERVICE).methods_by_name

    def call(self, method: str, request: dict[str, Any], timeout_s: float = 10.0) -> dict:
        """A unary call."""
        stub = self.channel.unary_unary(f"/{SERVICE}/{method}", **self._codec(method))
        return _as_dict(stub(request, timeout=timeout_s))

    def stream(self, method: str, requests: list[dict[str, Any]], timeout_s: float = 15.0) -> dict:
        """A client-streaming call (RecordEvents)."""
        stub = self.channel.stream_unary(f"/{SERVICE}/{method}", **self._codec(method))
        return _as_dict(stub(iter(requests), timeout=timeout_s))

    def _codec(self, method: str) -> dict[str, Any]:
        """Dicts in and messages out, by the method's reflected message types."""
        described = self.methods[method]
        request_class = GetMessageClass(described.input_type)
        return {
            "request_serializer": lambda request: json_format.ParseDict(
                request, request_class()
            ).SerializeToString(),
            "response_deserializer": GetMessageClass(described.output_type).FromString,
        }


def _as_dict(answer: Any) -> dict:
    return json_format.MessageToDict(
        answer,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )
