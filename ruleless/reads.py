"""What the API reads from ClickHouse: the SQL it builds, and where it sends it.

API users never send SQL. Every statement here is built from the request's typed
parameters, each value quoted by :func:`quote` (or validated as a number), and every one
carries the caller's org filter (:class:`Scope`), which no parameter can widen: a scoped
token reads its own org, an admin token one org it names or all of them.

Where statements go (``api.query_source``):

- ``sink`` — the sink's read-only query endpoint (sinks/query.py): the process that owns
  an embedded chdb serves reads for everyone else, with its own checks and limits;
- ``server`` — a ClickHouse server (the ``clickhouse`` settings) on read-only sessions.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ruleless.settings import Settings
from schemas.errors import QueryError
from sinks.clickhouse import COLUMNS, table_ref

# The events table has a behaviour_id column once the search part is in (issue 16).
HAS_BEHAVIOUR_ID = any(c.name == "behaviour_id" for c in COLUMNS)
# What makes two events "the same behaviour" in a GROUP BY (rows written before the
# column existed have it empty: their program and command line then).
_PLAIN_KEY = "concat(process_name, ' ', cmdline)"
BEHAVIOUR_KEY = f"if(behaviour_id != '', behaviour_id, {_PLAIN_KEY})" if HAS_BEHAVIOUR_ID else _PLAIN_KEY

# An event as lists show it (no argv: the cmdline says it).
LIST_COLUMNS: tuple[str, ...] = (
    "event_id", "ts", "org_id", "workload", "host", "event_type", "pid", "ppid", "uid", "user",
    "process_name", "exe", "cmdline", "parent_process", "ancestors", "container_id",
    "local_ip", "local_port", "remote_ip", "remote_port", "score", "severity", "reasons", "model", "learning",
) + (("behaviour_id",) if HAS_BEHAVIOUR_ID else ())  # fmt: skip
SEVERITIES = ("ok", "warn", "alert")


def quote(value: str) -> str:
    """A ClickHouse string literal holding exactly ``value``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def number(value: float) -> str:
    """A finite number as SQL (refuses NaN and infinities, which are not literals)."""
    if not math.isfinite(value):
        raise QueryError(f"not a finite number: {value!r}")
    return repr(float(value))


@dataclass(frozen=True)
class Scope:
    """Which orgs a statement may read: one org, or every org (``org`` None: admin)."""

    org: str | None

    def where(self) -> str:
        return "1" if self.org is None else f"org_id = {quote(self.org)}"


class Reader(Protocol):
    def rows(self, sql: str) -> list[dict[str, Any]]: ...

    def describe(self) -> str: ...


class SinkReader:
    """Statements through the sink's query endpoint (the sink owns the embedded chdb)."""

    def __init__(self, settings: Settings):
        from sinks.query import read_token

        sink = settings.sink
        self.url = settings.api.query_url or f"http://{sink.query_host}:{sink.query_port}"
        self._configured = sink.query_token.get_secret_value() if sink.query_token else None
        self._data_dir = settings.data_dir
        self._read_token = read_token
        self._timeout = settings.clickhouse.query_timeout_s + 5

    def rows(self, sql: str) -> list[dict[str, Any]]:
        from sinks.query import query_http

        # (read every time: the sink writes its token when it starts, maybe after us)
        token = self._read_token(self._configured, self._data_dir)
        return query_http(self.url, sql, token, timeout=self._timeout)

    def describe(self) -> str:
        return f"the sink's query endpoint {self.url}"


class ServerReader:
    """Statements on a ClickHouse server, read-only sessions with the read limits."""

    def __init__(self, settings: Settings):
        from sinks.clickhouse import ServerBackend

        self._backend = ServerBackend(settings.clickhouse)
        self.url = settings.clickhouse.url

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return self._backend.query(sql, readonly=True)

    def describe(self) -> str:
        return f"ClickHouse at {self.url}"


def open_reader(settings: Settings) -> SinkReader | ServerReader:
    return ServerReader(settings) if settings.api.query_source == "server" else SinkReader(settings)


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFilter:
    """The filters of GET /api/events (None = not filtered)."""

    workload: str | None = None
    host: str | None = None
    since: float | None = None
    until: float | None = None
    min_score: float | None = None
    max_score: float | None = None
    severity: tuple[str, ...] = ()
    program: str | None = None
    q: str | None = None
    behaviour_ids: tuple[str, ...] = ()

    def clauses(self) -> list[str]:
        out: list[str] = []
        if self.workload is not None:
            out.append(f"workload = {quote(self.workload)}")
        if self.host is not None:
            out.append(f"host = {quote(self.host)}")
        if self.since is not None:
            out.append(f"ts >= {number(self.since)}")
        if self.until is not None:
            out.append(f"ts < {number(self.until)}")
        if self.min_score is not None:
            out.append(f"score >= {number(self.min_score)}")
        if self.max_score is not None:
            out.append(f"score <= {number(self.max_score)}")
        if self.severity:
            out.append(f"severity IN ({', '.join(quote(s) for s in self.severity)})")
        if self.program is not None:
            out.append(f"process_name = {quote(self.program)}")
        if self.q:
            out.append(f"positionCaseInsensitiveUTF8(cmdline, {quote(self.q)}) > 0")
        if self.behaviour_ids and HAS_BEHAVIOUR_ID:
            out.append(f"behaviour_id IN ({', '.join(quote(b) for b in self.behaviour_ids)})")
        return out


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the event (ts, event_id) in newest-first order."""

    ts: float
    event_id: str

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.ts!r}|{self.event_id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            ts, event_id = raw.split("|", 1)
            return cls(float(ts), event_id)
        except (ValueError, UnicodeDecodeError):
            raise QueryError("not a cursor of this API") from None

    def clause(self) -> str:
        return f"(ts < {number(self.ts)} OR (ts = {number(self.ts)} AND event_id < {quote(self.event_id)}))"


def where(scope: Scope, clauses: Iterable[str]) -> str:
    return " AND ".join([scope.where(), *clauses])


def events_sql(settings: Settings, scope: Scope, filters: EventFilter, limit: int, offset: int = 0,
               cursor: Cursor | None = None, columns: Sequence[str] = LIST_COLUMNS) -> str:
    """Newest first, ``limit`` rows after ``cursor`` (or ``offset``)."""
    clauses = filters.clauses() + ([cursor.clause()] if cursor else [])
    cols = ", ".join(f"`{c}`" for c in columns)
    return (
        f"SELECT {cols} FROM {table_ref(settings.clickhouse)} FINAL WHERE {where(scope, clauses)} "
        f"ORDER BY ts DESC, event_id DESC LIMIT {int(limit)}" + (f" OFFSET {int(offset)}" if offset else "")
    )


DETAIL_COLUMNS: tuple[str, ...] = LIST_COLUMNS + ("argv", "exec_id", "source", "flags", "scored_at")


def event_sql(settings: Settings, scope: Scope, event_id: str) -> str:
    """One event by id (within the scope)."""
    cols = ", ".join(f"`{c}`" for c in DETAIL_COLUMNS)
    return (f"SELECT {cols} FROM {table_ref(settings.clickhouse)} FINAL "
            f"WHERE {where(scope, [f'event_id = {quote(event_id)}'])} LIMIT 1")


def parent_sql(settings: Settings, org: str, host: str, ppid: int, ts: float) -> str:
    """The latest exec of the parent process (same org and host, pid = ppid, not after ts)."""
    cols = ", ".join(f"`{c}`" for c in LIST_COLUMNS)
    clauses = [f"host = {quote(host)}", f"pid = {int(ppid)}", f"ts <= {number(ts)}"]
    return (f"SELECT {cols} FROM {table_ref(settings.clickhouse)} FINAL WHERE {where(Scope(org), clauses)} "
            "ORDER BY ts DESC LIMIT 1")


def children_sql(settings: Settings, org: str, host: str, pid: int, ts: float, limit: int = 20) -> str:
    """Processes this one started (same org and host, ppid = pid, within an hour after ts)."""
    cols = ", ".join(f"`{c}`" for c in LIST_COLUMNS)
    clauses = [f"host = {quote(host)}", f"ppid = {int(pid)}", f"ts >= {number(ts)}", f"ts < {number(ts + 3600)}"]
    return (f"SELECT {cols} FROM {table_ref(settings.clickhouse)} FINAL WHERE {where(Scope(org), clauses)} "
            f"ORDER BY ts LIMIT {int(limit)}")


def usual_arguments_sql(settings: Settings, org: str, workload: str, program: str, limit: int = 10) -> str:
    """The command lines the workload usually runs this program with, most frequent first."""
    clauses = [f"workload = {quote(workload)}", f"process_name = {quote(program)}"]
    return (
        # (aliases unlike the columns: ClickHouse would read "cmdline" in the key as the alias)
        f"SELECT {BEHAVIOUR_KEY} AS behaviour, any(cmdline) AS example, count() AS count, min(ts) AS first_ts, "
        f"max(ts) AS last_ts, max(score) AS max_score FROM {table_ref(settings.clickhouse)} FINAL "
        f"WHERE {where(Scope(org), clauses)} GROUP BY behaviour ORDER BY count DESC, last_ts DESC LIMIT {int(limit)}"
    )


def alerts_sql(settings: Settings, scope: Scope, filters: EventFilter, limit: int) -> str:
    """The newest warn/alert events (grouped by behaviour by the caller)."""
    cols = LIST_COLUMNS + ("argv",)
    narrowed = EventFilter(**{**filters.__dict__, "severity": filters.severity or ("warn", "alert")})
    return events_sql(settings, scope, narrowed, limit, columns=cols)


def workloads_sql(settings: Settings, scope: Scope) -> str:
    return (
        f"SELECT org_id, workload, count() AS events, uniqExact(host) AS hosts, min(ts) AS first_ts, "
        f"max(ts) AS last_ts, countIf(severity = 'warn') AS warn, countIf(severity = 'alert') AS alert, "
        f"argMax(learning, ts) AS learning, uniqExact({BEHAVIOUR_KEY}) AS behaviours "
        f"FROM {table_ref(settings.clickhouse)} FINAL WHERE {scope.where()} "
        "GROUP BY org_id, workload ORDER BY org_id, workload LIMIT 10000"
    )


def workload_scope(workload: str) -> list[str]:
    return [f"workload = {quote(workload)}"]


def volume_sql(settings: Settings, org: str, workload: str, since: float | None) -> str:
    clauses = workload_scope(workload) + ([f"ts >= {number(since)}"] if since is not None else [])
    return (
        f"SELECT count() AS events, uniqExact(host) AS hosts, min(ts) AS first_ts, max(ts) AS last_ts, "
        f"countIf(severity = 'ok') AS ok, countIf(severity = 'warn') AS warn, countIf(severity = 'alert') AS alert, "
        f"argMax(learning, ts) AS learning, uniqExact({BEHAVIOUR_KEY}) AS behaviours, "
        f"uniqExact(process_name) AS programs, avg(score) AS mean_score, quantile(0.99)(score) AS p99_score "
        f"FROM {table_ref(settings.clickhouse)} FINAL WHERE {where(Scope(org), clauses)}"
    )


HISTOGRAM_BINS = 20


def histogram_sql(settings: Settings, org: str, workload: str, since: float | None) -> str:
    clauses = workload_scope(workload) + ([f"ts >= {number(since)}"] if since is not None else [])
    return (
        f"SELECT least(toUInt32(floor(score * {HISTOGRAM_BINS})), {HISTOGRAM_BINS - 1}) AS bin, count() AS n "
        f"FROM {table_ref(settings.clickhouse)} FINAL WHERE {where(Scope(org), clauses)} GROUP BY bin ORDER BY bin"
    )


def timeline_sql(settings: Settings, org: str, workload: str, since: float | None, bucket: int) -> str:
    clauses = workload_scope(workload) + ([f"ts >= {number(since)}"] if since is not None else [])
    return (
        f"SELECT intDiv(toUInt64(ts), {int(bucket)}) * {int(bucket)} AS t, count() AS events, "
        f"countIf(severity = 'warn') AS warn, countIf(severity = 'alert') AS alert, max(score) AS max_score "
        f"FROM {table_ref(settings.clickhouse)} FINAL WHERE {where(Scope(org), clauses)} GROUP BY t ORDER BY t"
    )


def growth_sql(settings: Settings, org: str, workload: str, bucket: int) -> str:
    """New behaviours per time bucket (a behaviour counts at its first event): summed,
    the baseline's growth."""
    return (
        f"SELECT intDiv(toUInt64(first), {int(bucket)}) * {int(bucket)} AS t, count() AS new "
        f"FROM (SELECT {BEHAVIOUR_KEY} AS b, min(ts) AS first FROM {table_ref(settings.clickhouse)} FINAL "
        f"WHERE {where(Scope(org), workload_scope(workload))} GROUP BY b) GROUP BY t ORDER BY t"
    )


BUCKETS_S = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86_400, 7 * 86_400)


def bucket_for(span_s: float, most: int = 96) -> int:
    """The smallest bucket (seconds) that cuts ``span_s`` into at most ``most`` pieces."""
    return next((b for b in BUCKETS_S if span_s / b <= most), BUCKETS_S[-1])


def behaviour_events_sql(settings: Settings, scope: Scope, behaviours: Sequence[tuple[str, str]],
                         since: float | None = None) -> str:
    """The latest event of each behaviour (search hits -> events), given as (workload,
    behaviour_id) pairs: the workloads let ClickHouse read only their part of the table
    (its sort key starts with org_id, workload), ``since`` (no behaviour's latest event is
    older: the oldest hit's last time) only the partitions after it. No FINAL: copies of
    an event are the same event."""
    cols = ", ".join(f"`{c}`" for c in LIST_COLUMNS)
    workloads = sorted({w for w, _ in behaviours})
    clauses = [f"workload IN ({', '.join(quote(w) for w in workloads)})",
               f"behaviour_id IN ({', '.join(quote(b) for _, b in behaviours)})"]
    if since is not None:
        clauses.append(f"ts >= {number(since)}")
    return (f"SELECT {cols} FROM {table_ref(settings.clickhouse)} WHERE {where(scope, clauses)} "
            "ORDER BY ts DESC LIMIT 1 BY behaviour_id")
