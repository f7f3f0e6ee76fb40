"""`coldstart demo`: the one-command tour of the whole system on a fresh machine.

Why it exists: a newcomer should see the product's promise happen, not read
about it. The tour makes (or reads) a data set, meta-trains a model briefly,
starts the embedded broker and Redis and the service in this process, then
follows one test user (never seen in training) from a cold start through
their first events: their profile given once by UpsertUser, their top-10
before any event and after 1, 3 and 5 events, how long each event took to
change their answers, and how fast a Recommend is. Items the user will
interact with later are starred, so the effect of adaptation is visible. One
user is an anecdote, so the tour then measures the mean hits@10 of a few
hundred test users before and after their first events, the offline
evaluation's question asked of the running service, and a replay of more
test users fills the metrics. Everything goes through the public paths:
events enter by the RecordEvents RPC, pass the topic and the consumer, land
in Redis, and come back by Recommend.
"""

from __future__ import annotations

import logging
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import torch
from coldstart.v1 import event_pb2, recommender_pb2, recommender_pb2_grpc

from service.app import Service, quiet_kafka
from service.replay import replay, replay_order
from service.settings import Settings
from trainer import artifact
from trainer.data import Dataset, load_dataset
from trainer.episodes import make_context
from trainer.errors import ColdstartError
from trainer.items import fit_item_side
from trainer.model import ModelConfig
from trainer.synth import write_synthetic
from trainer.train import TrainConfig, meta_train

logger = logging.getLogger(__name__)

STEPS = (1, 3, 5)  # show the user's top-10 after this many events
TOP = 10
LAUNCH = "demo-launch-1"  # the item the tour registers
LAUNCH_EVENTS = 5  # its first events, from new visitors
RANKED = 100  # how deep the tour looks for the launched item in a user's ranking
ITEM_START_STEPS = 300  # the new-item network's training steps in the tour
FIRST_EVENTS = 3  # the measured users' events sent before their hits are counted again
LATENCY_CALLS = 200  # Recommend calls timed per measurement
ADAPT_TIMEOUT_S = 30.0  # waiting for an event to reach the user's state


@dataclass
class DemoOptions:
    data: Path | None = None  # a data set directory; None: synthetic data
    data_format: str | None = None  # its layout, as load_dataset's fmt; None: detected
    users: int = 600  # synthetic users
    items: int = 300  # synthetic items
    seed: int = 0  # data, split and training seed
    meta_steps: int = 60  # outer steps of the quick training
    measured_users: int = 300  # test users whose mean hits@10 is measured (at most)
    replay_users: int = 30  # further test users replayed at the end
    grpc_port: int = 0  # 0: any free port
    metrics_port: int = 0  # 0: any free port
    serve: bool = False  # keep serving after the tour until Ctrl-C


def say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(options: DemoOptions) -> None:
    quiet_kafka()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="coldstart-demo-") as scratch:
        root = Path(scratch)
        data_dir = options.data or _synthesize(root / "data", options)
        data = load_dataset(data_dir, options.data_format)
        model_dir = _train(data, root / "model", options)
        settings = Settings(
            model=model_dir,
            grpc_port=options.grpc_port,
            grpc_host="127.0.0.1",
            metrics_port=options.metrics_port,
            metrics_host="127.0.0.1",
        )
        clock = time.perf_counter()
        with Service(settings) as service:
            url = f"http://127.0.0.1:{service.metrics_port}/metrics"
            say(
                f"[3/7] service up in {time.perf_counter() - clock:.1f} s: Kafka (tansu) at "
                f"{service.kafka_bootstrap}, Redis at {service.redis_url}, gRPC at "
                f"127.0.0.1:{service.grpc_port}, metrics at {url} while it runs"
            )
            _wait_for_consumer(service)
            channel = grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}")
            try:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                followed = _follow_one_user(stub, data, options.seed)
                _launch_item(stub, data, followed, options.seed)
                _measure_hits(stub, service, data, options, followed)
                _replay_more(service, data_dir, options)
            finally:
                channel.close()
            say(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
            if not options.serve:
                say("the service stops now; `coldstart demo --serve` keeps it up for you to query")
            else:
                say(
                    "serving until Ctrl-C (grpcurl -plaintext 127.0.0.1:"
                    f"{service.grpc_port} list; curl {url})"
                )
                _wait_for_signal()


def _synthesize(out: Path, options: DemoOptions) -> Path:
    clock = time.perf_counter()
    write_synthetic(out, options.users, options.items, options.seed)
    say(
        f"[1/7] synthetic data: {options.users} users x {options.items} items with planted "
        f"taste clusters ({time.perf_counter() - clock:.1f} s)"
    )
    return out


def _train(data: Dataset, out: Path, options: DemoOptions) -> Path:
    if options.data is not None:
        say(f"[1/7] data: {data.name}, {data.n_users} users x {data.n_items} items")
    clock = time.perf_counter()
    ctx = make_context(data, options.seed, [0, 1, 3, 5, 10], torch.device("cpu"))
    config = TrainConfig(meta_steps=options.meta_steps, users_per_step=64, eval_every=20)
    model, summary = meta_train(ctx, ModelConfig(), config, progress=False)
    item_side = fit_item_side(model, ctx, replace(config, item_start_steps=ITEM_START_STEPS))
    manifest = artifact.save(model, data, out, {"seed": options.seed, "demo": True})
    say(
        f"[2/7] quick meta-training: {summary['steps']} outer steps, then the new-item side "
        f"(items adapt on their first {item_side['item_step']['warm_after']} events), in "
        f"{time.perf_counter() - clock:.0f} s; validation NDCG@20 "
        f"{summary['valid_ndcg@20']:.3f}, model {manifest['model_version']}"
    )
    return out


def _wait_for_consumer(service: Service) -> None:
    """The consumer reports lag once it owns partitions: then events are applied at once."""
    clock = time.perf_counter()
    deadline = clock + 60.0
    while time.perf_counter() < deadline:
        if any(
            name.startswith("coldstart_consumer_lag_records{") for name in service.metrics.values()
        ):
            say(f"      consumer joined its group in {time.perf_counter() - clock:.1f} s")
            return
        time.sleep(0.05)
    raise ColdstartError("the consumer did not join its group within 60 s")


def _follow_one_user(stub: recommender_pb2_grpc.RecommenderStub, data: Dataset, seed: int) -> int:
    """Shows one test user's answers from a cold start through their first events; returns
    the user."""
    user, events = _pick_user(data, seed)
    user_id = data.user_ids[user]
    profile = data.profile(user)
    future = {data.item_ids[item] for _, _, item, _ in events[max(STEPS) :]}
    say(
        f"[4/7] following test user {user_id} (never seen in training; profile "
        f"{profile or 'none'}, given once by UpsertUser); * marks items they interact with later"
    )
    _upsert(stub, user_id, profile)
    request = recommender_pb2.RecommendRequest(user_id=user_id, k=TOP)
    answer = stub.Recommend(request)
    _show("before any event", answer, future, _latency(stub, request))
    sent = 0
    for step in STEPS:
        batch = [_event(data, seed, user_id, row) for row in events[sent:step]]
        clock = time.perf_counter()
        outcome = stub.RecordEvents(iter(batch))
        if outcome.rejected:
            raise ColdstartError(f"events rejected: {list(outcome.rejections)}")
        answer = _await_history(stub, request, step)
        waited = (time.perf_counter() - clock) * 1000
        items = ", ".join(
            f"{e.item_id}" + (f" ({e.value:g})" if e.type == event_pb2.RATING else "")
            for e in batch
        )
        _show(
            f"after {step} event{'s' * (step > 1)} (+{items}; in state {waited:.0f} ms after send)",
            answer,
            future,
            _latency(stub, request),
        )
        sent = step
    return user


def _launch_item(
    stub: recommender_pb2_grpc.RecommenderStub, data: Dataset, user: int, seed: int
) -> None:
    """Registers a new item of the genres and era of the followed user's first events,
    shows it reach the service at once and where it ranks for them, then warms it on the
    events of a few new visitors."""
    _, events = _pick_user(data, seed)
    user_id = data.user_ids[user]
    features = _favourite_features(data, [item for _, _, item, _ in events[: max(STEPS)]])
    clock = time.perf_counter()
    stub.UpsertItems(
        recommender_pb2.UpsertItemsRequest(
            items=[recommender_pb2.ItemUpsert(item_id=LAUNCH, features=features)]
        )
    )
    restricted = recommender_pb2.RecommendRequest(user_id=user_id, candidate_item_ids=[LAUNCH])
    while not stub.Recommend(restricted).items:
        if time.perf_counter() - clock > ADAPT_TIMEOUT_S:
            raise ColdstartError("the launched item did not reach the service in time")
        time.sleep(0.005)
    shown = {name: list(values.values) for name, values in features.items()}
    say(
        f"[5/7] a new item launches: {LAUNCH} {shown}, registered by UpsertItems, is "
        f"recommendable {(time.perf_counter() - clock) * 1000:.0f} ms later; for user "
        f"{user_id} it ranks {_rank(stub, user_id)}"
    )
    visitors = [
        event_pb2.Event(
            event_id=f"demo-launch-{n}",
            user_id=f"demo-visitor-{n}",
            item_id=LAUNCH,
            type=event_pb2.CLICK,
            ts=time.time_ns() // 1_000_000,
        )
        for n in range(LAUNCH_EVENTS)
    ]
    stub.RecordEvents(iter(visitors))
    request = recommender_pb2.GetItemStateRequest(item_id=LAUNCH)
    deadline = time.perf_counter() + ADAPT_TIMEOUT_S
    while (state := stub.GetItemState(request)).interactions < LAUNCH_EVENTS:
        if time.perf_counter() > deadline:
            raise ColdstartError("the launched item's events were not applied in time")
        time.sleep(0.01)
    time.sleep(0.5)  # every replica's table picks the warmed row up within a second
    say(
        f"      after {LAUNCH_EVENTS} new visitors click it: "
        f"{recommender_pb2.ItemStateKind.Name(state.state)} with {state.interactions} "
        f"events; for user {user_id} it now ranks {_rank(stub, user_id)}"
    )


def _favourite_features(data: Dataset, items: list[int]) -> dict:
    """The two genres and the decade most common among `items`, as an UpsertItems map."""
    if data.item_features is None:
        return {}
    counts = data.item_features[items].sum(axis=0)
    names = [data.item_feature_names[j] for j in counts.argsort()[::-1] if counts[j] > 0]
    genres = [name.split("=", 1)[1] for name in names if name.startswith("genre=")][:2]
    decades = [name.split("=", 1)[1] for name in names if name.startswith("decade=")][:1]
    features = {"genre": recommender_pb2.FeatureValues(values=genres)}
    if decades:
        features["year"] = recommender_pb2.FeatureValues(values=[str(int(decades[0]) + 5)])
    return features


def _rank(stub: recommender_pb2_grpc.RecommenderStub, user_id: str) -> str:
    """Where the launched item stands in the user's ranking, as words."""
    answer = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=RANKED))
    ids = [item.item_id for item in answer.items]
    return f"#{ids.index(LAUNCH) + 1}" if LAUNCH in ids else f"below #{RANKED}"


def _upsert(stub: recommender_pb2_grpc.RecommenderStub, user_id: str, profile: dict) -> None:
    if profile:
        stub.UpsertUser(recommender_pb2.UpsertUserRequest(user_id=user_id, features=profile))


def _measure_hits(
    stub: recommender_pb2_grpc.RecommenderStub,
    service: Service,
    data: Dataset,
    options: DemoOptions,
    followed: int,
) -> None:
    """Mean hits@10 of test users before any event (profile only) and after their first
    FIRST_EVENTS events, against the items they interact with after those: the offline
    evaluation's question, asked of the running service through its public RPCs."""
    chosen, order = replay_order(data, options.seed, None)
    by_user: dict[int, list[tuple[int, int, int, float | None]]] = {}
    for row in order:
        by_user.setdefault(row[0], []).append(row)
    users = [
        int(u)
        for u in chosen[options.replay_users :]  # the replay at the end sends the first ones
        if int(u) != followed and len(by_user[int(u)]) >= FIRST_EVENTS + 5
    ][: options.measured_users]
    if not users:
        return
    before, batch = [], []
    for user in users:
        user_id = data.user_ids[user]
        _upsert(stub, user_id, data.profile(user))
        before.append(_hits(stub, data, user_id, by_user[user]))
        batch += [_event(data, options.seed, user_id, row) for row in by_user[user][:FIRST_EVENTS]]
    applied = service.metrics.values().get("coldstart_events_applied_total", 0)
    if stub.RecordEvents(iter(batch)).rejected:
        raise ColdstartError("the measured users' events were rejected")
    _await_applied(service, applied + len(batch))
    after = [_hits(stub, data, data.user_ids[user], by_user[user]) for user in users]
    say(
        f"[6/7] mean hits@{TOP} over {len(users)} test users, against the items each "
        f"interacts with after their first {FIRST_EVENTS}: {statistics.mean(before):.2f} "
        f"from the profile alone, {statistics.mean(after):.2f} after {FIRST_EVENTS} events"
    )


def _hits(
    stub: recommender_pb2_grpc.RecommenderStub,
    data: Dataset,
    user_id: str,
    rows: list[tuple[int, int, int, float | None]],
) -> int:
    future = {data.item_ids[item] for _, _, item, _ in rows[FIRST_EVENTS:]}
    answer = stub.Recommend(recommender_pb2.RecommendRequest(user_id=user_id, k=TOP))
    return sum(item.item_id in future for item in answer.items)


def _await_applied(service: Service, target: float) -> None:
    """Waits until the consumer has applied `target` events in all (30 s at most)."""
    deadline = time.perf_counter() + 30.0
    while service.metrics.values().get("coldstart_events_applied_total", 0) < target:
        if time.perf_counter() > deadline:
            raise ColdstartError("the consumer did not apply the events within 30 s")
        time.sleep(0.05)


def _pick_user(data: Dataset, seed: int) -> tuple[int, list[tuple[int, int, int, float | None]]]:
    """The first test user with enough events to have a future after the shown steps."""
    chosen, order = replay_order(data, seed, None)
    by_user: dict[int, list[tuple[int, int, int, float | None]]] = {}
    for row in order:
        by_user.setdefault(row[0], []).append(row)
    for user in chosen:
        rows = sorted(by_user.get(int(user), []), key=lambda row: row[1])
        if len(rows) >= max(STEPS) + TOP:
            return int(user), rows
    raise ColdstartError("no test user has enough events for the demo; use more data")


def _event(
    data: Dataset, seed: int, user_id: str, row: tuple[int, int, int, float | None]
) -> event_pb2.Event:
    _, position, item, rating = row
    return event_pb2.Event(
        event_id=f"demo-{seed}-{user_id}-{position}",
        user_id=user_id,
        item_id=data.item_ids[item],
        type=event_pb2.RATING if rating is not None else event_pb2.CLICK,
        value=rating if rating is not None else 1.0,
        ts=time.time_ns() // 1_000_000,
    )


def _await_history(
    stub: recommender_pb2_grpc.RecommenderStub,
    request: recommender_pb2.RecommendRequest,
    interactions: int,
) -> recommender_pb2.RecommendResponse:
    """Recommend until the answer is built from `interactions` events."""
    deadline = time.perf_counter() + ADAPT_TIMEOUT_S
    while time.perf_counter() < deadline:
        answer = stub.Recommend(request)
        if answer.state == recommender_pb2.ADAPTED and answer.interactions_used >= interactions:
            return answer
        time.sleep(0.005)
    raise ColdstartError(f"the user's state did not reach {interactions} events in time")


def _latency(
    stub: recommender_pb2_grpc.RecommenderStub, request: recommender_pb2.RecommendRequest
) -> tuple[float, float]:
    """Recommend p50 and p99 in ms, over LATENCY_CALLS sequential calls."""
    times = []
    for _ in range(LATENCY_CALLS):
        clock = time.perf_counter()
        stub.Recommend(request)
        times.append((time.perf_counter() - clock) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def _show(
    title: str,
    answer: recommender_pb2.RecommendResponse,
    future: set[str],
    latency: tuple[float, float],
) -> None:
    state = recommender_pb2.UserStateKind.Name(answer.state)
    items = " ".join(
        item.item_id + ("*" if item.item_id in future else "") for item in answer.items
    )
    hits = sum(item.item_id in future for item in answer.items)
    say(f"  {title}:")
    say(
        f"    {state:<8} top-{TOP}: {items}   [{hits}/{TOP} starred; Recommend p50 "
        f"{latency[0]:.2f} ms, p99 {latency[1]:.2f} ms]"
    )


def _replay_more(service: Service, data_dir: Path, options: DemoOptions) -> None:
    if options.replay_users <= 0:
        return
    before = service.metrics.values()
    result = replay(
        data_dir,
        service.kafka_bootstrap,
        service.settings.topic,
        users=options.replay_users,
        seed=options.seed,
    )
    _await_applied(service, before.get("coldstart_events_applied_total", 0) + result.events)
    values = service.metrics.values()
    applied = values.get("coldstart_events_applied_total", 0) - before.get(
        "coldstart_events_applied_total", 0
    )
    fresh_n = values.get("coldstart_event_freshness_seconds_count", 0)
    fresh_sum = values.get("coldstart_event_freshness_seconds_sum", 0)
    checks = values.get("coldstart_online_hit_checks_total", 0)
    hits = values.get("coldstart_online_hits_total", 0)
    say(
        f"[7/7] replayed {result.events} events of {result.users} more test users "
        f"({result.events_per_s:.0f} events/s produced); {applied:.0f} applied; mean event-to-"
        f"state freshness {1000 * fresh_sum / max(fresh_n, 1):.0f} ms; online hit rate@10 "
        f"{hits / max(checks, 1):.1%} over {checks:.0f} events"
    )


def _wait_for_signal() -> None:
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
