"""The `serve` process's settings: one typed object, read from flags and `COLDSTART_*` variables.

Why one object: every knob the service has is listed here with its default and
its reason, so an operator finds it by reading one file, a Helm chart sets it by
one environment variable, and a mistake (a port out of range, a model
directory that is not there, a URL that is not a Redis URL) stops the process
at start-up with a message naming the setting, instead of surfacing later as a
connection error deep in a thread. A flag wins over its environment variable,
which wins over the default.

Secrets: passwords (`redis_password`, `kafka_sasl_password`, or one inside the
Redis URL) may come from a mounted file instead of the environment: any setting
X is also read from the file named by `COLDSTART_X_FILE` (the Kubernetes and
Docker secrets convention). `describe()` is what gets logged, and it masks every
secret; nothing else in the service logs them, and no error message quotes one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from service.errors import SettingsError

ENV_PREFIX = "COLDSTART_"
FILE_SUFFIX = "_FILE"
REDIS_SCHEMES = ("redis", "rediss", "unix")
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
UNKNOWN_ITEMS = ("register", "dead_letter")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECRETS = ("redis_password", "kafka_sasl_password")
MASK = "***"


@dataclass(frozen=True)
class Settings:
    """Everything `coldstart serve` can be told; field `x_y` is `--x-y` and `COLDSTART_X_Y`."""

    model: Path  # model directory written by `coldstart train` (manifest.json + weights)
    kafka_bootstrap: str | None = None  # "host:port[,host:port]"; None: start a local broker
    redis_url: str | None = None  # "redis://[:password@]host:port/db"; None: start a local Redis
    grpc_port: int = 50051  # gRPC listen port (0: any free port, for tests and the demo)
    grpc_host: str = "[::]"  # gRPC listen address
    metrics_port: int = 9464  # Prometheus HTTP port (0: any free port)
    metrics_host: str = "0.0.0.0"  # Prometheus HTTP listen address
    topic: str = "coldstart.events"  # events topic; dead letters go to TOPIC.dlq
    topic_partitions: int = 4  # partitions when the service creates the topic (local stack only)
    items_topic: str = "coldstart.items"  # the live catalogue's compacted log, keyed by item id
    unknown_items: str = "register"  # an event's item in no catalogue: register, or dead_letter
    item_refresh_s: float = 0.2  # how often each replica reads catalogue and warm-up changes
    index_from_items: int = 100_000  # from this many trained items, top-k searches an index
    index_probes: int = 32  # index lists a top-k searches: more is closer to exact, slower
    consumer_group: str = "coldstart-service"  # Kafka consumer group shared by all replicas
    history_limit: int = 50  # interactions kept per user: what re-adaptation and filtering see
    state_ttl_s: int = 0  # expire a user's state after this long without events; 0: never
    max_concurrent_rpcs: int = 256  # beyond this, new RPCs get RESOURCE_EXHAUSTED at once
    grpc_workers: int = 4  # threads serving RPCs (>= 2); half at most hold RecordEvents streams
    max_message_bytes: int = 4 * 1024 * 1024  # largest gRPC message in either direction
    max_stream_events: int = 10_000  # events one RecordEvents stream may carry
    poll_batch_size: int = 500  # records per consumer poll: the adaptation micro-batch
    grace_s: float = 5.0  # on SIGTERM, time in-flight RPCs get before they are cancelled
    redis_timeout_s: float = 0.25  # Redis socket timeout: past it, Recommend answers DEGRADED
    redis_username: str | None = None  # Redis ACL user (Redis 6+); None: the default user
    redis_password: str | None = None  # Redis password (secret); overrides one in the URL
    redis_tls_ca: Path | None = None  # CA bundle that signed the Redis server's certificate
    redis_cluster: bool = False  # the URL is one node of a Redis Cluster
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    kafka_sasl_mechanism: str = "PLAIN"  # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    kafka_sasl_username: str | None = None  # SASL user, required with SASL_*
    kafka_sasl_password: str | None = None  # SASL password (secret), required with SASL_*
    kafka_ssl_cafile: Path | None = None  # CA bundle that signed the brokers' certificates
    grpc_tls_cert: Path | None = None  # PEM server certificate (chain); with the key: TLS on
    grpc_tls_key: Path | None = None  # PEM private key of grpc_tls_cert
    grpc_tls_client_ca: Path | None = None  # PEM CA: clients must present a cert it signed
    model_reload_s: float = 30.0  # how often to look for a new model in --model; 0: never

    def describe(self) -> dict[str, Any]:
        """The settings as they may be logged: a Redis password is masked."""
        values = dataclasses.asdict(self)
        values = {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
        values["redis_url"] = redact_url(self.redis_url)
        for name in SECRETS:
            if values[name] is not None:
                values[name] = MASK
        return values


@dataclass(frozen=True)
class _Spec:
    name: str  # the field name
    kind: type  # bool, int, float, str or Path
    help: str = field(default="")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def label(self) -> str:
        return f"{self.flag} / {self.env}"


def _kind(annotation: str) -> type:
    """The parsing type of a field annotation (the module uses postponed annotations)."""
    kinds = (("Path", Path), ("bool", bool), ("int", int), ("float", float), ("str", str))
    for name, kind in kinds:
        if annotation.startswith(name):
            return kind
    raise TypeError(f"no parser for settings type {annotation!r}")


SPECS = [_Spec(f.name, _kind(str(f.type))) for f in dataclasses.fields(Settings)]


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting. Defaults stay None so `resolve` can tell 'not given' apart.
    A true/false setting's flag alone means true (`--redis-cluster`), as with most tools."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    for spec in SPECS:
        default = defaults[spec.name]
        shown = "required" if default is dataclasses.MISSING else f"default {default}"
        switch: dict[str, Any] = {"nargs": "?", "const": "true"} if spec.kind is bool else {}
        parser.add_argument(
            spec.flag,
            dest=spec.name,
            default=None,
            metavar=spec.name.upper(),
            help=f"{shown}; env {spec.env}",
            **switch,
        )


def resolve(
    args: argparse.Namespace | Mapping[str, Any], env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags (`args`), then `COLDSTART_*` variables, then defaults; validated.

    Raises SettingsError listing every bad setting, each with its flag, its variable and why.
    """
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in SPECS:
        try:
            raw, source = _raw_value(spec, given, env)
        except ValueError as error:
            problems.append(f"{spec.label}: {error}")
            continue
        if raw is None:
            continue
        try:
            values[spec.name] = _convert(spec, raw)
        except ValueError as error:
            problems.append(f"{spec.label}: {error} (from {source})")
    if "model" not in values:
        problems.append("--model / COLDSTART_MODEL: required; give the model directory")
    if problems:
        raise SettingsError(_report(problems))
    settings = Settings(**values)
    problems = validate(settings)
    if problems:
        raise SettingsError(_report(problems))
    return settings


def _raw_value(spec: _Spec, given: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Any, str]:
    """The setting's raw value and where it came from: the flag, the variable, or the file
    the `_FILE` variable names. Raises ValueError (never quoting a file's content)."""
    if given.get(spec.name) is not None:
        return given[spec.name], spec.flag
    if env.get(spec.env, "") != "":
        return env[spec.env], spec.env
    file_variable = spec.env + FILE_SUFFIX
    path = env.get(file_variable, "")
    if path == "":
        return None, ""
    try:
        return Path(path).read_text(encoding="utf-8").strip(), file_variable
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {path} (from {file_variable}): {error}") from None


def _report(problems: list[str]) -> str:
    return "invalid settings:\n  " + "\n  ".join(problems)


def _convert(spec: _Spec, raw: Any) -> Any:
    if isinstance(raw, spec.kind):
        return raw
    text = str(raw).strip()
    if spec.kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{text!r} is not one of true, false")
        return text.lower() in ("true", "1", "yes")
    if spec.kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
    if spec.kind is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if spec.kind is Path:
        return Path(text).expanduser()
    return text


# Durations: (setting, least, most); model_reload_s 0 turns reloading off.
SECONDS = (
    ("grace_s", 0.001, 3600.0),
    ("redis_timeout_s", 0.001, 60.0),
    ("model_reload_s", 0.0, 86400.0),
    ("item_refresh_s", 0.01, 10.0),
)


def validate(settings: Settings) -> list[str]:
    """Every problem with `settings`, one line each naming the setting; empty when valid."""
    by_name = {spec.name: spec for spec in SPECS}
    problems: list[tuple[str, str]] = []
    problems += _model_problems(settings.model)
    for name in ("grpc_port", "metrics_port"):
        problems += [(name, p) for p in port_problems(getattr(settings, name))]
    if settings.grpc_port and settings.grpc_port == settings.metrics_port:
        problems.append(("metrics_port", f"{settings.metrics_port} is also the gRPC port"))
    if settings.kafka_bootstrap is not None:
        problems += [("kafka_bootstrap", p) for p in bootstrap_problems(settings.kafka_bootstrap)]
    if settings.redis_url is not None:
        problems += [("redis_url", p) for p in _redis_url_problems(settings.redis_url)]
    if settings.unknown_items not in UNKNOWN_ITEMS:
        choices = ", ".join(UNKNOWN_ITEMS)
        problems.append(("unknown_items", f"{settings.unknown_items!r} is not one of {choices}"))
    for name in ("topic", "consumer_group", "items_topic"):
        problems += [(name, p) for p in topic_problems(getattr(settings, name))]
    for name, low in (
        ("topic_partitions", 1),
        ("history_limit", 1),
        ("state_ttl_s", 0),
        ("max_concurrent_rpcs", 1),
        ("grpc_workers", 2),
        ("max_message_bytes", 1024),
        ("max_stream_events", 1),
        ("poll_batch_size", 1),
        ("index_from_items", 1),
        ("index_probes", 1),
    ):
        if getattr(settings, name) < low:
            problems.append((name, f"{getattr(settings, name)} is below the minimum {low}"))
    for name, low, high in SECONDS:
        value = getattr(settings, name)
        # NaN fails the comparison too; inf or a huge value overflows socket and thread waits.
        if not low <= value <= high:
            problems.append((name, f"{value} is not a number of seconds from {low} to {high}"))
    problems += _security_problems(settings)
    return [f"{by_name[name].label}: {why}" for name, why in problems]


def _security_problems(s: Settings) -> list[tuple[str, str]]:
    """TLS files that are not there, half-given credentials, unknown protocols."""
    problems: list[tuple[str, str]] = []
    files = (
        "redis_tls_ca",
        "kafka_ssl_cafile",
        "grpc_tls_cert",
        "grpc_tls_key",
        "grpc_tls_client_ca",
    )
    for name in files:
        path = getattr(s, name)
        if path is not None and not path.is_file():
            problems.append((name, f"{path} is not a file"))
    if (s.grpc_tls_cert is None) != (s.grpc_tls_key is None):
        problems.append(("grpc_tls_key", "give both the gRPC TLS certificate and its key"))
    if s.grpc_tls_client_ca is not None and s.grpc_tls_cert is None:
        problems.append(("grpc_tls_client_ca", "mutual TLS needs --grpc-tls-cert and -key"))
    if s.redis_tls_ca is not None and not (s.redis_url or "").startswith("rediss://"):
        problems.append(("redis_tls_ca", "a Redis CA needs a rediss:// URL"))
    if s.kafka_security_protocol not in KAFKA_PROTOCOLS:
        choices = ", ".join(KAFKA_PROTOCOLS)
        problems.append(
            ("kafka_security_protocol", f"{s.kafka_security_protocol!r}: not {choices}")
        )
    if s.kafka_sasl_mechanism not in SASL_MECHANISMS:
        choices = ", ".join(SASL_MECHANISMS)
        problems.append(("kafka_sasl_mechanism", f"{s.kafka_sasl_mechanism!r}: not {choices}"))
    sasl = s.kafka_security_protocol.startswith("SASL_")
    for name in ("kafka_sasl_username", "kafka_sasl_password"):
        if sasl and not getattr(s, name):
            problems.append((name, f"required with {s.kafka_security_protocol}"))
    if s.kafka_ssl_cafile is not None and not s.kafka_security_protocol.endswith("SSL"):
        problems.append(("kafka_ssl_cafile", "a Kafka CA needs SSL or SASL_SSL"))
    return problems


def _model_problems(model: Path) -> list[tuple[str, str]]:
    if not model.exists():
        return [("model", f"{model} does not exist; train one with `coldstart train`")]
    if not model.is_dir():
        return [("model", f"{model} is not a directory")]
    if not (model / "manifest.json").is_file():
        return [("model", f"{model} has no manifest.json; is it a model directory?")]
    return []


def port_problems(port: int) -> list[str]:
    if not 0 <= port <= 65535:
        return [f"{port} is not a TCP port (1..65535, or 0 for any free port)"]
    return []


def bootstrap_problems(bootstrap: str) -> list[str]:
    servers = [s.strip() for s in bootstrap.split(",")]
    if not all(servers):
        return [f"{bootstrap!r} is not a comma-separated list of host:port"]
    problems = []
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            problems.append(f"{server!r} is not host:port with a port in 1..65535")
    return problems


def _redis_url_problems(url: str) -> list[str]:
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return [f"{shown!r} is not a valid URL ({error})"]
    if parts.scheme not in REDIS_SCHEMES:
        return [f"{shown!r} must start with {', '.join(s + '://' for s in REDIS_SCHEMES)}"]
    if parts.scheme == "unix":
        return [] if parts.path else [f"{shown!r} names no socket path"]
    if not parts.hostname:
        return [f"{shown!r} names no host"]
    if port == 0:
        return [f"{shown!r} has port 0"]
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        return [f"{shown!r}: the path must be a database number, got {database!r}"]
    return []


def topic_problems(name: str) -> list[str]:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    if not name:
        return ["must not be empty"]
    if len(name) > 200 or not set(name) <= allowed:
        return [f"{name!r} must be at most 200 of the characters a-z A-Z 0-9 . _ -"]
    return []


def redact_url(url: str | None) -> str | None:
    """`url` with any password replaced by ***, fit for logs."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "<unparsable URL>"
    return urlunsplit(parts._replace(netloc=netloc))


def markdown_reference() -> str:
    """The configuration reference as a Markdown table: every setting, its flag, its
    environment variable, its default and what it does (README.md carries it).

    The descriptions are the `# comment` after each field of `Settings`, read from its
    source, so the class stays the one place a setting is explained.
    """
    import ast
    import inspect
    import io
    import textwrap
    import tokenize

    source = textwrap.dedent(inspect.getsource(Settings))
    comments = {
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    (cls,) = ast.parse(source).body
    assert isinstance(cls, ast.ClassDef)
    described = {
        node.target.id: comments.get(node.end_lineno or node.lineno, "")
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    rows = [
        "| setting | flag | environment variable | default | what it does |",
        "|---|---|---|---|---|",
    ]
    for f, spec in zip(dataclasses.fields(Settings), SPECS, strict=True):
        if not described.get(f.name):
            raise ValueError(f"Settings.{f.name} has no `# comment` to describe it")
        if f.default is dataclasses.MISSING:
            default = "required"
        elif f.default is None:
            default = "unset"
        elif isinstance(f.default, bool):
            default = f"`{str(f.default).lower()}`"
        else:
            default = f"`{f.default}`"
        text = described[f.name].replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{spec.flag}` | `{spec.env}` | {default} | {text} |")
    return "\n".join(rows) + "\n"
