"""`/metrics`, `/healthz` and `/readyz` on a process's metrics port (issue 18).

prometheus-client's own server serves metrics only; an orchestrator also asks two
questions, answered here on the same port:

- ``/healthz`` (liveness): is the process still doing anything? 503 makes the orchestrator
  restart it. Keep it about the process itself, never about Kafka or the store, or an
  outage of those would restart every replica at once.
- ``/readyz`` (readiness): is it doing its job right now (a consumer with partitions
  assigned and its store reachable; an agent capturing with a working spool)?

Each answer is a :data:`Check`: a callable returning ``(ok, reason)``. ``/readyz``
answers JSON ``{"ready": bool, "reason": str}``; ``/healthz`` the same with ``alive``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


def always() -> tuple[bool, str]:
    return True, "ok"


class cached:
    """A check answered from memory for ``seconds`` after each run: probes of several
    orchestrators (and people) must not turn into a store query each."""

    def __init__(self, check: Check, seconds: float) -> None:
        self._check, self._seconds = check, seconds
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._answer: tuple[bool, str] = (False, "not checked yet")

    def __call__(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._at >= self._seconds:
                self._answer = _run(self._check)
                self._at = time.monotonic()
            return self._answer


def _run(check: Check) -> tuple[bool, str]:
    try:
        ok, reason = check()
    except Exception as exc:  # noqa: BLE001 - a failing check is an answer, not a crash
        return False, f"check failed: {type(exc).__name__}: {exc}"
    return bool(ok), reason


class HealthServer:
    """Serves ``/metrics`` of ``registry`` and the two checks on ``host:port`` from a
    daemon thread; port 0 picks a free port (``port`` tells which)."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", *, ready: Check, alive: Check = always,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:  # fmt: skip
        self._routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
            "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
            "/healthz": lambda: _answer("alive", alive),
            "/readyz": lambda: _answer("ready", ready),
        }
        self._server = ThreadingHTTPServer((host, port), _handler(self._routes))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)
        self.host, self.port = host, int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "HealthServer":
        self._thread.start()
        log.info("metrics, health and readiness on %s (/metrics, /healthz, /readyz)", self.url)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HealthServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _answer(key: str, check: Check) -> tuple[int, str, bytes]:
    ok, reason = _run(check)
    body = json.dumps({key: ok, "reason": reason}).encode() + b"\n"
    return (200 if ok else 503), "application/json", body


def _handler(routes: dict[str, Callable[[], tuple[int, str, bytes]]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            route = routes.get(self.path.split("?", 1)[0])
            status, ctype, body = route() if route else (404, "text/plain", b"not found: /metrics, /healthz, /readyz\n")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not worth a line each
            pass

    return Handler
