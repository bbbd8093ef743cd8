"""The webhook target against real local HTTP servers: no redirects, secrets kept secret."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from ruleless.settings import AlertSettings
from schemas.errors import ConfigError, DeliveryRejected, SinkWriteError
from schemas.events import AlertNotification
from sinks.webhook import WebhookTarget
from tests.sinks.support import scored

SECRET_PATH = "/hooks/T0000/B0000/s3cr3t-path-token"


@contextmanager
def server(status: int, location: str = "") -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP server on 127.0.0.1 answering every request with ``status``; yields its
    URL and the requests it got (method, path, headers)."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            self.rfile.read(length)
            seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def notification() -> AlertNotification:
    sample = scored(1, "w")
    return AlertNotification(
        id="n-1", kind="new", org_id=sample.org_id, workload=sample.workload, process_name=sample.process_name,
        behaviour=sample.cmdline, severity="alert", max_score=0.9, count=1, host_count=1, hosts=[sample.host],
        first_ts=sample.ts, last_ts=sample.ts, event_ids=[sample.event_id or ""], sample=sample,
    )  # fmt: skip


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_a_rejection_and_is_never_followed(status: int) -> None:
    with server(200) as (elsewhere, reached), server(status, elsewhere + "/steal") as (url, seen):
        target = WebhookTarget(url + SECRET_PATH, AlertSettings())
        with pytest.raises(DeliveryRejected, match="redirect"):
            target.deliver(notification())
    assert [r["method"] for r in seen] == ["POST"]
    assert reached == []  # nothing went to the host the redirect named


def test_a_token_is_only_sent_over_https() -> None:
    with pytest.raises(ConfigError, match="https"):
        WebhookTarget("http://127.0.0.1:9" + SECRET_PATH, AlertSettings(webhook_token=SecretStr("tok")))
    WebhookTarget("https://hooks.example" + SECRET_PATH, AlertSettings(webhook_token=SecretStr("tok")))


def test_the_url_is_redacted_in_errors_logs_and_settings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with server(500) as (url, _):
        target = WebhookTarget(SecretStr(url + SECRET_PATH), AlertSettings())
        with pytest.raises(SinkWriteError) as failed:
            target.deliver(notification())
        with server(404) as (url404, _):
            with pytest.raises(DeliveryRejected) as rejected:
                WebhookTarget(url404 + SECRET_PATH, AlertSettings()).deliver(notification())
    texts = [failed.value.message, rejected.value.message, target.describe(), caplog.text,
             AlertSettings(webhook=SecretStr(url + SECRET_PATH)).model_dump_json()]
    assert all("s3cr3t" not in text for text in texts), texts
    assert target.describe() == f"webhook {url}/…"
