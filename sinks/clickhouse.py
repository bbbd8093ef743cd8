"""The ``security_events`` table and the two backends that hold it.

One table definition, one row mapping and one set of SQL strings, run unchanged by
both backends:

- :class:`ChdbBackend` — embedded ClickHouse (chdb) in a local directory; the default.
  Only one process may open a directory, and one process can only have one directory
  open at a time; the process that owns it serves reads (see :mod:`sinks.query`).
- :class:`ServerBackend` — a ClickHouse server through clickhouse-connect (production).

Exactly-once rows by ``event_id`` come from two layers:

1. ``ReplacingMergeTree(scored_at)`` keyed by ``(org_id, workload, ts, event_id)``: ``ts``
   is part of the event (and of its derived id), so every copy of an event has the same
   key and copies collapse on merge; reads that must be exact use ``FINAL``.
2. A deduplication token per batch (a hash of its rows): a batch retried after an
   unknown outcome is dropped by the table's deduplication window instead of being
   written twice (measured with chdb: the second identical insert adds no rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import queue
import threading
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa

from ruleless.settings import ClickHouseSettings
from schemas.errors import (
    BackpressureError,
    ConfigError,
    DecodeError,
    QueryError,
    RulelessError,
    ServiceError,
    SinkWriteError,
)
from schemas.events import ScoredEvent
from streams.behaviours import behaviour_id

log = logging.getLogger(__name__)


class Column(NamedTuple):
    """One column: its ClickHouse type, its Arrow type on insert (None = computed)."""

    name: str
    ch_type: str
    arrow_type: pa.DataType | None
    default: str | None = None


_UTC_MICROS = pa.timestamp("us", tz="UTC")
_STRINGS = pa.list_(pa.string())

# Order = DDL order. Every ScoredEvent field is here under its own name; optional
# scalars are Nullable (absent stays distinguishable from empty), optional lists are
# empty arrays (ClickHouse arrays cannot be NULL).
COLUMNS: tuple[Column, ...] = (
    Column("event_id", "String", pa.string()),
    Column("ts", "Float64", pa.float64()),
    Column("event_time", "DateTime64(6, 'UTC')", None, "toDateTime64(ts, 6, 'UTC')"),
    Column("org_id", "LowCardinality(String)", pa.string()),
    Column("workload", "LowCardinality(String)", pa.string()),
    Column("host", "LowCardinality(String)", pa.string()),
    Column("event_type", "LowCardinality(String)", pa.string()),
    Column("pid", "UInt64", pa.uint64()),
    Column("ppid", "UInt64", pa.uint64()),
    Column("uid", "Int64", pa.int64()),
    Column("user", "Nullable(String)", pa.string()),
    Column("process_name", "LowCardinality(String)", pa.string()),
    Column("exe", "Nullable(String)", pa.string()),
    Column("cmdline", "String", pa.string()),
    Column("argv", "Array(String)", _STRINGS),
    Column("parent_process", "LowCardinality(String)", pa.string()),
    Column("ancestors", "Array(String)", _STRINGS),
    Column("local_ip", "Nullable(String)", pa.string()),
    Column("local_port", "Nullable(UInt16)", pa.uint16()),
    Column("remote_ip", "Nullable(String)", pa.string()),
    Column("remote_port", "Nullable(UInt16)", pa.uint16()),
    Column("container_id", "Nullable(String)", pa.string()),
    Column("exec_id", "Nullable(String)", pa.string()),
    Column("source", "LowCardinality(Nullable(String))", pa.string()),
    Column("flags", "Array(String)", _STRINGS),
    Column("score", "Float64", pa.float64()),
    Column("severity", "LowCardinality(String)", pa.string()),
    Column("reasons", "Array(String)", _STRINGS),
    Column("model", "LowCardinality(String)", pa.string()),
    Column("learning", "Bool", pa.bool_()),
    Column("scored_at", "DateTime64(6, 'UTC')", _UTC_MICROS),
    # Not an event field: the event's behaviour (streams/behaviours.py), which the search
    # index (sinks/indexer.py) and the API join on.
    Column("behaviour_id", "String", pa.string()),
    # Not an event field: when this copy was written (retention, below).
    Column("inserted_at", "DateTime64(6, 'UTC')", None, "now64(6, 'UTC')"),
)

INSERT_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.arrow_type is not None)
ARROW_SCHEMA = pa.schema([pa.field(c.name, c.arrow_type) for c in COLUMNS if c.arrow_type is not None])

# DateTime64's upper bound (2299-12-31T23:59:59Z): later timestamps cannot be stored.
MAX_TS = 10_413_791_999.0
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

# How many recent insert blocks a table remembers to drop an identical retried batch.
DEDUP_WINDOW = 1000

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


# -- SQL (shared by both backends) -------------------------------------------------


def _ident(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigError(f"{name!r} is not a valid ClickHouse database or table name")
    return f"`{name}`"


def table_ref(ch: ClickHouseSettings) -> str:
    """The quoted ``database.table`` of the events table."""
    return f"{_ident(ch.database)}.{_ident(ch.table)}"


def create_database_sql(ch: ClickHouseSettings) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {_ident(ch.database)}"


# The event time as partitioning and retention see it: within [written - PAST_DAYS,
# written + 1 day]. Events of a sane clock keep their own day's partition; a host whose
# clock says 1970 or 2299 cannot create partitions of its own (issue 14: one insert over
# 1,000 days was refused, at most 100 partitions per insert block) nor, past 2106, wrap
# DateTime and expire at once.
PAST_DAYS = 7
_CLAMPED_TIME = (f"least(greatest(event_time, inserted_at - INTERVAL {PAST_DAYS} DAY), "
                 "inserted_at + INTERVAL 1 DAY)")


def create_table_sql(ch: ClickHouseSettings) -> str:
    """DDL of the events table (idempotent; an existing table is left as it is)."""
    cols = ",\n".join(
        f"    `{c.name}` {c.ch_type}" + (f" DEFAULT {c.default}" if c.default else "") for c in COLUMNS
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {table_ref(ch)}\n(\n{cols}\n)\n"
        "ENGINE = ReplacingMergeTree(scored_at)\n"
        f"PARTITION BY toDate({_CLAMPED_TIME})\n"
        "ORDER BY (org_id, workload, ts, event_id)\n"
        # Retention counts from the later of event time and write time: live events
        # expire ttl_days after they happened, while a replay or backfill of older
        # events stays queryable for ttl_days instead of vanishing on its first merge.
        f"TTL toDateTime(greatest({_CLAMPED_TIME}, inserted_at)) + INTERVAL {int(ch.ttl_days)} DAY\n"
        f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
    )


def schema_sql(ch: ClickHouseSettings) -> list[str]:
    """Statements that create the database and the table, in order, then add every
    column a table of an earlier version lacks (issue 14: CREATE TABLE IF NOT EXISTS
    alone left an upgraded sink inserting columns the old table did not have)."""
    add = [
        f"ALTER TABLE {table_ref(ch)} ADD COLUMN IF NOT EXISTS `{c.name}` {c.ch_type}" + (f" DEFAULT {c.default}" if c.default else "")
        for c in COLUMNS
    ]
    return [create_database_sql(ch), create_table_sql(ch), *add]


def insert_select_sql(ch: ClickHouseSettings, source: str, settings: dict[str, Any]) -> str:
    """``INSERT ... SELECT`` of the insert columns from a table expression (chdb)."""
    cols = ", ".join(f"`{c}`" for c in INSERT_COLUMNS)
    return f"INSERT INTO {table_ref(ch)} ({cols}) SELECT {cols} FROM {source}{settings_clause(settings)}"


def count_sql(ch: ClickHouseSettings, where: str = "", final: bool = True) -> str:
    """Row count of the events table; ``final`` collapses not-yet-merged duplicates."""
    return (
        f"SELECT count() AS n FROM {table_ref(ch)}{' FINAL' if final else ''}"
        + (f" WHERE {where}" if where else "")
    )


def settings_clause(settings: dict[str, Any]) -> str:
    if not settings:
        return ""
    return " SETTINGS " + ", ".join(f"{k} = {_literal(v)}" for k, v in settings.items())


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def insert_settings(token: str | None) -> dict[str, Any]:
    """Per-insert settings: the dedup token, and no partition cap (a replay of old
    events may span more days than the default 100 partitions per insert; refusing it
    would block the sink on that batch forever)."""
    settings: dict[str, Any] = {"throw_on_max_partitions_per_insert_block": 0}
    if token:
        settings["insert_deduplication_token"] = token
    return settings


# -- rows --------------------------------------------------------------------------


Row = tuple[Any, ...]


def event_row(event: ScoredEvent) -> Row:
    """The table row of one event, values in :data:`INSERT_COLUMNS` order.

    Raises :class:`DecodeError` for values the table cannot hold (a timestamp past
    2299, a uid outside Int64), so such an event is dead-lettered instead of failing
    its whole batch forever.
    """
    if event.ts > MAX_TS or event.scored_at > MAX_TS:
        raise DecodeError(f"timestamp out of range (ts={event.ts}, scored_at={event.scored_at})")
    if not _INT64_MIN <= event.uid <= _INT64_MAX:
        raise DecodeError(f"uid out of range: {event.uid}")
    # A tuple, not a dict: this runs per event and is twice as fast to build and load.
    return (
        event.event_id,
        event.ts,
        event.org_id,
        event.workload,
        event.host,
        event.event_type,
        event.pid,
        event.ppid,
        event.uid,
        event.user,
        event.process_name,
        event.exe,
        event.cmdline,
        event.argv or [],
        event.parent_process,
        event.ancestors or [],
        event.local_ip,
        event.local_port,
        event.remote_ip,
        event.remote_port,
        event.container_id,
        event.exec_id,
        event.source,
        event.flags or [],
        event.score,
        event.severity,
        event.reasons,
        event.model,
        event.learning,
        round(event.scored_at * 1_000_000),
        behaviour_id(event),
    )


def rows_table(rows: Sequence[Row]) -> pa.Table:
    """Rows from :func:`event_row` as an Arrow table with :data:`ARROW_SCHEMA`."""
    if not rows:
        return ARROW_SCHEMA.empty_table()
    columns = [pa.array(values, field.type) for values, field in zip(zip(*rows), ARROW_SCHEMA, strict=True)]
    return pa.Table.from_arrays(columns, schema=ARROW_SCHEMA)


def dedup_token(rows: pa.Table) -> str:
    """A token that is equal for equal batches: a hash of their ids and versions.
    (It hashes whole Arrow buffers: give it a table built by :func:`rows_table`, never a
    slice, whose buffers are those of the whole.)"""
    digest = hashlib.blake2b(digest_size=16)
    for name in ("event_id", "scored_at"):
        for chunk in rows.column(name).chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    digest.update(buf)
    return f"{rows.num_rows}-{digest.hexdigest()}"


# -- backends ------------------------------------------------------------------------

# ClickHouse error names that mean "slow down", not "this batch is wrong".
_BACKPRESSURE = ("TOO_MANY_PARTS", "TOO_MANY_SIMULTANEOUS_QUERIES", "MEMORY_LIMIT_EXCEEDED", "TIMEOUT_EXCEEDED")


def _write_error(exc: Exception, where: str) -> RulelessError:
    message = f"insert into {where} failed: {exc}"
    if any(name in str(exc) for name in _BACKPRESSURE):
        return BackpressureError(message)
    return SinkWriteError(message)


def _json_rows(payload: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in payload.splitlines() if line.strip()]


class Backend(ABC):
    """A store for the events table. Thread-safe; every method may be called from
    any thread. Writes raise :class:`SinkWriteError` (or :class:`BackpressureError`
    when the store is overloaded); reads raise :class:`QueryError`."""

    kind: str = ""

    def __init__(self, ch: ClickHouseSettings) -> None:
        self.ch = ch
        self.table = table_ref(ch)

    def ensure_schema(self) -> None:
        """Create the database and the events table if they do not exist."""
        for statement in schema_sql(self.ch):
            self.execute(statement)

    def insert(self, rows: pa.Table, token: str | None = None) -> None:
        """Write ``rows`` (schema :data:`ARROW_SCHEMA`) in one insert.

        ``token`` defaults to :func:`dedup_token`, so retrying the same table after an
        unknown outcome cannot write it twice (within the dedup window).
        """
        if rows.num_rows == 0:
            return
        self._insert(rows, insert_settings(token or dedup_token(rows)))

    def count(self, where: str = "") -> int:
        """Exact row count after collapsing duplicates (``FINAL``)."""
        return int(self.query(count_sql(self.ch, where))[0]["n"])

    @abstractmethod
    def execute(self, sql: str) -> None:
        """Run a statement with full rights (DDL, admin); raises :class:`SinkWriteError`."""

    @abstractmethod
    def query(self, sql: str, *, readonly: bool = True) -> list[dict[str, Any]]:
        """Run one statement; rows as JSON-decoded dicts (same shape on both backends).
        ``readonly`` runs it with a read-only connection or setting."""

    @abstractmethod
    def _insert(self, rows: pa.Table, settings: dict[str, Any]) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Release the store; later calls raise. Idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChdbBackend(Backend):
    """Embedded ClickHouse in ``ch.path``, owned by this process while open.

    Writes and DDL go through one persistent session, reads through a second,
    read-only session on the same directory (so a read can never write, whatever the
    SQL says); each session is used under its own lock.
    """

    kind = "chdb"

    def __init__(self, ch: ClickHouseSettings) -> None:
        super().__init__(ch)
        from chdb.session import Session

        self.path = Path(ch.path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        try:
            self._session: Session | None = Session(str(self.path))
            # Read-only sessions with the read limits fixed at open (a query cannot lift
            # them: SETTINGS clauses are refused by sinks/query.py, and readonly=1 forbids
            # changing settings); several, so one slow read does not queue the others.
            limits = f"mode=ro&max_execution_time={ch.query_timeout_s:g}&max_memory_usage={ch.query_max_memory_mib << 20}"
            self._readers: queue.Queue[Session] = queue.Queue()
            for _ in range(ch.query_readers):
                self._readers.put(Session(f"{self.path}?{limits}"))
            self._open_readers = ch.query_readers
        except RuntimeError as exc:
            raise ServiceError(
                f"cannot open the chdb store at {self.path}: {exc}. Only one process may open "
                "it, and one process only one store; if a sink owns it, query it through the "
                "sink's query endpoint"
            ) from None

    def execute(self, sql: str) -> None:
        with self._lock:
            session = self._require(self._session)
            try:
                session.query(sql)
            except RuntimeError as exc:
                raise SinkWriteError(f"chdb: {exc}") from None

    def query(self, sql: str, *, readonly: bool = True) -> list[dict[str, Any]]:
        if not readonly:
            with self._lock:
                return self._run(self._require(self._session), sql)
        session = self._take_reader()
        try:
            return self._run(session, sql)
        finally:
            self._readers.put(session)

    def _take_reader(self) -> Any:
        if self._open_readers == 0:
            raise SinkWriteError(f"chdb store {self.path} is closed")
        try:
            return self._readers.get(timeout=self.ch.query_timeout_s)
        except queue.Empty:
            raise QueryError(f"every reader is busy ({self.ch.query_readers}); try again") from None

    @staticmethod
    def _run(session: Any, sql: str) -> list[dict[str, Any]]:
        try:
            result = session.query(sql, "JSONEachRow")
        except RuntimeError as exc:
            raise QueryError(str(exc)) from None
        return _json_rows(result.bytes())

    def _insert(self, rows: pa.Table, settings: dict[str, Any]) -> None:
        # chdb's Python() table function finds the Arrow table by its variable name in
        # this frame; the query string names `rows`.
        sql = insert_select_sql(self.ch, "Python(rows)", settings)
        with self._lock:
            session = self._require(self._session)
            try:
                session.query(sql)
            except (RuntimeError, pa.ArrowException) as exc:
                raise _write_error(exc, self.table) from None

    def close(self) -> None:
        with self._read_lock:
            while self._open_readers:
                self._readers.get().close()  # waits for reads in flight
                self._open_readers -= 1
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _require(self, session: Any) -> Any:
        if session is None:
            raise SinkWriteError(f"chdb store {self.path} is closed")
        return session


class ServerBackend(Backend):
    """A ClickHouse server at ``ch.url`` (http or https) with ``ch.username``/``password``.

    Reads run with ``readonly=2`` (no writes; settings may still be changed, which the
    HTTP client needs; SETTINGS clauses and table functions are refused before a query
    gets here, by sinks/query.py) and the read limits of the settings.
    """

    kind = "server"

    def __init__(self, ch: ClickHouseSettings) -> None:
        super().__init__(ch)
        import clickhouse_connect
        from clickhouse_connect.driver.exceptions import Error as ClickHouseError

        self._errors: tuple[type[Exception], ...] = (ClickHouseError, pa.ArrowException, OSError)
        url = urllib.parse.urlparse(ch.url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"ClickHouse URL must be http(s)://host[:port], got {ch.url!r}")
        self._lock = threading.Lock()
        try:
            self._client: Any = clickhouse_connect.get_client(
                host=url.hostname,
                port=url.port or (8443 if url.scheme == "https" else 8123),
                interface=url.scheme,
                secure=url.scheme == "https",
                username=ch.username,
                password=ch.password.get_secret_value(),
            )
        except self._errors as exc:
            raise ServiceError(f"cannot reach ClickHouse at {ch.url}: {exc}") from None

    def execute(self, sql: str) -> None:
        with self._lock:
            client = self._require()
            try:
                client.command(sql)
            except self._errors as exc:
                raise SinkWriteError(f"ClickHouse: {exc}") from None

    def query(self, sql: str, *, readonly: bool = True) -> list[dict[str, Any]]:
        settings: dict[str, Any] = {"output_format_json_quote_64bit_integers": 0}
        if readonly:
            settings.update(readonly=2, max_execution_time=self.ch.query_timeout_s,
                            max_memory_usage=self.ch.query_max_memory_mib << 20)  # fmt: skip
        with self._lock:
            client = self._require()
            try:
                payload = client.raw_query(sql, settings=settings, fmt="JSONEachRow")
            except self._errors as exc:
                raise QueryError(str(exc)) from None
        return _json_rows(payload)

    def _insert(self, rows: pa.Table, settings: dict[str, Any]) -> None:
        with self._lock:
            client = self._require()
            try:
                client.insert_arrow(self.ch.table, rows, database=self.ch.database, settings=settings)
            except self._errors as exc:
                raise _write_error(exc, self.table) from None

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _require(self) -> Any:
        if self._client is None:
            raise SinkWriteError(f"ClickHouse client for {self.ch.url} is closed")
        return self._client


def open_backend(ch: ClickHouseSettings) -> Backend:
    """The backend ``ch.backend`` names, connected (schema not yet ensured)."""
    if ch.backend == "chdb":
        return ChdbBackend(ch)
    if ch.backend == "server":
        return ServerBackend(ch)
    raise ConfigError(f"unknown ClickHouse backend {ch.backend!r}")
