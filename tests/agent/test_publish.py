"""agent/publish.py: the Kafka publisher against the real broker fixture, and JSON lines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.procfs import ProcfsBackend
from agent.publish import JsonLinesOutput, KafkaPublisher, Output
from ruleless.kafka import consumer
from ruleless.settings import KafkaSettings, Settings
from schemas.events import RawEvent, decode


def real_events(settings: Settings) -> list[RawEvent]:
    """The processes of this machine, as the agent sees them."""
    backend = ProcfsBackend(settings.agent, emit_snapshot=True)
    backend.start()
    events = backend.poll()
    assert events
    return events


def consume_all(settings: Settings, topic: str, count: int, timeout: float = 20.0) -> list[tuple[bytes, bytes]]:
    reader = consumer(settings.kafka, group_id=f"{topic}-reader")
    reader.subscribe([topic])
    received: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(received) < count and time.monotonic() < deadline:
            msg = reader.poll(0.5)
            if msg is None or msg.error():
                continue
            received.append((msg.key() or b"", msg.value() or b""))
    finally:
        reader.close()
    return received


def test_outputs_meet_the_protocol(tmp_path: Path, settings: Settings) -> None:
    outputs: list[Output] = [JsonLinesOutput(str(tmp_path / "x.jsonl")), KafkaPublisher(settings.kafka, "t")]
    for output in outputs:
        assert output.delivered == 0 and output.failed == 0


@pytest.mark.integration
def test_kafka_publisher_delivers_keyed_decodable_events(topics: Settings) -> None:
    events = real_events(topics)
    publisher = KafkaPublisher(topics.kafka, topics.topics.raw)
    for event in events:
        publisher.publish(event)
    assert publisher.flush(15) == 0
    assert (publisher.delivered, publisher.failed) == (len(events), 0)

    received = consume_all(topics, topics.topics.raw, len(events))
    assert len(received) == len(events)
    assert {key for key, _ in received} == {b"local/default"}
    # One key, one partition: the shard's order is kept.
    assert [decode(value) for _, value in received] == events


def test_kafka_publisher_counts_failures(settings: Settings) -> None:
    # Nothing listens on port 1: every delivery times out and is counted, not raised.
    unreachable = KafkaSettings(bootstrap="127.0.0.1:1")
    publisher = KafkaPublisher(unreachable, "nowhere", **{"message.timeout.ms": 1000})
    events = real_events(settings)[:3]
    for event in events:
        publisher.publish(event)
    assert publisher.flush(10) == 0
    assert (publisher.delivered, publisher.failed) == (0, len(events))


def test_json_lines_to_file(tmp_path: Path, settings: Settings) -> None:
    events = real_events(settings)
    path = tmp_path / "events.jsonl"
    path.write_text("")  # appended to, never truncated
    output = JsonLinesOutput(str(path))
    for event in events:
        output.publish(event)
    output.close()
    lines = path.read_bytes().splitlines()
    assert [decode(line) for line in lines] == events
    assert output.delivered == len(events)


def test_json_lines_to_stdout(capfd: pytest.CaptureFixture[str], settings: Settings) -> None:
    event = real_events(settings)[0]
    output = JsonLinesOutput("-")
    output.publish(event)
    output.close()
    out = capfd.readouterr().out.splitlines()
    assert [decode(line) for line in out] == [event]
