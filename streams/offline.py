"""`ruleless score`: the offline path — a JSONL file scored with the stream's engine.

Same engine, same shard store and same batching rules as the worker, so a file scored
here gives the scores the stream gives for the same events in the same order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, TextIO

import msgspec

from ruleless.settings import Settings
from schemas.errors import DecodeError
from schemas.events import RawEvent, decode, encode_lines
from streams.scoring import ScoringService

if TYPE_CHECKING:
    from streams.behaviours import BehaviourRow

log = logging.getLogger(__name__)

# With a state directory, learning is written at the end and this often on the way.
PERSIST_EVERY_S = 60.0
# Above this many behaviours to index at the end, say so first (it takes minutes).
LONG_INDEX = 2_000

# A line longer than this is reported invalid without being held in memory whole.
MAX_LINE_BYTES = 16 << 20


@dataclass
class ScoreSummary:
    lines: int = 0
    scored: int = 0
    invalid: int = 0
    warn: int = 0
    alert: int = 0
    # Behaviours new to the search index (with persist).
    behaviours: int = 0


def score_stream(
    settings: Settings,
    lines: Iterable[str | bytes],
    out: TextIO,
    errors: TextIO | None = None,
    batch_size: int = 2000,
    service: ScoringService | None = None,
    persist: bool = True,
    index: bool = True,
    progress: TextIO | None = None,
) -> ScoreSummary:
    """Score JSON lines to ``out`` in input order; invalid lines are reported, not fatal.

    With ``persist``, the learning is written to the shard store at the end, and every
    :data:`PERSIST_EVERY_S` on the way for long inputs, and (with ``index``) the
    behaviours scored are added to the search index (``behaviours`` table) at the end,
    saying so on ``progress`` first when there are many; without, nothing is written."""
    service = service or ScoringService(settings)
    summary = ScoreSummary()
    behaviours = None
    if persist and index:
        # (imported here: the search index brings LanceDB, ~0.9 s of a run without --state)
        from streams.behaviours import Aggregator

        behaviours = Aggregator()
    last_write = time.monotonic()
    for batch in _batches(_decoded(lines, summary, errors), batch_size):
        scored = service.score(batch)
        out.write(encode_lines(scored).decode())
        summary.scored += len(scored)
        if behaviours is not None:
            behaviours.add(scored)
        for event in scored:
            summary.warn += event.severity == "warn"
            summary.alert += event.severity == "alert"
        if persist and time.monotonic() - last_write >= PERSIST_EVERY_S:
            service.flush()
            last_write = time.monotonic()
    if persist:
        service.flush()
    if behaviours is not None and behaviours.rows:
        summary.behaviours = _index(settings, list(behaviours.rows.values()), progress)
    return summary


def _index(settings: Settings, rows: list[BehaviourRow], progress: TextIO | None) -> int:
    """Add the behaviours scored to the search index beside the shards (`ruleless
    search`), saying so first when there are many; returns how many were new."""
    from streams.behaviours import BehaviourIndex

    if progress is not None and len(rows) >= LONG_INDEX:
        progress.write(f"indexing {len(rows):,} behaviours for search (each new one is embedded, "
                       "~40-60/s on one core; --no-index skips this)\n")
        progress.flush()
    return BehaviourIndex(settings.lancedb.uri).add(rows)


def bounded_lines(src: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of ``src`` as bytes (invalid UTF-8 is the decoder's to report, per line);
    a line over ``limit`` bytes comes out cut to ``limit + 1`` bytes (the rest skipped,
    never held), which :func:`score_stream` reports as too long."""
    while line := src.readline(limit + 1):
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := src.readline(limit)) and not rest.endswith(b"\n"):
                pass
        yield line


def _decoded(lines: Iterable[str | bytes], summary: ScoreSummary, errors: TextIO | None) -> Iterator[RawEvent]:
    for number, line in enumerate(lines, start=1):
        summary.lines += 1
        if not line.strip():
            continue
        try:
            if len(line) > MAX_LINE_BYTES:
                raise DecodeError(f"line longer than {MAX_LINE_BYTES} bytes")
            yield decode(line)
        except DecodeError as exc:
            summary.invalid += 1
            if errors is not None:
                raw = line if isinstance(line, str) else line.decode("utf-8", "replace")
                record = {"line": number, "reason": exc.message, "raw": raw[:1024]}
                errors.write(msgspec.json.encode(record).decode() + "\n")


def _batches(events: Iterable[RawEvent], size: int) -> Iterator[list[RawEvent]]:
    batch: list[RawEvent] = []
    for event in events:
        batch.append(event)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
