"""The live catalogue: how fast a registration and a retirement reach every replica, what
registered items cost Recommend, and what an item's warm-up record costs Redis.

Setup: a local broker and Redis (`service.localstack`), an ml-1m-sized model (built, not
trained: benchmarks/common.py; `--model DIR` for a trained one) and USERS adapted users.
1. recommend_cpu: in this process, the service's `Recommender` over that Redis, CPU
   time per call (time.process_time: the Redis read, the scoring, the top-k, no gRPC),
   with the trained catalogue alone and with a tenth of its size registered online
   (`LiveCatalogue.publish`, as every replica does), alternating ROUNDS rounds of CALLS
   calls; medians and their ratio.
2. visibility: two `coldstart serve` processes on the stack; ITEMS items registered one
   per `UpsertItems` call on the first, each timed from the call until each replica
   answers a Recommend restricted to it; then one event on it (RecordEvents), timed
   until both replicas score it warmed; then retired, timed until both leave it out.
   p50 and p99 over both replicas' answers.
3. redis_bytes_per_item: `MEMORY USAGE` of an item's warm-up record after WARM events
   through the service's own warm-up (a cold item has no record at all).

    python benchmarks/bench_items.py [--users 2000] [--items 100] [--rounds 7] [--model DIR]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from coldstart.v1 import event_pb2, recommender_pb2_grpc
from coldstart.v1 import recommender_pb2 as pb
from common import DEFAULT_DATA, adapted_users, child_env, machine, percentiles_ms, stop

from service.applier import SourcedEvent
from service.catalogue import ItemEntry
from service.events import Event
from service.item_store import ItemStore, item_key
from service.item_warmup import ItemWarmup
from service.live_catalogue import LiveCatalogue
from service.localstack import LocalStack
from service.metrics import Metrics
from service.model import ServingModel
from service.recommend import Recommender, RecommendQuery
from service.topics import create_topic
from trainer import artifact

WARM = 20  # events on the item whose record is measured


def recommend_cpu(model_dir: Path, store: Any, users: list[str], args: argparse.Namespace) -> dict:
    """CPU per Recommend, trained catalogue alone against a tenth more registered."""
    trained = ServingModel(artifact.load(model_dir))
    grown = ServingModel(artifact.load(model_dir))
    catalogue = LiveCatalogue()
    registered = len(trained.item_ids) // 10
    for n in range(registered):
        catalogue.apply(ItemEntry(f"live-{n}", {"genre": ("Drama",)}, ts=n + 1), record_ts=0)
    catalogue.publish(grown)
    recommenders = {
        "trained_only": Recommender(trained, store, Metrics()),
        "with_registered": Recommender(grown, store, Metrics()),
    }
    per_call: dict[str, list[float]] = {name: [] for name in recommenders}
    for _ in range(args.rounds):
        for name, recommender in recommenders.items():
            clock = time.process_time()
            for n in range(args.calls):
                recommender.recommend(RecommendQuery(users[n % len(users)], 10))
            per_call[name].append((time.process_time() - clock) / args.calls * 1000)
    medians = {name: statistics.median(times) for name, times in per_call.items()}
    return {
        "registered_items": registered,
        "trained_items": len(trained.item_ids),
        "cpu_ms_per_call": {name: round(ms, 4) for name, ms in medians.items()},
        "ratio": round(medians["with_registered"] / medians["trained_only"], 3),
        "rounds": args.rounds,
        "calls_per_round": args.calls,
    }


def redis_bytes_per_item(model_dir: Path, store: Any, users: list[str]) -> dict:
    model = ServingModel(artifact.load(model_dir))
    items = ItemStore(store.client)
    events = [
        SourcedEvent("events", 0, n, Event(f"w{n}", users[n], "measured", "click", 1.0, 0))
        for n in range(WARM)
    ]
    states = {user: record.vector for user, record in store.get_many(users[:WARM]).items()}
    ItemWarmup(items).apply(model, events, states)
    record = items.get_many(["measured"])["measured"]
    return {
        "warming_item_bytes": store.client.memory_usage(item_key("measured")),
        "events": record.count,
        "dim": model.dim,
        "cold_item_bytes": 0,  # no record until its first event
    }


def spawn_replica(model_dir: Path, stack: LocalStack, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from service.cli import main; raise SystemExit(main())"]
    command += ["serve", "--model", str(model_dir), "--kafka-bootstrap", stack.kafka_bootstrap]
    command += ["--redis-url", stack.redis_url, "--grpc-port", "0", "--metrics-port", "0"]
    command += ["--model-reload-s", "0", "--consumer-group", "bench-items"]
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env())


def grpc_port(log: Path, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"serving: gRPC on port (\d+)", log.read_text(errors="replace"))
        if found:
            return int(found[1])
        if process.poll() is not None:
            raise RuntimeError(f"a replica exited:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise RuntimeError("a replica did not start")


def visibility(model_dir: Path, stack: LocalStack, work: Path, items: int) -> dict:
    """Registration and retirement, each timed until every replica's answers agree."""
    logs = [work / f"replica-{n}.log" for n in range(2)]
    replicas = [spawn_replica(model_dir, stack, log) for log in logs]
    channels = []
    try:
        ports = [grpc_port(log, process) for log, process in zip(logs, replicas, strict=True)]
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in ports]
        stubs = [recommender_pb2_grpc.RecommenderStub(channel) for channel in channels]
        registered, warmed, retired = [], [], []
        for n in range(items):
            item = f"launch-{n}"
            upsert = pb.ItemUpsert(
                item_id=item, features={"genre": pb.FeatureValues(values=["Drama"])}
            )
            registered += timed(
                stubs, item, lambda u=upsert: stubs[0].UpsertItems(request(u)), bool
            )
            cold = stubs[0].Recommend(restricted(item)).items[0].score
            click = event_pb2.Event(
                event_id=f"warm-{n}", user_id=f"visitor-{n}", item_id=item, type=event_pb2.CLICK
            )
            warmed += timed(
                stubs,
                item,
                lambda c=click: stubs[0].RecordEvents(iter([c])),
                lambda items, s=cold: bool(items) and items[0].score != s,
            )
            retire = pb.ItemUpsert(item_id=item, available=False)
            retired += timed(stubs, item, lambda r=retire: stubs[0].UpsertItems(request(r)), not_)
    finally:
        for channel in channels:
            channel.close()
        for process in replicas:
            stop(process, timeout_s=30)
    return {
        "items": items,
        "replicas": 2,
        "registered_visible": percentiles_ms(registered),
        "first_event_warmed": percentiles_ms(warmed),
        "retired_gone": percentiles_ms(retired),
    }


def request(upsert: pb.ItemUpsert) -> pb.UpsertItemsRequest:
    return pb.UpsertItemsRequest(items=[upsert])


def restricted(item: str) -> pb.RecommendRequest:
    return pb.RecommendRequest(user_id="watcher", candidate_item_ids=[item])


def not_(items: Any) -> bool:
    return not items


def timed(stubs: list[Any], item: str, change: Any, done: Any) -> list[float]:
    """Seconds from the call making `change` until each replica's answer restricted to
    the item is `done`."""
    started = time.perf_counter()
    change()
    waits, pending = [], set(range(len(stubs)))
    while pending:
        for n in sorted(pending):
            if done(stubs[n].Recommend(restricted(item), timeout=5).items):
                waits.append(time.perf_counter() - started)
                pending.discard(n)
        if time.perf_counter() - started > 30:
            raise RuntimeError(f"{item}: the change did not reach every replica in 30 s")
        time.sleep(0.002)
    return waits


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-items-") as tmp, LocalStack() as stack:
        work = Path(tmp)
        model_dir, _, store, users = adapted_users(args, stack.redis_url, work)
        for topic, partitions in (("coldstart.events", 4), ("coldstart.events.dlq", 1)):
            create_topic(stack.kafka_bootstrap, topic, partitions)
        create_topic(stack.kafka_bootstrap, "coldstart.items", 1, compacted=True)
        cpu = recommend_cpu(Path(model_dir), store, users, args)
        memory = redis_bytes_per_item(Path(model_dir), store, users)
        seen = visibility(Path(model_dir), stack, work, args.items)
        store.close()
    return {
        "recommend_cpu": cpu,
        "redis": memory,
        "visibility": seen,
        "model": str(args.model) if args.model else "ml-1m, built (untrained)",
        "targets": {
            "recommend_cpu_ratio_met": cpu["ratio"] <= 1.1,
            "redis_bytes_per_cold_item_met": memory["cold_item_bytes"] <= 1024,
            "visible_p99_met": seen["registered_visible"]["p99_ms"] <= 1000,
            "warmed_p99_met": seen["first_event_warmed"]["p99_ms"] <= 1000,
            "retired_p99_met": seen["retired_gone"]["p99_ms"] <= 1000,
        },
        **machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ml-1m directory")
    parser.add_argument("--model", type=Path, help="a trained artifact instead of a built one")
    parser.add_argument("--users", type=int, default=2000, help="adapted users in Redis")
    parser.add_argument("--history", type=int, default=50, help="events per user's history")
    parser.add_argument("--items", type=int, default=100, help="items registered and retired")
    parser.add_argument("--rounds", type=int, default=7, help="Recommend CPU rounds (medians)")
    parser.add_argument("--calls", type=int, default=2000, help="Recommend calls per round")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
