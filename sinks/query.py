"""Read-only SQL over HTTP, served by the process that owns the store.

An embedded chdb directory can be opened by one process only, so the sink serves reads
for everyone else (the CLI, the dashboard, tests):

- ``GET /query?sql=...`` → ``200 {"rows": [...], "elapsed_ms": ...}``; a statement that is
  not a single SELECT/SHOW/DESCRIBE/WITH/EXISTS, or that fails, → ``400 {"error": ...}``.
- ``GET /health`` → ``200 {"status": "ok", ...}`` when the store answers, else ``503``.

Two guards: :func:`check_read_only` refuses anything but one read statement (chdb runs
every statement of a multi-statement string, so ``SELECT 1; DROP ...`` must never reach
it), and the backend runs reads on a read-only connection. The endpoint binds to
loopback by default and has no authentication: it is not meant to face a network.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from schemas.errors import QueryError
from sinks.clickhouse import Backend

log = logging.getLogger(__name__)

READ_KEYWORDS = frozenset({"SELECT", "SHOW", "DESCRIBE", "DESC", "WITH", "EXISTS"})


def check_read_only(sql: str) -> str:
    """Return ``sql`` without a trailing ``;`` if it is exactly one read statement.

    Raises :class:`QueryError` otherwise. The scan is conservative: where it could
    disagree with ClickHouse's lexer (``#`` comments, nested ``/* */``, heredocs) it
    sees *more* code than ClickHouse does, so it may refuse a harmless query but never
    passes a hidden second statement.
    """
    tokens = _tokens(sql)
    if not tokens:
        raise QueryError("empty query")
    semicolons = [pos for pos, tok in tokens if tok == ";"]
    if semicolons and tokens[-1][0] != semicolons[0]:
        raise QueryError("only one statement per query")
    first = tokens[0][1].upper()
    if first not in READ_KEYWORDS:
        raise QueryError(
            f"read-only endpoint: {first!r} is not allowed; start with one of {', '.join(sorted(READ_KEYWORDS))}"
        )
    words = [tok.upper() for _, tok in tokens]
    if any(a == "INTO" and b == "OUTFILE" for a, b in zip(words, words[1:])):
        raise QueryError("read-only endpoint: INTO OUTFILE writes a file and is not allowed")
    return sql[: semicolons[0]] if semicolons else sql


def _tokens(sql: str) -> list[tuple[int, str]]:
    """The code outside comments, with positions: each bare word is one token, each
    quoted literal or identifier one token (its quote character), every other
    non-space character one token."""
    tokens: list[tuple[int, str]] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            if close < 0:
                raise QueryError("unterminated comment")
            i = close + 2
        elif ch in "'\"`":
            tokens.append((i, ch))
            i = _skip_quoted(sql, i, ch)
        elif ch.isalpha() or ch == "_":
            j = i
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            tokens.append((i, sql[i:j]))
            i = j
        else:
            tokens.append((i, ch))
            i += 1
    return tokens


def _skip_quoted(sql: str, start: int, quote: str) -> int:
    i = start + 1
    while i < len(sql):
        if sql[i] == "\\":
            i += 2
        elif sql[i] == quote:
            if sql.startswith(quote * 2, i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    raise QueryError("unterminated quoted string or identifier")


class QueryServer:
    """The HTTP endpoint in a daemon thread. ``port=0`` picks a free port; the bound
    one is :attr:`port` (and :attr:`url`) once :meth:`start` returned."""

    def __init__(self, backend: Backend, host: str = "127.0.0.1", port: int = 0) -> None:
        self.backend = backend
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(backend))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> QueryServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="sink-query", daemon=True
        )
        self._thread.start()
        log.info("query endpoint on %s/query (read-only)", self.url)
        return self

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> QueryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler_for(backend: Backend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ruleless-sink"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/health":
                self._health()
            elif url.path == "/query":
                params = urllib.parse.parse_qs(url.query)
                self._query(params.get("sql", [""])[0])
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint {url.path}; use /query or /health"})

        def _health(self) -> None:
            try:
                backend.query("SELECT 1 AS ok")
            except QueryError as exc:
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "down", "error": exc.message})
                return
            self._send(HTTPStatus.OK, {"status": "ok", "backend": backend.kind, "table": backend.table})

        def _query(self, sql: str) -> None:
            started = time.perf_counter()
            try:
                rows = backend.query(check_read_only(sql), readonly=True)
            except QueryError as exc:
                self._send(HTTPStatus.BAD_REQUEST, {"error": exc.message})
                return
            elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
            self._send(HTTPStatus.OK, {"rows": rows, "elapsed_ms": elapsed_ms})

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            payload = json.dumps(body, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
            log.debug("query endpoint: " + format, *args)

    return Handler


def query_http(url: str, sql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Run ``sql`` through a sink's query endpoint at ``url`` (``http://host:port``).

    Raises :class:`QueryError` with the endpoint's message when it refuses or fails
    the query, or when nothing answers at ``url``.
    """
    target = url.rstrip("/") + "/query?" + urllib.parse.urlencode({"sql": sql})
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise QueryError(_error_message(exc)) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise QueryError(f"no query endpoint answers at {url}: {exc}") from None
    return list(body["rows"])


def _error_message(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {exc.code}: {raw[:200]!r}"
