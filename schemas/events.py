"""Event contracts: the raw process event and the scored event.

These structs are the only definition of an event in ruleless. Every consumer decodes
with :func:`decode` (raw) or :func:`decode_scored`; both validate and raise
:class:`~schemas.errors.DecodeError` with a reason. Fields are only ever added, never
renamed or reused.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Annotated, Literal, TypeVar
from collections.abc import Sequence

import msgspec

from schemas.errors import DecodeError

# org_id and workload become LanceDB table names, ClickHouse values and Kafka keys.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

SafeName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
EventType = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z_]{0,31}$")]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
# Kernel ids are 32-bit; uid -1 means unknown. Timestamps before the year 2286.
Pid = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Uid = Annotated[int, msgspec.Meta(ge=-1, le=2**32 - 1)]
Timestamp = Annotated[float, msgspec.Meta(ge=0, le=1e10)]
Severity = Literal["ok", "warn", "alert"]
# Any other text field: longer is not a real value of it, so it is refused (dead letter).
Text = Annotated[str, msgspec.Meta(max_length=4096)]

# Bounds applied at decode (issue 14): no event can make an output larger than a Kafka
# message. The command line and argv are cut, never refused (padding one must not hide a
# command from scoring), and the cut is flagged as the agent flags its own.
MAX_CMDLINE_CHARS = 32 * 1024
MAX_ARGV_ITEMS = 1024
MAX_ARGV_CHARS = 32 * 1024
FLAG_CMDLINE_TRUNCATED = "cmdline_truncated"
FLAG_ARGV_TRUNCATED = "argv_truncated"
# A dead letter keeps this much of the original message (and its size).
MAX_DEAD_LETTER_RAW_BYTES = 64 * 1024


# gc=False: events only hold strings and lists of strings, so they can never be part of
# a reference cycle, and a batch of thousands of them (and of their scored copies) would
# otherwise be walked by every young-generation collection while it is alive.
class RawEvent(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One process event as published by an agent (DESIGN.md, raw event contract)."""

    ts: Timestamp
    org_id: SafeName
    workload: SafeName
    host: Text = ""
    event_type: EventType = "exec"
    event_id: Text | None = None
    pid: Pid = 0
    ppid: Pid = 0
    uid: Uid = -1
    user: Text | None = None
    process_name: Text = ""
    exe: Text | None = None
    cmdline: str = ""
    argv: list[str] | None = None
    parent_process: Text = ""
    ancestors: Annotated[list[Text], msgspec.Meta(max_length=64)] | None = None
    local_ip: Text | None = None
    local_port: Port | None = None
    remote_ip: Text | None = None
    remote_port: Port | None = None
    container_id: Text | None = None
    # Stable per-process identity: host, process start time and pid.
    exec_id: Text | None = None
    # Which capture backend saw it: "ebpf", "netlink", "procfs", or absent for files.
    source: Text | None = None
    # Markers such as "argv_truncated" set by the capture layer instead of dropping data.
    flags: Annotated[list[Text], msgspec.Meta(max_length=64)] | None = None

    @property
    def shard_key(self) -> str:
        """The Kafka key and shard identity: ``org_id/workload``."""
        return f"{self.org_id}/{self.workload}"


class ScoredEvent(RawEvent, frozen=True, omit_defaults=False, gc=False):
    """The raw event plus the verdict of the scoring engine."""

    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    severity: Severity = "ok"
    reasons: list[str] = msgspec.field(default_factory=list)
    model: str = ""
    # True while the shard has too little history for its thresholds to mean much.
    learning: bool = False
    scored_at: Timestamp = 0.0


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """What goes to the dead-letter topic: why, where from, and the original bytes."""

    reason: str
    error: str
    stage: str
    raw: bytes
    ts: float
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    # Size of the original message; ``raw`` holds its first MAX_DEAD_LETTER_RAW_BYTES.
    raw_size: int | None = None


def dead_letter(
    exc: Exception, stage: str, raw: bytes, topic: str | None = None, partition: int | None = None, offset: int | None = None
) -> DeadLetter:
    """The dead letter for ``raw`` that failed at ``stage`` (the one way every consumer
    builds them): the reason, where it came from, and the bytes, cut to a size that is
    always publishable."""
    reason = exc.message if isinstance(exc, DecodeError) else str(exc)
    return DeadLetter(
        reason=reason[:4096], error=type(exc).__name__, stage=stage, raw=raw[:MAX_DEAD_LETTER_RAW_BYTES], ts=time.time(),
        topic=topic, partition=partition, offset=offset, raw_size=len(raw),
    )  # fmt: skip


class Feedback(msgspec.Struct, frozen=True, kw_only=True):
    """An analyst's verdict on one scored event, published to the feedback topic."""

    event: RawEvent
    label: Literal["benign", "malicious"]
    ts: float
    analyst: str = ""
    note: str = ""


class AlertNotification(msgspec.Struct, frozen=True, kw_only=True):
    """What `ruleless alerts` posts to a webhook: alerts of one behaviour, grouped.

    A *behaviour* is (org_id, workload, process_name, normalised command line). ``kind``:
    ``new`` — its first alerts in a window (a burst on many hosts is one notification);
    ``repeat`` — more alerts of an already posted behaviour, at the end of its window;
    ``digest`` — alerts of behaviours over the (org, workload)'s notification budget.
    ``id`` is stable for the same first alert, so a receiver can drop a notification
    repeated after a forwarder crash.
    """

    id: str
    kind: Literal["new", "repeat", "digest"]
    org_id: str
    workload: str
    process_name: str
    behaviour: str
    severity: Severity
    max_score: float
    count: int
    host_count: int
    hosts: list[str]
    first_ts: float
    last_ts: float
    # The alerts' event_ids, the first 100 of them (count is always exact).
    event_ids: list[str]
    # The first alert of the group, whole (reasons, cmdline, user, parent...).
    sample: ScoredEvent
    # Distinct behaviours folded into a digest (1 otherwise).
    behaviours: int = 1


_raw_decoder = msgspec.json.Decoder(RawEvent)
_feedback_decoder = msgspec.json.Decoder(Feedback)
_notification_decoder = msgspec.json.Decoder(AlertNotification)
_scored_decoder = msgspec.json.Decoder(ScoredEvent)
_encoder = msgspec.json.Encoder()
_det_encoder = msgspec.json.Encoder(order="deterministic")


def decode(payload: bytes | str) -> RawEvent:
    """Validate one raw event; fill in a deterministic ``event_id`` when absent (from the
    whole event, before the command line is bounded)."""
    event = _decode_with(_raw_decoder, payload)
    if not event.event_id:
        event = msgspec.structs.replace(event, event_id=derive_event_id(event))
    return bounded(event)


def decode_scored(payload: bytes | str) -> ScoredEvent:
    """Validate one scored event (the sink's input); it must carry an event_id."""
    event = _decode_with(_scored_decoder, payload)
    if not event.event_id:
        raise DecodeError("scored event without event_id")
    return bounded(event)


E = TypeVar("E", bound=RawEvent)


def bounded(event: E) -> E:
    """``event`` with its command line and argv cut to the MAX_* bounds and flagged."""
    argv = event.argv
    cmd_over = len(event.cmdline) > MAX_CMDLINE_CHARS
    argv_over = argv is not None and (len(argv) > MAX_ARGV_ITEMS or sum(map(len, argv)) > MAX_ARGV_CHARS)
    if not (cmd_over or argv_over):
        return event
    flags = list(event.flags or [])
    changes: dict[str, object] = {}
    if cmd_over:
        changes["cmdline"] = event.cmdline[:MAX_CMDLINE_CHARS]
        flags.append(FLAG_CMDLINE_TRUNCATED)
    if argv_over and argv is not None:
        kept: list[str] = []
        room = MAX_ARGV_CHARS
        for arg in argv[:MAX_ARGV_ITEMS]:
            if room <= 0:
                break
            kept.append(arg[:room])
            room -= len(kept[-1])
        changes["argv"] = kept
        if FLAG_ARGV_TRUNCATED not in flags:
            flags.append(FLAG_ARGV_TRUNCATED)
    changes["flags"] = flags[-64:]
    return msgspec.structs.replace(event, **changes)


def _decode_with(decoder: msgspec.json.Decoder, payload: bytes | str):  # type: ignore[no-untyped-def]
    if not payload:
        raise DecodeError("empty message")
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"invalid event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None


def decode_feedback(payload: bytes | str) -> Feedback:
    return _decode_with(_feedback_decoder, payload)


def decode_notification(payload: bytes | str) -> AlertNotification:
    """Validate one webhook notification (what a receiver of `ruleless alerts` gets)."""
    return _decode_with(_notification_decoder, payload)


def derive_event_id(event: RawEvent) -> str:
    """A content hash, so a re-sent event (agent retry, replayed file) keeps its id."""
    body = _det_encoder.encode(msgspec.structs.replace(event, event_id=None))
    return hashlib.blake2b(body, digest_size=16).hexdigest()


def encode(event: RawEvent | DeadLetter | Feedback | AlertNotification) -> bytes:
    return _encoder.encode(event)


def encode_lines(events: Sequence[RawEvent]) -> bytes:
    """Newline-terminated JSON lines, one per event, in one call (bulk output)."""
    return _encoder.encode_lines(events)


def json_schemas() -> dict[str, dict]:  # type: ignore[type-arg]
    """JSON Schema documents for the contracts, as committed under ``schemas/json``."""
    return {
        "raw_event.schema.json": msgspec.json.schema(RawEvent),
        "scored_event.schema.json": msgspec.json.schema(ScoredEvent),
        "dead_letter.schema.json": msgspec.json.schema(DeadLetter),
        "feedback.schema.json": msgspec.json.schema(Feedback),
        "alert_notification.schema.json": msgspec.json.schema(AlertNotification),
    }
