"""The event contracts: one validating decoder, deterministic ids, committed JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.errors import DecodeError
from schemas.events import ScoredEvent, decode, decode_scored, derive_event_id, encode, json_schemas

GOOD = b'{"ts": 1767225600.5, "org_id": "acme", "workload": "web", "host": "h1", "pid": 7, "cmdline": "ls -l"}'


def test_valid_event_gets_a_deterministic_content_id() -> None:
    a, b = decode(GOOD), decode(GOOD)
    assert a.event_id == b.event_id == derive_event_id(a)
    assert decode(GOOD.replace(b'"pid": 7', b'"pid": 8')).event_id != a.event_id
    assert decode(encode(a)) == a


def test_given_event_id_is_kept() -> None:
    assert decode(GOOD[:-1] + b', "event_id": "abc"}').event_id == "abc"


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "empty"),
        (b"not json", "not JSON"),
        (b"[1]", "invalid event"),
        (b'{"ts": 1, "workload": "w"}', "org_id"),
        (b'{"ts": 1, "org_id": "a"}', "workload"),
        (b'{"ts": "x", "org_id": "a", "workload": "w"}', "ts"),
        (b'{"ts": 1, "org_id": "../etc", "workload": "w"}', "org_id"),
        (b'{"ts": 1, "org_id": "a b", "workload": "w"}', "org_id"),
        (b'{"ts": 1, "org_id": "a", "workload": "w\'; DROP"}', "workload"),
        (b'{"ts": 1, "org_id": "a", "workload": "' + b"x" * 65 + b'"}', "workload"),
        (b'{"ts": 1, "org_id": "a", "workload": "w", "remote_port": 70000}', "remote_port"),
        (b'{"ts": 1, "org_id": "a", "workload": "w", "pid": -1}', "pid"),
        (b'{"ts": 1, "org_id": "a", "workload": "w", "event_type": "Exec!"}', "event_type"),
    ],
)
def test_invalid_events_raise_decode_error_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode(payload)
    assert reason in err.value.message


def test_scored_event_round_trip_keeps_every_verdict_field() -> None:
    scored = ScoredEvent(**{**json.loads(encode(decode(GOOD))), "score": 0.0, "severity": "ok", "model": "seed/1"})
    body = json.loads(encode(scored))
    assert {"score", "severity", "reasons", "model", "learning"} <= body.keys()
    assert decode_scored(encode(scored)) == scored
    with pytest.raises(DecodeError):
        decode_scored(encode(decode(GOOD)).replace(b'"event_id"', b'"x"'))


def structure(doc: Any) -> Any:
    """A JSON Schema as what it validates: prose (descriptions, titles) compared with its
    whitespace collapsed, since msgspec releases differ in how they dedent docstrings
    (issue 12: 0.23 turned CI red on an unchanged repo)."""
    if isinstance(doc, dict):
        return {k: " ".join(v.split()) if k in ("description", "title") and isinstance(v, str) else structure(v)
                for k, v in doc.items()}
    if isinstance(doc, list):
        return [structure(v) for v in doc]
    return doc


def test_committed_json_schemas_match_the_structs() -> None:
    folder = Path(__file__).parents[2] / "schemas" / "json"
    for name, doc in json_schemas().items():
        committed = json.loads((folder / name).read_text())
        assert structure(committed) == structure(json.loads(json.dumps(doc))), f"{name} is stale: run python -m schemas"


def test_schema_comparison_ignores_prose_whitespace_but_not_structure() -> None:
    doc = {"properties": {"a": {"type": "string", "description": "One line.\n    Indented."}}}
    assert structure(doc) == structure({"properties": {"a": {"type": "string", "description": "One line.\nIndented."}}})
    assert structure(doc) != structure({"properties": {"a": {"type": "integer", "description": "One line. Indented."}}})
    assert structure(doc) != structure({"properties": {"a": {"type": "string", "description": "Other words."}}})


def test_a_huge_command_line_is_cut_and_flagged_with_its_id_from_the_whole() -> None:
    from schemas.events import FLAG_ARGV_TRUNCATED, FLAG_CMDLINE_TRUNCATED, MAX_ARGV_CHARS, MAX_ARGV_ITEMS, MAX_CMDLINE_CHARS

    def huge(tail: str) -> bytes:
        return json.dumps({"ts": 1, "org_id": "a", "workload": "w", "cmdline": "x" * (1 << 20) + tail,
                           "argv": ["y"] * 5000, "flags": ["exe_deleted"]}).encode()

    a, b = decode(huge("1")), decode(huge("2"))
    assert len(a.cmdline) == MAX_CMDLINE_CHARS and a.cmdline == b.cmdline
    assert a.event_id != b.event_id  # derived before the cut: different commands stay apart
    assert a.argv is not None and len(a.argv) == MAX_ARGV_ITEMS
    assert a.flags == ["exe_deleted", FLAG_CMDLINE_TRUNCATED, FLAG_ARGV_TRUNCATED]
    long_args = decode(json.dumps({"ts": 1, "org_id": "a", "workload": "w", "argv": ["z" * 20_000] * 3}).encode())
    assert long_args.argv is not None and sum(map(len, long_args.argv)) == MAX_ARGV_CHARS
    assert decode(GOOD) is not None and decode(GOOD).flags is None  # the common case is untouched


def test_other_text_fields_over_their_bound_are_refused() -> None:
    with pytest.raises(DecodeError, match="host"):
        decode(json.dumps({"ts": 1, "org_id": "a", "workload": "w", "host": "h" * 5000}).encode())
    with pytest.raises(DecodeError, match="ancestors"):
        decode(json.dumps({"ts": 1, "org_id": "a", "workload": "w", "ancestors": ["sh"] * 65}).encode())


def test_a_dead_letter_keeps_the_reason_and_a_bounded_copy_of_the_bytes() -> None:
    from schemas.events import MAX_DEAD_LETTER_RAW_BYTES, dead_letter

    raw = b"x" * (10 << 20)
    letter = dead_letter(DecodeError("not JSON: truncated"), "worker", raw, "raw", 3, 42)
    assert (letter.reason, letter.error, letter.stage) == ("not JSON: truncated", "DecodeError", "worker")
    assert letter.raw == raw[:MAX_DEAD_LETTER_RAW_BYTES] and letter.raw_size == len(raw)
    assert (letter.topic, letter.partition, letter.offset) == ("raw", 3, 42)
