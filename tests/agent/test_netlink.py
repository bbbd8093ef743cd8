"""agent/netlink.py: message parsing, and the backend against this kernel's proc connector."""

from __future__ import annotations

import os
import pwd
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture import CaptureBackend
from agent.netlink import (
    CN_IDX_PROC,
    PROC_CN_MCAST_LISTEN,
    PROC_EVENT_EXEC,
    PROC_EVENT_FORK,
    NetlinkBackend,
    ProcEvent,
    parse_messages,
    subscription,
)
from ruleless.settings import AgentSettings, Settings
from schemas.events import RawEvent, decode, encode
from tests.agent.harness import agent_thread, events_in, exec_burst, fast, poll_until, require_root, settle

AGENT = AgentSettings.model_validate({"org_id": "acme", "workload": "web-1", "host": "test-host"})
ARGV = ["sh", "-c", "sleep 0.3; exit 0", "netlink test arg", "ünïcødé ✓"]


def datagram(what: int, ts: int, *args: int, idx: int = CN_IDX_PROC) -> bytes:
    body = struct.pack("=IIQ", what, 1, ts) + struct.pack(f"={len(args)}I", *args)
    cn = struct.pack("=IIIIHH", idx, 1, 7, 0, len(body), 0) + body
    return struct.pack("=IHHII", 16 + len(cn), 3, 0, 7, 0) + cn


def test_parse_messages() -> None:
    exec_msg = datagram(PROC_EVENT_EXEC, 123, 42, 42)
    assert parse_messages(exec_msg) == [ProcEvent(PROC_EVENT_EXEC, 1, 123, (42, 42))]
    fork_msg = datagram(PROC_EVENT_FORK, 5, 1, 1, 2, 2)
    # Several messages in one datagram, each 4-byte aligned.
    assert [e.what for e in parse_messages(exec_msg + fork_msg)] == [PROC_EVENT_EXEC, PROC_EVENT_FORK]
    # Another connector's message, and truncated ones, are ignored.
    assert parse_messages(datagram(PROC_EVENT_EXEC, 1, 9, 9, idx=7)) == []
    assert parse_messages(exec_msg[:20]) == []
    assert parse_messages(b"") == []


def test_subscription_layout() -> None:
    msg = subscription(PROC_CN_MCAST_LISTEN, seq=3, port_id=99, ack=41)
    length, _type, _flags, seq, port = struct.unpack_from("=IHHII", msg)
    assert (length, seq, port) == (len(msg), 3, 99)
    idx, val, cn_seq, ack, size, _ = struct.unpack_from("=IIIIHH", msg, 16)
    assert (idx, val, cn_seq, ack, size) == (1, 1, 3, 41, 4)
    assert struct.unpack_from("=I", msg, 36) == (PROC_CN_MCAST_LISTEN,)
    filtered = subscription(PROC_CN_MCAST_LISTEN, events=PROC_EVENT_EXEC)
    assert struct.unpack_from("=II", filtered, 36) == (PROC_CN_MCAST_LISTEN, PROC_EVENT_EXEC)


@pytest.fixture
def backend() -> Iterator[NetlinkBackend]:
    require_root("the proc connector")
    capture = NetlinkBackend(AGENT)
    capture.start()
    try:
        yield capture
    finally:
        capture.stop()


def collect(capture: NetlinkBackend, until: int, timeout: float = 5.0) -> list[RawEvent]:
    """Poll until an event of pid ``until`` arrived (or the timeout)."""
    return poll_until(capture, lambda events: until in {e.pid for e in events}, timeout, interval=0.02)


def test_backend_meets_the_capture_protocol() -> None:
    assert isinstance(NetlinkBackend(AGENT), CaptureBackend)


def test_exec_is_reported_at_once_with_its_details(backend: NetlinkBackend) -> None:
    before = time.time()
    proc = subprocess.Popen(ARGV)
    proc.wait()
    events = collect(backend, proc.pid)
    (event,) = [e for e in events if e.pid == proc.pid]
    assert event.source == "netlink" and event.event_type == "exec"
    assert (event.org_id, event.workload, event.host) == ("acme", "web-1", "test-host")
    assert event.argv == ARGV and event.cmdline == " ".join(ARGV)
    assert event.ppid == os.getpid() and event.process_name == "sh"
    assert event.parent_process == Path("/proc/self/comm").read_text().strip()
    assert event.ancestors and event.ancestors[0] == event.parent_process
    assert event.exe == os.path.realpath("/bin/sh")
    assert event.uid == os.getuid() and event.user == pwd.getpwuid(os.getuid()).pw_name
    assert event.exec_id and event.exec_id.startswith("test-host:") and event.exec_id.endswith(f":{proc.pid}")
    assert before - 0.5 <= event.ts <= time.time()
    assert decode(encode(event)) == event
    # The child `sleep` lived 0.3 s; it was read while alive, with sh as its parent.
    (sleep,) = [e for e in collect(backend, 0, timeout=0.5) + events if e.argv == ["sleep", "0.3"]]
    assert sleep.ppid == proc.pid and sleep.parent_process == "sh" and sleep.ancestors[:1] == ["sh"]  # type: ignore[index]


def test_exec_in_place_is_a_second_event_of_the_same_process(backend: NetlinkBackend) -> None:
    proc = subprocess.Popen(["sh", "-c", "exec sleep 0.2"])
    proc.wait()
    time.sleep(0.1)
    mine = [e for e in collect(backend, proc.pid) + backend.poll() if e.pid == proc.pid]
    assert [e.process_name for e in mine] == ["sh", "sleep"]
    assert mine[0].exec_id == mine[1].exec_id
    assert mine[0].event_id != mine[1].event_id


def test_stop_is_idempotent_and_nothing_is_read_after(backend: NetlinkBackend) -> None:
    backend.stop()
    backend.stop()
    proc = subprocess.Popen(["sleep", "0.1"])
    proc.wait()
    assert proc.pid not in {e.pid for e in backend.poll()}


@pytest.mark.parametrize("count", [5000])
def test_burst_of_short_lived_execs_is_captured(tmp_path: Path, settings: Settings, count: int) -> None:
    """The issue's bar: ≥ 99.9 % of 5,000 execs as fast as the machine spawns them,
    through the real agent loop, counted by each process's unique argv marker."""
    require_root("the proc connector")
    path = tmp_path / "burst.jsonl"
    marker = f"burst-{uuid.uuid4().hex[:8]}"
    with agent_thread(fast(settings), str(path), "netlink"):
        burst = exec_burst(marker, count)
        settle(lambda: burst.captured(events_in(path)) >= count, timeout=3)
    captured = burst.captured(events_in(path))
    print(f"netlink burst: {captured}/{count} captured ({100 * captured / count:.2f} %) at {burst.rate:.0f} execs/s")
    assert captured >= 0.999 * count


def test_readers_are_pinned_one_per_allowed_cpu_within_the_bound() -> None:
    from agent.netlink import MAX_READERS, reader_cpus

    allowed = sorted(os.sched_getaffinity(0))
    assert reader_cpus(0) == allowed[:MAX_READERS]
    assert reader_cpus(1) == allowed[:1]
    assert reader_cpus(10_000) == allowed


def test_a_pinned_reader_takes_its_cpus_execs_and_the_first_also_the_uncovered_ones() -> None:
    from agent.netlink import Reader

    first = Reader.__new__(Reader)
    first._cpu, first._covered, first._catch_all = 0, frozenset({0, 1}), True
    second = Reader.__new__(Reader)
    second._cpu, second._covered, second._catch_all = 1, frozenset({0, 1}), False
    assert [first._mine(c) for c in (0, 1, 2)] == [True, False, True]
    assert [second._mine(c) for c in (0, 1, 2)] == [False, True, False]


def test_a_dead_pump_stops_the_agent_with_the_reason(backend: NetlinkBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14: an exception the pump thread did not expect used to end it silently
    while poll() went on returning nothing."""
    import agent.netlink as netlink
    from schemas.errors import CaptureError

    def undecodable(body: bytes) -> None:
        raise RuntimeError("undecodable line")

    monkeypatch.setattr(netlink, "decode", undecodable)
    subprocess.run(["true"], check=True)
    deadline = time.monotonic() + 5
    with pytest.raises(CaptureError, match="undecodable line"):
        while time.monotonic() < deadline:
            backend.poll()
            time.sleep(0.05)
