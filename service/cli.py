"""The `coldstart` command: one entry point for the trainer's and the service's commands.

The trainer contributes `synth`, `train` and `evaluate` (trainer/cli.py); the
service adds `serve`, `replay` and `demo` here. Service modules are imported
inside the commands, so a trainer command does not pay for gRPC and Kafka.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from trainer.allocator import keep_large_blocks
from trainer.cli import add_commands as add_trainer_commands
from trainer.cli import add_format_flag, seed_flag
from trainer.errors import ColdstartError


def cmd_serve(args: argparse.Namespace) -> int:
    from service.app import serve
    from service.settings import resolve

    return serve(resolve(args))


def cmd_replay(args: argparse.Namespace) -> int:
    from service.replay import replay
    from service.settings import bootstrap_problems, topic_problems

    bootstrap = args.kafka_bootstrap or os.environ.get("COLDSTART_KAFKA_BOOTSTRAP")
    if not bootstrap:
        raise ColdstartError(
            "replay needs a broker: give --kafka-bootstrap HOST:PORT or COLDSTART_KAFKA_BOOTSTRAP "
            "(`coldstart serve` logs the address of the broker it started)"
        )
    if args.rate is not None and args.rate <= 0:
        raise ColdstartError(f"--rate must be a positive number of events/s, got {args.rate}")
    if args.users is not None and args.users < 1:
        raise ColdstartError(f"--users must be at least 1, got {args.users}")
    topic = args.topic if args.topic is not None else os.environ.get("COLDSTART_TOPIC")
    topic = "coldstart.events" if topic is None else topic
    _refuse("--kafka-bootstrap", bootstrap_problems(bootstrap))
    _refuse("--topic", topic_problems(topic))
    result = replay(args.data, bootstrap, topic, args.users, args.rate, args.seed, args.format)
    print(
        f"replayed {result.events} events of {result.users} test users to {topic} at "
        f"{bootstrap} in {result.seconds:.1f} s ({result.events_per_s:.0f} events/s)"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from service.demo import DemoOptions, run_demo
    from service.settings import port_problems

    if args.meta_steps < 1:
        raise ColdstartError(f"--meta-steps must be at least 1, got {args.meta_steps}")
    for flag, value in (
        ("--replay-users", args.replay_users),
        ("--measured-users", args.measured_users),
    ):
        if value < 0:
            raise ColdstartError(f"{flag} must be 0 or more, got {value}")
    _refuse("--grpc-port", port_problems(args.grpc_port))
    _refuse("--metrics-port", port_problems(args.metrics_port))
    if not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    options = DemoOptions(
        data=args.data,
        data_format=args.format,
        seed=args.seed,
        meta_steps=args.meta_steps,
        measured_users=args.measured_users,
        replay_users=args.replay_users,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        serve=args.serve,
    )
    run_demo(options)
    return 0


def _refuse(flag: str, problems: list[str]) -> None:
    """Checked before anything starts: a bad flag is one line, not a traceback later."""
    if problems:
        raise ColdstartError(f"{flag}: {'; '.join(problems)}")


def add_service_commands(commands: argparse._SubParsersAction) -> None:
    from service.settings import add_flags

    serve = commands.add_parser(
        "serve",
        help="run the recommender service (starts a local Kafka and Redis when none is given)",
        description="Every flag is also a COLDSTART_* environment variable; a flag wins.",
    )
    add_flags(serve)
    serve.set_defaults(run=cmd_serve)

    replay = commands.add_parser(
        "replay", help="produce a data set's test users' events to the topic, in protocol order"
    )
    replay.add_argument("--data", required=True, type=Path, help="data set directory")
    add_format_flag(replay)
    replay.add_argument("--users", type=int, help="first N test users (default: all)")
    replay.add_argument("--rate", type=float, help="events/s (default: as fast as possible)")
    replay.add_argument("--kafka-bootstrap", help="host:port (env COLDSTART_KAFKA_BOOTSTRAP)")
    replay.add_argument("--topic", help="default coldstart.events (env COLDSTART_TOPIC)")
    replay.add_argument("--seed", type=seed_flag, default=0, help="the user split's seed")
    replay.set_defaults(run=cmd_replay)

    demo = commands.add_parser(
        "demo", help="the tour: data, quick training, local stack, service, one cold user"
    )
    demo.add_argument("--data", type=Path, help="data set directory (default: synthetic)")
    add_format_flag(demo)
    demo.add_argument("--seed", type=seed_flag, default=0)
    demo.add_argument("--meta-steps", type=int, default=60, help="quick-training outer steps")
    demo.add_argument(
        "--measured-users", type=int, default=300, help="test users whose mean hits@10 is measured"
    )
    demo.add_argument("--replay-users", type=int, default=30, help="test users replayed at the end")
    demo.add_argument("--grpc-port", type=int, default=0, help="default: any free port")
    demo.add_argument("--metrics-port", type=int, default=0, help="default: any free port")
    demo.add_argument("--serve", action="store_true", help="keep serving after the tour")
    demo.add_argument("--verbose", action="store_true", help="show the service's logs")
    demo.set_defaults(run=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coldstart", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    add_trainer_commands(commands)
    add_service_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python 3 is chatty at INFO
    keep_large_blocks()  # train, evaluate and serve's consumer adapt users in batches
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ColdstartError, OSError) as error:
        # An OSError is a path that cannot be read or written as given (missing, not
        # permitted, a directory for a file) or a port that cannot be bound: said in one
        # line, as bad input is, not as a traceback.
        print(f"coldstart: error: {error}", file=sys.stderr)
        return 2
