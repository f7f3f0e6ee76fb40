"""How the service reaches its engines: Kafka client options and Redis clients, from settings.

Why one module: the consumer, the dead-letter producer, the ingest producer and
the topic admin must all speak the same security (SASL, TLS) to Kafka, and every
Redis client must carry the same credentials and TLS and know whether it talks
to a Redis Cluster. Building them here means a new setting reaches every client
at once. The secrets go into the client objects and nowhere else.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from service.settings import Settings, redact_url
from trainer.errors import ColdstartError


def kafka_options(settings: Settings) -> dict[str, Any]:
    """The security keyword arguments every kafka-python client of the service takes."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL_"):
        options |= {
            "sasl_mechanism": settings.kafka_sasl_mechanism,
            "sasl_plain_username": settings.kafka_sasl_username,
            "sasl_plain_password": settings.kafka_sasl_password,
        }
    if settings.kafka_ssl_cafile is not None:
        options["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    return options


def redis_client(
    url: str, timeout_s: float, settings: Settings | None = None, retry: Retry | None = None
) -> redis.Redis:
    """A client for `url` (the settings' or the local stack's) with the settings' credentials,
    TLS and cluster mode (no settings: none of them). RedisCluster routes each command by its
    key's hash slot; the store touches one key per script call, so it needs nothing else."""
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if retry is not None:
        options["retry"] = retry
    if settings is None:
        return redis.Redis.from_url(url, **options)
    if settings.redis_username is not None:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password
    if settings.redis_tls_ca is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca)
    if settings.redis_cluster:
        return _cluster_client(url, options)
    return redis.Redis.from_url(url, **options)


def _cluster_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """Unlike a plain client, a cluster client asks a node for the slot map as it is made, so
    a cluster that is down at start-up stops the replica: with one line, not a traceback, and
    the orchestrator's restart tries again."""
    try:
        return RedisCluster.from_url(url, **options)  # type: ignore[return-value]
    except RedisClusterException as error:
        raise ColdstartError(
            f"cannot reach the Redis Cluster at {redact_url(url)}: {error}"
        ) from None
