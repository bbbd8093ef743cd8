"""The real pipeline behind the API, for the API's tests and benchmark: the session's
broker, a sink (owning chdb, serving its query endpoint) and a worker as processes, with
settings of their own (fresh topics, data directory, ports), and the API over HTTP as
`ruleless api` runs it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from ruleless.broker import free_port
from ruleless.kafka import ensure_topics, producer
from ruleless.settings import Settings, load_settings
from ruleless.tokens import TokenStore, tokens_path
from schemas.events import RawEvent, encode
from sinks.query import query_http
from tests.processes import QUERY_TOKEN, ruleless_process


def stack_settings(data: Path, bootstrap: str, **extra: Any) -> Settings:
    """Settings like tests/conftest.py's ``settings``, for a stack shared by a module."""
    tag = uuid.uuid4().hex[:8]
    return load_settings(
        data_dir=str(data),
        kafka={"bootstrap": bootstrap},
        topics={"raw": f"raw-{tag}", "scored": f"scored-{tag}", "alerts": f"alerts-{tag}",
                "dead_letter": f"dlq-{tag}", "feedback": f"feedback-{tag}", "partitions": 4},
        lancedb={"uri": str(data / "lancedb"), "flush_interval_s": 0.5},
        clickhouse={"path": str(data / "clickhouse")},
        worker={"app_id": f"ruleless-worker-{tag}", "group_id": f"worker-{tag}", "data_dir": str(data / "faust"),
                "metrics_port": 0, "web_port": 0},
        sink={"group_id": f"sink-{tag}", "metrics_port": 0, "query_port": free_port(), "query_token": QUERY_TOKEN,
              "behaviours_interval_s": 1.0},
        agent={"metrics_port": 0},
        api={"port": free_port(), "metrics_port": free_port()},
        **extra,
    )


def query_url(settings: Settings) -> str:
    return f"http://{settings.sink.query_host}:{settings.sink.query_port}"


def table(settings: Settings) -> str:
    return f"{settings.clickhouse.database}.{settings.clickhouse.table}"


def sql(settings: Settings, statement: str) -> list[dict[str, Any]]:
    """Ground truth for assertions: SQL straight to the sink (not through the API)."""
    return query_http(query_url(settings), statement, QUERY_TOKEN)


@contextmanager
def pipeline(settings: Settings, logs: Path, worker: bool = True) -> Iterator[None]:
    """A sink and (unless ``worker`` is False) a worker, running until the block ends."""
    ensure_topics(settings.kafka, settings.topics)
    with ExitStack() as stack:
        stack.enter_context(ruleless_process(settings, "sink", log=logs / "sink.log"))
        if worker:
            stack.enter_context(ruleless_process(settings, "worker", log=logs / "worker.log"))
        wait_for(lambda: _answers(settings), 60, "the sink's query endpoint")
        yield


@contextmanager
def api_process(settings: Settings, logs: Path) -> Iterator[str]:
    """`ruleless api` on the settings' port; yields its base URL once it answers."""
    url = f"http://{settings.api.host}:{settings.api.port}"
    with ruleless_process(settings, "api", log=logs / "api.log"):
        wait_for(lambda: _http_up(url), 60, "ruleless api")
        yield url


def _answers(settings: Settings) -> bool:
    try:
        sql(settings, "SELECT 1 AS ok")
        return True
    except Exception:  # noqa: BLE001 - not serving yet
        return False


def _http_up(url: str) -> bool:
    try:
        return httpx.get(url + "/openapi.json", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(ready: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def publish(settings: Settings, events: list[RawEvent]) -> None:
    prod = producer(settings.kafka)
    for e in events:
        prod.produce(settings.topics.raw, key=e.shard_key.encode(), value=encode(e))
        prod.poll(0)
    assert prod.flush(30) == 0


def wait_stored(settings: Settings, event_ids: list[str], timeout: float = 120.0) -> list[dict[str, Any]]:
    """The stored rows of these events, once all of them are in ClickHouse."""
    wanted = ", ".join(f"'{e}'" for e in event_ids)
    statement = f"SELECT * FROM {table(settings)} FINAL WHERE event_id IN ({wanted})"
    return wait_for(lambda: (r := _rows(settings, statement)) is not None and len(r) == len(event_ids) and r,
                    timeout, f"{len(event_ids)} events in ClickHouse")


def _rows(settings: Settings, statement: str) -> list[dict[str, Any]] | None:
    try:
        return sql(settings, statement)
    except Exception:  # noqa: BLE001 - the sink may still be starting
        return None


def token(settings: Settings, org: str, admin: bool = False) -> str:
    """A new API token of the settings' token store."""
    return TokenStore(tokens_path(settings.api.tokens_file, settings.data_dir)).create(org, admin)[1]
