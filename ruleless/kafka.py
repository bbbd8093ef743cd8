"""confluent-kafka clients built from settings, and topic creation."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic

from ruleless.settings import KafkaSettings, TopicSettings
from schemas.errors import ServiceError

log = logging.getLogger(__name__)


def producer(kafka: KafkaSettings, **extra: Any) -> Producer:
    """An idempotent producer: retries never duplicate or reorder within a partition."""
    conf = kafka.confluent_config()
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
        }
    )
    conf.update(extra)
    return Producer(conf)


def consumer_config(kafka: KafkaSettings, group_id: str, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration of a :func:`consumer` (``extra`` overrides)."""
    conf = kafka.confluent_config()
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": kafka.fetch_wait_max_ms,
        }
    )
    conf.update(extra)
    return conf


def consumer(kafka: KafkaSettings, group_id: str, **extra: Any) -> Consumer:
    """A consumer that never auto-commits: callers commit after their output is safe."""
    return Consumer(consumer_config(kafka, group_id, **extra))


# What a broker without topic ids (Kafka < 2.8) reports: positions then carry no incarnation.
_NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


def topic_incarnation(kafka: KafkaSettings, topic: str, timeout: float = 30.0) -> str:
    """The topic's Kafka topic id: new whenever the topic is created again (deleted and
    re-created, or an embedded broker restarted with its memory storage). Offsets of one
    incarnation mean nothing in another (issue 14). "" where the broker has no topic ids."""
    admin = AdminClient(kafka.confluent_config())
    try:
        described = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout)
    except KafkaException as exc:
        raise ServiceError(f"cannot describe topic {topic} at {kafka.bootstrap}: {exc}") from None
    topic_id = str(described.topic_id or "")
    if topic_id in ("", _NO_TOPIC_ID):
        log.warning("topic %s has no topic id (Kafka < 2.8?): shard positions cannot tell its incarnations apart", topic)
        return ""
    return topic_id


def check_copartitioned(kafka: KafkaSettings, names: list[str], timeout: float = 30.0) -> int:
    """The partition count the topics share; raises :class:`ServiceError` when they differ
    (feedback for a shard must land in the partition its raw events do, or a worker that
    does not own the shard would apply it)."""
    admin = AdminClient(kafka.confluent_config())
    try:
        listed = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise ServiceError(f"cannot reach Kafka at {kafka.bootstrap}: {exc}") from None
    counts = {name: len(listed[name].partitions) for name in names if name in listed}
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{name} has {n}" for name, n in counts.items())
        raise ServiceError(f"topics must have the same number of partitions: {found}")
    return next(iter(counts.values()), 0)


def ensure_topics(kafka: KafkaSettings, topics: TopicSettings, names: list[str] | None = None, timeout: float = 30.0) -> None:
    """Create the pipeline's topics if they do not exist yet."""
    admin = AdminClient(kafka.confluent_config())
    wanted = names or [topics.raw, topics.scored, topics.alerts, topics.dead_letter, topics.feedback]
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise ServiceError(f"cannot reach Kafka at {kafka.bootstrap}: {exc}") from None
    missing = [n for n in wanted if n not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=topics.partitions, replication_factor=topics.replication) for n in missing],
        operation_timeout=timeout,
    )
    for name, fut in futures.items():
        try:
            fut.result(timeout)
            log.info("created topic %s (%d partitions)", name, topics.partitions)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ServiceError(f"cannot create topic {name}: {exc}") from None
