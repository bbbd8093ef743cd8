"""The API's SQL (ruleless/reads.py) on a real chdb store: values that try to break out of
their literal match themselves and nothing else, and no filter widens the org scope."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ruleless import reads
from ruleless.reads import Cursor, EventFilter, Scope, events_sql, quote
from ruleless.settings import Settings, load_settings
from schemas.errors import QueryError
from sinks.clickhouse import ChdbBackend, event_row, rows_table
from tests.sinks.support import scored

HOSTILE = [
    "it's", "back\\slash", "\\' OR 1=1 --", "'; DROP TABLE x; --", "new\nline", "tab\tbed", "nul\x00byte",
    "ünïcødé ☃", "%_wild_%", "') OR org_id = 'other", "\\\\'",
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Settings, ChdbBackend]]:
    settings = load_settings(data_dir=str(tmp_path), clickhouse={"path": str(tmp_path / "ch")})
    backend = ChdbBackend(settings.clickhouse)
    backend.ensure_schema()
    rows = [scored(i, "mine", org_id="mine", workload="web", host=f"h-{i}", cmdline=f"run {text}")
            for i, text in enumerate(HOSTILE)]
    rows += [scored(100 + i, "other", org_id="other", workload="web", host=f"h-{i}", cmdline=f"run {text}")
             for i, text in enumerate(HOSTILE)]
    backend.insert(rows_table([event_row(r) for r in rows]))
    try:
        yield settings, backend
    finally:
        backend.close()


@pytest.mark.parametrize("text", HOSTILE)
def test_a_literal_matches_itself_only(store: tuple[Settings, ChdbBackend], text: str) -> None:
    settings, backend = store
    [row] = backend.query(f"SELECT {quote(text)} AS v")
    assert row["v"] == text
    found = backend.query(events_sql(settings, Scope("mine"), EventFilter(q=text), 100))
    assert {r["org_id"] for r in found} == {"mine"}
    assert any(r["cmdline"] == f"run {text}" for r in found)
    assert backend.query(events_sql(settings, Scope("mine"), EventFilter(host=text, workload=text, program=text), 100)) == []


def test_no_filter_widens_the_scope(store: tuple[Settings, ChdbBackend]) -> None:
    settings, backend = store
    for text in HOSTILE:
        for filters in (EventFilter(q=text), EventFilter(workload=text), EventFilter(severity=("ok",), q=text)):
            rows = backend.query(events_sql(settings, Scope("mine"), filters, 1000))
            assert {r["org_id"] for r in rows} <= {"mine"}
    # An org name that tries to end its literal is one (nonexistent) org.
    assert backend.query(events_sql(settings, Scope("mine' OR '1'='1"), EventFilter(), 1000)) == []
    assert len(backend.query(events_sql(settings, Scope(None), EventFilter(), 1000))) == 2 * len(HOSTILE)


def test_cursor_pages_cover_the_scope_once(store: tuple[Settings, ChdbBackend]) -> None:
    settings, backend = store
    seen: list[str] = []
    cursor = None
    while True:
        page = backend.query(events_sql(settings, Scope("mine"), EventFilter(), 4, cursor=cursor))
        seen += [r["event_id"] for r in page]
        if len(page) < 4:
            break
        cursor = Cursor.decode(Cursor(float(page[-1]["ts"]), page[-1]["event_id"]).encode())
    every = backend.query(events_sql(settings, Scope("mine"), EventFilter(), 1000))
    assert seen == [r["event_id"] for r in every] and len(seen) == len(HOSTILE)
    with pytest.raises(QueryError):
        Cursor.decode("not a cursor")


def test_numbers_are_finite() -> None:
    with pytest.raises(QueryError):
        reads.number(float("nan"))
    with pytest.raises(QueryError):
        reads.number(float("inf"))
    assert reads.number(0.5) == "0.5"
