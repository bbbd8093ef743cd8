"""Where `ruleless alerts` delivers notifications: a webhook, or JSON lines on a stream.

A target's ``deliver(notification)`` returns once the notification was accepted and
raises otherwise — :class:`BackpressureError` (HTTP 429/503: slow down),
:class:`SinkWriteError` (5xx, timeout, connection refused: retry the same payload) or
:class:`DeliveryRejected` (other 4xx: retrying cannot help). The caller retries; the
payload of a retry is byte-for-byte the same, with the same ``id``.

The URL is a credential (Slack-style hooks carry their secret in the path): it is held
as a secret and shown only as ``scheme://host/…`` in logs, errors and dead letters.
Redirects are never followed — urllib would turn the POST into a GET that looks
delivered, and forward the bearer token to whatever host the redirect names (issue 15);
a 3xx is a rejection. A token is only ever sent over https.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol, TextIO

from pydantic import SecretStr

from ruleless.settings import AlertSettings
from schemas.errors import BackpressureError, ConfigError, DeliveryRejected, SinkWriteError
from schemas.events import AlertNotification, encode

USER_AGENT = "ruleless-alerts/1"


class Target(Protocol):
    def deliver(self, notification: AlertNotification) -> None: ...

    def describe(self) -> str: ...


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_opener = urllib.request.build_opener(_NoRedirects)


def redact(url: str) -> str:
    """``scheme://host[:port]/…``: enough to tell which hook, nothing that opens it."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


class WebhookTarget:
    """POST each notification as JSON (schemas/json/alert_notification.schema.json)."""

    def __init__(self, url: str | SecretStr, settings: AlertSettings):
        self._url = url.get_secret_value() if isinstance(url, SecretStr) else url
        self.shown = redact(self._url)
        scheme = urllib.parse.urlsplit(self._url).scheme
        if scheme not in ("http", "https"):
            raise ConfigError(f"webhook {self.shown}: only http(s) URLs")
        self.timeout = settings.timeout_s
        self.headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if settings.webhook_token is not None:
            if scheme != "https":
                raise ConfigError(f"webhook {self.shown}: a token is only sent over https")
            self.headers["Authorization"] = f"Bearer {settings.webhook_token.get_secret_value()}"

    def describe(self) -> str:
        return f"webhook {self.shown}"

    def deliver(self, notification: AlertNotification) -> None:
        headers = {**self.headers, "Idempotency-Key": notification.id}
        request = urllib.request.Request(self._url, data=encode(notification), headers=headers, method="POST")
        try:
            with _opener.open(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise _classify(exc.code, self.shown) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SinkWriteError(f"webhook {self.shown} unreachable: {reason}") from None


def _classify(status: int, url: str) -> SinkWriteError | BackpressureError:
    if 300 <= status < 400:
        return DeliveryRejected(f"webhook {url} answered {status} (a redirect): redirects are not followed; configure the final URL")
    if status in (429, 503):
        return BackpressureError(f"webhook {url} answered {status}: slowing down")
    if status >= 500 or status == 408:
        return SinkWriteError(f"webhook {url} answered {status}")
    return DeliveryRejected(f"webhook {url} rejected the notification with {status}")


class StreamTarget:
    """JSON lines on a stream (stdout by default): the same payloads, no network."""

    def __init__(self, out: TextIO):
        self.out = out

    def describe(self) -> str:
        return "stdout" if getattr(self.out, "name", "") == "<stdout>" else "a stream"

    def deliver(self, notification: AlertNotification) -> None:
        self.out.write(encode(notification).decode() + "\n")
        self.out.flush()
