"""The service's domain errors. Each says what is wrong in words a client can act on.

Why a hierarchy instead of status codes: the code that decides (validation,
ingestion) stays free of grpc, and the translation to a gRPC status happens in
one table, `service.server.STATUS`, so every RPC maps the same error the same
way. Errors raised elsewhere (`service.model.UnknownFeatureError`,
`service.events.InvalidEvent`) join the same table there.
"""

from __future__ import annotations

from trainer.errors import ColdstartError


class ServiceError(ColdstartError):
    """Base of the errors a request can cause."""


class InvalidRequest(ServiceError):
    """A request field is out of range, empty, oversized or names something unknown."""


class StreamTooLong(ServiceError):
    """A RecordEvents stream carried more events than one stream may."""


class TooManyStreams(ServiceError):
    """As many RecordEvents streams are open as may be: each holds a gRPC worker thread."""


class IngestUnavailable(ServiceError):
    """Events cannot be produced: the broker is unreachable or refuses them."""
