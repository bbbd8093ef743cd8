"""Which captured processes belong to a workload: process lineage from the kernel.

The recorder runs each workload's driver as a child of its own and must keep only that
driver's descendants from everything the agent captured on a busy machine. The parent
pid in an exec event is not enough: daemons fork helpers that never exec (postgres'
archiver, nginx workers, bash subshells) and their children then name a parent that no
exec event introduced. So the recorder listens to the kernel's process connector itself
(netlink, NETLINK_CONNECTOR / CN_IDX_PROC, root only) for every fork, exec and exit, and
:func:`members` computes the descendants of the driver roots from that log, with the time
span each pid belonged to the tree (pids are reused).

This only decides membership; the events themselves come from ``ruleless agent``. Where
the connector is unavailable, :func:`members_from_events` falls back to the ppid chain of
the captured events (misses children of fork-only helpers).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
NLMSG_DONE = 3
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000
SO_RCVBUFFORCE = 33
# nlmsghdr (16) + cn_msg (20) precede proc_event: what, cpu, timestamp_ns, then data.
_HDR = 16 + 20
_EVENT_DATA = _HDR + 16


FORK, EXEC, EXIT = 0, 1, 2


@dataclass
class LineageLog:
    """The connector's notifications in arrival (kernel) order: (wall time, kind, a, b).

    FORK: a = parent tgid, b = child tgid (new processes only, not threads);
    EXEC: a = tgid; EXIT: a = tgid (whole processes only). ``wall`` is when the recorder
    received it.
    """

    records: list[tuple[float, int, int, int]] = field(default_factory=list)
    overruns: int = 0


class ProcConnector:
    """Listen to the process connector in a thread until :meth:`stop`."""

    def __init__(self) -> None:
        self.log = LineageLog()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Subscribe; raises OSError when the connector is unavailable (not root, no kernel support)."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        sock.bind((0, CN_IDX_PROC))
        sock.send(_control(PROC_CN_MCAST_LISTEN))
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="proc-connector", daemon=True)
        self._thread.start()

    def stop(self) -> LineageLog:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            try:
                self._sock.send(_control(PROC_CN_MCAST_IGNORE))
            except OSError:
                pass
            self._sock.close()
        return self.log

    def _run(self) -> None:
        assert self._sock is not None
        sock, log = self._sock, self.log
        while not self._stop.is_set():
            if not select.select([sock], [], [], 0.2)[0]:
                continue
            try:
                data = sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.overruns += 1
                    continue
                raise
            now = time.time()
            records = log.records
            offset = 0
            while offset + _EVENT_DATA <= len(data):
                length = struct.unpack_from("I", data, offset)[0]
                what = struct.unpack_from("I", data, offset + _HDR)[0]
                base = offset + _EVENT_DATA
                if what == PROC_EVENT_FORK:
                    _ppid, ptgid, cpid, ctgid = struct.unpack_from("4I", data, base)
                    if cpid == ctgid:  # a new process, not a thread
                        records.append((now, FORK, ptgid, ctgid))
                elif what == PROC_EVENT_EXEC:
                    pid, tgid = struct.unpack_from("2I", data, base)
                    records.append((now, EXEC, tgid, 0))
                elif what == PROC_EVENT_EXIT:
                    pid, tgid = struct.unpack_from("2I", data, base)
                    if pid == tgid:
                        records.append((now, EXIT, tgid, 0))
                if length <= 0:
                    break
                offset += (length + 3) & ~3


def _control(op: int) -> bytes:
    payload = struct.pack("I", op)
    cn_msg = struct.pack("IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(payload), 0) + payload
    return struct.pack("IHHII", 16 + len(cn_msg), NLMSG_DONE, 0, 0, os.getpid()) + cn_msg


@dataclass(frozen=True)
class Span:
    """pid ``pid`` belonged to root ``root``'s tree between records ``first`` and ``last``.

    ``first``/``last`` index :attr:`LineageLog.records` (its fork and its exit; ``last``
    is past the end for a process still alive); ``start``/``end`` are their wall times.
    """

    pid: int
    root: int
    first: int
    last: int
    start: float
    end: float

    def holds(self, index: int) -> bool:
        return self.first < index < self.last


def members(log: LineageLog, roots: Iterable[tuple[int, float]]) -> dict[int, list[Span]]:
    """Descendants of ``roots`` ((pid, wall time it was started)), with their spans.

    Records are replayed in kernel order; a child joins the tree when its parent is in it
    at that moment, and leaves when it exits (pids are reused, on a busy machine within
    milliseconds). A root joins at its own fork (the recorder's ``Popen``).
    """
    pending = dict(roots)
    live: dict[int, tuple[int, int, float]] = {}  # pid -> (root, first, since)
    spans: dict[int, list[Span]] = {}

    def close(pid: int, index: int, wall: float) -> None:
        root, first, since = live.pop(pid)
        spans.setdefault(pid, []).append(Span(pid, root, first, index, since, wall))

    for index, (wall, kind, a, b) in enumerate(log.records):
        if kind == FORK:
            if b in live:  # its exit was lost: the pid is somebody else's now
                close(b, index, wall)
            if b in pending and abs(wall - pending[b]) < 5.0:
                live[b] = (b, index, wall)
                del pending[b]
            elif a in live:
                live[b] = (live[a][0], index, wall)
        elif kind == EXIT and a in live:
            close(a, index, wall)
    end = len(log.records)
    for pid in list(live):
        close(pid, end, float("inf"))
    return spans


def exec_records(log: LineageLog) -> dict[int, list[tuple[float, int]]]:
    """(wall time, record index) of each pid's execs."""
    out: dict[int, list[tuple[float, int]]] = {}
    for index, (wall, kind, a, _b) in enumerate(log.records):
        if kind == EXEC:
            out.setdefault(a, []).append((wall, index))
    return out


def members_from_events(events: Iterable[dict], roots: Iterable[int]) -> set[int]:
    """Fallback: pids reachable from ``roots`` through the events' ppid (events in time order)."""
    inside = set(roots)
    for event in events:
        if event.get("ppid") in inside:
            inside.add(event["pid"])
    return inside
