"""`ruleless feedback`: look a scored event up in ClickHouse, publish the verdict.

The verdict goes to the feedback topic keyed by ``org_id/workload``, so the worker that
owns the shard applies it in order with the events it scores.
"""

from __future__ import annotations

import getpass
import re
import time
from typing import Any

import msgspec
from pydantic import SecretStr

from ruleless.kafka import ensure_topics, producer
from ruleless.settings import Settings
from ruleless.tenancy import sign_headers
from schemas.errors import ConfigError, QueryError
from schemas.events import Feedback, RawEvent, encode

_EVENT_ID = re.compile(r"[A-Za-z0-9:._-]{1,128}")


def find_event(settings: Settings, url: str, event_id: str, token: str | None = None) -> RawEvent:
    """The raw fields of a stored scored event."""
    from sinks.query import query_http

    if not _EVENT_ID.fullmatch(event_id):
        raise ConfigError(f"not an event id: {event_id!r}")
    table = f"{settings.clickhouse.database}.{settings.clickhouse.table}"
    rows = query_http(url, f"SELECT * FROM {table} FINAL WHERE event_id = '{event_id}' LIMIT 1", token)
    if not rows:
        raise QueryError(f"no scored event with event_id {event_id}")
    return event_from_row(rows[0])


def event_from_row(row: dict[str, object]) -> RawEvent:
    """The raw event of a stored row (the events table's columns)."""
    fields = set(RawEvent.__struct_fields__)
    raw = {k: v for k, v in row.items() if k in fields and v is not None}
    return msgspec.convert(raw, RawEvent, strict=False)


def send_feedback(settings: Settings, url: str, event_id: str, label: str, note: str = "", token: str | None = None) -> RawEvent:
    if label not in ("benign", "malicious"):
        raise ConfigError(f"label must be benign or malicious, not {label!r}")
    event = find_event(settings, url, event_id, token)
    publish_verdict(settings, event, label, note, getpass.getuser(), settings.tenancy.analyst_key)
    return event


def publish_verdict(settings: Settings, event: RawEvent, label: str, note: str, analyst: str,
                    key: SecretStr | None, prod: Any = None) -> None:
    """Publish a verdict on ``event`` to the feedback topic, keyed by its shard (signed
    with ``key`` when given); returns once the broker acknowledged it. The API passes
    its own long-lived ``prod``."""
    verdict = Feedback(event=event, label=label, ts=time.time(), analyst=analyst, note=note)  # type: ignore[arg-type]
    ensure_topics(settings.kafka, settings.topics, [settings.topics.feedback])
    prod = prod or producer(settings.kafka)
    value = encode(verdict)
    prod.produce(settings.topics.feedback, key=event.shard_key.encode(), value=value, headers=sign_headers(key, value))
    if prod.flush(30):
        from schemas.errors import ServiceError

        raise ServiceError(f"feedback not delivered to {settings.topics.feedback}")
