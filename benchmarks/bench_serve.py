"""Recommend throughput and latency, against a bare gRPC + Redis GET floor measured in the same run.

Setup: a local Redis and broker (`service.localstack`), an ml-1m-sized model
(built, not trained: see benchmarks/common.py; `--model DIR` for a trained one),
USERS adapted users written through `service.store` (50-event histories, so
Recommend excludes 50 seen items), and two servers in their own processes on
loopback:
- `coldstart serve`, the product, unchanged (its idle consumer included;
  `--serve-torch-threads N` sets its OMP_NUM_THREADS, torch's thread count);
  `--replicas N` starts N of them on one port (gRPC binds with SO_REUSEPORT, so
  the kernel spreads connections over them): scale-out by replicas, on one machine;
- the floor: a gRPC server with the same thread pool and Redis client settings
  whose one unary handler (raw bytes, no protobuf) does one Redis GET of a
  value as large as a stored user record, and returns it.
One asyncio client process (grpc.aio) drives both, alternately, so load on the
machine hits both alike, over CHANNELS connections to each (so replicas share
the load): closed loops at each concurrency for SECONDS (at most
MAX_REQUESTS calls), then an open loop paced at RATE requests/s, where latency
is taken from the actual send and, separately, from the scheduled send time.
Every statistic is the median over REPEATS rounds. The client shares the
machine's cores with the servers; its CPU time is reported next to theirs.

    python benchmarks/bench_serve.py [--users 2000] [--seconds 4] [--repeats 3]
        [--concurrency 1,16,64] [--rate 1000] [--paced-seconds 10] [--model DIR] [--replicas 1]

Prints one JSON object. The servers import the same code as this script ("code"
in the output); where the editable install points at another checkout, run
with PYTHONPATH=.:protos from the repository root to measure this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import torch
from coldstart.v1 import recommender_pb2, recommender_pb2_grpc
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
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.app import serving_redis
from service.localstack import LocalStack, free_port, log_tail
from service.store import UserStore, user_key
from service.topics import create_topic

FLOOR_METHOD = "/coldstart.bench.Floor/Get"
FLOOR_PREFIX = b"coldstart:floor:"
TOPIC = "coldstart.bench.serve"
WORKERS, MAX_CONCURRENT_RPCS, REDIS_TIMEOUT_S = 4, 256, 0.25  # the service's defaults
CALL_TIMEOUT_S = 5.0
CHANNELS = 8  # client connections per server; calls take them in turn
SERVING_LINE = "health, reflection on"  # service.grpc_server.start_server logs it once started
SERVE = "import sys; from service.cli import main; sys.exit(main())"  # `coldstart serve ...`


# --- the floor server (run in its own process) ---------------------------------------------


def run_floor_server(redis_url: str, port: int) -> None:
    """A gRPC server whose one unary method is one Redis GET; runs until killed."""
    client = serving_redis(redis_url, REDIS_TIMEOUT_S)

    def get(request: bytes, context: grpc.ServicerContext) -> bytes:
        return client.get(FLOOR_PREFIX + request) or b""

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="grpc"),
        maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
    )
    handler = grpc.unary_unary_rpc_method_handler(get)  # no (de)serializers: bytes in and out
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("coldstart.bench.Floor", {"Get": handler})]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


# --- the client ----------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured stretch of calls against one server."""

    latencies_s: list[float] = field(default_factory=list)  # from the actual send
    scheduled_s: list[float] = field(default_factory=list)  # from the scheduled send (paced)
    errors: dict[str, int] = field(default_factory=dict)
    not_adapted: int = 0  # Recommend answers whose state was not ADAPTED
    seconds: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        n = len(self.latencies_s)
        out: dict[str, Any] = {
            "requests": n,
            "requests_per_s": round(n / self.seconds, 1) if self.seconds else 0.0,
            **percentiles_ms(self.latencies_s),
            "server_cpu_ms_per_request": round(1000 * self.server_cpu_s / max(n, 1), 3),
            "client_cpu_ms_per_request": round(1000 * self.client_cpu_s / max(n, 1), 3),
        }
        if self.scheduled_s:
            sched = percentiles_ms(self.scheduled_s)
            out["p99_from_schedule_ms"] = sched["p99_ms"]
        if self.errors:
            out["errors"] = dict(self.errors)
        if self.not_adapted:
            out["not_adapted"] = self.not_adapted
        return out


Call = Callable[[int], Awaitable[Any]]  # request number -> the RPC


class Target:
    """A server under test: how to call it, and its processes for CPU accounting."""

    def __init__(self, name: str, pids: list[int], call: Call) -> None:
        self.name = name
        self.pids = pids
        self.call = call

    async def _one(self, n: int, phase: Phase, scheduled: float | None = None) -> None:
        started = time.perf_counter()
        try:
            reply = await self.call(n)
        except grpc.aio.AioRpcError as error:
            name = error.code().name
            phase.errors[name] = phase.errors.get(name, 0) + 1
            return
        done = time.perf_counter()
        phase.latencies_s.append(done - started)
        if scheduled is not None:
            phase.scheduled_s.append(done - scheduled)
        recommended = isinstance(reply, recommender_pb2.RecommendResponse)
        if recommended and reply.state != recommender_pb2.ADAPTED:
            phase.not_adapted += 1

    async def closed_loop(self, concurrency: int, seconds: float, max_requests: int) -> Phase:
        """`concurrency` callers, each calling again as soon as its answer arrives."""
        phase = Phase()
        counter = iter(range(max_requests))
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            for n in counter:
                if time.perf_counter() >= deadline:
                    return
                await self._one(n, phase)

        await self._measured(phase, asyncio.gather(*(caller() for _ in range(concurrency))))
        return phase

    async def paced(self, rate: float, seconds: float) -> Phase:
        """An open loop: call number n is sent at start + n / rate, whatever is in flight."""
        phase = Phase()

        async def sender() -> None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            offset = time.perf_counter() - start  # loop.time() -> perf_counter()
            tasks = []
            for n in range(int(rate * seconds)):
                due = start + n / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._one(n, phase, due + offset)))
            await asyncio.gather(*tasks)

        await self._measured(phase, sender())
        return phase

    async def _measured(self, phase: Phase, work: Awaitable[Any]) -> None:
        server_cpu, client_cpu = cpu_seconds(*self.pids), time.process_time()
        started = time.perf_counter()
        await work
        phase.seconds = time.perf_counter() - started
        phase.server_cpu_s = cpu_seconds(*self.pids) - server_cpu
        phase.client_cpu_s = time.process_time() - client_cpu


def median_summary(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median over rounds; error and not-adapted counts summed."""
    counted = ("errors", "not_adapted")
    keys = [key for key in summaries[0] if key not in counted]
    out: dict[str, Any] = {
        key: round(statistics.median(s[key] for s in summaries), 3) for key in keys
    }
    errors: dict[str, int] = {}
    for s in summaries:
        for code, count in s.get("errors", {}).items():
            errors[code] = errors.get(code, 0) + count
    if errors:
        out["errors"] = errors
    not_adapted = sum(s.get("not_adapted", 0) for s in summaries)
    if not_adapted:
        out["not_adapted"] = not_adapted
    return out


async def measure(
    args: argparse.Namespace,
    ports: dict[str, int],
    pids: dict[str, list[int]],
    user_ids: Sequence[str],
) -> dict[str, Any]:
    rng = random.Random(1)
    order = [rng.choice(user_ids) for _ in range(65_536)]
    requests = [recommender_pb2.RecommendRequest(user_id=u, k=args.k) for u in order]
    floor_requests = [u.encode() for u in order]
    # A local subchannel pool per channel: each is its own TCP connection.
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    channels = {
        name: [
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own_connection)
            for _ in range(CHANNELS)
        ]
        for name, port in ports.items()
    }
    try:
        stubs = [recommender_pb2_grpc.RecommenderStub(c) for c in channels["recommend"]]
        floors = [c.unary_unary(FLOOR_METHOD) for c in channels["floor"]]

        def recommend(n: int) -> Awaitable[Any]:
            stub = stubs[n % CHANNELS]
            return stub.Recommend(requests[n % len(requests)], timeout=CALL_TIMEOUT_S)

        def floor_get(n: int) -> Awaitable[Any]:
            floor = floors[n % CHANNELS]
            return floor(floor_requests[n % len(floor_requests)], timeout=CALL_TIMEOUT_S)

        targets = [
            Target("floor", pids["floor"], floor_get),
            Target("recommend", pids["recommend"], recommend),
        ]
        for target in targets:  # warm-up: connections, caches, first torch calls
            await target.closed_loop(16, args.warmup_seconds, args.max_requests)
        rounds: dict[str, dict[str, list[dict[str, Any]]]] = {t.name: {} for t in targets}
        for _ in range(args.repeats):
            for concurrency in args.concurrency:
                for target in targets:
                    phase = await target.closed_loop(concurrency, args.seconds, args.max_requests)
                    rounds[target.name].setdefault(f"c{concurrency}", []).append(phase.summary())
            for target in targets:
                phase = await target.paced(args.rate, args.paced_seconds)
                rounds[target.name].setdefault(f"paced_{args.rate:g}", []).append(phase.summary())
    finally:
        for channel in (c for group in channels.values() for c in group):
            await channel.close()
    return {
        name: {key: median_summary(values) for key, values in by_key.items()}
        for name, by_key in rounds.items()
    }


# --- setup ---------------------------------------------------------------------------------


def wait_serving(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Until the server's health service says SERVING (any server: until it accepts).
    Replicas share a port, so a caller starts them one at a time, waiting for each."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log_tail(log)}")
            try:
                grpc.channel_ready_future(channel).result(timeout=1.0)
            except grpc.FutureTimeoutError:
                continue
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.RpcError as error:
                if error.code() is grpc.StatusCode.UNIMPLEMENTED:  # the floor has no health
                    return
                continue
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
    raise RuntimeError(f"server on port {port} not serving after {timeout_s} s:\n{log_tail(log)}")


def wait_replica(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Until this replica logs that its gRPC server is up (a health check on the shared port
    may reach another replica), then until the port answers SERVING."""
    deadline = time.monotonic() + timeout_s
    while SERVING_LINE not in (log.read_text(errors="replace") if log.exists() else ""):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"replica not serving after {timeout_s} s:\n{log_tail(log)}")
        time.sleep(0.2)
    wait_serving(port, process, log, max(deadline - time.monotonic(), 1.0))


def spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )


def record_bytes(store: UserStore, user_id: str) -> int:
    """Bytes of a stored record as HGETALL returns it (field names and values)."""
    fields = store.client.hgetall(user_key(user_id))
    return sum(len(k) + len(v) for k, v in fields.items())


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """Recommend p50 / floor p50, per phase."""
    return {
        key: round(phase["p50_ms"] / results["floor"][key]["p50_ms"], 2)
        for key, phase in results["recommend"].items()
    }


def targets(results: dict[str, Any], rate: float) -> dict[str, Any]:
    """The standing targets (DESIGN.md): p99 <= 5 ms and p50 <= 1.5x the floor's at 1,000
    requests/s (the paced phase), >= 2,000 requests/s at the best concurrency."""
    paced = f"paced_{rate:g}"
    recommend, floor = results["recommend"], results["floor"]
    p99 = recommend[paced]["p99_ms"]
    ratio = round(recommend[paced]["p50_ms"] / floor[paced]["p50_ms"], 2)
    saturated = max(phase["requests_per_s"] for key, phase in recommend.items() if key != paced)
    return {
        "paced_rate": rate,
        "paced_p99_ms": p99,
        "paced_p99_met": p99 <= 5.0,
        "paced_p50_ratio": ratio,
        "paced_p50_ratio_met": ratio <= 1.5,
        "saturated_requests_per_s": saturated,
        "saturated_met": saturated >= 2000,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, LocalStack() as stack:
        work = Path(tmp)
        assert stack.redis_url is not None and stack.kafka_bootstrap is not None
        model_dir, model, store, user_ids = adapted_users(args, stack.redis_url, work)
        size = record_bytes(store, user_ids[0])
        pipe = store.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.set(FLOOR_PREFIX + user_id.encode(), os.urandom(size))
        pipe.execute()
        store.close()
        create_topic(stack.kafka_bootstrap, TOPIC, 1)

        ports = {"floor": free_port(), "recommend": free_port()}
        floor_log = work / "floor.log"
        floor_cmd = [sys.executable, __file__, "--floor-server", stack.redis_url]
        floor_cmd += ["--floor-port", str(ports["floor"])]
        serve_cmd = [sys.executable, "-c", SERVE, "serve", "--model", str(model_dir)]
        serve_cmd += ["--kafka-bootstrap", stack.kafka_bootstrap, "--redis-url", stack.redis_url]
        serve_cmd += ["--grpc-host", "127.0.0.1", "--grpc-port", str(ports["recommend"])]
        serve_cmd += ["--metrics-host", "127.0.0.1", "--metrics-port", "0", "--topic", TOPIC]
        threads = (
            {"OMP_NUM_THREADS": str(args.serve_torch_threads)} if args.serve_torch_threads else {}
        )
        processes: dict[str, list[subprocess.Popen[bytes]]] = {"floor": [], "recommend": []}
        try:
            processes["floor"].append(spawn(floor_cmd, floor_log, child_env()))
            wait_serving(ports["floor"], processes["floor"][0], floor_log, 60)
            for replica in range(args.replicas):
                log = work / f"serve-{replica}.log"
                processes["recommend"].append(spawn(serve_cmd, log, child_env(**threads)))
                wait_replica(ports["recommend"], processes["recommend"][-1], log, 120)
            pids = {name: [p.pid for p in group] for name, group in processes.items()}
            results = asyncio.run(measure(args, ports, pids, user_ids))
            rss = {name: [rss_mib(pid) for pid in group] for name, group in pids.items()}
        finally:
            for process in (p for group in processes.values() for p in group):
                stop(process, timeout_s=15)
    return {
        "items": len(model.item_ids),
        "dim": model.dim,
        "model": str(args.model) if args.model else "ml-1m, built (untrained)",
        "users": args.users,
        "history": args.history,
        "k": args.k,
        "record_bytes": size,
        "replicas": args.replicas,
        "seconds_per_phase": args.seconds,
        "repeats": args.repeats,
        **results,
        "p50_ratio_to_floor": ratios(results),
        "targets": targets(results, args.rate),
        "server_rss_mib": rss,
        "serve_torch_threads": args.serve_torch_threads or torch.get_num_threads(),
        **machine(),
    }


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ml-1m directory")
    parser.add_argument("--model", type=Path, help="a trained artifact instead of a built one")
    parser.add_argument("--users", type=int, default=2000, help="adapted users in Redis")
    parser.add_argument("--history", type=int, default=50, help="events per user's history")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--concurrency", type=_ints, default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=4.0, help="per closed-loop phase")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per phase at most")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced phase, requests/s")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--warmup-seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; medians reported")
    parser.add_argument(
        "--serve-torch-threads",
        type=int,
        help="OMP_NUM_THREADS for `coldstart serve` (default: unset, torch's own default)",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="`coldstart serve` processes on one port"
    )
    parser.add_argument("--floor-server", metavar="REDIS_URL", help=argparse.SUPPRESS)
    parser.add_argument("--floor-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server:
        run_floor_server(args.floor_server, args.floor_port)
        return
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
