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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from ruleless.reads import Cursor, EventFilter, Reader, Scope, events_sql, open_reader
from ruleless.settings import Settings
from ruleless.tokens import Caller, TokenStore, tokens_path
from schemas.errors import ConfigError, QueryError

log = logging.getLogger(__name__)

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"


@dataclass
class Context:
    """What every request handler reads: settings, tokens and the event store."""

    settings: Settings
    tokens: TokenStore
    reader: Reader


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
    who = _context(request).tokens.verify(credentials.credentials)
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
    )
    app.state.ruleless = Context(
        settings=settings,
        tokens=tokens or TokenStore(tokens_path(settings.api.tokens_file, settings.data_dir)),
        reader=reader or open_reader(settings),
    )

    @app.exception_handler(QueryError)
    async def _bad_query(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=400)

    @app.exception_handler(ConfigError)
    async def _bad_value(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=400)

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

    @app.get("/api/events", response_model=EventPage, tags=["events"])
    def events(
        who: CallerDep,
        ctx: ContextDep,
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
        rows = read(ctx, events_sql(settings, scope, filters, limit + 1, 0 if after else offset, after))
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

    tokens = TokenStore(tokens_path(settings.api.tokens_file, settings.data_dir))
    check_bind(settings, tokens)
    app = create_app(settings, tokens=tokens)
    log.info("API on http://%s:%d (reads %s; tokens %s)", settings.api.host, settings.api.port,
             app.state.ruleless.reader.describe(), tokens.path)
    started = time.monotonic()
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_level="warning", access_log=False)
    log.info("API stopped after %.0fs", time.monotonic() - started)
