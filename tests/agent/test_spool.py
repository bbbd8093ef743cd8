"""agent/spool.py: the on-disk spool, and delivery through broker outages against real
tansu brokers."""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from agent.spool import Position, Spool, SpooledPublisher, SpoolFull
from ruleless.broker import EmbeddedBroker, free_port
from ruleless.kafka import consumer, ensure_topics
from ruleless.settings import KafkaSettings, Settings, TopicSettings
from schemas.errors import ServiceError
from schemas.events import RawEvent, decode


def event(seq: int, workload: str = "web") -> RawEvent:
    return RawEvent(
        ts=1_700_000_000.0 + seq, org_id="acme", workload=workload, host="h", pid=seq,
        process_name="true", cmdline=f"true seq-{seq}", argv=["true", f"seq-{seq}"], event_id=f"e-{workload}-{seq}",
    )  # fmt: skip


# --- the spool itself -----------------------------------------------------------------


def value(i: int) -> bytes:
    return f"value-{i}".encode().ljust(100, b".")


def test_append_read_commit_and_resume(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    for i in range(100):
        spool.append(b"k", value(i))
    entries = spool.read(spool.committed, 1000)
    assert [e.value for e in entries] == [value(i) for i in range(100)]
    assert len(list(tmp_path.glob("*.seg"))) > 1  # rotated at 4 KiB
    spool.commit(entries[59].next)
    assert len(list(tmp_path.glob("*.seg"))) < 5  # passed segments are deleted
    spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096)
    rest = again.read(again.committed, 1000)
    assert [e.value for e in rest] == [value(i) for i in range(60, 100)]
    again.append(b"k", b"more")
    assert again.read(rest[-1].next, 10)[0].value == b"more"
    again.close()


def test_torn_tail_is_cut_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append(b"k", b"whole")
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    with open(segment, "ab") as handle:
        handle.write(b"\x50\x00\x00\x00garbage")  # a crash mid-append
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert [e.value for e in again.read(Position(1, 0), 10)] == [b"whole"]
    again.append(b"k", b"next")
    assert [e.value for e in again.read(Position(1, 0), 10)] == [b"whole", b"next"]
    again.close()


def test_full_spool_refuses_and_the_publisher_counts_drops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "a", max_bytes=200)
    spool.append(b"k", b"x" * 100)
    with pytest.raises(SpoolFull):
        spool.append(b"k", b"x" * 100)
    spool.close()
    unreachable = KafkaSettings(bootstrap="127.0.0.1:1")
    publisher = SpooledPublisher(unreachable, "t", tmp_path / "b", max_bytes=4096, delivery_timeout_s=1, close_timeout_s=0)
    assert publisher.health()[0], "an empty spool is healthy"
    with caplog.at_level(logging.WARNING, logger="agent.spool"):
        for i in range(50):
            publisher.publish(event(i))
    ok, why = publisher.health()  # (the agent's /readyz: a full spool drops events)
    publisher.close()
    assert publisher.failed > 0 and publisher.delivered == 0
    assert not ok and "spool full" in why
    assert "is full" in caplog.text and "dropping new events" in caplog.text


def test_one_spool_per_agent(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(ServiceError, match="in use"):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.close()


# --- delivery against real brokers -----------------------------------------------------


def read_topic(kafka: KafkaSettings, topic: str, expected: int, timeout: float = 30.0) -> list[tuple[bytes, RawEvent]]:
    reader = consumer(kafka, group_id=f"check-{uuid.uuid4().hex[:6]}")
    reader.subscribe([topic])
    got: list[tuple[bytes, RawEvent]] = []
    deadline = time.monotonic() + timeout
    idle_until = None
    try:
        while time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is None or msg.error():
                # Keep reading a little past the expected count: duplicates must show up.
                if len(got) >= expected:
                    idle_until = idle_until or time.monotonic() + 2
                    if time.monotonic() > idle_until:
                        break
                continue
            got.append((msg.key() or b"", decode(msg.value() or b"")))
    finally:
        reader.close()
    return got


def assert_exactly_once_in_order(got: list[tuple[bytes, RawEvent]], sent: list[RawEvent]) -> None:
    ids = [e.event_id for _, e in got]
    assert len(ids) == len(set(ids)), "duplicates in the topic"
    assert set(ids) == {e.event_id for e in sent}, "events missing"
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for key, e in got:
        assert key == e.shard_key.encode()
        per_key[key].append(e.pid)
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), f"{key!r} out of order"


@pytest.mark.integration
def test_events_spooled_by_a_stopped_agent_are_sent_by_the_next(tmp_path: Path, topics: Settings) -> None:
    unreachable = KafkaSettings(bootstrap="127.0.0.1:1")
    sent = [event(i, workload=("web", "db")[i % 2]) for i in range(300)]
    first = SpooledPublisher(unreachable, topics.topics.raw, tmp_path, max_bytes=1 << 20, delivery_timeout_s=1, close_timeout_s=0)
    for e in sent:
        first.publish(e)
    first.close()  # the broker never answered: everything stays on disk
    assert first.delivered == 0 and first.failed == 0
    second = SpooledPublisher(topics.kafka, topics.topics.raw, tmp_path, max_bytes=1 << 20)
    assert second.flush(30) == 0 and second.delivered == len(sent)
    second.close()
    assert_exactly_once_in_order(read_topic(topics.kafka, topics.topics.raw, len(sent)), sent)


@pytest.mark.integration
def test_broker_down_for_30s_then_every_event_arrives_once_in_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The broker process dies; 2,000 events are produced over the next 30 s; a broker
    comes back on the same address. tansu keeps data in memory only, so the one that
    comes back is empty, like a replaced node: the agent re-creates its topic (as at
    start) and the check is that the new broker receives every event produced during the
    outage exactly once, in per-key order. (Events acknowledged before the outage were
    the old broker's to keep; they are checked there before it dies.)"""
    port = free_port()
    kafka = KafkaSettings(bootstrap=f"127.0.0.1:{port}")
    topics = TopicSettings(raw=f"raw-{uuid.uuid4().hex[:6]}", partitions=4)
    create = lambda: ensure_topics(kafka, topics, names=[topics.raw], timeout=5)  # noqa: E731
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu-1.log").start()
    create()
    publisher = SpooledPublisher(
        kafka, topics.raw, tmp_path / "spool", max_bytes=64 << 20, delivery_timeout_s=3, on_reconnect=create
    )
    try:
        before = [event(i, "before") for i in range(50)]
        for e in before:
            publisher.publish(e)
        assert publisher.flush(30) == 0
        assert_exactly_once_in_order(read_topic(kafka, topics.raw, len(before)), before)

        broker.stop()
        outage = [event(1000 + i, ("web", "db", "batch", "cron")[i % 4]) for i in range(2000)]
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="agent.spool"):
            for i, e in enumerate(outage):
                publisher.publish(e)
                time.sleep(max(0.0, started + (i + 1) * 30 / len(outage) - time.monotonic()))
            assert publisher.in_outage and publisher.spool.pending()
            assert publisher.delivered == len(before)

            broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu-2.log").start()
            assert publisher.flush(45) == 0, "spool not drained after the broker came back"
        assert publisher.delivered == len(before) + len(outage) and publisher.failed == 0
        assert "kafka unreachable" in caplog.text and "reachable again" in caplog.text
        assert_exactly_once_in_order(read_topic(kafka, topics.raw, len(outage)), outage)
    finally:
        publisher.close()
        broker.stop()


def test_a_dead_sender_stops_the_agent_instead_of_spooling_forever(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: the sender thread dying on an unexpected error used to leave events
    piling up on disk with no error anywhere."""
    from schemas.errors import ServiceError

    def broken(self: SpooledPublisher, batch: object, producer: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(SpooledPublisher, "_deliver", broken)
    publisher = SpooledPublisher(KafkaSettings(bootstrap="127.0.0.1:1"), "t", tmp_path, max_bytes=1 << 20,
                                 delivery_timeout_s=1, close_timeout_s=0)
    publisher.publish(event(1))
    deadline = time.monotonic() + 5
    with pytest.raises(ServiceError, match="disk on fire"):
        while time.monotonic() < deadline:
            publisher.publish(event(2))
            time.sleep(0.05)
    assert publisher.health() == (False, "spool sender stopped: RuntimeError: disk on fire")
    publisher.close()
