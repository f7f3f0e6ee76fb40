"""Topic administration: create a topic with the partition count the consumer group needs.

Why explicit creation: partitions bound how many service replicas can share
the event stream (one consumer owns a partition, and so its users), and a
broker's auto-creation on first produce picks its own count. Works against
Kafka and against the local stack's tansu broker, which supports CreateTopics.
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from service.errors import TopicError

logger = logging.getLogger(__name__)


def create_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    *,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
    compacted: bool = False,
) -> bool:
    """Create topic `name` with `partitions` partitions; False when it already exists.

    An existing topic is left as it is, whatever its partition count. A compacted topic
    keeps each key's last record: the items topic, where that record is the item.
    """
    if partitions < 1:
        raise TopicError(f"topic {name!r} needs at least 1 partition, got {partitions}")
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="coldstart-topics",
            request_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as error:
        raise TopicError(
            f"cannot reach Kafka at {bootstrap} to create {name!r}: {error}"
        ) from error
    try:
        configs = {"cleanup.policy": "compact"} if compacted else {}
        admin.create_topics([NewTopic(name, partitions, replication_factor, topic_configs=configs)])
    except TopicAlreadyExistsError:
        logger.info("topic %s already exists at %s", name, bootstrap)
        return False
    except KafkaError as error:
        raise TopicError(f"cannot create topic {name!r} at {bootstrap}: {error}") from error
    finally:
        admin.close()
    logger.info("created topic %s with %s partitions at %s", name, partitions, bootstrap)
    return True
