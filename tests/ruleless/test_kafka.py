"""ruleless/kafka.py against the embedded broker: topic incarnations and co-partitioning."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from ruleless.kafka import check_copartitioned, ensure_topics, topic_incarnation
from ruleless.settings import Settings
from schemas.errors import ServiceError


def test_a_re_created_topic_is_another_incarnation(topics: Settings) -> None:
    raw = topics.topics.raw
    first = topic_incarnation(topics.kafka, raw)
    assert first and first == topic_incarnation(topics.kafka, raw)
    admin = AdminClient(topics.kafka.confluent_config())
    admin.delete_topics([raw])[raw].result(30)
    ensure_topics(topics.kafka, topics.topics, [raw])
    assert topic_incarnation(topics.kafka, raw) not in ("", first)


def test_raw_and_feedback_topics_must_share_their_partition_count(settings: Settings) -> None:
    t = settings.topics
    assert check_copartitioned(settings.kafka, [t.raw, t.feedback]) == 0  # neither exists yet
    ensure_topics(settings.kafka, t)
    assert check_copartitioned(settings.kafka, [t.raw, t.feedback]) == t.partitions
    other = f"{t.feedback}-odd"
    admin = AdminClient(settings.kafka.confluent_config())
    admin.create_topics([NewTopic(other, num_partitions=t.partitions + 1, replication_factor=1)])[other].result(30)
    with pytest.raises(ServiceError, match="same number of partitions"):
        check_copartitioned(settings.kafka, [t.raw, other])
