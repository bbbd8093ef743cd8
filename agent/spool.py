"""Delivery that survives the broker being away: an on-disk spool in front of Kafka.

Every event is appended to a bounded, append-only spool on disk (a write-ahead log), and
one sender thread moves it to Kafka in spool order. While the broker is unreachable the
spool grows; when it is back the backlog is sent oldest first, then new events follow.
Nothing else reorders events: per key (``org_id/workload``, one partition), Kafka receives
them in the order the agent captured them.

Delivery: a batch is read from the spool and produced with the idempotent producer; its
spool position is committed (persisted in ``position``) only when every event of the
batch was acknowledged. When some were not (timeout: broker down, replaced, topic gone),
the producer is discarded, and after a back-off only the unacknowledged events of the
batch are produced again, in order, by a fresh producer — never the acknowledged ones, so
the agent does not duplicate what the broker confirmed. The one window left: an event the
broker stored but whose acknowledgement was lost is sent again; it keeps its ``event_id``
(agent/capture.py: stable per occurrence), so ClickHouse keeps one row. The same holds
after an agent crash: events after the committed position are sent again at start.

Limit policy: the spool holds at most ``max_bytes`` on disk. When an event does not fit,
**the new event is dropped** (the backlog, i.e. the oldest evidence, is kept), counted in
``SpooledPublisher.failed`` (metric ``ruleless_agent_publish_errors_total``) and logged:
the first drop, every 1,000th, and when the spool accepts events again.

Durability: appends are written to the file at once (unbuffered) but fsync'd only when a
segment is rotated or the spool is closed: a machine crash can lose the last seconds of
events; an agent crash loses nothing written.

Layout: ``DIR/NNNNNNNNNNNN.seg`` segment files of records ``<u32 body length><u32 crc32>``
+ body ``<u16 key length><key><value>``; ``DIR/position`` = ``segment offset`` of the
first event not yet delivered. A torn record at the end of the last segment (crash mid-
write) is cut off at start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import SecretStr

from ruleless.kafka import producer as make_producer
from ruleless.settings import KafkaSettings
from ruleless.tenancy import sign_headers
from schemas.errors import ServiceError
from schemas.events import RawEvent, encode

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_KEY_LEN = struct.Struct("<H")
DEFAULT_SEGMENT_BYTES = 8 << 20
SEND_BATCH = 2000
BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """A place in the spool: segment number and byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One spooled event: where it starts, where the next one starts, key and value."""

    at: Position
    next: Position
    key: bytes
    value: bytes


class SpoolFull(Exception):
    """The spool has no room for this event (it is dropped; see the limit policy)."""


class Spool:
    """The on-disk log. ``append`` (one writer thread) and ``read``/``commit`` (one
    reader thread) may run concurrently."""

    def __init__(self, directory: str | Path, max_bytes: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._owner = _lock_directory(self.dir)
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max(max_bytes // 4, 4096))
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        self._sizes: dict[int, int] = {n: _segment_path(self.dir, n).stat().st_size for n in _segments(self.dir)}
        if not self._sizes:
            self._sizes[1] = 0
            _segment_path(self.dir, 1).touch()
        self._writing = max(self._sizes)
        self._sizes[self._writing] = _cut_torn_tail(_segment_path(self.dir, self._writing))
        self.committed = self._load_position()
        self._file = open(_segment_path(self.dir, self._writing), "ab", buffering=0)

    @property
    def bytes_on_disk(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    @property
    def end(self) -> Position:
        """Where the next appended event will start."""
        with self._lock:
            return Position(self._writing, self._sizes[self._writing])

    def pending(self) -> bool:
        """Whether events after the committed position remain."""
        return self.committed < self.end

    def append(self, key: bytes, value: bytes) -> None:
        """Add one event at the end. Raises SpoolFull when it would exceed max_bytes."""
        body = _KEY_LEN.pack(len(key)) + key + value
        record = _HEADER.pack(len(body), zlib.crc32(body)) + body
        with self._lock:
            if sum(self._sizes.values()) + len(record) > self.max_bytes:
                raise SpoolFull(f"spool at {self.dir} is full ({self.max_bytes} bytes)")
            if self._sizes[self._writing] and self._sizes[self._writing] + len(record) > self.segment_bytes:
                self._rotate()
            self._file.write(record)
            self._sizes[self._writing] += len(record)
            self._appended.notify_all()

    def wait(self, after: Position, timeout: float) -> None:
        """Block up to ``timeout`` s until something was appended after ``after``."""
        with self._appended:
            if Position(self._writing, self._sizes[self._writing]) <= after:
                self._appended.wait(timeout)

    def read(self, start: Position, limit: int) -> list[Entry]:
        """Up to ``limit`` events from ``start`` on, in order (possibly empty)."""
        with self._lock:
            sizes = dict(self._sizes)
        entries: list[Entry] = []
        position = start
        while len(entries) < limit:
            size = sizes.get(position.segment)
            if size is None:
                later = [n for n in sizes if n > position.segment]
                if not later:
                    break
                position = Position(min(later), 0)
                continue
            if position.offset >= size:
                if position.segment >= max(sizes):
                    break
                position = Position(position.segment + 1, 0)
                continue
            chunk = _read_segment(self.dir, position, size, limit - len(entries))
            if not chunk:
                break
            entries.extend(chunk)
            position = chunk[-1].next
        return entries

    def commit(self, position: Position) -> None:
        """Everything before ``position`` is delivered: persist it and delete the
        segments it has passed."""
        with self._lock:
            self.committed = position
            done = [n for n in self._sizes if n < position.segment]
            for n in done:
                del self._sizes[n]
        for n in done:
            _segment_path(self.dir, n).unlink(missing_ok=True)
        tmp = self.dir / "position.tmp"
        tmp.write_text(f"{position.segment} {position.offset}\n")
        os.replace(tmp, self.dir / "position")

    def close(self) -> None:
        with self._lock:
            os.fsync(self._file.fileno())
            self._file.close()
        self._owner.close()

    def _rotate(self) -> None:
        os.fsync(self._file.fileno())
        self._file.close()
        self._writing += 1
        self._sizes[self._writing] = 0
        self._file = open(_segment_path(self.dir, self._writing), "ab", buffering=0)

    def _load_position(self) -> Position:
        first = Position(min(self._sizes), 0)
        try:
            segment, offset = (int(x) for x in (self.dir / "position").read_text().split())
        except (OSError, ValueError):
            return first
        position = Position(segment, offset)
        if position < first:
            return first
        return position


def _lock_directory(directory: Path) -> IO[bytes]:
    """Hold an exclusive lock on the spool so two agents never share one."""
    handle = open(directory / "lock", "ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ServiceError(f"spool {directory} is in use by another agent") from None
    return handle


def _segments(directory: Path) -> list[int]:
    return sorted(int(p.stem) for p in directory.glob("*.seg") if p.stem.isdigit())


def _segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:012d}.seg"


def _read_segment(directory: Path, start: Position, size: int, limit: int) -> list[Entry]:
    with open(_segment_path(directory, start.segment), "rb") as handle:
        handle.seek(start.offset)
        data = handle.read(size - start.offset)
    entries: list[Entry] = []
    offset = 0
    while offset + _HEADER.size <= len(data) and len(entries) < limit:
        length, crc = _HEADER.unpack_from(data, offset)
        body = data[offset + _HEADER.size : offset + _HEADER.size + length]
        if len(body) < length or zlib.crc32(body) != crc:
            log.error("spool: corrupt record in segment %d at %d; skipping the rest of it", start.segment, start.offset + offset)
            break
        key_len = _KEY_LEN.unpack_from(body)[0]
        at = Position(start.segment, start.offset + offset)
        offset += _HEADER.size + length
        key = body[_KEY_LEN.size : _KEY_LEN.size + key_len]
        entries.append(Entry(at, Position(start.segment, start.offset + offset), key, body[_KEY_LEN.size + key_len :]))
    return entries


def _cut_torn_tail(path: Path) -> int:
    """Truncate ``path`` after its last complete, intact record; return the new size."""
    data = path.read_bytes()
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        body = data[offset + _HEADER.size : offset + _HEADER.size + length]
        if len(body) < length or zlib.crc32(body) != crc:
            break
        offset += _HEADER.size + length
    if offset != len(data):
        log.warning("spool: cut a torn record off %s (%d bytes)", path.name, len(data) - offset)
        with open(path, "r+b") as handle:
            handle.truncate(offset)
    return offset


class SpooledPublisher:
    """The agent's Kafka output with the spool in front (meets agent.publish.Output).

    ``publish`` appends to the spool and returns; the sender thread delivers. Counters:
    ``delivered`` (acknowledged by the broker) and ``failed`` (dropped because the spool
    was full: the only way an event is lost here); :meth:`backlog_bytes` is the spool's
    size on disk. ``on_reconnect`` is called before sending again after an outage (the
    agent re-creates its topic there: a replaced broker may not have it). Raises
    ServiceError if another process already uses ``spool_dir``.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        spool_dir: str | Path,
        *,
        max_bytes: int,
        delivery_timeout_s: float = 10.0,
        on_reconnect: Callable[[], None] | None = None,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        close_timeout_s: float = 30.0,
        signing_key: SecretStr | None = None,
        **producer_config: Any,
    ) -> None:
        self.topic = topic
        self.signing_key = signing_key
        self.delivered = 0
        self.failed = 0
        self.spool = Spool(spool_dir, max_bytes, segment_bytes)
        self._kafka = kafka
        self._timeout_ms = int(delivery_timeout_s * 1000)
        self._producer_config = producer_config
        self._on_reconnect = on_reconnect
        self._close_timeout = close_timeout_s
        self._stop = threading.Event()
        self._outage_since: float | None = None
        self._full_since: int | None = None
        self._idle = threading.Event()
        # Why the sender thread stopped, if it died: publish() then raises (issue 14).
        self._failure: str | None = None
        if self.spool.pending():
            log.info("spool: %d bytes from an earlier run at %s will be sent first", self.spool.bytes_on_disk, self.spool.dir)
        self._thread = threading.Thread(target=self._send_loop, name="spool-sender", daemon=True)
        self._thread.start()

    @property
    def in_outage(self) -> bool:
        """True while the broker has not acknowledged the current batch."""
        return self._outage_since is not None

    def backlog_bytes(self) -> int:
        return self.spool.bytes_on_disk

    def health(self) -> tuple[bool, str]:
        """(ok, why) for the agent's readiness: a broker outage is not a failure (the
        spool holds the events, as designed); a full spool or a dead sender is."""
        if self._failure is not None:
            return False, f"spool sender stopped: {self._failure}"
        if self._full_since is not None:
            return False, f"spool full at {self.spool.dir}: new events are dropped"
        if self.in_outage:
            return True, f"kafka unreachable: spooling ({self.backlog_bytes()} bytes waiting)"
        return True, "publishing"

    def publish(self, event: RawEvent) -> None:
        """Append to the spool; when it is full the event is dropped and counted.
        Raises :class:`ServiceError` once the sender thread has died."""
        if self._failure is not None:
            raise ServiceError(f"spool sender stopped: {self._failure}")
        try:
            self.spool.append(event.shard_key.encode(), encode(event))
        except SpoolFull as exc:
            self.failed += 1
            if self._full_since is None:
                self._full_since = self.failed
                log.error("spool: %s; dropping new events until the broker takes the backlog", exc)
            elif self.failed % 1000 == 0:
                log.error("spool: still full, %d events dropped so far", self.failed)
            return
        if self._full_since is not None:
            log.warning("spool: accepting events again after dropping %d", self.failed - self._full_since + 1)
            self._full_since = None

    def flush(self, timeout: float = 30.0) -> int:
        """Wait up to ``timeout`` s until the spool is delivered; return 1 if events are
        still waiting (0 when all are delivered). ``flush(0)`` never blocks."""
        deadline = time.monotonic() + timeout
        while self.spool.pending():
            if time.monotonic() >= deadline:
                return 1
            time.sleep(0.02)
        return 0

    def close(self) -> None:
        """Deliver for up to ``close_timeout_s``, then stop; what is left stays on disk
        for the next start."""
        if self.flush(self._close_timeout):
            log.warning(
                "spool: closing with %d bytes undelivered at %s; they are sent when the agent starts again",
                self.spool.bytes_on_disk, self.spool.dir,
            )  # fmt: skip
        self._stop.set()
        self._thread.join(timeout=self._timeout_ms / 1000 + 15)
        self.spool.close()

    def _send_loop(self) -> None:
        try:
            self._send_spooled()
        except Exception as exc:  # noqa: BLE001 - surfaced by publish(): the agent stops with it
            self._failure = f"{type(exc).__name__}: {exc}"
            log.error("spool: sender stopped: %s", self._failure)

    def _send_spooled(self) -> None:
        producer: Producer | None = None
        position = self.spool.committed
        while not self._stop.is_set():
            batch = self.spool.read(position, SEND_BATCH)
            if not batch:
                self.spool.wait(position, 0.2)
                continue
            producer = self._deliver(batch, producer)
            if producer is None:
                return  # stopped during an outage: the batch stays spooled
            position = batch[-1].next
            self.spool.commit(position)

    def _deliver(self, batch: list[Entry], producer: Producer | None) -> Producer | None:
        """Send ``batch`` until every event is acknowledged (returns the producer in use),
        or until stopped (returns None)."""
        todo = batch
        attempt = 0
        while todo:
            if producer is None:
                producer = self._new_producer()
            try:
                acked, error = self._send(producer, todo)
            except KafkaException as exc:
                # A fatal producer error (a restarted broker without the session's
                # idempotence state: "out of order sequence number") surfaces from poll():
                # a fresh producer resends the batch (copies are removed by event_id).
                acked, error = set(), str(exc)
            self.delivered += len(acked)
            if len(acked) == len(todo):
                self._recovered()
                return producer
            todo = [entry for i, entry in enumerate(todo) if i not in acked]
            self._entered_outage(error, len(todo))
            producer = None  # a fresh session: the old one's idempotence state may be stale
            if self._stop.wait(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]):
                return None
            attempt += 1
            self._reconnect()
        return producer

    def _send(self, producer: Producer, entries: list[Entry]) -> tuple[set[int], str]:
        """Produce ``entries`` and wait for every outcome; return (acked indexes, last error)."""
        acked: set[int] = set()
        outcomes = [0]
        errors: list[str] = []

        def callback(index: int) -> Callable[[KafkaError | None, Message], None]:
            def on_delivery(err: KafkaError | None, msg: Message) -> None:
                outcomes[0] += 1
                if err is None:
                    acked.add(index)
                else:
                    errors.append(err.str())

            return on_delivery

        for index, entry in enumerate(entries):
            while True:
                try:
                    producer.produce(self.topic, value=entry.value, key=entry.key,
                                     headers=sign_headers(self.signing_key, entry.value), on_delivery=callback(index))
                    break
                except BufferError:
                    producer.poll(0.1)
                except KafkaException as exc:
                    errors.append(str(exc))
                    outcomes[0] += 1
                    break
        deadline = time.monotonic() + self._timeout_ms / 1000 + 10
        while outcomes[0] < len(entries) and time.monotonic() < deadline:
            producer.poll(0.1)
        return acked, errors[-1] if errors else "no acknowledgement"

    def _new_producer(self) -> Producer:
        config = {"message.timeout.ms": self._timeout_ms, **self._producer_config}
        return make_producer(self._kafka, **config)

    def _entered_outage(self, error: str, waiting: int) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "kafka unreachable (%s): spooling to %s (%d bytes waiting); will retry",
                error, self.spool.dir, self.spool.bytes_on_disk,
            )  # fmt: skip
        else:
            log.debug("kafka still unreachable (%s); %d events of the batch unsent", error, waiting)

    def _recovered(self) -> None:
        if self._outage_since is None:
            return
        log.warning(
            "kafka reachable again after %.0fs: draining the spool (%d bytes)",
            time.monotonic() - self._outage_since, self.spool.bytes_on_disk,
        )  # fmt: skip
        self._outage_since = None

    def _reconnect(self) -> None:
        if self._on_reconnect is None:
            return
        try:
            self._on_reconnect()
        except (ServiceError, KafkaException) as exc:
            log.debug("kafka: reconnect hook failed: %s", exc)
