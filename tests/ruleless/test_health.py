"""ruleless/health.py: /metrics, /healthz and /readyz — the server itself, then on a
running worker, sink and agent (real processes on the embedded broker, LanceDB, chdb)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from ruleless.broker import free_port
from ruleless.health import HealthServer, cached
from ruleless.settings import Settings
from tests.processes import ruleless_process


def get(url: str) -> tuple[int, str]:
    """(status, body); (0, reason) while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def watch_readiness(url: str, until: Callable[[int, str], bool], timeout: float, alive: Callable[[], bool]) -> list[tuple[int, str]]:
    """Every distinct answer of /readyz, polled every 50 ms, until ``until`` holds."""
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert alive(), f"process exited; readiness answers so far: {seen}"
        status, body = get(url + "/readyz")
        if status and (not seen or seen[-1][0] != status):
            seen.append((status, body))
        if until(status, body):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"readiness never reached the expected state; answers: {seen}")


# --- the server -------------------------------------------------------------------------


def test_routes_answer_what_the_checks_say_and_serve_the_registry() -> None:
    registry = CollectorRegistry()
    Counter("probe_things", "things", registry=registry).inc(3)
    state = {"ready": (False, "warming up")}

    def broken() -> tuple[bool, str]:
        raise RuntimeError("store gone")

    with HealthServer(0, ready=lambda: state["ready"], alive=broken, registry=registry) as server:
        assert get(server.url + "/readyz") == (503, json.dumps({"ready": False, "reason": "warming up"}) + "\n")
        state["ready"] = (True, "2 partitions")
        assert get(server.url + "/readyz") == (200, json.dumps({"ready": True, "reason": "2 partitions"}) + "\n")
        status, body = get(server.url + "/healthz")
        assert status == 503 and json.loads(body) == {"alive": False, "reason": "check failed: RuntimeError: store gone"}
        status, body = get(server.url + "/metrics")
        assert status == 200 and "probe_things_total 3.0" in body
        assert get(server.url + "/nope")[0] == 404


def test_a_cached_check_runs_at_most_once_per_period() -> None:
    calls: list[float] = []

    def check() -> tuple[bool, str]:
        calls.append(time.monotonic())
        return len(calls) % 2 == 1, f"call {len(calls)}"

    probe = cached(check, 0.3)
    assert [probe() for _ in range(5)] == [(True, "call 1")] * 5
    time.sleep(0.35)
    assert probe() == (False, "call 2") and len(calls) == 2


# --- on running processes ---------------------------------------------------------------


def with_port(settings: Settings, section: str) -> tuple[Settings, str]:
    port = free_port()
    part = getattr(settings, section).model_copy(update={"metrics_port": port})
    return settings.model_copy(update={section: part}), f"http://127.0.0.1:{port}"


@pytest.mark.integration
def test_worker_is_ready_only_once_partitions_are_assigned(topics: Settings, tmp_path: Path) -> None:
    settings, url = with_port(topics, "worker")
    with ruleless_process(settings, "worker", log=tmp_path / "worker.log") as proc:
        seen = watch_readiness(url, lambda status, _: status == 200, 90, lambda: proc.poll() is None)
        assert seen[0][0] == 503 and "no partition" in seen[0][1], seen  # before the group assigned anything
        body = json.loads(seen[-1][1])
        assert body["ready"] and "partitions [0, 1, 2, 3]" in body["reason"] and "LanceDB" in body["reason"]
        assert get(url + "/healthz") == (200, json.dumps({"alive": True, "reason": "event loop answering"}) + "\n")
        status, metrics = get(url + "/metrics")
        assert status == 200 and "ruleless_worker_events_in_total" in metrics


@pytest.mark.integration
def test_sink_is_ready_only_once_partitions_are_assigned_and_the_store_answers(topics: Settings, tmp_path: Path) -> None:
    settings, url = with_port(topics, "sink")
    with ruleless_process(settings, "sink", log=tmp_path / "sink.log") as proc:
        seen = watch_readiness(url, lambda status, _: status == 200, 90, lambda: proc.poll() is None)
        assert seen[0][0] == 503 and "no partition" in seen[0][1], seen
        body = json.loads(seen[-1][1])
        assert body["ready"] and body["reason"] == "4 partitions assigned; store chdb reachable"
        assert get(url + "/healthz")[0] == 200
        assert "ruleless_sink_messages_total" in get(url + "/metrics")[1]


@pytest.mark.integration
def test_agent_is_ready_while_capturing_and_publishing(topics: Settings, tmp_path: Path) -> None:
    settings, url = with_port(topics, "agent")
    with ruleless_process(settings, "agent", "--backend", "proc", log=tmp_path / "agent.log") as proc:
        seen = watch_readiness(url, lambda status, _: status == 200, 60, lambda: proc.poll() is None)
        assert json.loads(seen[-1][1]) == {"ready": True, "reason": "capturing with proc; publishing"}
        status, body = get(url + "/healthz")
        assert status == 200 and json.loads(body)["alive"]
        assert "ruleless_agent_events_captured_total" in get(url + "/metrics")[1]
    # Stopped: nothing answers any more (an orchestrator sees it gone, not stale "ready").
    assert get(url + "/readyz")[0] == 0
