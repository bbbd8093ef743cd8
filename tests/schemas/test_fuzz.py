"""Property-based fuzzing of the one decoder every consumer uses, and of `ruleless
score` (issue 14): no input crashes; each is an event within its bounds or a DecodeError
with a reason; the counts add up."""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruleless.settings import load_settings
from schemas.errors import DecodeError
from schemas.events import MAX_ARGV_CHARS, MAX_ARGV_ITEMS, MAX_CMDLINE_CHARS, NAME_PATTERN, decode, encode
from streams.offline import score_stream
from tests.fuzz import raw_messages


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw_messages())
def test_decode_gives_a_bounded_event_or_a_reason(payload: bytes) -> None:
    try:
        event = decode(payload)
    except DecodeError as exc:
        assert exc.message
        return
    assert NAME_PATTERN.fullmatch(event.org_id) and NAME_PATTERN.fullmatch(event.workload)
    assert len(event.cmdline) <= MAX_CMDLINE_CHARS
    assert event.argv is None or (len(event.argv) <= MAX_ARGV_ITEMS and sum(map(len, event.argv)) <= MAX_ARGV_CHARS)
    assert 0 <= event.ts <= 1e10 and 0 <= event.pid < 2**32 and -1 <= event.uid < 2**32
    assert decode(encode(event)) == event  # what we publish, we can read back


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(st.lists(raw_messages(), min_size=1, max_size=40))
def test_score_accounts_for_every_line(tmp_path: Path, lines: list[bytes]) -> None:
    out, errors = io.StringIO(), io.StringIO()
    lines = [line.replace(b"\n", b" ") for line in lines]  # one message per line
    summary = score_stream(load_settings(lancedb={"uri": str(tmp_path / "lancedb")}), lines, out, errors)
    nonblank = sum(1 for line in lines if line.strip())
    assert summary.scored + summary.invalid == nonblank
    # JSON lines end at "\n" only (U+0085 or U+2028 inside a string is not a line end)
    assert out.getvalue().count("\n") == summary.scored
    assert errors.getvalue().count("\n") == summary.invalid
