"""`ruleless api`: the analyst's HTTP API (FastAPI) and the dashboard it serves.

Every path under ``/api`` and ``/telemetry`` needs ``Authorization: Bearer TOKEN``, a
token of ruleless/tokens.py: no, an unknown, a forged or a revoked token is a 401. A
token is scoped to one org and every read is filtered by that org on the server side
(ruleless/reads.py builds the SQL; nobody sends SQL); an admin token may name an org
(``org=``) or read all. The OpenAPI document is at ``/openapi.json``; the dashboard's
static files (ruleless/dashboard/) at ``/``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from ruleless import reads
from ruleless.reads import Cursor, EventFilter, Reader, Scope, events_sql, open_reader
from ruleless.settings import Settings, Thresholds
from ruleless.tokens import Caller, TokenStore, tokens_path
from schemas.errors import ConfigError, QueryError, ServiceError
from schemas.events import NAME_PATTERN

log = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
# On every answer: no framing of the dashboard by another site, no MIME sniffing, no
# Referer (URLs carry filters such as hosts and command-line text), no caching of data.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ApiMetrics:
    """Requests by route template and status, their latency, the event store's failures."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("ruleless_api_requests_total", "API requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram("ruleless_api_request_seconds", "API request latency", ["route"], registry=r,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10))
        self.store_errors = Counter("ruleless_api_store_errors_total", "Reads the event store refused or failed", registry=r)


@dataclass
class Context:
    """What every request handler reads: settings, tokens, the event store, and (opened
    on first use) the behaviour index, the threshold overrides and a Kafka producer."""

    settings: Settings
    tokens: TokenStore
    reader: Reader
    metrics: ApiMetrics = field(default_factory=lambda: ApiMetrics())
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _opened: dict[str, Any] = field(default_factory=dict)

    def _once(self, name: str, make: Any) -> Any:
        with self._lock:
            if name not in self._opened:
                self._opened[name] = make()
            return self._opened[name]

    def index(self) -> Any:
        """The behaviour index (streams.behaviours), or None where it is not built in.

        A new one per request (~1 ms): the sink's indexer adds behaviours from another
        process, and an open LanceDB table keeps reading the version it opened."""
        try:
            from streams.behaviours import BehaviourIndex
        except ImportError:
            return None
        return BehaviourIndex(self.settings.lancedb.uri)

    def overrides(self) -> Any:
        from streams.thresholds import ThresholdOverrides

        return self._once("overrides", lambda: ThresholdOverrides(self.settings.lancedb.uri))

    def producer(self) -> Any:
        from ruleless.kafka import producer

        return self._once("producer", lambda: producer(self.settings.kafka))


_bearer = HTTPBearer(auto_error=False, description="An API token: `ruleless token create --org ORG`.")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _context(request: Request) -> Context:
    return request.app.state.ruleless  # type: ignore[no-any-return]


def caller(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Caller:
    """The caller of a request, from its bearer token; 401 without a valid one."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required (ruleless token create --org ORG)")
    try:
        who = _context(request).tokens.verify(credentials.credentials)
    except ConfigError as exc:  # (a token store that cannot be read lets nobody in)
        log.error("%s", exc.message)
        raise HTTPException(503, "the token store cannot be read") from None
    if who is None:
        raise _unauthorized("unknown or revoked token")
    return who


CallerDep = Annotated[Caller, Depends(caller)]
ContextDep = Annotated[Context, Depends(_context)]


def scope_for(who: Caller, org: str | None) -> Scope:
    """The orgs a request reads: a scoped token its own org whatever it asks (asking for
    another is a 403), an admin token the org it names or every org."""
    if who.admin:
        return Scope(org)
    if org is not None and org != who.org:
        raise HTTPException(403, "this token reads its own org only")
    return Scope(who.org)


def read(ctx: Context, sql: str) -> list[dict[str, Any]]:
    try:
        return ctx.reader.rows(sql)
    except QueryError as exc:
        log.warning("event store read failed: %s", exc.message)
        ctx.metrics.store_errors.inc()
        status = 503 if "no query endpoint answers" in exc.message else 502
        raise HTTPException(status, f"the event store did not answer: {exc.message}") from None


# -- response models ------------------------------------------------------------------


class Me(BaseModel):
    org: str
    admin: bool
    token_id: str


class EventPage(BaseModel):
    events: list[dict[str, Any]]
    next_cursor: str | None
    limit: int
    offset: int


# -- the app ------------------------------------------------------------------------------


def create_app(settings: Settings, reader: Reader | None = None, tokens: TokenStore | None = None,
               dashboard: Path | None = DASHBOARD_DIR) -> FastAPI:
    """The API for these settings; ``reader`` and ``tokens`` default to the configured
    ones; ``dashboard`` is mounted at ``/`` when the directory exists."""
    app = FastAPI(
        title="ruleless",
        version="1",
        description="Unusual process executions, learned per (org, workload): events, alerts, search, feedback.",
        # (FastAPI's /docs and /redoc pages load their scripts from a CDN; the dashboard
        # and /openapi.json are served from here)
        docs_url=None,
        redoc_url=None,
    )
    app.state.ruleless = Context(
        settings=settings,
        tokens=tokens or TokenStore(tokens_path(settings.api.tokens_file, settings.data_dir)),
        reader=reader or open_reader(settings),
    )
    metrics = app.state.ruleless.metrics

    @app.middleware("http")
    async def _measure(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", None) or ("/" if request.url.path.startswith("/") else "?")
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path.startswith(("/api/", "/telemetry/")):
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.exception_handler(QueryError)
    async def _bad_query(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=400)

    @app.exception_handler(ConfigError)
    async def _bad_value(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=400)

    @app.exception_handler(ServiceError)
    async def _unavailable(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=503)

    _routes(app, settings)
    if dashboard is not None and dashboard.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=dashboard, html=True), name="dashboard")
    return app


def _routes(app: FastAPI, settings: Settings) -> None:
    max_page = settings.api.max_page

    @app.get("/api/me", response_model=Me, tags=["tenancy"])
    def me(who: CallerDep) -> Me:
        """The caller's org and whether its token is an admin's."""
        return Me(org=who.org, admin=who.admin, token_id=who.token_id)

    _event_routes(app, settings)
    _workload_routes(app, settings)
    _search_routes(app, settings)

    @app.get("/api/events", response_model=EventPage, tags=["events"])
    def events(
        who: CallerDep,
        ctx: ContextDep,
        response: Response,
        org: str | None = None,
        workload: str | None = None,
        host: str | None = None,
        since: Annotated[str | None, Query(description="Epoch seconds or ISO 8601 (UTC unless it says).")] = None,
        until: Annotated[str | None, Query(description="Epoch seconds or ISO 8601 (UTC unless it says).")] = None,
        min_score: Annotated[float | None, Query(ge=0, le=1)] = None,
        max_score: Annotated[float | None, Query(ge=0, le=1)] = None,
        severity: Annotated[list[str] | None, Query(description="ok, warn or alert; repeat or comma-separate.")] = None,
        program: Annotated[str | None, Query(description="process_name, exactly.")] = None,
        q: Annotated[str | None, Query(description="Free text in the command line (case-insensitive).", max_length=512)] = None,
        limit: Annotated[int, Query(ge=1)] = 50,
        offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page (newest first).")] = None,
    ) -> EventPage:
        """Scored events, newest first, filtered; page with ``cursor`` (or ``offset``)."""
        scope = scope_for(who, org)
        limit = min(limit, max_page)
        filters = EventFilter(
            workload=workload, host=host, since=_time(since), until=_time(until), min_score=min_score,
            max_score=max_score, severity=_severities(severity), program=program, q=q,
        )
        after = Cursor.decode(cursor) if cursor else None
        started = time.perf_counter()
        rows = read(ctx, events_sql(settings, scope, filters, limit + 1, 0 if after else offset, after))
        response.headers["Server-Timing"] = f"events;dur={(time.perf_counter() - started) * 1000:.1f}"
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = Cursor(float(rows[-1]["ts"]), str(rows[-1]["event_id"])).encode() if more and rows else None
        return EventPage(events=rows, next_cursor=nxt, limit=limit, offset=offset)


def _time(value: str | None) -> float | None:
    if value is None:
        return None
    from streams.replay import parse_since
    from schemas.errors import ReplayError

    try:
        return parse_since(value)
    except ReplayError:
        raise HTTPException(422, f"not a time (epoch seconds or ISO 8601): {value!r}") from None


def _severities(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for value in values or []:
        for item in value.split(","):
            item = item.strip()
            if item not in ("ok", "warn", "alert"):
                raise HTTPException(422, f"severity is ok, warn or alert, not {item!r}")
            out.append(item)
    return tuple(out)


# -- serving ------------------------------------------------------------------------------


def check_bind(settings: Settings, tokens: TokenStore) -> None:
    """Refuse a non-loopback bind while no token exists (sinks.query.check_bind's rule)."""
    from sinks.query import _loopback

    if _loopback(settings.api.host) or tokens.has_active():
        return
    raise ConfigError(
        f"the API would listen on {settings.api.host!r}, beyond this host, with no token in {tokens.path}: "
        "create one first (ruleless token create --org ORG) or bind to 127.0.0.1"
    )


def run(settings: Settings) -> None:
    """`ruleless api`: serve until SIGINT/SIGTERM."""
    import uvicorn

    from threadpoolctl import threadpool_limits

    from ruleless.health import HealthServer, cached

    # One BLAS thread (the query embedding's small products): requests run on threads of
    # their own, and OpenBLAS's pool made a query's embedding 2-3x slower here (19 vs 8 ms).
    threadpool_limits(limits=1, user_api="blas")
    tokens = TokenStore(tokens_path(settings.api.tokens_file, settings.data_dir))
    check_bind(settings, tokens)
    app = create_app(settings, tokens=tokens)
    ctx: Context = app.state.ruleless
    if settings.api.metrics_port:

        def ready() -> tuple[bool, str]:
            ctx.reader.rows("SELECT 1 AS ok")
            return True, f"reading {ctx.reader.describe()}"

        try:
            HealthServer(settings.api.metrics_port, settings.metrics_host, ready=cached(ready, 5.0),
                         registry=ctx.metrics.registry).start()
        except OSError as exc:
            raise ConfigError(f"the API's metrics port {settings.api.metrics_port}: {exc}") from None
    log.info("API on http://%s:%d (reads %s; tokens %s)", settings.api.host, settings.api.port,
             app.state.ruleless.reader.describe(), tokens.path)
    started = time.monotonic()
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_level="warning", access_log=False)
    log.info("API stopped after %.0fs", time.monotonic() - started)


# -- one event, alerts, feedback --------------------------------------------------------


class FeedbackIn(BaseModel):
    event_id: str = Field(pattern=r"^[A-Za-z0-9:._-]{1,128}$")
    label: Literal["expected", "malicious"]
    note: str = Field("", max_length=2000)


class FeedbackOut(BaseModel):
    event_id: str
    label: str
    org_id: str
    workload: str
    status: str


def find_event(ctx: Context, scope: Scope, event_id: str) -> dict[str, Any]:
    """One stored event within the caller's scope; 404 otherwise (whether it exists in
    another org or not at all: the answer is the same)."""
    rows = read(ctx, reads.event_sql(ctx.settings, scope, event_id))
    if not rows:
        raise HTTPException(404, "no such event")
    return rows[0]


def _event_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/api/events/{event_id}", tags=["events"])
    def event_detail(event_id: str, who: CallerDep, ctx: ContextDep, org: str | None = None) -> dict[str, Any]:
        """One event: its reasons, lineage (parent, ancestors, children), the workload's
        nearest known behaviours and the program's usual arguments."""
        event = find_event(ctx, scope_for(who, org), event_id)
        org_id, workload, host = str(event["org_id"]), str(event["workload"]), str(event["host"])
        ts = float(event["ts"])
        parent = read(ctx, reads.parent_sql(settings, org_id, host, int(event["ppid"]), ts)) if event["ppid"] else []
        children = read(ctx, reads.children_sql(settings, org_id, host, int(event["pid"]), ts)) if event["pid"] else []
        usual = [{"cmdline": u.pop("example"), **u} for u in
                 read(ctx, reads.usual_arguments_sql(settings, org_id, workload, str(event["process_name"])))]
        for u in usual:
            u.pop("behaviour", None)
        return {
            "event": event,
            "reasons": event.get("reasons") or [],
            "lineage": {
                "parent_process": event.get("parent_process"),
                "ancestors": event.get("ancestors") or [],
                "parent": parent[0] if parent else None,
                "children": children,
            },
            "nearest_known": nearest_known(ctx, event),
            "usual_arguments": [u for u in usual if u["cmdline"] != event["cmdline"]] or usual,
        }

    @app.get("/api/alerts", tags=["alerts"])
    def alerts(
        who: CallerDep,
        ctx: ContextDep,
        org: str | None = None,
        workload: str | None = None,
        host: str | None = None,
        since: Annotated[str | None, Query(description="Epoch seconds or ISO 8601.")] = None,
        until: Annotated[str | None, Query(description="Epoch seconds or ISO 8601.")] = None,
        severity: Annotated[list[str] | None, Query(description="warn or alert (default both).")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """Warn and alert events grouped by behaviour as `ruleless alerts` groups them
        (org, workload, program, normalised command line): count, hosts, first and last
        time, highest score and a sample event, latest group first."""
        scope = scope_for(who, org)
        filters = EventFilter(workload=workload, host=host, since=_time(since), until=_time(until),
                              severity=_severities(severity))
        rows = read(ctx, reads.alerts_sql(settings, scope, filters, settings.api.alert_rows))
        groups = group_alerts(rows)
        return {"groups": groups[:limit], "total_groups": len(groups), "alerts_read": len(rows),
                "truncated": len(rows) >= settings.api.alert_rows}

    @app.post("/api/feedback", response_model=FeedbackOut, status_code=202, tags=["feedback"])
    def feedback(body: FeedbackIn, who: CallerDep, ctx: ContextDep) -> FeedbackOut:
        """An analyst's verdict on an event: ``expected`` (the workload does this: learn
        it, score it low next time) or ``malicious``. Published to the feedback topic like
        `ruleless feedback`; the worker that owns the shard applies it in order."""
        from ruleless.feedback import event_from_row, publish_verdict

        row = find_event(ctx, scope_for(who, None), body.event_id)
        event = event_from_row(row)
        tenancy = settings.tenancy
        key = tenancy.analyst_keys.get(event.org_id) or tenancy.analyst_key
        label = "benign" if body.label == "expected" else "malicious"
        publish_verdict(settings, event, label, body.note, f"api:{who.token_id}", key, ctx.producer())
        log.info("feedback %s on %s (%s) by token %s", label, event.event_id, event.shard_key, who.token_id)
        return FeedbackOut(event_id=body.event_id, label=body.label, org_id=event.org_id, workload=event.workload,
                           status="published to the feedback topic")


def group_alerts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of warn/alert events (newest first) grouped by sinks.throttle.behaviour_of."""
    from sinks.throttle import HOSTS_SHOWN, behaviour_of

    rank = {"ok": 0, "warn": 1, "alert": 2}
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in rows:
        probe = SimpleNamespace(org_id=row["org_id"], workload=row["workload"], process_name=row["process_name"],
                                cmdline=row["cmdline"], argv=row.get("argv") or None)
        key = behaviour_of(probe)  # type: ignore[arg-type]
        group = groups.get(key)
        ts, score = float(row["ts"]), float(row["score"])
        if group is None:
            group = groups[key] = {
                "org_id": key[0], "workload": key[1], "process_name": key[2], "behaviour": key[3],
                "count": 0, "hosts": [], "host_count": 0, "first_ts": ts, "last_ts": ts, "max_score": score,
                "severity": row["severity"], "sample": {k: v for k, v in row.items() if k != "argv"},
                "_hosts": set(),
            }
        group["count"] += 1
        group["first_ts"] = min(group["first_ts"], ts)
        group["last_ts"] = max(group["last_ts"], ts)
        if score > group["max_score"]:
            group["max_score"] = score
            group["sample"] = {k: v for k, v in row.items() if k != "argv"}
        if rank[row["severity"]] > rank[group["severity"]]:
            group["severity"] = row["severity"]
        if row["host"] not in group["_hosts"]:
            group["_hosts"].add(row["host"])
            if len(group["hosts"]) < HOSTS_SHOWN:
                group["hosts"].append(row["host"])
    out = sorted(groups.values(), key=lambda g: -g["last_ts"])
    for group in out:
        group["host_count"] = len(group.pop("_hosts"))
    return out


# -- workloads and thresholds --------------------------------------------------------------


class ThresholdsIn(BaseModel):
    warn: float = Field(ge=0.0, le=1.0)
    alert: float = Field(ge=0.0, le=1.0)


def workload_of(who: Caller, org: str, workload: str) -> tuple[str, str]:
    """A workload path the caller may read: its own org's (an admin's: any); another
    org's is a 404, as if it did not exist."""
    if not who.admin and org != who.org:
        raise HTTPException(404, "no such workload")
    if not NAME_PATTERN.fullmatch(org) or not NAME_PATTERN.fullmatch(workload):
        raise HTTPException(404, "no such workload")
    return org, workload


def thresholds_view(ctx: Context, org: str, workload: str) -> dict[str, Any]:
    """A workload's thresholds: the API override, the configured ones, the defaults, and
    which one scores its events."""
    engine = ctx.settings.engine
    key = f"{org}/{workload}"
    override = ctx.overrides().rows().get(key)
    configured = engine.thresholds.get(key)
    if override is not None:
        effective, source = {"warn": override["warn"], "alert": override["alert"]}, "override"
    elif configured is not None:
        effective, source = configured.model_dump(), "config"
    else:
        effective = {"warn": engine.warn, "alert": engine.alert}
        source = "learned" if engine.algorithm == "evidence" else "default"
    return {
        "org_id": org, "workload": workload, "effective": effective, "source": source,
        "override": override, "configured": configured.model_dump() if configured else None,
        "defaults": {"warn": engine.warn, "alert": engine.alert},
        "note": ("the evidence algorithm learns each workload's thresholds from its own scores, "
                 "with the defaults as floors" if source == "learned" else ""),
    }


def _workload_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/api/workloads", tags=["workloads"])
    def workloads(who: CallerDep, ctx: ContextDep, org: str | None = None) -> dict[str, Any]:
        """Every workload of the caller's org with its volume, hosts, alerts and
        learning state."""
        rows = read(ctx, reads.workloads_sql(settings, scope_for(who, org)))
        for row in rows:
            row["learning_state"] = "learning" if row.pop("learning") else "learned"
        return {"workloads": rows}

    @app.get("/api/workloads/{org}/{workload}/stats", tags=["workloads"])
    def workload_stats(
        org: str, workload: str, who: CallerDep, ctx: ContextDep,
        since: Annotated[str | None, Query(description="Epoch seconds or ISO 8601 (default: everything).")] = None,
    ) -> dict[str, Any]:
        """Volume, learned behaviours, learning state, score distribution, events over
        time, baseline growth and thresholds of one workload."""
        org, workload = workload_of(who, org, workload)
        start = _time(since)
        [volume] = read(ctx, reads.volume_sql(settings, org, workload, start)) or [{}]
        if not volume.get("events"):
            raise HTTPException(404, "no such workload")
        bucket = reads.bucket_for(float(volume["last_ts"]) - float(volume["first_ts"]))
        bins = {int(r["bin"]): int(r["n"]) for r in read(ctx, reads.histogram_sql(settings, org, workload, start))}
        timeline = read(ctx, reads.timeline_sql(settings, org, workload, start, bucket))
        total = 0
        growth = []
        for row in read(ctx, reads.growth_sql(settings, org, workload, bucket)):
            total += int(row["new"])
            growth.append({"t": row["t"], "new": int(row["new"]), "behaviours": total})
        learning = bool(volume.pop("learning"))
        return {
            "org_id": org, "workload": workload, "volume": volume,
            "learned_behaviours": total,
            "learning": {"state": "learning" if learning else "learned",
                         "learning_events": settings.engine.learning_events, "events": volume["events"]},
            "score_histogram": [{"from": i / reads.HISTOGRAM_BINS, "to": (i + 1) / reads.HISTOGRAM_BINS,
                                 "count": bins.get(i, 0)} for i in range(reads.HISTOGRAM_BINS)],
            "bucket_s": bucket, "timeline": timeline, "baseline_growth": growth,
            "thresholds": thresholds_view(ctx, org, workload),
        }

    @app.get("/api/workloads/{org}/{workload}/thresholds", tags=["workloads"])
    def get_thresholds(org: str, workload: str, who: CallerDep, ctx: ContextDep) -> dict[str, Any]:
        """The workload's warn and alert thresholds and where they come from."""
        org, workload = workload_of(who, org, workload)
        return thresholds_view(ctx, org, workload)

    @app.put("/api/workloads/{org}/{workload}/thresholds", tags=["workloads"])
    def put_thresholds(org: str, workload: str, body: ThresholdsIn, who: CallerDep, ctx: ContextDep) -> dict[str, Any]:
        """Override the workload's thresholds: stored durably (LanceDB, ``_thresholds``),
        read by every worker each flush interval, so the workload's next events are
        scored with them."""
        org, workload = workload_of(who, org, workload)
        if body.warn > body.alert:
            raise HTTPException(422, "warn must not be above alert")
        ctx.overrides().set(f"{org}/{workload}", Thresholds(warn=body.warn, alert=body.alert), by=f"api:{who.token_id}")
        log.info("thresholds of %s/%s set to warn %g alert %g by token %s", org, workload, body.warn, body.alert, who.token_id)
        return thresholds_view(ctx, org, workload)

    @app.delete("/api/workloads/{org}/{workload}/thresholds", tags=["workloads"])
    def delete_thresholds(org: str, workload: str, who: CallerDep, ctx: ContextDep) -> dict[str, Any]:
        """Drop the override: the configured (or learned) thresholds apply again."""
        org, workload = workload_of(who, org, workload)
        ctx.overrides().delete(f"{org}/{workload}")
        return thresholds_view(ctx, org, workload)


# -- search ------------------------------------------------------------------------------------


class SearchIn(BaseModel):
    query: str = Field("", max_length=1000)
    limit: int = Field(20, ge=1, le=100)
    workload: str | None = None
    like_event_id: str | None = Field(None, pattern=r"^[A-Za-z0-9:._-]{1,128}$")
    org: str | None = None


def _hit(hit: Any) -> dict[str, Any]:
    return {
        "org_id": hit.org_id, "workload": hit.workload, "behaviour_id": hit.behaviour_id,
        "exemplar": hit.exemplar, "process_name": hit.process_name, "count": int(hit.count),
        "first_ts": float(hit.first_ts), "last_ts": float(hit.last_ts), "max_score": float(hit.max_score),
        "similarity": float(hit.similarity),
    }


def nearest_known(ctx: Context, event: dict[str, Any], limit: int = 5) -> list[dict[str, Any]]:
    """The workload's learned behaviours nearest to this event's (empty without an index)."""
    index = ctx.index()
    if index is None:
        return []
    probe = event.get("behaviour_id") or event["cmdline"]
    hits = index.nearest_known(event["org_id"], event["workload"], probe, limit + 1)
    return [_hit(h) for h in hits if h.org_id == event["org_id"] and h.behaviour_id != event.get("behaviour_id")][:limit]


def _search_routes(app: FastAPI, settings: Settings) -> None:
    @app.post("/telemetry/security/search", tags=["search"])
    def search(body: SearchIn, who: CallerDep, ctx: ContextDep, response: Response) -> dict[str, Any]:
        """Behaviours that match what the query means (embedding similarity and full
        text over command lines), or that are like an event (``like_event_id``), best
        first, each with its latest event: score, host, time."""
        scope = scope_for(who, body.org)
        started = time.perf_counter()
        index = ctx.index()
        if index is None:
            raise HTTPException(503, "search needs the behaviour index (streams.behaviours), not in this build")
        orgs = None if scope.org is None else {scope.org}
        if body.like_event_id:
            event = find_event(ctx, scope, body.like_event_id)
            behaviour = event.get("behaviour_id") or _behaviour_id(event)
            hits = index.similar(event["org_id"], behaviour, body.limit + 1)
            hits = [h for h in hits if h.behaviour_id != behaviour]
        elif body.query.strip():
            hits = index.search(body.query, orgs, body.workload, body.limit)
        else:
            raise HTTPException(422, "give a query or a like_event_id")
        # (the index filtered already; what is asked is checked again, cheaply)
        hits = [h for h in hits if (orgs is None or h.org_id in orgs) and body.workload in (None, h.workload)][: body.limit]
        searched = time.perf_counter()
        events: dict[str, dict[str, Any]] = {}
        if hits and reads.HAS_BEHAVIOUR_ID:
            # (a minute's slack: the index's last_ts is the newest event it had seen)
            since = min(float(h.last_ts) for h in hits) - 60
            sql = reads.behaviour_events_sql(settings, scope, [(h.workload, h.behaviour_id) for h in hits], since)
            events = {str(r["behaviour_id"]): r for r in read(ctx, sql)}
        response.headers["Server-Timing"] = (f"index;dur={(searched - started) * 1000:.1f}, "
                                             f"events;dur={(time.perf_counter() - searched) * 1000:.1f}")
        out = []
        for rank, hit in enumerate(hits, 1):
            latest = events.get(hit.behaviour_id)
            out.append({**_hit(hit), "rank": rank, "event": latest,
                        "score": latest["score"] if latest else float(hit.max_score),
                        "host": latest["host"] if latest else None,
                        "ts": latest["ts"] if latest else float(hit.last_ts),
                        "cmdline": latest["cmdline"] if latest else hit.exemplar})
        return {"query": body.query, "like_event_id": body.like_event_id, "hits": out}


def _behaviour_id(event: dict[str, Any]) -> str:
    from ruleless.feedback import event_from_row
    from streams.behaviours import behaviour_id

    return behaviour_id(event_from_row(event))  # type: ignore[arg-type]  # (a frozen struct: read-only fields)
