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
from tests.processes import QUERY_TOKEN
from tests.sinks.support import scored

AUTH = {"Authorization": f"Bearer {QUERY_TOKEN}"}


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
        ("DESCRIBE TABLE t", "DESCRIBE TABLE t"),
        ("desc t", "desc t"),
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
        ("SHOW TABLES", "SHOW"),  # reads system tables; DESCRIBE a table instead
        ("EXISTS TABLE t", "EXISTS"),
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
        with QueryServer(store, QUERY_TOKEN, "127.0.0.1", 0) as server:
            yield store, server


@pytest.mark.integration
def test_query_returns_rows(served: tuple[ChdbBackend, QueryServer]) -> None:
    store, server = served
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
    assert query_http(server.url, count_sql(store.ch), QUERY_TOKEN) == [{"n": 10}]
    rows = query_http(server.url, f"SELECT event_id, argv, user FROM {store.table} FINAL ORDER BY event_id LIMIT 2", QUERY_TOKEN)
    assert rows == [
        {"event_id": "q-000000", "argv": [], "user": "www-data"},
        {"event_id": "q-000001", "argv": [], "user": "www-data"},
    ]


@pytest.mark.integration
def test_writes_and_bad_sql_are_400_with_a_message(served: tuple[ChdbBackend, QueryServer]) -> None:
    store, server = served
    with pytest.raises(QueryError, match="'DROP' is not allowed"):
        query_http(server.url, f"DROP TABLE {store.table}", QUERY_TOKEN)
    with pytest.raises(QueryError, match="one statement"):
        query_http(server.url, f"SELECT 1; DROP TABLE {store.table}", QUERY_TOKEN)
    with pytest.raises(QueryError, match="UNKNOWN_TABLE|does not exist"):
        query_http(server.url, "SELECT * FROM ruleless.nope", QUERY_TOKEN)
    # Raw HTTP: the status is 400 and the body says why.
    try:
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/query?sql=TRUNCATE%20TABLE%20x", headers=AUTH), timeout=10)
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
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/nope", headers=AUTH), timeout=10)
    assert info.value.code == 404


def test_nothing_listening_is_a_query_error() -> None:
    from ruleless.broker import free_port

    with pytest.raises(QueryError, match="no query endpoint answers"):
        query_http(f"http://127.0.0.1:{free_port()}", "SELECT 1", timeout=5)


# What an attacker on the same host tried (issue 15); each must be refused, on the
# endpoint, whatever the spelling.
PROBES = [
    ("SELECT * FROM file('/etc/shadow', 'LineAsString')", "table function file"),
    ("SELECT * FROM file('/proc/self/environ', 'LineAsString')", "table function file"),
    ("SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')", "table function url"),
    ("SELECT * FROM remote('127.0.0.1', system.one)", "table function remote"),
    ("SELECT * FROM s3('http://127.0.0.1:9/b/k', 'CSV')", "table function s3"),
    ("SELECT * FROM executable('id', 'TSV', 'x String')", "table function executable"),
    ("SELECT file('/etc/shadow')", "function file"),
    ("SELECT count() FROM ruleless.security_events WHERE cmdline IN (SELECT line FROM FILE('/etc/passwd', 'LineAsString'))", "table function FILE"),
    ("SELECT * FROM ruleless.security_events, `url`('http://127.0.0.1:9/', 'LineAsString')", "table function url"),
    ("SELECT dictGet('d', 'a', toUInt64(1))", "function dictGet"),
    ("SELECT * FROM system.users", "only tables of ruleless"),
    ("SELECT * FROM information_schema.tables", "only tables of ruleless"),
    ("SELECT 1 FROM ruleless.security_events WHERE 1 IN system.one", "only tables of ruleless"),
    ("SELECT getSetting('readonly')", "function getSetting"),
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS|readonly mode"),  # (ClickHouse refuses this one itself)
    ("SELECT count() FROM ruleless.security_events SETTINGS max_execution_time = 0", "SETTINGS"),
    ("SHOW TABLES FROM system", "SHOW"),
]


@pytest.mark.integration
@pytest.mark.parametrize("sql, reason", PROBES)
def test_reads_outside_the_products_tables_are_refused(served: tuple[ChdbBackend, QueryServer], sql: str, reason: str) -> None:
    _, server = served
    with pytest.raises(QueryError, match=reason):
        query_http(server.url, sql, QUERY_TOKEN)


@pytest.mark.integration
def test_the_endpoint_needs_the_token_and_its_own_host_name(served: tuple[ChdbBackend, QueryServer]) -> None:
    store, server = served
    with pytest.raises(QueryError, match="bearer token"):
        query_http(server.url, count_sql(store.ch))
    with pytest.raises(QueryError, match="bearer token"):
        query_http(server.url, count_sql(store.ch), "wrong")
    # A page that rebinds its own name to 127.0.0.1 sends its name as Host.
    request = urllib.request.Request(f"{server.url}/query?sql=SELECT%201", headers={**AUTH, "Host": f"attacker.example:{server.port}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 403
    assert query_http(server.url.replace("127.0.0.1", "localhost"), count_sql(store.ch), QUERY_TOKEN) == [{"n": 10}]


def test_a_bind_beyond_loopback_without_a_token_is_refused() -> None:
    from schemas.errors import ConfigError
    from sinks.query import check_bind

    check_bind("127.0.0.1", None, "x")
    check_bind("::1", None, "x")
    check_bind("0.0.0.0", "secret", "x")
    with pytest.raises(ConfigError, match="without a token"):
        check_bind("0.0.0.0", None, "the query endpoint")


@pytest.mark.integration
def test_a_slow_read_is_cut_at_its_limit_and_does_not_hold_the_others(settings: Settings) -> None:
    import threading
    import time

    slow_limits = settings.clickhouse.model_copy(update={"query_timeout_s": 3.0})
    with ChdbBackend(slow_limits) as store:
        store.ensure_schema()
        store.insert(rows_table([event_row(scored(i, "s")) for i in range(10)]))
        with QueryServer(store, QUERY_TOKEN, "127.0.0.1", 0) as server:
            outcome: list[str] = []
            slow_done: list[float] = []
            t = store.table
            # 10^9 joined rows hashed: CPU-bound in steady blocks, so the time limit is checked often
            # (a sleepEachRow query once outlived the test's wait on a loaded 2-core CI machine).
            heavy = (f"SELECT sum(cityHash64(a.host, b.host, c.host, d.host, e.host, f.host, g.host, h.host, i.host)) AS n "
                     f"FROM {t} AS a, {t} AS b, {t} AS c, {t} AS d, {t} AS e, {t} AS f, {t} AS g, {t} AS h, {t} AS i")

            def slow() -> None:
                try:
                    outcome.append(f"answered {query_http(server.url, heavy, QUERY_TOKEN, timeout=120)}")
                except QueryError as exc:
                    outcome.append(exc.message)
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    outcome.append(f"unexpected {exc!r}")
                slow_done.append(time.monotonic())

            worker = threading.Thread(target=slow)
            worker.start()
            time.sleep(0.5)
            assert query_http(server.url, count_sql(store.ch), QUERY_TOKEN) == [{"n": 10}]
            fast_done = time.monotonic()
            worker.join(120)
    assert not worker.is_alive(), "the slow read was not cut within 120 s of a 3 s limit"
    assert outcome and ("TIMEOUT" in outcome[0] or "Timeout" in outcome[0]), outcome
    assert fast_done < slow_done[0], "the short read waited for the slow one to be cut"
