"""agent/procfs.py against the real /proc of this machine, plus its pure parsers."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.capture import CaptureBackend, stable_event_id
from agent.procfs import (
    FLAG_ARGV_NOT_UTF8,
    FLAG_ARGV_TRUNCATED,
    FLAG_CMDLINE_UNAVAILABLE,
    FLAG_SNAPSHOT,
    ProcfsBackend,
    container_id_from_cgroup,
    parse_stat,
    split_cmdline,
)
from ruleless.settings import AgentSettings
from schemas.errors import CaptureError
from schemas.events import RawEvent, decode, encode

# $0 of the wrapper shell holds spaces and unicode; dash forks `sleep` because a command
# follows it, so the wrapper stays the sleeper's parent.
WRAPPER_ARGV = ["sh", "-c", "sleep 30; exit 0", "ruleless test wrapper", "ünïcødé ✓ arg"]
AGENT = AgentSettings.model_validate({"org_id": "acme", "workload": "web-1", "host": "test-host"})


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


def start_ticks(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[19])


def ppid_of(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def expected_ancestors(pid: int) -> list[str]:
    """Up to 4 ancestor comms, read from /proc/PID/comm (not the stat file procfs parses)."""
    names: list[str] = []
    parent = ppid_of(pid)
    while parent and len(names) < 4:
        names.append(comm(parent))
        parent = ppid_of(parent)
    return names


def children_of(pid: int, timeout: float = 5.0) -> list[int]:
    """Child pids of ``pid``, waiting until there is at least one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = Path(f"/proc/{pid}/task/{pid}/children")
        kids = [int(p) for p in path.read_text().split()]
        if kids:
            return kids
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} has no children after {timeout}s")


@pytest.fixture
def wrapper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(WRAPPER_ARGV)
    children_of(proc.pid)  # the sleep has started: both processes are in place
    yield proc
    proc.kill()
    proc.wait()


def started_backend(**kwargs: object) -> ProcfsBackend:
    backend = ProcfsBackend(AGENT, **kwargs)  # type: ignore[arg-type]
    backend.start()
    return backend


def by_pid(events: list[RawEvent]) -> dict[int, RawEvent]:
    return {e.pid: e for e in events}


def test_backend_meets_the_capture_protocol() -> None:
    assert isinstance(ProcfsBackend(AGENT), CaptureBackend)
    assert ProcfsBackend(AGENT).name == "proc"


def test_new_process_is_reported_with_its_details() -> None:
    backend = started_backend()
    before = time.time()
    proc = subprocess.Popen(WRAPPER_ARGV)
    try:
        (sleep_pid,) = children_of(proc.pid)
        events = by_pid(backend.poll())
        ancestors = expected_ancestors(proc.pid)
        exec_id = f"test-host:{start_ticks(proc.pid)}:{proc.pid}"
    finally:
        proc.kill()
        proc.wait()

    me = os.getpid()
    event = events[proc.pid]
    assert event.event_type == "exec" and event.source == "procfs"
    assert (event.org_id, event.workload, event.host) == ("acme", "web-1", "test-host")
    assert event.pid == proc.pid and event.ppid == me
    assert event.process_name == "sh"
    assert event.exe == os.path.realpath(shutil.which("sh") or "/bin/sh")
    assert event.argv == WRAPPER_ARGV
    assert event.cmdline == "sh -c sleep 30; exit 0 ruleless test wrapper ünïcødé ✓ arg"
    assert event.parent_process == comm(me)
    assert event.ancestors == ancestors
    assert event.uid == os.getuid() and event.user == pwd.getpwuid(os.getuid()).pw_name
    assert event.exec_id == exec_id
    assert event.event_id == stable_event_id(exec_id, "exec")
    # btime has one-second resolution, start time one clock tick.
    assert before - 2 <= event.ts <= time.time() + 1
    assert event.container_id is None  # this host runs no containers
    assert event.flags is None

    child = events[sleep_pid]
    assert child.process_name == "sleep" and child.argv == ["sleep", "30"]
    assert child.ppid == proc.pid and child.parent_process == "sh"
    assert child.ancestors is not None and child.ancestors[:2] == ["sh", comm(me)]
    # Parents come before their children.
    assert list(events).index(proc.pid) < list(events).index(sleep_pid)


def test_event_survives_the_wire_contract(wrapper: subprocess.Popen[bytes]) -> None:
    backend = started_backend(emit_snapshot=True)
    event = by_pid(backend.poll())[wrapper.pid]
    assert decode(encode(event)) == event


def test_seen_process_is_not_reported_again() -> None:
    backend = started_backend()
    proc = subprocess.Popen(WRAPPER_ARGV)
    try:
        children_of(proc.pid)
        assert proc.pid in by_pid(backend.poll())
        assert proc.pid not in by_pid(backend.poll())
        assert proc.pid not in by_pid(backend.poll())
    finally:
        proc.kill()
        proc.wait()


def test_a_process_seen_before_its_exec_is_reported_again_after_it() -> None:
    """A poll can land between a fork and its exec: the child still shows its parent's
    image. Once it exec'd (comm changed), the new image is reported too."""
    backend = started_backend()
    # The child sleeps as python, then execs `sleep`: the same pid and start time, a new image.
    proc = subprocess.Popen([sys.executable, "-c", "import os, time; time.sleep(0.6); os.execvp('sleep', ['sleep', '30'])"])
    try:
        time.sleep(0.3)
        before = by_pid(backend.poll()).get(proc.pid)
        time.sleep(0.8)
        after = by_pid(backend.poll()).get(proc.pid)
        assert before is not None and before.process_name.startswith("python")
        assert after is not None and after.argv == ["sleep", "30"]
        assert proc.pid not in by_pid(backend.poll())
    finally:
        proc.kill()
        proc.wait()


def test_initial_snapshot_is_not_emitted_by_default(wrapper: subprocess.Popen[bytes]) -> None:
    backend = started_backend()
    assert wrapper.pid not in by_pid(backend.poll())


def test_initial_snapshot_is_emitted_when_asked(wrapper: subprocess.Popen[bytes]) -> None:
    backend = started_backend(emit_snapshot=True)
    events = by_pid(backend.poll())
    existing = {wrapper.pid, os.getpid(), *children_of(wrapper.pid)}
    assert existing <= set(events)
    # Only processes that existed before start() are snapshot; on a busy host others
    # may start between start() and poll() and are rightly not flagged.
    assert all(FLAG_SNAPSHOT in (events[pid].flags or []) for pid in existing)
    # Only once, and later processes are not flagged as snapshot.
    assert wrapper.pid not in by_pid(backend.poll())
    proc = subprocess.Popen(["sleep", "5"])
    try:
        later = by_pid(backend.poll())[proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert FLAG_SNAPSHOT not in (later.flags or [])


def test_kernel_threads_are_skipped(wrapper: subprocess.Popen[bytes]) -> None:
    kthreads = [p for p in os.listdir("/proc") if p.isdigit() and ppid_of_safe(int(p)) == 2]
    assert kthreads, "this kernel shows no kthreadd children"
    events = started_backend(emit_snapshot=True).poll()
    assert not [e for e in events if e.pid == 2 or e.ppid == 2]
    assert all(e.cmdline for e in events if e.pid == wrapper.pid)


def ppid_of_safe(pid: int) -> int | None:
    try:
        return ppid_of(pid)
    except FileNotFoundError:
        return None


@pytest.mark.skipif(os.geteuid() != 0, reason="setting ns_last_pid needs root")
def test_reused_pid_is_a_new_process() -> None:
    backend = started_backend()
    first = subprocess.Popen(["sleep", "30"])
    first_id = by_pid(backend.poll())[first.pid].exec_id
    first.kill()
    first.wait()
    # Two processes started within one clock tick would share (pid, start time); a real
    # PID wrap-around takes far longer than a tick, this test must wait for one.
    time.sleep(0.05)
    # Make the kernel hand out the same pid again (other forks can race us: retry).
    for _ in range(20):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(first.pid - 1))
        second = subprocess.Popen(["sleep", "30"])
        if second.pid == first.pid:
            break
        second.kill()
        second.wait()
    else:
        pytest.skip("could not get the kernel to reuse the pid")
    try:
        event = by_pid(backend.poll())[second.pid]
        assert event.exec_id == f"test-host:{start_ticks(second.pid)}:{first.pid}"
    finally:
        second.kill()
        second.wait()
    assert event.exec_id != first_id


def test_processes_exiting_during_scans_are_skipped_silently() -> None:
    backend = started_backend()
    done = threading.Event()

    def churn() -> None:
        while not done.is_set():
            subprocess.run(["true"], check=True)

    spinner = threading.Thread(target=churn)
    spinner.start()
    try:
        for _ in range(50):
            for event in backend.poll():
                assert event.source == "procfs"
    finally:
        done.set()
        spinner.join()


def test_zombie_is_reported_and_flagged() -> None:
    backend = started_backend()
    proc = subprocess.Popen(["sh", "-c", "exit 0"])
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "child did not exit"
            time.sleep(0.01)
        event = by_pid(backend.poll())[proc.pid]
    finally:
        proc.wait()  # reaps it
    assert event.process_name == "sh" and event.ppid == os.getpid()
    assert event.argv == [] and event.cmdline == "" and event.exe is None
    assert event.flags == [FLAG_CMDLINE_UNAVAILABLE]


def test_poll_before_start_and_missing_proc_are_capture_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptureError):
        ProcfsBackend(AGENT).poll()
    with pytest.raises(CaptureError):
        ProcfsBackend(AGENT, proc_root=tmp_path / "nope").start()


def test_parse_stat_handles_hostile_comm() -> None:
    raw = b"42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0\n"
    stat = parse_stat(raw)
    assert (stat.pid, stat.comm, stat.ppid, stat.start_ticks) == (42, "a) b (c)", 7, 12345)
    assert not stat.is_kernel_thread
    kthread = parse_stat(b"9 (kworker/0:1) I 2 0 0 0 -1 69238880 0 0 0 0 0 0 0 0 20 0 1 0 30 0 0\n")
    assert kthread.is_kernel_thread


def test_split_cmdline() -> None:
    assert split_cmdline(b"a\0b c\0\0\0") == (["a", "b c"], [])
    assert split_cmdline(b"a\0\0b\0") == (["a", "", "b"], [])
    assert split_cmdline(b"") == ([], [])
    assert split_cmdline(b"x\0\xff\0") == (["x", "\\xff"], [FLAG_ARGV_NOT_UTF8])
    # A cut in the middle of "é" drops the half character, and is not invalid UTF-8.
    assert split_cmdline("a\0bé".encode()[:-1], truncated=True) == (["a", "b"], [FLAG_ARGV_TRUNCATED])


def test_long_cmdline_is_truncated_and_flagged() -> None:
    backend = started_backend(max_cmdline_bytes=64)
    proc = subprocess.Popen(["sh", "-c", "sleep 30; exit 0", "x" * 200])
    try:
        event = by_pid(backend.poll())[proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert event.flags == [FLAG_ARGV_TRUNCATED]
    assert len(event.cmdline.encode()) <= 64 and event.argv and event.argv[:3] == WRAPPER_ARGV[:3]


CID = "4f1a9b2c" * 8


@pytest.mark.parametrize(
    "cgroup",
    [
        f"12:memory:/docker/{CID}\n11:cpu:/docker/{CID}\n",
        f"0::/system.slice/docker-{CID}.scope\n",
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/cri-containerd-{CID}.scope\n",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podab_cd.slice/crio-{CID}.scope\n",
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container\n",
        f"11:devices:/kubepods/besteffort/pod0c3b8b5f-1f6c-4c3f-9f4e-0c2b1f7a1a10/{CID}\n",
    ],
)
def test_container_id_from_cgroup(cgroup: str) -> None:
    assert container_id_from_cgroup(cgroup) == CID


def test_host_cgroup_has_no_container_id() -> None:
    assert container_id_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n") is None
    assert container_id_from_cgroup("4:memory:/process_api/06fb7ae2dbcf3b6753136725c6a6efae\n") is None
    assert container_id_from_cgroup(Path("/proc/self/cgroup").read_text()) is None
