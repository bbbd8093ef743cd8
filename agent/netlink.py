"""The netlink process-connector capture backend: real-time exec events without eBPF.

The kernel's proc connector (``NETLINK_CONNECTOR``, group ``CN_IDX_PROC``) multicasts a
message for every exec, fork and exit. A reader process (:class:`Reader`, started by the
backend) receives each exec notification and reads /proc/PID at once
(:func:`agent.process.read_process`), while the process is still alive, then streams the
built event to the agent; :meth:`NetlinkBackend.poll` hands them to the agent loop.

What it needs: Linux with ``CONFIG_PROC_EVENTS`` (every distribution kernel), the agent
in the initial user and pid namespaces, and ``CAP_NET_ADMIN`` (the kernel silently ignores
anyone else's subscription; :meth:`~NetlinkBackend.start` waits for the kernel's
acknowledgement and raises :class:`~schemas.errors.CaptureError` without one).

What it cannot do, by construction: the kernel sends only pids. A process that exits
before the reader gets to it leaves no command line: a zombie is still reported (name,
parent, ``cmdline_unavailable`` flag), a process already reaped is counted under
``drops()["exited"]``, never reported empty. A receive-buffer overrun (``ENOBUFS``)
loses an unknown number of notifications; it is counted under ``drops()["overrun"]``
and logged. Events waiting for :meth:`poll` beyond ``queue_limit`` are counted under
``drops()["queue_full"]``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from agent.enrich import Enricher
from agent.process import DEFAULT_MAX_CMDLINE_BYTES, Grabbed, finish, grab
from ruleless.settings import AgentSettings
from schemas.errors import CaptureError
from schemas.events import RawEvent, decode, encode

log = logging.getLogger(__name__)

SOURCE = "netlink"

# include/uapi/linux/netlink.h, connector.h, cn_proc.h
NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
PROC_EVENT_NONE = 0x00000000
PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_EXIT = 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_PROC_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns (aligned: 16 bytes)
_ACK_TIMEOUT_S = 2.0
DEFAULT_RCVBUF_BYTES = 16 << 20
DEFAULT_QUEUE_LIMIT = 200_000
REALTIME_PRIORITY = 10
READER_START_TIMEOUT_S = 20.0
PIPE_BYTES = 1 << 20
RECEIVE_BATCH = 64
WAKE_INTERVAL_S = 0.2  # how often the reader checks for SIGTERM or a dead agent
MAX_READERS = 8


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One proc connector notification.

    ``args`` are the union's first u32 words: exec (pid, tgid), fork (parent pid,
    parent tgid, child pid, child tgid), exit (pid, tgid, exit code, signal, parent pid,
    parent tgid), ack (err). ``timestamp_ns`` is CLOCK_MONOTONIC. ``ack`` is the
    connector message's ack field: an acknowledgement carries the subscriber's + 1.
    """

    what: int
    cpu: int
    timestamp_ns: int
    args: tuple[int, ...]
    ack: int = 0


def subscription(op: int, seq: int = 0, port_id: int = 0, events: int | None = None, ack: int = 0) -> bytes:
    """A netlink message that (un)subscribes to the proc connector.

    With ``events`` (a PROC_EVENT_* mask), kernels ≥ 6.6 deliver only those events to
    this socket; older kernels ignore the message entirely, so send it only after a plain
    subscription (which every kernel acknowledges). The kernel answers with ``ack`` + 1.
    """
    body = struct.pack("=I", op) if events is None else struct.pack("=II", op, events)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, ack, len(body), 0) + body
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, seq, port_id) + cn


def parse_messages(data: bytes | memoryview) -> list[ProcEvent]:
    """The proc connector events in one datagram; other connectors' messages are skipped.

    Raises nothing: truncated or foreign messages are ignored.
    """
    events: list[ProcEvent] = []
    offset = 0
    size = len(data)
    while offset + _NLMSGHDR.size <= size:
        length = _NLMSGHDR.unpack_from(data, offset)[0]
        if length < _NLMSGHDR.size or offset + length > size:
            break
        event = _parse_cn(data, offset + _NLMSGHDR.size, offset + length)
        if event is not None:
            events.append(event)
        offset += (length + 3) & ~3
    return events


def _parse_cn(data: bytes | memoryview, start: int, end: int) -> ProcEvent | None:
    if start + _CN_MSG.size + _PROC_EVENT_HEAD.size > end:
        return None
    idx, val, _seq, ack, length, _flags = _CN_MSG.unpack_from(data, start)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return None
    head = start + _CN_MSG.size
    what, cpu, ts = _PROC_EVENT_HEAD.unpack_from(data, head)
    body = head + _PROC_EVENT_HEAD.size
    words = min((end - body) // 4, (head + length - body) // 4, 6)
    args = struct.unpack_from(f"={max(words, 0)}I", data, body) if words > 0 else ()
    return ProcEvent(what=what, cpu=cpu, timestamp_ns=ts, args=args, ack=ack)


class NetlinkBackend:
    """Capture execs from the kernel's proc connector.

    ``start()`` subscribes (raising CaptureError if the kernel does not acknowledge) and
    starts the reader process (:func:`main`), which reads /proc for every exec and
    streams the built events back over a pipe; ``poll()`` returns the events received
    since the last call, in the kernel's order; ``stop()`` ends the reader and closes
    everything. ``drops()`` counts what could not be reported, by reason. ``poll()``
    raises CaptureError if the reader died.

    Why a process and not a thread: the reader races each exec'd process to its /proc
    entry, and a short-lived one lives well under a millisecond. A reader thread would
    share the GIL with the agent loop; a loop thread holding the GIL while preempted
    stalled the reader for up to 20 ms in a 5,000-exec burst (27 processes lost). The
    reader process runs alone under SCHED_FIFO when allowed.

    Why one reader per CPU: a reader woken on another CPU still races the process, and
    on a shared VM its wake-up took up to 10 ms (1–5 % of a burst lost, 2026-11-30). A
    real-time reader pinned to the CPU where the exec happened (the notification names
    it) preempts that very process until it has read it, so the process cannot exit
    first. ``agent.netlink_readers`` bounds their number (0 = one per CPU, at most
    :data:`MAX_READERS`); the first reader also takes the execs of CPUs without one of
    their own, racing them as before.
    """

    name = "netlink"

    def __init__(
        self,
        agent: AgentSettings,
        *,
        proc_root: str | Path = "/proc",
        max_cmdline_bytes: int = DEFAULT_MAX_CMDLINE_BYTES,
        rcvbuf_bytes: int = DEFAULT_RCVBUF_BYTES,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        self._agent = agent
        self._root = str(proc_root)
        self._max_cmdline = max_cmdline_bytes
        self._rcvbuf = rcvbuf_bytes
        self._queue_limit = queue_limit
        self._queue: deque[RawEvent] = deque()
        self._reader_stats: dict[int, dict[str, int]] = {}  # by reader index
        self._queue_full = 0
        self._children: list[subprocess.Popen[bytes]] = []
        self._threads: list[threading.Thread] = []
        self._failure: str | None = None
        self._stopping = False

    @property
    def execs_seen(self) -> int:
        """Exec notifications the readers took (reported, dropped or skipped)."""
        return sum(stats.get("seen", 0) for stats in self._reader_stats.values())

    @property
    def reader_pids(self) -> list[int]:
        """The reader processes' pids while they run (for CPU accounting)."""
        return [child.pid for child in self._children]

    def start(self) -> None:
        """Subscribe to exec notifications and start the reader processes.

        Raises CaptureError when the socket cannot be opened, the kernel does not
        acknowledge the subscription (missing CAP_NET_ADMIN, not in the initial
        namespaces, or a kernel without CONFIG_PROC_EVENTS), or a reader fails to start.
        """
        self._stopping = False
        self._failure = None
        cpus = reader_cpus(self._agent.netlink_readers)
        ready = ""
        try:
            for index, cpu in enumerate(cpus):
                child = self._spawn_reader(cpu, cpus, catch_all=index == 0)
                self._children.append(child)
                ready = self._await_ready(child)
        except CaptureError:
            self.stop()
            raise
        for index, child in enumerate(self._children):
            thread = threading.Thread(target=self._pump, args=(index, child), name=f"netlink-pump-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("netlink: subscribed to the proc connector; %d readers pinned to CPUs %s, %s", len(cpus), cpus, ready)

    def poll(self) -> list[RawEvent]:
        """The events received since the previous call, oldest first (readers of
        different CPUs are merged by the exec's time)."""
        if self._failure is not None:
            raise CaptureError(f"netlink reader failed: {self._failure}")
        events: list[RawEvent] = []
        while self._queue:
            events.append(self._queue.popleft())
        if len(self._children) > 1:
            events.sort(key=lambda event: event.ts)
        return events

    def stop(self) -> None:
        """End the readers (unsubscribing), collect what they already sent, and release
        everything. Idempotent; events they sent remain available to :meth:`poll`."""
        self._stopping = True
        children, self._children = self._children, []
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        for child in children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            if child.stdout is not None:
                child.stdout.close()

    def drops(self) -> dict[str, int]:
        """Notifications that did not become events, by reason (running totals)."""
        drops: dict[str, int] = {}
        for stats in list(self._reader_stats.values()):
            for key, value in stats.items():
                if key != "seen":
                    drops[key] = drops.get(key, 0) + value
        drops["queue_full"] = self._queue_full
        return drops

    def _spawn_reader(self, cpu: int | None, covered: list[int], catch_all: bool) -> subprocess.Popen[bytes]:
        config = {
            "rcvbuf_bytes": self._rcvbuf,
            "agent": self._agent.model_dump(mode="json"),
            "proc_root": self._root,
            "max_cmdline_bytes": self._max_cmdline,
            "cpu": cpu,
            "covered": covered,
            "catch_all": catch_all,
        }
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "agent.netlink", json.dumps(config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
            )  # fmt: skip
        except OSError as exc:
            raise CaptureError(f"cannot start the netlink reader: {exc}") from None
        assert child.stdout is not None
        _grow_pipe(child.stdout.fileno())
        return child

    def _await_ready(self, child: subprocess.Popen[bytes]) -> str:
        """Wait for the reader's first line: "R" + details once it is subscribed, or "X"
        + why it could not subscribe. Raises CaptureError unless ready."""
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], READER_START_TIMEOUT_S)
        line = child.stdout.readline() if ready else b""
        if line.startswith(b"R"):
            return line[1:].decode().strip()
        child.kill()
        child.wait()
        if line.startswith(b"X"):
            raise CaptureError(line[1:].decode("utf-8", "replace").strip())
        raise CaptureError(f"the netlink reader did not start (exit code {child.returncode})")

    def _pump(self, index: int, child: subprocess.Popen[bytes]) -> None:
        """Move one reader's lines into the queue until it exits."""
        assert child.stdout is not None
        try:
            for line in child.stdout:
                self._take(index, line)
        except Exception as exc:  # noqa: BLE001 - surfaced by poll(): a dead pump must stop the agent
            self._failure = f"{type(exc).__name__}: {exc}"
            log.error("netlink: reader %d's pump stopped: %s", index, self._failure)
        if not self._stopping and self._failure is None:
            self._failure = f"reader {index} exited (code {child.wait()})"
            log.error("netlink: %s", self._failure)

    def _take(self, index: int, line: bytes) -> None:
        kind, body = line[:1], line[1:]
        if kind == b"E":
            if len(self._queue) >= self._queue_limit:
                self._queue_full += 1
                return
            self._queue.append(decode(body))
        elif kind == b"S":
            self._reader_stats[index] = {str(k): int(v) for k, v in json.loads(body).items()}


def reader_cpus(wanted: int) -> list[int | None]:
    """The CPUs to pin readers to: the first ``wanted`` this process may run on (0 = all,
    at most :data:`MAX_READERS`); ``[None]`` (one unpinned reader) where affinity is
    unavailable."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return [None]
    count = min(len(allowed), wanted or MAX_READERS)
    return list(allowed[:count])


class Reader:
    """The reader process's loop: exec notifications in, built events out (one line each).

    Lines on ``out``: ``R`` once ready, ``E`` + the encoded event, ``S`` + JSON running
    totals (``seen``, ``exited``, ``overrun``) whenever they changed, at most twice a
    second and once more at exit.
    """

    def __init__(
        self, sock: socket.socket, agent: AgentSettings, out: int, proc_root: str, max_cmdline_bytes: int,
        cpu: int | None = None, covered: frozenset[int] = frozenset(), catch_all: bool = True,
    ) -> None:  # fmt: skip
        """With ``cpu``, only execs that happened on that CPU are this reader's, plus (when
        ``catch_all``) those of CPUs not in ``covered`` (no reader of their own)."""
        self._cpu = cpu
        self._covered = covered
        self._catch_all = catch_all
        self._sock = sock
        self._out = out
        self._root = proc_root
        self._max_cmdline = max_cmdline_bytes
        self._enricher = Enricher(agent, SOURCE, proc_root)
        self._stats = {"seen": 0, "exited": 0, "overrun": 0}
        self._sent_stats: dict[str, int] = {}
        self._stats_at = 0.0
        self.stopping = False

    def run(self, parent: int) -> None:
        """Read until told to stop, the parent (``parent`` pid) dies, or the pipe breaks."""
        buf = bytearray(65536)
        self._write(f"Rreceive buffer {_rcvbuf_of(self._sock) >> 10} KiB\n".encode())
        while not self.stopping and os.getppid() == parent:
            execs = self._receive(buf)
            # Grab every waiting process's command line before anything slower: when a
            # burst queues several notifications, the last one's process is still alive.
            grabbed = [(event, grab(_tgid(event), self._root, self._max_cmdline)) for event in execs]
            for event, held in grabbed:
                self._on_exec(event, held)
            self._report(force=False)
        self._report(force=True)

    def _receive(self, buf: bytearray) -> list[ProcEvent]:
        """Exec notifications: wait for one datagram, then take those already queued."""
        execs: list[ProcEvent] = []
        # select() for the wait, then non-blocking reads: a socket timeout would make
        # Python wait before every read, even with MSG_DONTWAIT.
        if not select.select([self._sock], [], [], WAKE_INTERVAL_S)[0]:
            return execs
        while len(execs) < RECEIVE_BATCH:
            try:
                size = self._sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._stats["overrun"] += 1
                break
            execs.extend(e for e in parse_messages(memoryview(buf)[:size]) if e.what == PROC_EVENT_EXEC and e.args and self._mine(e.cpu))
        return execs

    def _mine(self, cpu: int) -> bool:
        return self._cpu is None or cpu == self._cpu or (self._catch_all and cpu not in self._covered)

    def _on_exec(self, event: ProcEvent, held: Grabbed | None) -> None:
        self._stats["seen"] += 1
        info = finish(held, self._max_cmdline) if held is not None else None
        if info is None:
            self._stats["exited"] += 1
            return
        ts = (time.time_ns() - time.monotonic_ns() + event.timestamp_ns) / 1e9
        self._write(b"E" + encode(self._enricher.exec_event(info, ts, str(event.timestamp_ns))) + b"\n")

    def _report(self, force: bool) -> None:
        now = time.monotonic()
        if self._stats == self._sent_stats or (not force and now - self._stats_at < 0.5):
            return
        self._stats_at = now
        self._sent_stats = dict(self._stats)
        self._write(b"S" + json.dumps(self._stats).encode() + b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._out, view) :]


def main(argv: list[str]) -> int:
    """Entry point of the reader process (``python -m agent.netlink CONFIG_JSON``)."""
    config = json.loads(argv[0])
    out = sys.stdout.fileno()
    try:
        sock = _open_socket(int(config["rcvbuf_bytes"]))
        _subscribe(sock)
    except CaptureError as exc:
        os.write(out, b"X" + str(exc).encode() + b"\n")
        return 1
    sock.settimeout(None)  # the reader waits in select(); see Reader._receive
    cpu = config.get("cpu")
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # see NetlinkBackend: preempt the exec'ing process on its own CPU
    reader = Reader(
        sock, AgentSettings.model_validate(config["agent"]), out,
        str(config["proc_root"]), int(config["max_cmdline_bytes"]),
        cpu, frozenset(c for c in config.get("covered", []) if c is not None), bool(config.get("catch_all", True)),
    )  # fmt: skip

    def _stop(signum: int, frame: object) -> None:
        reader.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the agent, which stops us
    _raise_priority()
    try:
        reader.run(os.getppid())
    except BrokenPipeError:
        return 0  # the agent is gone
    return 0


def _tgid(event: ProcEvent) -> int:
    return event.args[1] if len(event.args) > 1 else event.args[0]


def _raise_priority() -> None:
    """Run the calling thread under SCHED_FIFO when allowed.

    The reader races every exec'd process to its /proc entry: a process like ``true``
    lives well under a millisecond, and on a busy machine a normal-priority reader loses
    that race for a few percent of a burst. A real-time reader is woken ahead of them. It
    only runs when the kernel has notifications for it, and the kernel's RT throttling
    (sched_rt_runtime_us) still bounds it.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except (OSError, AttributeError) as exc:
        log.info("netlink: reader runs at normal priority (%s); short-lived processes may be missed", exc)


def _grow_pipe(fd: int) -> None:
    """A 1 MiB pipe lets the reader run ahead while the agent is busy (best effort:
    capped by /proc/sys/fs/pipe-max-size for non-root)."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:
        pass


def _open_socket(rcvbuf: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_CONNECTOR)
    except OSError as exc:
        raise CaptureError(f"cannot open a NETLINK_CONNECTOR socket: {exc}") from None
    try:
        sock.bind((0, CN_IDX_PROC))
    except OSError as exc:
        sock.close()
        raise CaptureError(f"cannot join the proc connector group: {exc}") from None
    _grow_rcvbuf(sock, rcvbuf)
    sock.settimeout(0.2)  # lets the reader notice SIGTERM or a dead agent
    return sock


def _grow_rcvbuf(sock: socket.socket, size: int) -> None:
    """A large receive buffer absorbs exec bursts while the reader reads /proc.

    SO_RCVBUFFORCE (root) passes net.core.rmem_max; otherwise SO_RCVBUF, capped by it.
    """
    so_rcvbufforce = getattr(socket, "SO_RCVBUFFORCE", 33)
    try:
        sock.setsockopt(socket.SOL_SOCKET, so_rcvbufforce, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _rcvbuf_of(sock: socket.socket) -> int:
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def _subscribe(sock: socket.socket) -> None:
    """Subscribe, wait for the kernel's acknowledgement, then narrow to exec events.

    The kernel acknowledges a plain subscription with a PROC_EVENT_NONE message carrying
    an errno. It does not acknowledge a filtered one to a filtered listener, and kernels
    before 6.6 ignore the filtered form, so the filter is sent second, best effort.
    """
    port_id = sock.getsockname()[0]
    seq = int(time.monotonic_ns() & 0x7FFFFFFF)
    nonce = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    try:
        sock.sendto(subscription(PROC_CN_MCAST_LISTEN, seq, port_id, ack=nonce), (0, 0))
    except OSError as exc:
        raise CaptureError(f"cannot subscribe to the proc connector: {exc}") from None
    _await_ack(sock, nonce + 1)
    try:
        sock.sendto(subscription(PROC_CN_MCAST_LISTEN, seq + 1, port_id, events=PROC_EVENT_EXEC), (0, 0))
    except OSError as exc:
        log.debug("netlink: exec-only filter refused (%s); filtering in user space", exc)


def _await_ack(sock: socket.socket, ack: int) -> None:
    """Wait for the acknowledgement carrying ``ack`` (acks go to every listener, so
    another agent's are told apart by this nonce)."""
    buf = bytearray(65536)
    deadline = time.monotonic() + _ACK_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            size = sock.recv_into(buf)
        except TimeoutError:
            continue
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                continue
            raise CaptureError(f"proc connector: {exc}") from None
        for event in parse_messages(memoryview(buf)[:size]):
            if event.what != PROC_EVENT_NONE or event.ack != ack:
                continue
            err = event.args[0] if event.args else 0
            if err:
                raise CaptureError(f"proc connector refused the subscription: {os.strerror(err)}")
            return
    raise CaptureError(
        "the proc connector did not acknowledge the subscription within "
        f"{_ACK_TIMEOUT_S:.0f}s (needs CAP_NET_ADMIN in the initial user and pid namespaces "
        "and a kernel with CONFIG_PROC_EVENTS)"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
