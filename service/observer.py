"""What the event path reports as it works. `service.metrics.Metrics` overrides every method
for Prometheus; this base reports nothing, for tools and tests that need no metrics."""

from __future__ import annotations


class StreamObserver:
    """The consumer's and the applier's reports; each method does nothing here."""

    def on_consumed(self, n: int) -> None:
        """A batch of `n` records is done (applied, dead-lettered or skipped) and its commit
        attempted; a batch that is retried is counted once, when it is done."""

    def on_batch(self, size: int, seconds: float) -> None:
        """One batched adaptation: `size` users re-adapted in `seconds`."""

    def on_event_applied(self, n: int) -> None:
        """`n` events were applied to user state (written to Redis)."""

    def on_dead_letter(self, reason: str) -> None:
        """One record went to the dead-letter topic; `reason` is a code of events.REASONS."""

    def on_replayed(self, n: int) -> None:
        """`n` valid events were at or below their users' applied offsets, so not applied."""

    def on_freshness(self, seconds: float) -> None:
        """One applied event: from its event time to its user's state being written."""

    def on_redis_error(self) -> None:
        """A Redis call failed; the batch will be retried."""

    def on_lag(self, partition: int, lag: int) -> None:
        """Records in `partition` not yet applied (high watermark minus position)."""

    def on_revoked(self, partition: int) -> None:
        """`partition` moved to another consumer: its lag is no longer this one's to report."""

    def on_adapted_with_profile(self, n: int) -> None:
        """`n` of the users a batch adapted started from a stored profile."""

    def on_unknown_feature_value(self, feature: str) -> None:
        """A profile value of `feature` that the model does not know was read as unknown."""

    def on_hit(self, hit: bool) -> None:
        """Whether an event's item was in its user's current top-k before it was applied."""

    def on_item_adapted(self, n: int) -> None:
        """`n` events were applied to a registered item's warm-up state."""

    def on_item_registered(self, implicit: bool) -> None:
        """An item was registered: by a client (UpsertItems) or at its first event."""
