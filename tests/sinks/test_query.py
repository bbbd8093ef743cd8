"""The read-only SQL endpoint: statement checks, and HTTP against a real chdb store."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from ruleless.settings import Settings
from schemas.errors import QueryError
from sinks.clickhouse import ChdbBackend, count_sql, event_row, rows_table
from sinks.query import QueryServer, check_read_only, query_http
from tests.sinks.support import scored


@pytest.mark.parametrize(
    "sql, sent",
    [
        ("SELECT 1", "SELECT 1"),
        ("select 1;", "select 1"),
        ("SELECT 1; -- trailing comment", "SELECT 1"),
        ("SELECT ';' AS s", "SELECT ';' AS s"),
        ("SELECT 'it''s; fine', `odd;name` FROM t", "SELECT 'it''s; fine', `odd;name` FROM t"),
        ("/* why */ SELECT 1", "/* why */ SELECT 1"),
        ("-- DROP TABLE t\nSELECT 1", "-- DROP TABLE t\nSELECT 1"),
        ("WITH 1 AS x SELECT x", "WITH 1 AS x SELECT x"),
        ("SHOW TABLES", "SHOW TABLES"),
        ("DESCRIBE TABLE t", "DESCRIBE TABLE t"),
        ("desc t", "desc t"),
        ("EXISTS TABLE t", "EXISTS TABLE t"),
        ("SELECT 'into outfile'", "SELECT 'into outfile'"),
    ],
)
def test_read_statements_pass(sql: str, sent: str) -> None:
    assert check_read_only(sql) == sent


@pytest.mark.parametrize(
    "sql, reason",
    [
        ("", "empty"),
        ("  -- only a comment", "empty"),
        ("INSERT INTO t VALUES (1)", "INSERT"),
        ("DROP TABLE t", "DROP"),
        ("ALTER TABLE t DELETE WHERE 1", "ALTER"),
        ("OPTIMIZE TABLE t FINAL", "OPTIMIZE"),
        ("SET readonly = 0", "SET"),
        ("SELECT 1; DROP TABLE t", "one statement"),
        ("SELECT 1;;", "one statement"),
        ("SELECT 1 # ; DROP TABLE t", "one statement"),  # '#' may not be a comment: refuse
        ("SELECT 1 /* ; */; DROP TABLE t", "one statement"),
        ("SELECT 1 INTO OUTFILE '/tmp/x'", "OUTFILE"),
        ("SELECT 1 /* unterminated", "unterminated"),
        ("SELECT 'unterminated", "unterminated"),
        ("(SELECT 1)", "'\\('"),
    ],
)
def test_anything_else_is_refused(sql: str, reason: str) -> None:
    with pytest.raises(QueryError, match=reason):
        check_read_only(sql)


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[ChdbBackend, QueryServer]]:
    with ChdbBackend(settings.clickhouse) as store:
        store.ensure_schema()
        store.insert(rows_table([event_row(scored(i, "q")) for i in range(10)]))
        with QueryServer(store, "127.0.0.1", 0) as server:
            yield store, server


@pytest.mark.integration
def test_query_returns_rows(served: tuple[ChdbBackend, QueryServer]) -> None:
    store, server = served
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
    assert query_http(server.url, count_sql(store.ch)) == [{"n": 10}]
    rows = query_http(server.url, f"SELECT event_id, argv, user FROM {store.table} FINAL ORDER BY event_id LIMIT 2")
    assert rows == [
        {"event_id": "q-000000", "argv": [], "user": "www-data"},
        {"event_id": "q-000001", "argv": [], "user": "www-data"},
    ]


@pytest.mark.integration
def test_writes_and_bad_sql_are_400_with_a_message(served: tuple[ChdbBackend, QueryServer]) -> None:
    store, server = served
    with pytest.raises(QueryError, match="'DROP' is not allowed"):
        query_http(server.url, f"DROP TABLE {store.table}")
    with pytest.raises(QueryError, match="one statement"):
        query_http(server.url, f"SELECT 1; DROP TABLE {store.table}")
    with pytest.raises(QueryError, match="UNKNOWN_TABLE|does not exist"):
        query_http(server.url, "SELECT * FROM ruleless.nope")
    # Raw HTTP: the status is 400 and the body says why.
    try:
        urllib.request.urlopen(f"{server.url}/query?sql=TRUNCATE%20TABLE%20x", timeout=10)
        raise AssertionError("TRUNCATE was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
        assert "TRUNCATE" in json.loads(exc.read())["error"]
    assert store.count() == 10


@pytest.mark.integration
def test_health_and_unknown_paths(served: tuple[ChdbBackend, QueryServer]) -> None:
    store, server = served
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as resp:
        body = json.loads(resp.read())
    assert body == {"status": "ok", "backend": "chdb", "table": store.table}
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.url}/nope", timeout=10)
    assert info.value.code == 404


def test_nothing_listening_is_a_query_error() -> None:
    from ruleless.broker import free_port

    with pytest.raises(QueryError, match="no query endpoint answers"):
        query_http(f"http://127.0.0.1:{free_port()}", "SELECT 1", timeout=5)
