"""agent/ebpf.py and bpf/: record parsing and pairing, then the real programs on this
kernel. As root under CI these tests fail instead of skipping when eBPF is unusable
(tests/agent/harness.py: must_run_for_real)."""

from __future__ import annotations

import os
import platform
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.capture import CaptureBackend
from agent.ebpf import (
    ARGV_MAX_ARGS,
    ARGV_MAX_BYTES,
    RECORD_ARGS,
    RECORD_CONNECT,
    RECORD_EXEC,
    ArgsRecord,
    EbpfBackend,
    ExecAssembler,
    ExecRecord,
    NetRecord,
    import_bcc,
    parse_record,
    split_args,
)
from ruleless.settings import AgentSettings, Settings
from schemas.errors import CaptureError
from schemas.events import RawEvent, decode, encode
from tests.agent.harness import agent_thread, events_in, exec_burst, fast, poll_until, settle, unavailable

AGENT = AgentSettings.model_validate({"org_id": "acme", "workload": "web-1", "host": "test-host"})
MY_COMM = Path("/proc/self/comm").read_text().strip()


# --- pure: record layouts and pairing -------------------------------------------------


def args_bytes(tid: int, ts: int, args: bytes, flags: int = 0, argc: int = 0) -> bytes:
    head = struct.pack("=IIQIHH256s", RECORD_ARGS, tid, ts, flags, argc, len(args), b"/bin/true")
    return head + args


def exec_bytes(pid: int, old_tid: int, ts: int) -> bytes:
    return struct.pack(
        "=IIIIQQQIIII16s16s256s", RECORD_EXEC, pid, old_tid, 7, ts, 5, 9, 1000, 1000, 0, 0,
        b"true", b"sh", b"/bin/true",
    )  # fmt: skip


def test_record_sizes_match_bpf_events_h() -> None:
    # bpf/events.h: args_record head 24 + PATH_BYTES, exec_record 88 + PATH_BYTES, net 96.
    assert len(args_bytes(1, 1, b"")) == 24 + 256
    assert len(exec_bytes(1, 1, 1)) == 88 + 256
    header = Path(__file__).parents[2] / "bpf" / "events.h"
    text = header.read_text()
    assert f"#define ARGV_MAX_ARGS {ARGV_MAX_ARGS}" in text and f"#define ARGV_MAX_BYTES {ARGV_MAX_BYTES}" in text


def test_parse_records() -> None:
    record = parse_record(args_bytes(42, 10, b"/bin/true\0a b\0\xc3\xbc\0", argc=3))
    assert isinstance(record, ArgsRecord) and record.tid == 42 and record.filename == b"/bin/true"
    assert split_args(record) == (["/bin/true", "a b", "ü"], [])
    exec_record = parse_record(exec_bytes(43, 42, 11))
    assert isinstance(exec_record, ExecRecord)
    assert (exec_record.pid, exec_record.old_tid, exec_record.ppid, exec_record.comm) == (43, 42, 7, "true")
    assert exec_record.parent_comm == "sh" and exec_record.filename == "/bin/true"
    net = struct.pack(
        "=IIIIIIQQHHHH16s16s16s", RECORD_CONNECT, 5, 5, 0, 0, 0, 1, 2, socket.AF_INET6, 40000, 443, 0,
        socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.1"), socket.inet_pton(socket.AF_INET6, "2001:db8::1"), b"curl",
    )  # fmt: skip
    record_net = parse_record(net)
    assert isinstance(record_net, NetRecord)
    assert (record_net.saddr, record_net.daddr, record_net.dport) == ("10.0.0.1", "2001:db8::1", 443)
    assert parse_record(b"\x09\0\0\0") is None and parse_record(b"") is None


def test_truncated_args_are_flagged_and_cut_characters_dropped() -> None:
    cut = "a\0bé".encode()[:-1]
    record = parse_record(args_bytes(1, 1, cut, flags=1, argc=2))
    assert isinstance(record, ArgsRecord)
    assert split_args(record) == (["a", "b"], ["argv_truncated"])


def test_assembler_pairs_by_thread_and_forgets_failed_execs() -> None:
    assembler = ExecAssembler()
    failed = ArgsRecord(tid=42, ts_ns=1, flags=0, argc=1, filename=b"/usr/local/bin/x", args=b"x\0")
    found = ArgsRecord(tid=42, ts_ns=2, flags=0, argc=1, filename=b"/usr/bin/x", args=b"x\0")
    assembler.add_args(failed)
    assembler.add_args(found)  # PATH search: the first execve failed
    exec_record = parse_record(exec_bytes(43, 42, 3))
    assert isinstance(exec_record, ExecRecord)
    assert assembler.take(exec_record) == found
    assert assembler.take(exec_record) is None
    assembler.add_args(failed)
    assembler.expire(now_ns=10_000_000_000)
    assert len(assembler) == 0


# --- live: the programs on this kernel --------------------------------------------------


def require_ebpf() -> None:
    if os.geteuid() != 0:
        unavailable("eBPF needs root")
    try:
        import_bcc()
    except CaptureError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="module")
def backend() -> Iterator[EbpfBackend]:
    require_ebpf()
    capture = EbpfBackend(AGENT)
    try:
        capture.start()
    except CaptureError as exc:
        unavailable(f"eBPF backend does not start: {exc}")
    try:
        yield capture
    finally:
        capture.stop()


def gather(capture: EbpfBackend, done: Callable[[list[RawEvent]], bool], timeout: float = 5.0) -> list[RawEvent]:
    return poll_until(capture, done, timeout)


def run_and_capture(capture: EbpfBackend, argv: list[str]) -> RawEvent:
    """Run ``argv`` (a short-lived child of this process) and return its exec event."""
    capture.poll()
    proc = subprocess.run(argv, check=False)
    assert proc.returncode == 0
    pid_events = gather(capture, lambda events: any(e.argv and e.argv[0] == argv[0] and e.ppid == os.getpid() for e in events))
    mine = [e for e in pid_events if e.event_type == "exec" and e.ppid == os.getpid() and e.argv and e.argv[0] == argv[0]]
    assert mine, f"exec of {argv[:3]} not captured"
    return mine[-1]


def test_backend_meets_the_capture_protocol(backend: EbpfBackend) -> None:
    assert isinstance(backend, CaptureBackend)
    release = tuple(int(x) for x in platform.release().split(".")[:2])
    assert backend.output_kind == ("ringbuf" if release >= (5, 8) else "perf")
    assert set(backend.drops()) >= {"kernel_args", "kernel_exec", "kernel_net", "perf_lost", "queue_full"}


def test_exec_with_spaces_and_unicode(backend: EbpfBackend) -> None:
    marker = uuid.uuid4().hex[:8]
    argv = ["/bin/true", "hello world", "ünïcødé ✓ 日本", "", f"m-{marker}"]
    before = time.time()
    event = run_and_capture(backend, argv)
    assert event.source == "ebpf" and event.event_type == "exec"
    assert event.argv == argv and event.cmdline == " ".join(argv)
    assert event.flags is None or "argv_truncated" not in event.flags
    assert event.process_name == "true" and event.exe in ("/bin/true", "/usr/bin/true")
    assert event.ppid == os.getpid() and event.parent_process == MY_COMM
    assert event.ancestors and event.ancestors[0] == MY_COMM
    assert event.uid == os.getuid() and event.user == "root"
    assert (event.org_id, event.workload, event.host) == ("acme", "web-1", "test-host")
    assert event.exec_id and event.exec_id.endswith(f":{event.pid}")
    assert before - 1 <= event.ts <= time.time()
    assert decode(encode(event)) == event


def test_forty_arguments_are_cut_at_the_bound_and_flagged(backend: EbpfBackend) -> None:
    argv = ["/bin/true"] + [f"arg{i}" for i in range(39)]
    event = run_and_capture(backend, argv)
    assert event.argv == argv[:ARGV_MAX_ARGS]
    assert event.flags and "argv_truncated" in event.flags


def test_ten_kib_argument_is_cut_at_the_bound_and_flagged(backend: EbpfBackend) -> None:
    big = "x" * 10 * 1024
    argv = ["/bin/true", "-v", big]
    event = run_and_capture(backend, argv)
    assert event.argv and event.argv[:2] == ["/bin/true", "-v"]
    assert event.argv[2] == big[: len(event.argv[2])] and len(event.argv[2]) >= ARGV_MAX_BYTES - 64
    assert len("\0".join(event.argv).encode()) < ARGV_MAX_BYTES
    assert event.flags and "argv_truncated" in event.flags


def test_known_parent_and_ancestors_of_a_grandchild(backend: EbpfBackend) -> None:
    marker = f"gc-{uuid.uuid4().hex[:8]}"
    backend.poll()
    shell = subprocess.Popen(["sh", "-c", f"/bin/true {marker}; exit 0"])
    shell.wait()
    events = gather(backend, lambda evs: any(e.argv == ["/bin/true", marker] for e in evs))
    (child,) = [e for e in events if e.argv == ["/bin/true", marker]]
    assert child.ppid == shell.pid and child.parent_process == "sh"
    # The shell had exited by the time it was read; the kernel's fork record still named it.
    assert child.ancestors and child.ancestors[0] == "sh"


def test_exec_in_place_keeps_exec_id_and_gets_a_new_event_id(backend: EbpfBackend) -> None:
    marker = f"inplace-{uuid.uuid4().hex[:8]}"
    backend.poll()
    proc = subprocess.Popen(["sh", "-c", f"exec /bin/true {marker}"])
    proc.wait()
    events = gather(backend, lambda evs: any(e.argv == ["/bin/true", marker] for e in evs))
    mine = [e for e in events if e.pid == proc.pid and e.event_type == "exec"]
    assert [e.process_name for e in mine] == ["sh", "true"]
    assert mine[0].exec_id == mine[1].exec_id and mine[0].event_id != mine[1].event_id


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_loopback_listen_and_connect(backend: EbpfBackend, family: socket.AddressFamily, host: str) -> None:
    backend.poll()
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.bind((host, 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection((host, port)) as client:
            client_port = client.getsockname()[1]
            server.accept()[0].close()
    events = gather(backend, lambda evs: any(e.event_type == "connect" and e.remote_port == port for e in evs))
    mine = [e for e in events if e.pid == os.getpid()]
    (listen,) = [e for e in mine if e.event_type == "listen" and e.local_port == port]
    (connect,) = [e for e in mine if e.event_type == "connect" and e.remote_port == port]
    assert listen.local_ip == host and listen.remote_port is None
    assert (connect.local_ip, connect.local_port, connect.remote_ip) == (host, client_port, host)
    # Connect events carry the process's exec context, so they score like it.
    assert connect.process_name == MY_COMM and connect.cmdline and connect.exec_id
    assert connect.event_id != listen.event_id and connect.source == "ebpf"


def test_refused_connect_is_flagged(backend: EbpfBackend) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connect is refused
        backend.poll()
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))
    events = gather(backend, lambda evs: any(e.remote_port == port for e in evs))
    (event,) = [e for e in events if e.remote_port == port]
    assert event.flags == ["connect_failed"]


def test_perf_buffer_fallback_captures_too() -> None:
    require_ebpf()
    capture = EbpfBackend(AGENT, capture_net=False, prefer_ringbuf=False)
    capture.start()
    try:
        assert capture.output_kind == "perf"
        event = run_and_capture(capture, ["/bin/true", "perf", "fallback"])
        assert event.argv == ["/bin/true", "perf", "fallback"]
    finally:
        capture.stop()


def test_burst_of_short_lived_execs_is_captured(tmp_path: Path, settings: Settings) -> None:
    """≥ 99.9 % of 5,000 execs as fast as the machine spawns them, through the agent loop."""
    require_ebpf()
    count = 5000
    path = tmp_path / "burst.jsonl"
    marker = f"burst-{uuid.uuid4().hex[:8]}"
    with agent_thread(fast(settings), str(path), "ebpf"):
        burst = exec_burst(marker, count)
        settle(lambda: burst.captured(events_in(path)) >= count, timeout=5)
    captured = burst.captured(events_in(path))
    print(f"ebpf burst: {captured}/{count} captured ({100 * captured / count:.2f} %) at {burst.rate:.0f} execs/s")
    assert captured >= 0.999 * count
