"""Read-only SQL over HTTP, served by the process that owns the store.

An embedded chdb directory can be opened by one process only, so the sink serves reads
for everyone else (the CLI, the dashboard, tests):

- ``GET /query?sql=...`` with ``Authorization: Bearer TOKEN`` → ``200 {"rows": [...],
  "elapsed_ms": ...}``; a refused or failed statement → ``400 {"error": ...}``; no or a
  wrong token → ``401``; a Host header that is not this endpoint's → ``403``.
- ``GET /health`` → ``200 {"status": "ok", ...}`` when the store answers, else ``503``.

What a statement must be (issue 15: `file('/etc/shadow')`, `url(...)` and one slow read
holding every other were all possible): one statement (:func:`check_read_only`), and,
as ClickHouse's own parser sees it (``EXPLAIN AST``, :func:`check_tree`), a SELECT or
DESCRIBE that reads only tables of the product's database, calls no table function, no
function that reaches outside the tables (files, URLs, dictionaries, settings) and
changes no setting. Reads then run on read-only sessions with a time and memory limit,
several at once. The token keeps other local users out, the Host check keeps web pages
out (DNS rebinding), and the endpoint binds to loopback unless configured otherwise — a
non-loopback bind is refused without a configured token (:func:`check_bind`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from schemas.errors import ConfigError, QueryError
from sinks.clickhouse import Backend

log = logging.getLogger(__name__)

READ_KEYWORDS = frozenset({"SELECT", "DESCRIBE", "DESC", "WITH"})
# Statement kinds at the root of EXPLAIN AST that may run.
READ_ROOTS = frozenset({"SelectWithUnionQuery", "DescribeQuery"})
# Functions that reach outside the product's tables: the file system, the network, other
# stores, dictionaries, the server's settings and configuration (lower case; any function
# whose name starts with "dict" is refused too). Table functions are refused wholesale.
OUTSIDE_FUNCTIONS = frozenset({
    "file", "url", "urlcluster", "remote", "remotesecure", "s3", "s3cluster", "gcs", "hdfs", "azureblobstorage",
    "executable", "executablepool", "mysql", "postgresql", "sqlite", "mongodb", "redis", "jdbc", "odbc", "input",
    "cluster", "clusterallreplicas", "merge", "view", "viewifpermitted", "numbers", "system", "python",
    "joinget", "joingetornull", "getsetting", "getsettingordefault", "getmacro", "getserverport",
    "getclienthttpheader", "filesystemavailable", "filesystemcapacity", "filesystemunreserved",
    "catboostevaluate", "evalmlmethod", "currentprofiles", "enabledprofiles", "defaultprofiles",
    "currentroles", "enabledroles", "defaultroles", "hostname", "fqdn", "getoskernelversion",
})  # fmt: skip
OTHER_DATABASES = ("system", "information_schema", "default")


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


def check_tree(ast: str, database: str) -> None:
    """Refuse a statement by its ``EXPLAIN AST`` text (ClickHouse's own parse, so nothing
    hides from the check in syntax it reads differently): see the module docstring.

    Raises :class:`QueryError` naming what was refused."""
    lines = [line for line in ast.splitlines() if line.strip()]
    root = lines[0].split()[0] if lines else ""
    if root not in READ_ROOTS:
        raise QueryError(f"read-only endpoint: {root or 'an empty statement'} is not allowed; SELECT or DESCRIBE")
    parents: list[tuple[int, str]] = []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        kind, _, rest = line.strip().partition(" ")
        name = rest.split(" ")[0].replace("`", "")
        while parents and parents[-1][0] >= indent:
            parents.pop()
        parent = parents[-1][1] if parents else ""
        parents.append((indent, kind))
        if kind == "Set":
            raise QueryError("read-only endpoint: SETTINGS are not allowed")
        if kind == "TableIdentifier" and "." in name and name.split(".", 1)[0] != database:
            raise QueryError(f"read-only endpoint: only tables of {database} can be read, not {name}")
        if kind == "Identifier" and "." in name and name.split(".", 1)[0].lower() in OTHER_DATABASES:
            raise QueryError(f"read-only endpoint: only tables of {database} can be read, not {name}")
        if kind == "Function":
            if parent == "TableExpression":
                raise QueryError(f"read-only endpoint: table function {name}() is not allowed")
            if name.lower() in OUTSIDE_FUNCTIONS or name.lower().startswith("dict"):
                raise QueryError(f"read-only endpoint: function {name}() is not allowed")


def check_bind(host: str, token: str | None, what: str) -> None:
    """Refuse to serve ``what`` on a non-loopback address without a token."""
    if token or _loopback(host):
        return
    raise ConfigError(f"{what} would listen on {host!r}, beyond this host, without a token: set one (sink.query_token) or bind to 127.0.0.1")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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

    def __init__(self, backend: Backend, token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        if not token:
            raise ConfigError("the query endpoint needs a token")
        self.backend = backend
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(backend, token, self._allowed_hosts))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def _allowed_hosts(self) -> set[str]:
        """Host headers a real client of this endpoint sends (anything else is a page
        reaching it through DNS rebinding, or a mistake)."""
        host = str(self._httpd.server_address[0])
        names = {host, f"[{host}]"} | ({"localhost", "127.0.0.1", "[::1]"} if _loopback(host) else set())
        return {f"{name}:{self.port}" for name in names}

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


def _handler_for(backend: Backend, token: str, allowed_hosts: Any) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "ruleless-sink"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            url = urllib.parse.urlsplit(self.path)
            if self.headers.get("Host", "") not in allowed_hosts():
                self._send(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
            elif url.path == "/health":
                self._health()
            elif not hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
                self._send(HTTPStatus.UNAUTHORIZED, {"error": "a bearer token is required (sink.query_token, or DATA_DIR/sink-query.token)"})
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
                statement = check_read_only(sql)
                check_tree(explain_ast(backend, statement), backend.ch.database)
                rows = backend.query(statement, readonly=True)
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


def explain_ast(backend: Backend, statement: str) -> str:
    """ClickHouse's parse of ``statement`` (it is parsed, not run)."""
    rows = backend.query(f"EXPLAIN AST {statement}", readonly=True)
    return "\n".join(str(next(iter(row.values()))) for row in rows)


TOKEN_FILE = "sink-query.token"


def ensure_token(configured: str | None, data_dir: str) -> str:
    """The endpoint's token: the configured one, else the one in DATA_DIR/sink-query.token,
    made (random, 0600) when there is none."""
    if configured:
        return configured
    path = os.path.join(data_dir, TOKEN_FILE)
    try:
        with open(path) as fh:
            token = fh.read().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def read_token(configured: str | None, data_dir: str) -> str | None:
    """What a client on this host sends: the configured token, else the sink's file."""
    if configured:
        return configured
    try:
        with open(os.path.join(data_dir, TOKEN_FILE)) as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def query_http(url: str, sql: str, token: str | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Run ``sql`` through a sink's query endpoint at ``url`` (``http://host:port``).

    Raises :class:`QueryError` with the endpoint's message when it refuses or fails
    the query, or when nothing answers at ``url``.
    """
    target = url.rstrip("/") + "/query?" + urllib.parse.urlencode({"sql": sql})
    request = urllib.request.Request(target, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
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
