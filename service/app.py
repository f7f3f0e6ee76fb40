"""The `serve` process: wires settings, local stack, model, catalogue, store, consumer, gRPC
and metrics.

Why a `Service` object with start() and stop() rather than one long function:
`coldstart serve`, `coldstart demo` and the tests all run the same wiring, the
latter two in-process on free ports. Start order makes failures cheap (the
model loads before any engine starts), and a replica reads the whole items topic
before it serves, so it never answers from half a catalogue; stop order follows a Kubernetes
shutdown: health turns NOT_SERVING first so probes steer traffic away, the
consumer finishes its batch and commits, in-flight RPCs get the grace period,
and only then do the clients and any embedded engines go.

If the consumer or the catalogue follower thread dies, the process stops with a
non-zero exit instead of serving ever staler states: an orchestrator restarts it.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from wsgiref.simple_server import WSGIServer

import grpc
import redis
import torch
from redis.backoff import NoBackoff
from redis.retry import Retry

from service import heap
from service.catalogue_follower import CatalogueFollower
from service.connections import kafka_options, redis_client
from service.grpc_server import GrpcServer, start_server
from service.ingest import Ingestor
from service.item_registry import ItemRegistry
from service.item_store import ItemStore
from service.kafka_consumer import ConsumerConfig, EventConsumer
from service.kafka_producer import KafkaEventSink
from service.lifecycle import Lifecycle
from service.live_catalogue import LiveCatalogue
from service.localstack import LocalStack
from service.metrics import Metrics
from service.model import Retrieval, ServingModel
from service.profiles import ProfileWriter
from service.recommend import Recommender
from service.reload import ModelReloader
from service.servicer import RecommenderServicer
from service.settings import Settings
from service.store import UserStore
from service.topics import create_topic
from trainer import artifact

logger = logging.getLogger(__name__)

CATALOGUE_CATCH_UP_S = 30.0  # a replica reads the items topic this long at most before serving


def quiet_kafka() -> None:
    """kafka-python 3 logs every connection step at INFO, and warns whenever one of its own
    I/O tasks runs past 0.1 s, which a busy 2-core machine makes routine."""
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


def serving_redis(url: str, timeout_s: float, settings: Settings | None = None) -> redis.Redis:
    """A Redis client for the request path: short timeouts and one immediate retry, so a
    Redis outage turns into a DEGRADED answer within about 2 x timeout_s, not a hang."""
    return redis_client(url, timeout_s, settings, retry=Retry(NoBackoff(), 1))


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials when a certificate is configured; with a client CA, mutual TLS."""
    if settings.grpc_tls_cert is None or settings.grpc_tls_key is None:
        return None
    pair = (settings.grpc_tls_key.read_bytes(), settings.grpc_tls_cert.read_bytes())
    client_ca = settings.grpc_tls_client_ca
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


class Service(Lifecycle):
    """One service process's parts; use as a context manager or call start() and stop()."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model: ServingModel | None = None
        self.metrics = Metrics(process=True)
        self.stack: LocalStack | None = None
        self.kafka_bootstrap = settings.kafka_bootstrap
        self.redis_url = settings.redis_url
        self.grpc: GrpcServer | None = None
        self.metrics_server: WSGIServer | None = None
        self.consumer: EventConsumer | None = None
        self.failed = threading.Event()  # set when the consumer thread dies
        self._consumer_thread: threading.Thread | None = None
        self._stores: list[UserStore] = []
        self._sink: KafkaEventSink | None = None
        self.recommender: Recommender | None = None
        self.profiles: ProfileWriter | None = None
        self.ingestor: Ingestor | None = None
        self._reloading = threading.Event()  # set to stop the model reloader
        self._reloader_thread: threading.Thread | None = None
        self.catalogue = LiveCatalogue()
        self.items: ItemRegistry | None = None
        self._item_sink: KafkaEventSink | None = None
        self._follower: CatalogueFollower | None = None
        self._following = threading.Event()  # set to stop the catalogue follower
        self._follower_thread: threading.Thread | None = None

    @property
    def grpc_port(self) -> int:
        assert self.grpc is not None, "start() first"
        return self.grpc.port

    @property
    def metrics_port(self) -> int:
        assert self.metrics_server is not None, "start() first"
        return self.metrics_server.server_port

    def start(self) -> None:
        """Start everything; on failure stop what already started, then raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        s = self.settings
        logger.info("settings: %s", s.describe())
        self.retrieval = Retrieval(s.index_from_items, s.index_probes)
        self.model = ServingModel(artifact.load(s.model), self.retrieval)
        self.metrics.set_model(self.model.version, len(self.model.item_ids), self.model.dim)
        logger.info(
            "model %s: %s items, dim %s",
            self.model.version,
            len(self.model.item_ids),
            self.model.dim,
        )
        self._start_missing_engines()
        self.metrics_server = self.metrics.serve(s.metrics_host, s.metrics_port)
        self._start_follower()
        self._start_consumer()
        serving_client = serving_redis(self.redis_url, s.redis_timeout_s, s)
        serving_store = self._store(serving_client)
        self._sink = KafkaEventSink(self.kafka_bootstrap, s.topic, client_options=kafka_options(s))
        self.recommender = Recommender(self.model, serving_store, self.metrics)
        self.profiles = ProfileWriter(self.model, serving_store, self.metrics)
        self.ingestor = Ingestor(
            self.model,
            self._sink,
            self.metrics,
            s.max_stream_events,
            s.grpc_workers // 2,  # open streams: the other workers stay free for Recommend
            register_unknown_items=s.unknown_items == "register",
        )
        self._item_sink = KafkaEventSink(
            self.kafka_bootstrap, s.items_topic, client_options=kafka_options(s)
        )
        self.items = ItemRegistry(
            self.model, self.catalogue, self._item_sink, ItemStore(serving_client), self.metrics
        )
        self.grpc = start_server(
            RecommenderServicer(
                self.recommender, self.ingestor, self.profiles, self.metrics, self.items
            ),
            host=s.grpc_host,
            port=s.grpc_port,
            workers=s.grpc_workers,
            max_concurrent_rpcs=s.max_concurrent_rpcs,
            max_message_bytes=s.max_message_bytes,
            credentials=server_credentials(s),
        )
        self._start_reloader()
        heap.settle()

    def _start_reloader(self) -> None:
        """Watch the model directory for a new version, unless model_reload_s is 0."""
        assert self.model is not None
        if self.settings.model_reload_s == 0:
            return
        reloader = ModelReloader(
            self.settings.model, self.model.version, self.use_model, self.retrieval
        )
        self._reloader_thread = threading.Thread(
            target=reloader.run,
            args=(self.settings.model_reload_s, self._reloading),
            name="model-reloader",
            daemon=True,
        )
        self._reloader_thread.start()

    def use_model(self, model: ServingModel) -> None:
        """Serve and adapt with `model` from now on: requests at once, events from the next
        batch. Stored states of the old version are re-adapted as they are read."""
        assert self.recommender is not None and self.ingestor is not None
        assert self.profiles is not None
        assert self.consumer is not None and self.items is not None
        self.catalogue.publish(model)  # registered items stay: the new model scores them too
        self.model = model
        self.items.model = model
        self.recommender.model = model
        self.ingestor.model = model
        self.profiles.model = model
        self.consumer.use_model(model)
        self.metrics.set_model(model.version, len(model.item_ids), model.dim)
        heap.settle()

    def _start_missing_engines(self) -> None:
        """Start a local broker and/or Redis for whatever endpoint the settings lack."""
        want_kafka, want_redis = self.kafka_bootstrap is None, self.redis_url is None
        if not (want_kafka or want_redis):
            return
        # Kafka's standard port when it is free, so the README's client commands reach it.
        self.stack = LocalStack(kafka=want_kafka, redis=want_redis, kafka_port=9092)
        self.stack.start()
        if want_kafka:
            self.kafka_bootstrap = self.stack.kafka_bootstrap
            partitions = self.settings.topic_partitions
            for topic in (self.settings.topic, f"{self.settings.topic}.dlq"):
                create_topic(self.kafka_bootstrap, topic, partitions)
            create_topic(self.kafka_bootstrap, self.settings.items_topic, 1, compacted=True)
            logger.info(
                "no --kafka-bootstrap given: started a local broker at %s; send it events with "
                "`coldstart replay --data DATA_DIR --kafka-bootstrap %s`",
                self.kafka_bootstrap,
                self.kafka_bootstrap,
            )
        if want_redis:
            self.redis_url = self.stack.redis_url
            logger.info("no --redis-url given: started a local Redis at %s", self.redis_url)

    def _store(self, client: redis.Redis) -> UserStore:
        s = self.settings
        store = UserStore(client, history_limit=s.history_limit, ttl_s=s.state_ttl_s or None)
        self._stores.append(store)
        return store

    def _start_consumer(self) -> None:
        s = self.settings
        assert self.model is not None and self.kafka_bootstrap and self.redis_url
        client = redis_client(self.redis_url, 2.0, s)
        config = ConsumerConfig(
            bootstrap=self.kafka_bootstrap,
            topic=s.topic,
            group_id=s.consumer_group,
            max_records=s.poll_batch_size,
            client_options=kafka_options(s),
            items_topic=s.items_topic,
            register_unknown_items=s.unknown_items == "register",
        )
        self.consumer = EventConsumer(
            self.model, self._store(client), config, self.metrics, items=ItemStore(client)
        )
        self._consumer_thread = threading.Thread(target=self._consume, name="consumer", daemon=True)
        self._consumer_thread.start()

    def _start_follower(self) -> None:
        """Reads the whole items topic before serving (a restart rebuilds the catalogue),
        then follows it and the warm-up states in a thread."""
        s = self.settings
        assert self.kafka_bootstrap and self.redis_url
        self._follower = CatalogueFollower(
            self.catalogue,
            lambda: self.model,
            ItemStore(redis_client(self.redis_url, 2.0, s)),
            self.kafka_bootstrap,
            s.items_topic,
            self.metrics,
            client_options=kafka_options(s),
            refresh_s=s.item_refresh_s,
        )
        self._follower.catch_up(timeout_s=CATALOGUE_CATCH_UP_S)
        self._follower_thread = threading.Thread(target=self._follow, name="catalogue", daemon=True)
        self._follower_thread.start()

    def _follow(self) -> None:
        assert self._follower is not None
        try:
            self._follower.run(self._following)
        except Exception:
            logger.exception("the catalogue follower stopped with an error; shutting down")
            self.failed.set()

    def _consume(self) -> None:
        assert self.consumer is not None
        try:
            self.consumer.run()
        except Exception:
            logger.exception("the consumer stopped with an error; shutting down")
            self.failed.set()

    def stop(self) -> None:
        """NOT_SERVING, drain the consumer and the in-flight RPCs, then close everything."""
        grace = self.settings.grace_s
        self._reloading.set()
        if self._reloader_thread is not None:
            self._reloader_thread.join(timeout=grace)
            self._reloader_thread = None
        if self.grpc is not None:
            self.grpc.not_serving()
        if self.consumer is not None:
            self.consumer.stop()
        if self.grpc is not None:
            self.grpc.stop(grace)
            self.grpc = None
        if self._consumer_thread is not None:
            self._consumer_thread.join(timeout=grace + 10.0)
            if self._consumer_thread.is_alive():
                logger.warning("the consumer did not finish its batch within %.0f s", grace + 10.0)
            self._consumer_thread = None
        self._following.set()
        if self._follower_thread is not None:
            self._follower_thread.join(timeout=grace + 5.0)
            self._follower_thread = None
        if self._follower is not None:
            self._follower.close()
            self._follower = None
        for sink in (self._sink, self._item_sink):
            if sink is not None:
                sink.close()
        self._sink = self._item_sink = None
        for store in self._stores:
            store.close()
        self._stores.clear()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        if self.stack is not None:
            self.stack.stop()
            self.stack = None


def serve(settings: Settings) -> int:
    """Run the service until SIGTERM or SIGINT; 0 on a clean stop, 1 if the consumer died."""
    quiet_kafka()
    # Adaptation batches and top-k products are small: more intra-op threads than one only
    # contend with the gRPC threads and other replicas. Scale out with replicas instead.
    torch.set_num_threads(1)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Service(settings) as service:
            logger.info(
                "serving: gRPC on port %s, metrics on http://%s:%s/metrics",
                service.grpc_port,
                settings.metrics_host,
                service.metrics_port,
            )
            while not stop.wait(0.5):
                if service.failed.is_set():
                    return 1
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
