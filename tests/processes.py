"""Start ruleless processes as real subprocesses for integration tests."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer

from ruleless.kafka import consumer, producer
from ruleless.settings import Settings, child_environ
from schemas.events import RawEvent, encode

RULELESS = str(Path(sys.executable).parent / "ruleless")
# The sinks of a test session serve reads with this token (tests/conftest.py: settings).
QUERY_TOKEN = secrets.token_urlsafe(16)


@contextmanager
def ruleless_process(
    settings: Settings, *args: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`ruleless ARGS` with these settings (and ``env`` on top); stopped with SIGTERM
    (SIGKILL if stuck)."""
    env = {**child_environ(settings), **(env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen([RULELESS, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def drain(
    settings: Settings,
    topics: list[str],
    done: Callable[[dict[str, list[bytes]]], bool],
    timeout: float = 120.0,
    group: str | None = None,
) -> dict[str, list[bytes]]:
    """Consume ``topics`` from the beginning until ``done(messages)`` or the timeout."""
    cons: Consumer = consumer(settings.kafka, group or f"drain-{time.monotonic_ns()}")
    cons.subscribe(topics)
    got: dict[str, list[bytes]] = {t: [] for t in topics}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(got):
            for msg in cons.consume(1000, timeout=0.5):
                if msg.error() is None:
                    got[msg.topic()].append(msg.value())
    finally:
        cons.close()
    return got


def produce_paced(
    settings: Settings, events: list[RawEvent], rate: float,
    stamp: Callable[[RawEvent], RawEvent] | None = None, every: int = 100,
) -> float:
    """Produce ``events`` to the raw topic at about ``rate``/s (``stamp`` rewrites each
    one just before it is sent); returns the rate achieved."""
    prod = producer(settings.kafka)
    started = time.monotonic()
    for i, e in enumerate(events):
        if stamp is not None:
            e = stamp(e)
        prod.produce(settings.topics.raw, key=e.shard_key.encode(), value=encode(e))
        if i % every == every - 1:
            prod.poll(0)
            ahead = started + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    assert prod.flush(60) == 0
    return len(events) / (time.monotonic() - started)


def docker_unavailable() -> str | None:
    """Why no Docker engine can be used (testcontainers tests skip with it), or None."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError as exc:
        return f"docker client library missing: {exc}"
    try:
        docker.from_env(timeout=3).ping()
    except (DockerException, OSError) as exc:
        return f"no Docker engine answers: {exc}"
    return None
