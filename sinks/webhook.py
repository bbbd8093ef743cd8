"""Where `ruleless alerts` delivers notifications: a webhook, or JSON lines on a stream.

A target's ``deliver(notification)`` returns once the notification was accepted and
raises otherwise — :class:`BackpressureError` (HTTP 429/503: slow down),
:class:`SinkWriteError` (5xx, timeout, connection refused: retry the same payload) or
:class:`DeliveryRejected` (other 4xx: retrying cannot help). The caller retries; the
payload of a retry is byte-for-byte the same, with the same ``id``.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Protocol, TextIO

from ruleless.settings import AlertSettings
from schemas.errors import BackpressureError, DeliveryRejected, SinkWriteError
from schemas.events import AlertNotification, encode

USER_AGENT = "ruleless-alerts/1"


class Target(Protocol):
    def deliver(self, notification: AlertNotification) -> None: ...

    def describe(self) -> str: ...


class WebhookTarget:
    """POST each notification as JSON (schemas/json/alert_notification.schema.json)."""

    def __init__(self, url: str, settings: AlertSettings):
        self.url = url
        self.timeout = settings.timeout_s
        self.headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if settings.webhook_token is not None:
            self.headers["Authorization"] = f"Bearer {settings.webhook_token.get_secret_value()}"

    def describe(self) -> str:
        return f"webhook {self.url}"

    def deliver(self, notification: AlertNotification) -> None:
        headers = {**self.headers, "Idempotency-Key": notification.id}
        request = urllib.request.Request(self.url, data=encode(notification), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise _classify(exc.code, self.url) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SinkWriteError(f"webhook {self.url} unreachable: {reason}") from None


def _classify(status: int, url: str) -> SinkWriteError | BackpressureError:
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
