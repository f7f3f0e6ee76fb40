"""The gRPC server around the servicer: request decoding, health, reflection, TLS, shutdown.

Requests are decoded here, not by gRPC, so that a message gRPC cannot decode is the
servicer's INVALID_ARGUMENT (see `_add_servicer`). Health and reflection make `grpcurl`
and Kubernetes gRPC probes work without the proto files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from coldstart.v1 import recommender_pb2
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.servicer import RecommenderServicer, Undecodable

logger = logging.getLogger(__name__)

SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name


def _lenient(message: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def parse(raw: bytes) -> Message | Undecodable:
        try:
            return message.FromString(raw)
        except DecodeError as error:
            return Undecodable(f"the request is not a valid {message.DESCRIPTOR.name}: {error}")

    return parse


def _add_servicer(servicer: RecommenderServicer, server: grpc.Server) -> None:
    """What the generated add_RecommenderServicer_to_server does, but with requests read by
    _lenient: a message gRPC cannot decode otherwise fails inside gRPC as INTERNAL, before
    _rpc can count it, and mid-stream it ends RecordEvents without saying which of the
    earlier events were produced, so a client resending them applies them twice. Here it
    is INVALID_ARGUMENT, and in a stream one rejected event."""
    service = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]
    handlers = {}
    for method in service.methods:
        if method.server_streaming:  # none yet; each kind of method needs its own handler
            raise TypeError(f"{method.name}: a server-streaming method needs a handler here")
        kind = grpc.unary_unary_rpc_method_handler
        if method.client_streaming:
            kind = grpc.stream_unary_rpc_method_handler
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=_lenient(message_factory.GetMessageClass(method.input_type)),
            response_serializer=message_factory.GetMessageClass(
                method.output_type
            ).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


@dataclass
class GrpcServer:
    """A started gRPC server, its health service and the port it listens on."""

    server: grpc.Server
    health: health.HealthServicer
    port: int

    def not_serving(self) -> None:
        """Tell health checks to stop sending traffic (the first step of a shutdown)."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace_s: float) -> None:
        """Refuse new RPCs, give in-flight ones `grace_s`, then cancel them; returns when done."""
        self.not_serving()
        self.server.stop(grace_s).wait(grace_s + 1.0)


def start_server(
    servicer: RecommenderServicer,
    *,
    host: str = "[::]",
    port: int = 0,
    workers: int = 16,
    max_concurrent_rpcs: int = 256,
    max_message_bytes: int = 4 * 1024 * 1024,
    credentials: grpc.ServerCredentials | None = None,
) -> GrpcServer:
    """Starts the Recommender with health (SERVING) and reflection; port 0 picks a free one.
    With `credentials` the port speaks TLS only."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A client that vanished without closing its stream is found within about 80 s
            # (a ping a minute, 20 s to answer) and its RPC cancelled, freeing its worker and
            # RecordEvents slot, rather than after gRPC's default of two hours.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ],
    )
    _add_servicer(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    address = f"{host}:{port}"
    try:  # grpcio returns 0 or, since 1.60, raises RuntimeError when it cannot bind
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(
            f"cannot listen for gRPC on {host}:{port} (--grpc-host / --grpc-port): "
            "the port is taken or the address is not this machine's"
        )
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    tls = "off" if credentials is None else "on"
    logger.info("gRPC %s on %s:%s (TLS %s; health, reflection on)", SERVICE_NAME, host, bound, tls)
    return GrpcServer(server, health_servicer, bound)
