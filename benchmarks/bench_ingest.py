"""Events applied end to end (produce -> consume -> adapt -> Redis) and event-to-state freshness.

Setup: a local broker and Redis (`service.localstack`), the events topic with
PARTITIONS partitions, an ml-1m-sized model (built, not trained: see
benchmarks/common.py; `--model DIR` for a trained one; its inner steps are
reported), and USERS users already in Redis with HISTORY-event histories, so
each event re-adapts a user over a full bounded history (the steady state).
The consumer is the service's own `EventConsumer` with `coldstart serve`'s
settings (torch threads 1, MAX_RECORDS records per poll), in its
own process, with an observer that reports applied events after every poll and
keeps the freshness it is told (event ts to the state's write, as the
Prometheus histogram sees it). `--consumers N` runs N of them in one group, so
they share the partitions: scale-out by replicas, on one machine.

The bench process produces JSON events with kafka-python (acks=all, linger 5
ms, as `coldstart replay`), keyed by user, each stamped with the time of
producing, rating events on random items of random users:
1. warm-up: WARMUP events, waited for, again until every consumer has applied
   some (the group joins and rebalances are in here);
2. throughput: EVENTS events as fast as the producer goes; events_per_s is
   EVENTS over the time from the first send to the last applied event;
   drain_events_per_s is the rate of applying after the last send;
3. freshness: RATE events/s for PACED_SECONDS; p50/p99 over those events.
`--new-item-share S` sends that share of the events to NEW_ITEMS items no model
knows: each is registered at its first event (on the items topic) and warmed on its
events in the consumer's micro-batches, as `coldstart serve` does; 0 keeps every
event on the trained catalogue. `benchmarks/run_item_service.sh` runs both, alternately.

    python benchmarks/bench_ingest.py [--events 50000] [--rate 1000] [--paced-seconds 20]
        [--users 5000] [--model DIR] [--consumers 1]

Prints one JSON object. The consumer imports the same code as this script
("code" in the output); where the editable install points at another checkout,
run with PYTHONPATH=.:protos from the repository root to measure this one.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from common import (
    DEFAULT_DATA,
    adapted_users,
    child_env,
    cpu_seconds,
    machine,
    percentiles_ms,
    rss_mib,
    stop,
)
from kafka import KafkaProducer

from service import heap
from service.events import Event
from service.item_store import ItemStore
from service.kafka_consumer import ConsumerConfig, EventConsumer
from service.localstack import LocalStack
from service.model import ServingModel
from service.observer import StreamObserver
from service.state import now_ms
from service.store import UserStore
from service.topics import create_topic
from trainer import artifact
from trainer.allocator import keep_large_blocks

TOPIC = "coldstart.bench.events"
GROUP = "coldstart-bench"
ITEMS_TOPIC = "coldstart.bench.items"


# --- the consumer process --------------------------------------------------------------------


class Recording(StreamObserver):
    """Counts applied events and keeps every freshness sample, in applying order."""

    def __init__(self) -> None:
        self.applied = 0
        self.batches = 0
        self.adapt_s = 0.0
        self.freshness_s: list[float] = []

    def on_batch(self, size: int, seconds: float) -> None:
        self.batches += 1
        self.adapt_s += seconds

    def on_event_applied(self, n: int) -> None:
        self.applied += n

    def on_freshness(self, seconds: float) -> None:
        self.freshness_s.append(seconds)


class ReportingConsumer(EventConsumer):
    """The service's consumer, printing the applied count after every poll that applied some."""

    def __init__(self, *args: Any, recording: Recording, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recording = recording
        self._reported = 0

    def step(self) -> int:
        polled = super().step()
        if self.recording.applied != self._reported:
            self._reported = self.recording.applied
            print(json.dumps({"t": time.time(), "applied": self._reported}), flush=True)
        return polled


def run_consumer(args: argparse.Namespace) -> None:
    """The consumer as `coldstart serve` runs it, plus the recording observer; dumps it to
    --out on SIGTERM."""
    torch.set_num_threads(args.torch_threads)
    keep_large_blocks()  # as coldstart serve does
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    config = ConsumerConfig(
        args.kafka_bootstrap,
        TOPIC,
        GROUP,
        max_records=args.max_records,
        items_topic=ITEMS_TOPIC,
        register_unknown_items=True,
    )
    model = ServingModel(artifact.load(args.model))
    store = UserStore.from_url(args.redis_url)
    recording = Recording()
    consumer = ReportingConsumer(
        model,
        store,
        config,
        recording,
        stopping=stopping,
        items=ItemStore(store.client),
        recording=recording,
    )
    heap.settle()  # as coldstart serve does
    consumer.run()
    summary = {
        "applied": recording.applied,
        "batches": recording.batches,
        "adapt_s": recording.adapt_s,
        "freshness_s": recording.freshness_s,
    }
    Path(args.consumer_out).write_text(json.dumps(summary))


# --- the bench process -----------------------------------------------------------------------


class Progress:
    """The consumers' applied-event reports, read from their stdout in threads."""

    def __init__(self, processes: Sequence[subprocess.Popen[str]], logs: Sequence[Path]) -> None:
        self.processes, self.logs = processes, logs
        self.counts = [0] * len(processes)  # applied so far, per consumer
        self.timeline: list[tuple[float, int]] = []  # (wall time, applied so far by all)
        self._changed = threading.Condition()
        for n, process in enumerate(processes):
            threading.Thread(target=self._read, args=(n, process), daemon=True).start()

    def _read(self, n: int, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                self.counts[n] = report["applied"]
                self.timeline.append((report["t"], sum(self.counts)))
                self._changed.notify_all()

    @property
    def applied(self) -> int:
        return sum(self.counts)

    def wait_for(self, applied: int, timeout_s: float) -> float:
        """Waits until `applied` events are applied; the wall time a consumer reported it."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.applied < applied:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{self.applied} of {applied} events applied after {timeout_s} s"
                    )
                for process, log in zip(self.processes, self.logs, strict=True):
                    if process.poll() is not None:
                        raise RuntimeError(
                            f"a consumer exited with {process.returncode}; its log:\n"
                            f"{log.read_text()[-3000:]}"
                        )
                self._changed.wait(min(left, 1.0))
            return next(t for t, n in sorted(self.timeline) if n >= applied)

    def rate_after(self, since: float) -> float:
        """Events/s applied from the first report after `since` to the last report."""
        timeline = sorted(self.timeline)
        after = [(t, n) for t, n in timeline if t >= since]
        before = [(t, n) for t, n in timeline if t < since]
        if not after or not before:
            return float("nan")
        (t0, n0), (t1, n1) = before[-1], after[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


class EventSource:
    """Random rating events of the bench users, each stamped with its time of producing."""

    def __init__(
        self,
        bootstrap: str,
        user_ids: Sequence[str],
        item_ids: Sequence[str],
        new_items: Sequence[str] = (),
        new_share: float = 0.0,
    ) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self.user_ids, self.item_ids = user_ids, item_ids
        self.new_items, self.new_share = new_items, new_share
        self.rng = random.Random(7)
        self.sent = 0

    def send(self) -> None:
        user = self.rng.choice(self.user_ids)
        new = self.rng.random() < self.new_share
        event = Event(
            event_id=f"bench-{self.sent}",
            user_id=user,
            item_id=self.rng.choice(self.new_items if new else self.item_ids),
            type="rating",
            value=float(self.rng.randint(1, 5)),
            ts=now_ms(),
        )
        self.producer.send(TOPIC, key=user.encode(), value=event.to_json())
        self.sent += 1

    def burst(self, n: int) -> None:
        for _ in range(n):
            self.send()
        self.producer.flush()

    def paced(self, rate: float, seconds: float) -> None:
        started = time.perf_counter()
        for n in range(int(rate * seconds)):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.send()
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()


WARMUP_ROUNDS = 10  # warm-up bursts at most, waiting for every consumer to get partitions


def spawn_consumer(
    args: argparse.Namespace, stack: LocalStack, model_dir: Path, out: Path, log: Path
) -> subprocess.Popen[str]:
    """One consumer process (run_consumer) of the bench's group."""
    command = [sys.executable, __file__, "--consumer", "--model", str(model_dir)]
    command += [
        "--kafka-bootstrap",
        str(stack.kafka_bootstrap),
        "--redis-url",
        str(stack.redis_url),
    ]
    command += ["--max-records", str(args.max_records), "--consumer-out", str(out)]
    command += ["--torch-threads", str(args.torch_threads)]
    with log.open("w") as errors:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=child_env(),
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, LocalStack() as stack:
        work = Path(tmp)
        assert stack.redis_url is not None and stack.kafka_bootstrap is not None
        model_dir, model, store, user_ids = adapted_users(
            args, stack.redis_url, work, profiles=args.profiles
        )
        store.close()
        for topic in (TOPIC, f"{TOPIC}.dlq"):
            create_topic(stack.kafka_bootstrap, topic, args.partitions)
        create_topic(stack.kafka_bootstrap, ITEMS_TOPIC, 1, compacted=True)
        new_items = [f"new-{n}" for n in range(args.new_items)]

        outs = [work / f"consumer-{n}.json" for n in range(args.consumers)]
        logs = [work / f"consumer-{n}.log" for n in range(args.consumers)]
        pairs = zip(outs, logs, strict=True)
        processes = [spawn_consumer(args, stack, model_dir, out, log) for out, log in pairs]
        source = EventSource(
            stack.kafka_bootstrap, user_ids, model.item_ids, new_items, args.new_item_share
        )
        try:
            progress = Progress(processes, logs)
            for _ in range(WARMUP_ROUNDS):  # until every consumer has partitions and applied some
                source.burst(args.warmup)
                progress.wait_for(source.sent, args.timeout_s)
                if all(progress.counts):
                    break
            else:
                raise RuntimeError(f"consumers that applied nothing: {progress.counts}")
            warmup = source.sent

            cpu_before, started = cpu_seconds(*(p.pid for p in processes)), time.time()
            source.burst(args.events)
            produced = time.time()
            done = progress.wait_for(warmup + args.events, args.timeout_s)
            consumer_cpu = cpu_seconds(*(p.pid for p in processes)) - cpu_before
            throughput = {
                "events": args.events,
                "events_per_s": round(args.events / (done - started), 1),
                "produce_s": round(produced - started, 2),
                "drain_events_per_s": round(progress.rate_after(produced), 1),
                "consumer_cpu_ms_per_event": round(1000 * consumer_cpu / args.events, 3),
            }

            paced_from = list(progress.counts)  # each consumer's first paced-phase event
            source.paced(args.rate, args.paced_seconds)
            paced_n = int(args.rate * args.paced_seconds)
            progress.wait_for(warmup + args.events + paced_n, args.timeout_s)
            rss = [rss_mib(process.pid) for process in processes]
        finally:
            source.close()
            for process in processes:
                stop(process, timeout_s=30)  # SIGTERM: it writes its results
        missing = [log for out, log in zip(outs, logs, strict=True) if not out.exists()]
        if missing:
            raise RuntimeError(f"a consumer left no results; its log:\n{missing[0].read_text()}")
        recorded = [json.loads(out.read_text()) for out in outs]
    # A consumer records one freshness per applied event, in order of applying.
    paced_s = [t for r, n in zip(recorded, paced_from, strict=True) for t in r["freshness_s"][n:]]
    freshness = percentiles_ms(paced_s)
    return {
        **throughput,
        "freshness_rate": args.rate,
        "freshness_events": paced_n,
        "freshness_p50_ms": freshness["p50_ms"],
        "freshness_p99_ms": freshness["p99_ms"],
        "freshness_p999_ms": freshness["p999_ms"],
        "new_item_share": args.new_item_share,
        "new_items": args.new_items,
        "inner_steps": model.rule.steps,
        "items": len(model.item_ids),
        "dim": model.dim,
        "model": str(args.model) if args.model else "ml-1m, built (untrained)",
        "users": args.users,
        "profiles": args.profiles,
        "history": args.history,
        "partitions": args.partitions,
        "max_records": args.max_records,
        "batches": sum(r["batches"] for r in recorded),
        "adapt_s_total": round(sum(r["adapt_s"] for r in recorded), 2),
        "applied_total": sum(r["applied"] for r in recorded),
        "consumers": args.consumers,
        "consumer_rss_mib": rss,
        "torch_threads": args.torch_threads,
        "targets": {
            "events_per_s_met": throughput["events_per_s"] >= 5000,
            "freshness_p99_met": freshness["p99_ms"] <= 500,
        },
        **machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ml-1m directory")
    parser.add_argument("--model", type=Path, help="a trained artifact instead of a built one")
    parser.add_argument("--users", type=int, default=5000, help="users events are spread over")
    parser.add_argument("--history", type=int, default=50, help="each user's stored history")
    parser.add_argument(
        "--profiles", action="store_true", help="every user has a 3-feature stored profile"
    )
    parser.add_argument("--partitions", type=int, default=4, help="the service's default")
    parser.add_argument("--max-records", type=int, default=500, help="records per poll")
    parser.add_argument("--consumers", type=int, default=1, help="consumer processes, one group")
    parser.add_argument("--torch-threads", type=int, default=1, help="coldstart serve's setting")
    parser.add_argument("--warmup", type=int, default=2000, help="events before measuring")
    parser.add_argument("--events", type=int, default=50_000, help="throughput phase")
    parser.add_argument("--rate", type=float, default=1000.0, help="freshness phase, events/s")
    parser.add_argument("--paced-seconds", type=float, default=20.0)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per phase at most")
    parser.add_argument(
        "--new-item-share", type=float, default=0.0, help="share of events on new items"
    )
    parser.add_argument("--new-items", type=int, default=370, help="10%% of ml-1m's catalogue")
    parser.add_argument("--consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kafka-bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--consumer-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.consumers <= args.partitions:
        parser.error(f"--consumers must be between 1 and --partitions ({args.partitions})")
    if args.consumer:
        run_consumer(args)
        return
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
