"""Builders and probes shared by the sink tests: scored events, malformed payloads,
producing to and reading from the (real) broker, a sink running in a thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from confluent_kafka import Consumer, TopicPartition

from ruleless.kafka import consumer, producer
from ruleless.settings import Settings
from schemas.events import DeadLetter, ScoredEvent, encode
from sinks.clickhouse import Backend
from sinks.consume import Sink


def scored(i: int, tag: str = "", **fields: Any) -> ScoredEvent:
    """A scored event dated now-ish (inside the table's TTL), unique per (tag, i)."""
    now = time.time()
    base: dict[str, Any] = {
        "event_id": f"{tag or 'ev'}-{i:06d}",
        "ts": round(now - 3600 + i * 0.001, 6),
        "org_id": f"org{i % 3}",
        "workload": ("web", "db", "ci")[i % 3],
        "host": f"host-{i % 5}",
        "event_type": "exec",
        "pid": 1000 + i,
        "ppid": 1,
        "uid": 33,
        "user": "www-data",
        "process_name": "nginx",
        "parent_process": "systemd",
        "cmdline": f"nginx -g daemon off; # {i}",
        "score": (i % 100) / 100,
        "severity": "ok",
        "reasons": [f"nearest: nginx ({i % 7})"],
        "model": "seed/1",
        "scored_at": round(now, 6),
    }
    base.update(fields)
    return ScoredEvent(**base)


# Payloads the sink must dead-letter, each for a different reason.
MALFORMED: tuple[bytes, ...] = (
    b"not json {",
    b"",
    b'{"ts": 1, "workload": "web", "event_id": "x"}',  # no org_id
    b'{"ts": 1, "org_id": "a", "workload": "web", "event_id": "x", "severity": "panic"}',
    b'{"ts": 1, "org_id": "a", "workload": "web"}',  # scored event without event_id
    b'{"ts": 1, "org_id": "a", "workload": "web", "event_id": "x", "uid": 18446744073709551615}',
    b'{"ts": 1, "org_id": "a", "workload": "web", "event_id": "x", "score": 1.5}',
    b'{"ts": 1, "org_id": "../etc", "workload": "web", "event_id": "x"}',
    b'{"ts": 99999999999, "org_id": "a", "workload": "web", "event_id": "x"}',  # after 2299
    b"[1, 2, 3]",
)


def malformed(count: int) -> list[bytes]:
    """``count`` undecodable payloads cycling through :data:`MALFORMED`."""
    return [MALFORMED[i % len(MALFORMED)] for i in range(count)]


def produce(settings: Settings, payloads: list[tuple[bytes | None, bytes]]) -> dict[int, int]:
    """Publish (key, value) pairs to the scored topic, wait for every delivery, and
    return the end offset (last delivered offset + 1) of each partition written to.

    End offsets come from delivery reports because the embedded broker's ListOffsets
    answers with a count of record batches, not of records (tansu 0.6, memory storage).
    """
    p = producer(settings.kafka)
    errors: list[Any] = []
    ends: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for key, value in payloads:
        while True:
            try:
                p.produce(settings.topics.scored, value, key, on_delivery=delivered)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(30) == 0, "messages still in flight after 30s"
    assert not errors, errors[:3]
    return ends


def keyed(events: list[ScoredEvent]) -> list[tuple[bytes | None, bytes]]:
    return [(e.shard_key.encode(), encode(e)) for e in events]


def _probe(settings: Settings, group: str | None = None) -> Consumer:
    return consumer(settings.kafka, group or f"probe-{uuid.uuid4().hex[:8]}")


def committed(settings: Settings, group: str) -> dict[int, int]:
    """Committed offset per partition of the scored topic for ``group`` (<0 = none)."""
    c = _probe(settings, group)
    try:
        parts = [TopicPartition(settings.topics.scored, p) for p in range(settings.topics.partitions)]
        return {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
    finally:
        c.close()


def all_committed(settings: Settings, group: str, ends: dict[int, int]) -> bool:
    """Whether ``group`` committed exactly up to ``ends`` (from :func:`produce`)."""
    done = committed(settings, group)
    return all(done[p] == ends.get(p, -1001) for p in done)


def read_dead_letters(settings: Settings, expected: int, timeout: float = 30.0) -> list[tuple[bytes | None, DeadLetter]]:
    """Read the dead-letter topic from the start until ``expected`` letters arrived."""
    c = _probe(settings)
    c.subscribe([settings.topics.dead_letter])
    letters: list[tuple[bytes | None, DeadLetter]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(letters) < expected and time.monotonic() < deadline:
            for msg in c.consume(num_messages=500, timeout=0.5):
                if msg.error() is None:
                    letters.append((msg.key(), msgspec.json.decode(msg.value(), type=DeadLetter)))
        # Anything beyond `expected` would be a duplicate or a stray: read a little more.
        for msg in c.consume(num_messages=500, timeout=1.0):
            if msg.error() is None:
                letters.append((msg.key(), msgspec.json.decode(msg.value(), type=DeadLetter)))
    finally:
        c.close()
    return letters


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def running_sink(settings: Settings, backend: Backend | None = None) -> Iterator[Sink]:
    """A :class:`Sink` consuming in a thread; stopped (and joined) on exit. Re-raises
    anything the sink thread raised."""
    sink = Sink(settings, backend)
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            sink.run(stop, ready)
        except BaseException as exc:  # handed to the test thread below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="sink-under-test", daemon=True)
    thread.start()
    assert ready.wait(30), "sink not ready after 30s"
    if failure:
        raise failure[0]
    try:
        yield sink
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "sink did not stop within 60s"
    if failure:
        raise failure[0]
