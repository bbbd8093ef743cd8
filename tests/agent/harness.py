"""Helpers shared by the agent tests: run the real agent loop, spawn known processes,
and the root/eBPF gates (which fail instead of skipping where CI demands real capture)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.capture import CaptureBackend
from agent.run import run
from ruleless.settings import Settings
from schemas.events import RawEvent, decode


def must_run_for_real() -> bool:
    """True where skipping a root-only capture test would hide a failure: as root under
    CI (``CI`` set) or when ``RULELESS_REQUIRE_EBPF=1``."""
    return os.geteuid() == 0 and bool(os.environ.get("CI") or os.environ.get("RULELESS_REQUIRE_EBPF") == "1")


def require_root(what: str) -> None:
    """Skip unless root (the kernel facilities need it)."""
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")


def unavailable(reason: str) -> None:
    """Skip for ``reason``, or fail where the test must run for real (see
    :func:`must_run_for_real`)."""
    if must_run_for_real():
        pytest.fail(f"capture test cannot run as root under CI: {reason} (run bpf/setup-host.sh)")
    pytest.skip(reason)


def fast(settings: Settings, **agent: object) -> Settings:
    """``settings`` with a short poll interval (and other agent overrides)."""
    update = {"poll_interval_s": 0.1, **agent}
    return settings.model_copy(update={"agent": settings.agent.model_copy(update=update)})


@contextmanager
def agent_thread(settings: Settings, output: str | None, backend: str) -> Iterator[threading.Event]:
    """Run the agent loop in a thread until its backend has started; on exit, stop it
    and require a clean, prompt stop."""
    stop = threading.Event()
    ready = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(settings, output=output, stop=stop, backend=backend, ready=ready)
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="agent")
    thread.start()
    try:
        assert ready.wait(60), "agent did not start within 60 s"
        assert not errors, errors
        yield stop
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), "agent did not stop within 30 s"
    assert not errors, errors


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)


def settle(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Wait until ``predicate`` holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def events_in(path: Path) -> list[RawEvent]:
    """The complete lines of a JSON-lines file (the last one may be half-written)."""
    if not path.exists():
        return []
    return [decode(line) for line in path.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]


@dataclass(frozen=True)
class Burst:
    """``count`` short-lived execs of ``/bin/true MARKER-i`` from one shell loop."""

    marker: str
    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def captured(self, events: list[RawEvent]) -> int:
        """How many distinct burst processes ``events`` hold with their argv intact."""
        prefix = f"{self.marker}-"
        return len({e.argv[1] for e in events if e.argv and len(e.argv) > 1 and e.argv[1].startswith(prefix)})


def exec_burst(marker: str, count: int, per_second: float | None = None) -> Burst:
    """Spawn ``count`` execs of ``/bin/true MARKER-i`` as fast as dash can fork, or paced
    at ``per_second``. Each process lives well under a millisecond."""
    if per_second is None:
        loop = f'i=0; while [ $i -lt {count} ]; do /bin/true {marker}-$i; i=$((i+1)); done'
        started = time.monotonic()
        subprocess.run(["sh", "-c", loop], check=True)
        return Burst(marker, count, time.monotonic() - started)
    started = time.monotonic()
    for i in range(count):
        subprocess.Popen(["/bin/true", f"{marker}-{i}"]).wait()
        delay = started + (i + 1) / per_second - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return Burst(marker, count, time.monotonic() - started)


def poll_until(
    capture: CaptureBackend, done: Callable[[list[RawEvent]], bool], timeout: float = 5.0, interval: float = 0.05
) -> list[RawEvent]:
    """Every event ``capture`` reports until ``done(events)`` holds (or the timeout)."""
    events: list[RawEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events.extend(capture.poll())
        if done(events):
            break
        time.sleep(interval)
    return events
