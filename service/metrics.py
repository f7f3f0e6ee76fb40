"""Every Prometheus metric of the service, in one module, on one registry per process.

Why one module: an operator reading a dashboard finds each series' definition,
labels and unit by guessing this file, and a name change happens in one place.
Why its own `CollectorRegistry` (not the global default): two services in one
process (tests, the demo) must not share counters or collide on registration.

Names follow Prometheus conventions, which `promtool check metrics` enforces:
a `coldstart_` prefix, base units in the name (`_seconds`), `_total` on
counters only. Label values are bounded: gRPC method and status names, the
three response kinds, a fixed set of dead-letter and rejection reasons, and
partition numbers.

`Metrics` is also the event path's observer (`service.observer.StreamObserver`: the
applier and the consumer call its `on_*` methods), so neither imports prometheus_client.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from service.observer import StreamObserver

logger = logging.getLogger(__name__)

# Request latency, from 0.25 ms (a cache-hot Recommend) to 2.5 s (a stuck dependency).
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# Event time to state written: the freshness target is p99 <= 500 ms.
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Users per adaptation call: from one event to a full poll batch.
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
STATE_KINDS = ("cold", "adapted", "degraded")
MAX_REASON_LENGTH = 40
_UNSAFE = re.compile(r"[^a-z0-9_]+")


def reason_label(reason: str) -> str:
    """A bounded label value for a reason: its first words, snake_cased.

    Producers of reasons should pass a short code ("bad_json", "unknown_item"); a
    free-text message is cut to its leading words so one bad client cannot mint
    unbounded series.
    """
    words = _UNSAFE.sub("_", reason.lower().split(":")[0]).strip("_")
    return words[:MAX_REASON_LENGTH].rstrip("_") or "unknown"


class Metrics(StreamObserver):
    """The service's metrics on a private registry; the event path's observer as well."""

    def __init__(self, *, process: bool = False) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if process:  # resident memory and CPU of this process (Linux /proc)
            ProcessCollector(registry=r)
        self.requests = Counter(
            "coldstart_grpc_requests",
            "gRPC requests handled, by method and status code.",
            ("method", "code"),
            registry=r,
        )
        self.request_seconds = Histogram(
            "coldstart_grpc_request_duration_seconds",
            "gRPC request handling time, by method and status code.",
            ("method", "code"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.responses = Counter(
            "coldstart_recommend_responses",
            "Recommend answers by where the user vector came from: cold, adapted or degraded.",
            ("state",),
            registry=r,
        )
        self.events_ingested = Counter(
            "coldstart_events_ingested",
            "Events accepted by RecordEvents and produced to the events topic.",
            registry=r,
        )
        self.events_rejected = Counter(
            "coldstart_events_rejected",
            "Events refused by RecordEvents, by reason.",
            ("reason",),
            registry=r,
        )
        self.events_consumed = Counter(
            "coldstart_events_consumed",
            "Records of the events topic the consumer is done with (applied, dead-lettered "
            "or skipped as replays), each once however often its batch was retried.",
            registry=r,
        )
        self.events_applied = Counter(
            "coldstart_events_applied",
            "Events applied to user state and written to Redis.",
            registry=r,
        )
        self.events_dead_lettered = Counter(
            "coldstart_events_dead_lettered",
            "Records sent to the dead-letter topic, by reason.",
            ("reason",),
            registry=r,
        )
        self.events_replayed = Counter(
            "coldstart_events_replayed",
            "Valid events skipped because their users' state already holds their offsets: "
            "replays after a restart or rebalance, or new events lost if the topic was recreated.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "coldstart_consumer_lag_records",
            "Records in the events topic not yet consumed, by partition.",
            ("partition",),
            registry=r,
        )
        self.adaptation_batch = Histogram(
            "coldstart_adaptation_batch_users",
            "Users adapted together in one batched inner-loop call.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.adaptation_seconds = Histogram(
            "coldstart_adaptation_duration_seconds",
            "Time of one batched adaptation call (the inner loop over every touched user).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.freshness_seconds = Histogram(
            "coldstart_event_freshness_seconds",
            "Time from an event's timestamp to its user's state being written to Redis.",
            buckets=FRESHNESS_BUCKETS,
            registry=r,
        )
        self.redis_errors = Counter(
            "coldstart_redis_errors",
            "Redis operations that failed (unreachable, timed out, refused).",
            registry=r,
        )
        self.adapted_with_profile = Counter(
            "coldstart_adaptations_with_profile",
            "Users adapted by the consumer from the prior their stored profile conditions; "
            "over the adaptation batch histogram's sum, the share of adaptations with a profile.",
            registry=r,
        )
        self.unknown_feature_values = Counter(
            "coldstart_unknown_feature_values",
            "Profile values the model does not know, read as unknown (the prior's own slot), "
            "by feature: in requests, UpsertUser calls and adaptations.",
            ("feature",),
            registry=r,
        )
        self.hit_checks = Counter(
            "coldstart_online_hit_checks",
            "Events checked for the online hit rate (a sample of at most 64 users per consumer "
            "batch): was the item in the user's top-k before?",
            registry=r,
        )
        self.hits = Counter(
            "coldstart_online_hits",
            "Events whose item was in the user's current top-k before the event was applied.",
            registry=r,
        )
        self.model = Info(
            "coldstart_model",
            "The model being served: its version and catalogue size.",
            registry=r,
        )
        self.catalogue_items = Gauge(
            "coldstart_catalogue_items",
            "Items of the catalogue this replica serves, by state: trained (and available), "
            "cold (registered, no events yet), warming (registered, adapting on its events), "
            "retired (never recommended).",
            ("state",),
            registry=r,
        )
        self.items_registered = Counter(
            "coldstart_items_registered",
            "Items registered by this replica: by UpsertItems (given) or at the item's first "
            "event (implicit).",
            ("how",),
            registry=r,
        )
        self.items_retired = Counter(
            "coldstart_items_retired",
            "Items retired by this replica's UpsertItems calls.",
            registry=r,
        )
        self.item_adaptations = Counter(
            "coldstart_item_adaptations",
            "Events applied to registered items' warm-up states by this replica's consumer.",
            registry=r,
        )
        self.item_freshness_seconds = Histogram(
            "coldstart_item_update_freshness_seconds",
            "From an item change (a catalogue record, a warm-up write) to this replica's "
            "scoring table holding it; the target is p99 <= 1 s.",
            ("change",),
            buckets=FRESHNESS_BUCKETS,
            registry=r,
        )
        self.item_records_invalid = Counter(
            "coldstart_item_records_invalid",
            "Records of the items topic this replica skipped as invalid, by reason.",
            ("reason",),
            registry=r,
        )
        self.recommended_slots = Counter(
            "coldstart_recommended_slots",
            "Items returned by Recommend (top-k slots filled).",
            registry=r,
        )
        self.recommended_new_slots = Counter(
            "coldstart_recommended_new_item_slots",
            "Items returned by Recommend that were registered less than a day before: the "
            "new-item exposure is this over coldstart_recommended_slots_total.",
            registry=r,
        )
        for state in STATE_KINDS:  # every kind present from the start, so rates are defined
            self.responses.labels(state)
        for how in ("given", "implicit"):
            self.items_registered.labels(how)
        for change in ("catalogue", "warmup"):
            self.item_freshness_seconds.labels(change)

    # --- serving side --------------------------------------------------------------------

    def set_model(self, version: str, n_items: int, dim: int) -> None:
        self.model.info({"version": version, "items": str(n_items), "dim": str(dim)})

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.request_seconds.labels(method, code).observe(seconds)

    def on_response(self, state: str) -> None:
        """`state` is one of STATE_KINDS."""
        self.responses.labels(state).inc()

    def on_ingested(self, n: int = 1) -> None:
        self.events_ingested.inc(n)

    def on_rejected(self, reason: str) -> None:
        self.events_rejected.labels(reason_label(reason)).inc()

    # --- the event path's observer (service/applier.py, service/kafka_consumer.py) ---------

    def on_consumed(self, n: int) -> None:
        self.events_consumed.inc(n)

    def on_batch(self, size: int, seconds: float) -> None:
        self.adaptation_batch.observe(size)
        self.adaptation_seconds.observe(seconds)

    def on_event_applied(self, n: int = 1) -> None:
        self.events_applied.inc(n)

    def on_dead_letter(self, reason: str) -> None:
        self.events_dead_lettered.labels(reason_label(reason)).inc()

    def on_replayed(self, n: int) -> None:
        self.events_replayed.inc(n)

    def on_freshness(self, seconds: float) -> None:
        self.freshness_seconds.observe(max(seconds, 0.0))

    def on_redis_error(self) -> None:
        self.redis_errors.inc()

    def on_lag(self, partition: int, lag: int) -> None:
        self.consumer_lag.labels(str(partition)).set(lag)

    def on_revoked(self, partition: int) -> None:
        """A stale lag would show on the dashboard beside the new owner's live one."""
        with contextlib.suppress(KeyError):
            self.consumer_lag.remove(str(partition))

    def on_adapted_with_profile(self, n: int) -> None:
        self.adapted_with_profile.inc(n)

    def on_unknown_feature_value(self, feature: str) -> None:
        self.unknown_feature_values.labels(feature).inc()

    def on_hit(self, hit: bool) -> None:
        self.hit_checks.inc()
        if hit:
            self.hits.inc()

    # --- the live catalogue --------------------------------------------------------------

    def set_catalogue(self, counts: Mapping[str, int]) -> None:
        for state, n in counts.items():
            self.catalogue_items.labels(state).set(n)

    def on_item_registered(self, implicit: bool) -> None:
        self.items_registered.labels("implicit" if implicit else "given").inc()

    def on_item_retired(self) -> None:
        self.items_retired.inc()

    def on_item_adapted(self, n: int) -> None:
        self.item_adaptations.inc(n)

    def on_item_freshness(self, change: str, seconds: float) -> None:
        self.item_freshness_seconds.labels(change).observe(max(seconds, 0.0))

    def on_item_record_invalid(self, reason: str) -> None:
        self.item_records_invalid.labels(reason_label(reason)).inc()

    def on_recommended(self, slots: int, new_slots: int) -> None:
        self.recommended_slots.inc(slots)
        if new_slots:
            self.recommended_new_slots.inc(new_slots)

    # --- exposition ----------------------------------------------------------------------

    def scrape(self) -> bytes:
        """The text exposition, as the HTTP endpoint serves it."""
        return generate_latest(self.registry)

    def values(self) -> Mapping[str, float]:
        """Every sample as {"name{labels}": value}, for tests and the demo's summary."""
        samples = {}
        for family in self.registry.collect():
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    def serve(self, host: str, port: int) -> WSGIServer:
        """Start the /metrics HTTP endpoint in a daemon thread; port 0 picks a free one."""
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:  # each replica on one machine needs its own port
            raise OSError(
                f"cannot serve metrics on {host}:{port} (--metrics-host / --metrics-port): "
                f"{error.strerror or error}"
            ) from None
        logger.info("metrics at http://%s:%s/metrics", host, server.server_port)
        return server
