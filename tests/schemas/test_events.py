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
