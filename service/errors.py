"""Every error the service raises on purpose. Each says what is wrong in words a person can
act on.

Why one module: the code that decides (validation, ingestion, the store, the consumer)
stays free of grpc, and a reader finds every failure the service can report in one place.
The servicer maps them to gRPC statuses in one table (`service.servicer.STATUS`); the CLI
reports any `ColdstartError` as one line with exit code 2.
"""

from __future__ import annotations

from trainer.errors import ColdstartError


class InvalidRequest(ColdstartError):
    """A request field is out of range, empty, oversized or names something unknown."""


class UnknownFeatureError(ColdstartError):
    """A request named a side feature the model does not know."""


class StreamTooLong(ColdstartError):
    """A RecordEvents stream carried more events than one stream may."""


class TooManyStreams(ColdstartError):
    """As many RecordEvents streams are open as may be: each holds a gRPC worker thread."""


class IngestUnavailable(ColdstartError):
    """Events cannot be produced: the broker is unreachable or refuses them."""


class UnknownItemError(ColdstartError):
    """An item neither the model nor the live catalogue holds."""


class InvalidEvent(ColdstartError):
    """A record that is not a valid event: `reason` is a code of service.events.REASONS, the
    message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # one of service.events.REASONS
        self.message = message  # what is wrong, for a person


class HistoryError(ColdstartError):
    """A stored history entry cannot be read."""


class StoreError(ColdstartError):
    """A stored user record cannot be decoded; the message names the user and the field."""

    def __init__(self, user_id: str, message: str) -> None:
        super().__init__(message)
        self.user_id = user_id

    @classmethod
    def of(cls, user_id: str, error: Exception) -> StoreError:
        detail = f"{type(error).__name__}: {error}"
        return cls(user_id, f"user {user_id!r}: stored record is unreadable ({detail})")


class ItemStateError(ColdstartError):
    """A registered item's stored record cannot be read or written as one; the message
    names the item."""

    def __init__(self, item_id: str, message: str) -> None:
        super().__init__(message)
        self.item_id = item_id


class StoreUnavailable(ColdstartError):
    """Redis did not answer or refused a call: serving degrades, the consumer retries."""


class ConflictError(ColdstartError):
    """User writes kept losing compare-and-set races; the batch is retried."""


class SettingsError(ColdstartError):
    """One or more settings are invalid; the message names each one and why."""


class TopicError(ColdstartError):
    """A topic could not be created; the message names the topic, broker and cause."""


class LocalStackError(ColdstartError):
    """A local-stack engine is not installed, did not start, or did not answer in time."""


class ReplayError(ColdstartError):
    """No broker answered at the bootstrap address, or some events were not acknowledged."""
