"""agent/run.py: the whole agent loop in a thread, to a file and to the real broker."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import agent.run as run_module
from agent.run import BACKENDS, run, start_backend
from ruleless.broker import free_port
from ruleless.kafka import consumer
from ruleless.settings import Settings
from schemas.errors import CaptureError, ConfigError
from schemas.events import RawEvent, decode

ARGV = ["sh", "-c", "sleep 30; exit 0", "agent run test", "ärgv ✓"]


def fast(settings: Settings, **agent: object) -> Settings:
    """``settings`` with a short poll interval (and other agent overrides)."""
    update = {"poll_interval_s": 0.1, **agent}
    return settings.model_copy(update={"agent": settings.agent.model_copy(update=update)})


@contextmanager
def agent_thread(settings: Settings, output: str | None) -> Iterator[threading.Event]:
    """Run the agent in a thread; on exit, stop it and require a clean, prompt stop."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(settings, output=output, stop=stop, backend="proc")
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name="agent")
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not thread.is_alive(), "agent did not stop within 15 s"
    assert not errors, errors


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextmanager
def spawned() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(ARGV)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def events_in(path: Path) -> list[RawEvent]:
    if not path.exists():
        return []
    # The last line may be half-written while the agent runs.
    return [decode(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]


def test_run_captures_a_new_process_to_a_file(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "agent.jsonl"
    with agent_thread(fast(settings), str(path)) as stop:
        wait_for(path.exists)
        # The file is opened before the baseline scan; give that scan a few intervals.
        time.sleep(0.5)
        with spawned() as proc:
            wait_for(lambda: proc.pid in {e.pid for e in events_in(path)})
        assert not stop.is_set()
    events = events_in(path)
    (event,) = [e for e in events if e.pid == proc.pid]
    assert event.argv == ARGV and event.source == "procfs"
    assert event.shard_key == f"{settings.agent.org_id}/{settings.agent.workload}"
    # The baseline was not emitted: everything in the file started after the agent.
    assert all(not e.flags or "snapshot" not in e.flags for e in events)


@pytest.mark.integration
def test_run_publishes_to_kafka_and_serves_metrics(topics: Settings) -> None:
    port = free_port()
    settings = fast(topics, metrics_port=port, org_id="acme", workload="api")
    reader = consumer(settings.kafka, group_id=f"{settings.topics.raw}-reader")
    reader.subscribe([settings.topics.raw])
    found: list[tuple[bytes, RawEvent]] = []
    try:
        with agent_thread(settings, None):
            wait_for(lambda: metrics_text(port) is not None, timeout=15)
            time.sleep(0.5)
            with spawned() as proc:
                deadline = time.monotonic() + 15
                while not found and time.monotonic() < deadline:
                    msg = reader.poll(0.5)
                    if msg is not None and not msg.error():
                        event = decode(msg.value() or b"")
                        # (a poll between the fork and the exec sees the test's own image first)
                        if event.pid == proc.pid and event.argv == ARGV:
                            found.append((msg.key() or b"", event))
            text = metrics_text(port) or ""
    finally:
        reader.close()
    assert found, "spawned process never reached the raw topic"
    key, event = found[0]
    assert key == b"acme/api" and event.argv == ARGV
    assert "ruleless_agent_events_captured_total" in text
    assert "ruleless_agent_scan_duration_seconds_count" in text
    published = [line for line in text.splitlines() if line.startswith("ruleless_agent_events_published_total")]
    assert published and float(published[0].split()[-1]) >= 1


def metrics_text(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return bytes(resp.read()).decode()
    except OSError:
        return None


def test_auto_logs_which_backend_runs_and_why_better_ones_do_not(
    tmp_path: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    stop.set()  # one pass: start, see stop, flush, return
    with caplog.at_level(logging.INFO, logger="agent"):
        run(fast(settings), output=str(tmp_path / "x.jsonl"), stop=stop, backend="auto")
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("capture backend: ")]
    assert len(chosen) == 1 and "chosen by auto" in chosen[0]
    name = chosen[0].split()[2].rstrip(",")
    better = BACKENDS[: BACKENDS.index(name)]
    # Every better backend is named with the reason it did not start.
    assert all(f"{b}: " in chosen[0] for b in better)
    assert "agent stopped" in caplog.text


class Unstartable:
    name = "netlink"

    def start(self) -> None:
        raise CaptureError("no proc connector here")


def test_requested_backend_that_cannot_start_is_a_config_error(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.run._make_backend", lambda name, agent: Unstartable())
    with pytest.raises(ConfigError, match="no proc connector here"):
        run(settings, output=str(tmp_path / "x.jsonl"), stop=threading.Event(), backend="netlink")


def test_auto_falls_back_past_backends_that_cannot_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = run_module._make_backend
    monkeypatch.setattr(
        "agent.run._make_backend", lambda name, agent: real(name, agent) if name == "proc" else Unstartable()
    )
    with caplog.at_level(logging.INFO, logger="agent"):
        capture = start_backend(settings.agent, "auto")
    capture.stop()
    assert capture.name == "proc"
    assert "better ones unavailable: ebpf: no proc connector here; netlink: no proc connector here" in caplog.text


def test_unknown_backend_is_a_config_error(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(ConfigError):
        run(settings, output=str(tmp_path / "x.jsonl"), stop=threading.Event(), backend="bogus")
