"""The eBPF capture backend: execs with argv from the kernel, and TCP connects/listens.

Loads the BCC programs in ``bpf/`` (``exec.bpf.c``, ``net.bpf.c``; record layouts in
``bpf/events.h``) and turns their records into raw events:

- ``exec``: argv and filename come from the execve syscall itself (so a process that
  lives a microsecond still has its command line), success from sched_process_exec, the
  parent and its comm from sched_process_fork. /proc adds what the kernel side does not
  carry, when the process is still there: resolved exe path, start time, ancestors
  beyond the parent, cgroup path.
- ``connect`` / ``listen``: TCP state changes with both addresses and ports, attributed
  to the process that called connect()/listen(); the event carries that process's exec
  context (command line, parent, exec_id) so it scores like the exec it belongs to.

Output: the BPF ring buffer when the kernel has it (records arrive in order), a per-CPU
perf buffer otherwise (records are ordered by timestamp here). Nothing is silently lost:
records the kernel buffer refused are counted per CPU in the ``drops`` map, perf-buffer
losses by BCC's lost callback, and both appear in :meth:`EbpfBackend.drops`.

Needs root, BCC (Debian: python3-bpfcc), kernel headers and tracefs — ``bpf/setup-host.sh``
does all three. BCC's Python module lives in the system's dist-packages, which is
appended (never prepended) to ``sys.path`` so it cannot shadow the virtualenv.
"""

from __future__ import annotations

import ctypes
import importlib
import ipaddress
import logging
import os
from functools import lru_cache
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.capture import make_exec_id, stable_event_id
from agent.process import Lineage, ProcessInfo, read_process
from agent.procfs import (
    FLAG_ARGV_TRUNCATED,
    FLAG_CMDLINE_UNAVAILABLE,
    container_id_from_cgroup,
    split_cmdline,
)
from agent.users import user_name
from agent.workload import WorkloadResolver
from ruleless.settings import AgentSettings
from schemas.errors import CaptureError
from schemas.events import RawEvent

log = logging.getLogger(__name__)

SOURCE = "ebpf"
BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
SYSTEM_DIST_PACKAGES = "/usr/lib/python3/dist-packages"

# Documented bounds of what the kernel side copies (bpf/events.h); beyond them the event
# is flagged argv_truncated.
ARGV_MAX_ARGS = 32
ARGV_MAX_BYTES = 4096
OUTPUT_PAGES = 2048  # 8 MiB ring buffer (4 KiB pages): ~2,000 full-size argv records
# The ring buffer is read every CONSUME_INTERVAL_S without kernel wake-ups
# (BPF_RB_NO_WAKEUP): argv is already in the record, so reading it 20 ms later loses
# nothing, and per-record wake-ups slowed an exec burst by a third on 2 CPUs. 8 MiB
# holds 20 ms of ~100,000 execs/s.
CONSUME_INTERVAL_S = 0.02
BPF_RB_NO_WAKEUP = 1
PERF_PAGES_PER_CPU = 512

# Record kinds and flags, as in bpf/events.h.
RECORD_ARGS, RECORD_EXEC, RECORD_CONNECT, RECORD_LISTEN = 1, 2, 3, 4
K_ARGV_TRUNCATED = 1 << 0
K_ARGV_UNREADABLE = 1 << 1
K_CONNECT_FAILED = 1 << 3
K_NO_FORK_INFO = 1 << 4
DROP_SLOTS = ("args", "exec", "net")

# Flags this backend adds to events.
FLAG_ARGV_FROM_PROC = "argv_from_proc"  # the kernel-side argv was lost; /proc's is used
FLAG_CONNECT_FAILED = "connect_failed"
FLAG_START_ESTIMATED = "start_time_estimated"  # process gone: exec_id from the fork time

_ARGS_HEAD = struct.Struct("=IIQIHH256s")  # kind, tid, ts, flags, argc, args_size, filename
_EXEC = struct.Struct("=IIIIQQQIIII16s16s256s")
_NET = struct.Struct("=IIIIIIQQHHHH16s16s16s")
PENDING_ARGS_TTL_NS = 5_000_000_000
PROCESS_CACHE_SIZE = 16_384
DEFAULT_QUEUE_LIMIT = 200_000


@dataclass(frozen=True, slots=True)
class ArgsRecord:
    tid: int
    ts_ns: int
    flags: int
    argc: int
    filename: bytes
    args: bytes


@dataclass(frozen=True, slots=True)
class ExecRecord:
    pid: int
    old_tid: int
    ppid: int
    ts_ns: int
    fork_boot_ns: int
    cgroup_id: int
    uid: int
    gid: int
    flags: int
    comm: str
    parent_comm: str
    filename: str


@dataclass(frozen=True, slots=True)
class NetRecord:
    kind: int
    pid: int
    tid: int
    uid: int
    gid: int
    flags: int
    ts_ns: int
    cgroup_id: int
    family: int
    sport: int
    dport: int
    saddr: str
    daddr: str
    comm: str


Record = ArgsRecord | ExecRecord | NetRecord


def parse_record(data: bytes) -> Record | None:
    """One record from the kernel side, or None for an unknown kind or a short buffer."""
    if len(data) < 4:
        return None
    kind = struct.unpack_from("=I", data)[0]
    if kind == RECORD_ARGS and len(data) >= _ARGS_HEAD.size:
        _, tid, ts, flags, argc, size, filename = _ARGS_HEAD.unpack_from(data)
        args = data[_ARGS_HEAD.size : _ARGS_HEAD.size + size]
        return ArgsRecord(tid, ts, flags, argc, _cstring_bytes(filename), args)
    if kind == RECORD_EXEC and len(data) >= _EXEC.size:
        (_, pid, old_tid, ppid, ts, fork_ns, cgroup, uid, gid, flags, _pad,
         comm, parent_comm, filename) = _EXEC.unpack_from(data)  # fmt: skip
        return ExecRecord(
            pid, old_tid, ppid, ts, fork_ns, cgroup, uid, gid, flags,
            _cstring(comm), _cstring(parent_comm), _cstring(filename),
        )  # fmt: skip
    if kind in (RECORD_CONNECT, RECORD_LISTEN) and len(data) >= _NET.size:
        (_, pid, tid, uid, gid, flags, ts, cgroup, family, sport, dport, _pad,
         saddr, daddr, comm) = _NET.unpack_from(data)  # fmt: skip
        return NetRecord(
            kind, pid, tid, uid, gid, flags, ts, cgroup, family, sport, dport,
            _address(family, saddr), _address(family, daddr), _cstring(comm),
        )  # fmt: skip
    return None


def split_args(record: ArgsRecord) -> tuple[list[str], list[str]]:
    """The argv of an args record and its flags (argv_truncated, argv_not_utf8)."""
    return split_cmdline(record.args, truncated=bool(record.flags & K_ARGV_TRUNCATED))


def _cstring_bytes(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def _cstring(raw: bytes) -> str:
    return _cstring_bytes(raw).decode("utf-8", "backslashreplace")


def _address(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    address = ipaddress.IPv6Address(raw[:16])
    return str(address.ipv4_mapped or address)


class ExecAssembler:
    """Pairs each exec record with the args record of the thread that called execve.

    Feed records in timestamp order. An args record waits for its exec (keyed by
    thread id); a newer args record of the same thread replaces it (the older execve
    failed, e.g. a shell searching PATH); args older than PENDING_ARGS_TTL_NS are
    discarded as failed execs.
    """

    def __init__(self) -> None:
        self._pending: dict[int, ArgsRecord] = {}

    def add_args(self, record: ArgsRecord) -> None:
        self._pending[record.tid] = record

    def take(self, record: ExecRecord) -> ArgsRecord | None:
        """The args that led to ``record``, if they were seen."""
        args = self._pending.pop(record.old_tid, None)
        if args is not None and args.ts_ns > record.ts_ns:
            return None
        return args

    def expire(self, now_ns: int) -> None:
        stale = [tid for tid, args in self._pending.items() if now_ns - args.ts_ns > PENDING_ARGS_TTL_NS]
        for tid in stale:
            del self._pending[tid]

    def __len__(self) -> int:
        return len(self._pending)


def import_bcc() -> ModuleType:
    """BCC's Python module; CaptureError when it is not installed."""
    try:
        return importlib.import_module("bcc")
    except ImportError:
        pass
    if SYSTEM_DIST_PACKAGES not in sys.path and os.path.isdir(SYSTEM_DIST_PACKAGES):
        # Appended, never prepended: Debian's packages must not shadow the virtualenv's.
        sys.path.append(SYSTEM_DIST_PACKAGES)
    try:
        return importlib.import_module("bcc")
    except ImportError as exc:
        raise CaptureError(f"BCC is not installed ({exc}); run bpf/setup-host.sh") from None


def cflags(ringbuf: bool, **defines: int) -> list[str]:
    """Compiler flags for the programs: include path, output kind and bounds as -D."""
    flags = [f"-I{BPF_DIR}", f"-DARGV_MAX_ARGS={ARGV_MAX_ARGS}", f"-DARGV_MAX_BYTES={ARGV_MAX_BYTES}"]
    flags += [f"-D{name}={value}" for name, value in defines.items()]
    if ringbuf:
        flags.append("-DUSE_RINGBUF=1")
    return flags


class CgroupPaths:
    """cgroup v2 id → path, by the directory inode under the cgroup2 mount (cached).

    Used when a process is gone before /proc/PID/cgroup could be read.
    """

    def __init__(self) -> None:
        self._root = _cgroup2_mount()
        self._paths: dict[int, str] = {}
        self._scanned_at = 0.0

    def path(self, cgroup_id: int) -> str | None:
        if self._root is None or not cgroup_id:
            return None
        if cgroup_id not in self._paths and time.monotonic() - self._scanned_at > 1.0:
            self._scan()
        return self._paths.get(cgroup_id)

    def _scan(self) -> None:
        assert self._root is not None
        self._scanned_at = time.monotonic()
        root = str(self._root)
        for directory, _subdirs, _files in os.walk(root):
            try:
                inode = os.stat(directory).st_ino
            except OSError:
                continue
            self._paths[inode] = "/" + os.path.relpath(directory, root).lstrip(".")


def _cgroup2_mount() -> Path | None:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


class EbpfBackend:
    """Capture with the BCC programs in bpf/.

    ``start()`` compiles and attaches them (ring buffer first, perf buffer if the kernel
    refuses it) and starts the reader thread; ``poll()`` returns the events built since
    the last call, oldest first; ``stop()`` detaches everything. ``drops()`` has running
    totals of records lost by reason: ``kernel_<slot>`` (the kernel's buffer was full),
    ``perf_lost``, ``queue_full``. ``capture_net`` False skips the TCP program.
    """

    name = "ebpf"

    def __init__(
        self,
        agent: AgentSettings,
        *,
        capture_net: bool = True,
        proc_root: str | Path = "/proc",
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        prefer_ringbuf: bool = True,
    ) -> None:
        self._agent = agent
        self._capture_net = capture_net
        self._root = str(proc_root)
        self._queue_limit = queue_limit
        self._prefer_ringbuf = prefer_ringbuf
        self._lineage = Lineage(proc_root)
        self._workloads = WorkloadResolver(agent)
        self._cgroups = CgroupPaths()
        self._assembler = ExecAssembler()
        self._processes: OrderedDict[int, RawEvent] = OrderedDict()
        self._queue: deque[RawEvent] = deque()
        self._records: list[Record] = []
        self._programs: list[Any] = []
        self._ringbuf = False
        self._perf_lost = 0
        self._queue_full = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._failure: str | None = None
        self._clk_tck = os.sysconf("SC_CLK_TCK")
        self.execs_seen = 0

    @property
    def output_kind(self) -> str:
        """"ringbuf" or "perf", once started."""
        return "ringbuf" if self._ringbuf else "perf"

    def start(self) -> None:
        """Compile, attach and start reading. Raises CaptureError when eBPF is unusable
        here (not root, BCC or headers missing, tracepoints refused)."""
        if os.geteuid() != 0:
            raise CaptureError("eBPF needs root")
        bcc = import_bcc()
        if not Path("/sys/kernel/tracing/events/syscalls/sys_enter_execve").exists() and not Path(
            "/sys/kernel/debug/tracing/events/syscalls/sys_enter_execve"
        ).exists():
            raise CaptureError("tracefs is not mounted or lacks syscall tracepoints; run bpf/setup-host.sh")
        self._programs = self._load(bcc)
        self._stopping.clear()
        self._failure = None
        self._thread = threading.Thread(target=self._read_loop, name="ebpf-reader", daemon=True)
        self._thread.start()
        log.info(
            "ebpf: attached (%s; argv bound %d args / %d bytes; tcp %s)",
            self.output_kind, ARGV_MAX_ARGS, ARGV_MAX_BYTES, "on" if self._capture_net else "off",
        )  # fmt: skip

    def poll(self) -> list[RawEvent]:
        """Events built since the previous call, oldest first."""
        if self._failure is not None:
            raise CaptureError(f"ebpf reader failed: {self._failure}")
        events: list[RawEvent] = []
        while self._queue:
            events.append(self._queue.popleft())
        return events

    def stop(self) -> None:
        """Stop reading and detach the programs. Idempotent."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for program in self._programs:
            program.cleanup()
        self._programs = []

    def drops(self) -> dict[str, int]:
        """Records lost so far, by reason (kernel buffer full per record kind, perf
        buffer overflows, agent queue full)."""
        drops = {f"kernel_{slot}": 0 for slot in DROP_SLOTS}
        for program in self._programs:
            for index, values in program[b"drops"].items():
                if index.value < len(DROP_SLOTS):
                    drops[f"kernel_{DROP_SLOTS[index.value]}"] += sum(int(v) for v in values)
        drops["perf_lost"] = self._perf_lost
        drops["queue_full"] = self._queue_full
        return drops

    def _load(self, bcc: ModuleType) -> list[Any]:
        sources = [BPF_DIR / "exec.bpf.c"] + ([BPF_DIR / "net.bpf.c"] if self._capture_net else [])
        errors: list[str] = []
        for ringbuf in (True, False) if self._prefer_ringbuf else (False,):
            programs: list[Any] = []
            try:
                for source in sources:
                    programs.append(self._compile(bcc, source, ringbuf))
            except Exception as exc:  # BCC raises bare Exception for compile/attach failures
                for program in programs:
                    program.cleanup()
                errors.append(f"{'ring buffer' if ringbuf else 'perf buffer'}: {exc}")
                continue
            self._ringbuf = ringbuf
            if errors:
                log.warning("ebpf: ring buffer unavailable (%s); using perf buffers", errors[0])
            return programs
        raise CaptureError("cannot load the eBPF programs: " + "; ".join(errors))

    def _compile(self, bcc: ModuleType, source: Path, ringbuf: bool) -> Any:
        defines = {"OUTPUT_PAGES": OUTPUT_PAGES, "OUTPUT_FLAGS": BPF_RB_NO_WAKEUP if ringbuf else 0}
        program = bcc.BPF(src_file=str(source).encode(), cflags=cflags(ringbuf, **defines))
        if ringbuf:
            program[b"events"].open_ring_buffer(self._on_ringbuf)
        else:
            program[b"events"].open_perf_buffer(self._on_perf, page_cnt=PERF_PAGES_PER_CPU, lost_cb=self._on_lost)
        return program

    def _on_ringbuf(self, ctx: object, data: int, size: int) -> int:
        record = parse_record(ctypes.string_at(data, size))
        if record is not None:
            self._records.append(record)
        return 0

    def _on_perf(self, cpu: int, data: int, size: int) -> None:
        self._on_ringbuf(None, data, size)

    def _on_lost(self, lost: int) -> None:
        self._perf_lost += int(lost)

    def _read_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self._poll_kernel()
                records, self._records = self._records, []
                if not self._ringbuf:
                    records.sort(key=lambda r: r.ts_ns)
                for record in records:
                    self._handle(record)
                self._assembler.expire(time.monotonic_ns())
        except Exception as exc:  # surfaced by poll() in the agent's thread
            log.error("ebpf: reader stopped: %s", exc)
            self._failure = str(exc)

    def _poll_kernel(self) -> None:
        """Collect the records waiting in the kernel buffers (into ``self._records``)."""
        if self._ringbuf:
            self._stopping.wait(CONSUME_INTERVAL_S)
            for program in self._programs:
                program.ring_buffer_consume()
            return
        first, *others = self._programs
        first.perf_buffer_poll(100)
        for program in others:
            program.perf_buffer_poll(0)

    def _handle(self, record: Record) -> None:
        if isinstance(record, ArgsRecord):
            self._assembler.add_args(record)
            return
        event = self._exec_event(record) if isinstance(record, ExecRecord) else self._net_event(record)
        if event is None:
            return
        if len(self._queue) >= self._queue_limit:
            self._queue_full += 1
            return
        self._queue.append(event)

    def _exec_event(self, record: ExecRecord) -> RawEvent:
        self.execs_seen += 1
        args = self._assembler.take(record)
        info = read_process(record.pid, self._root)
        if info is not None and record.fork_boot_ns and not self._same_process(info, record.fork_boot_ns):
            info = None  # the pid was reused since: /proc describes someone else
        flags: list[str] = []
        if args is not None and not (args.flags & K_ARGV_UNREADABLE and not args.argc):
            argv, flags = split_args(args)
        elif info is not None and info.argv:
            argv, flags = info.argv, [FLAG_ARGV_FROM_PROC]
        else:
            argv, flags = [], [FLAG_CMDLINE_UNAVAILABLE]
        start_ticks = self._start_ticks(info, record.fork_boot_ns, record.ts_ns, flags)
        ppid = record.ppid or (info.stat.ppid if info is not None else 0)
        cgroup = info.cgroup if info is not None and info.cgroup else self._cgroup_text(record.cgroup_id)
        exec_id = make_exec_id(self._agent.host, start_ticks, record.pid)
        ancestors = self._ancestors(ppid, record.parent_comm)
        org_id, workload = self._workloads.resolve(cgroup)
        event = RawEvent(
            ts=_epoch(record.ts_ns),
            org_id=org_id,
            workload=workload,
            host=self._agent.host,
            event_type="exec",
            event_id=stable_event_id(exec_id, "exec", str(record.ts_ns)),
            pid=record.pid,
            ppid=ppid,
            uid=record.uid,
            user=user_name(record.uid),
            process_name=record.comm,
            exe=(info.exe if info is not None and info.exe else resolved(record.filename)) or None,
            cmdline=" ".join(argv),
            argv=argv,
            parent_process=ancestors[0] if ancestors else "",
            ancestors=ancestors,
            container_id=container_id_from_cgroup(cgroup) if cgroup else None,
            exec_id=exec_id,
            source=SOURCE,
            flags=flags or None,
        )
        self._remember(event)
        return event

    def _net_event(self, record: NetRecord) -> RawEvent:
        base = self._processes.get(record.pid) or self._process_from_proc(record)
        connect = record.kind == RECORD_CONNECT
        flags = [FLAG_CONNECT_FAILED] if record.flags & K_CONNECT_FAILED else []
        exec_id = base.exec_id or make_exec_id(self._agent.host, 0, record.pid)
        event_type = "connect" if connect else "listen"
        return RawEvent(
            ts=_epoch(record.ts_ns),
            org_id=base.org_id,
            workload=base.workload,
            host=self._agent.host,
            event_type=event_type,
            event_id=stable_event_id(exec_id, event_type, f"{record.ts_ns}:{record.sport}:{record.dport}"),
            pid=record.pid,
            ppid=base.ppid,
            uid=record.uid,
            user=user_name(record.uid),
            # The process's name, not the calling thread's (e.g. librdkafka's "rdk:broker-1").
            process_name=base.process_name or record.comm,
            exe=base.exe,
            cmdline=base.cmdline,
            argv=base.argv,
            parent_process=base.parent_process,
            ancestors=base.ancestors,
            local_ip=record.saddr,
            local_port=record.sport,
            remote_ip=record.daddr if connect else None,
            remote_port=record.dport if connect else None,
            container_id=base.container_id,
            exec_id=exec_id,
            source=SOURCE,
            flags=flags or None,
        )

    def _process_from_proc(self, record: NetRecord) -> RawEvent:
        """Exec context for a process that exec'd before the agent started."""
        info = read_process(record.pid, self._root)
        flags: list[str] = []
        argv = info.argv if info is not None else []
        start_ticks = self._start_ticks(info, 0, record.ts_ns, flags)
        ppid = info.stat.ppid if info is not None else 0
        cgroup = info.cgroup if info is not None and info.cgroup else self._cgroup_text(record.cgroup_id)
        org_id, workload = self._workloads.resolve(cgroup)
        ancestors = self._lineage.ancestors(ppid)
        base = RawEvent(
            ts=_epoch(record.ts_ns), org_id=org_id, workload=workload, host=self._agent.host,
            pid=record.pid, ppid=ppid, uid=record.uid,
            process_name=info.stat.comm if info is not None else record.comm,
            exe=info.exe if info is not None else None, cmdline=" ".join(argv), argv=argv,
            parent_process=ancestors[0] if ancestors else "", ancestors=ancestors,
            container_id=container_id_from_cgroup(cgroup) if cgroup else None,
            exec_id=make_exec_id(self._agent.host, start_ticks, record.pid),
        )  # fmt: skip
        if info is not None:
            self._remember(base)
        return base

    def _same_process(self, info: ProcessInfo, fork_boot_ns: int) -> bool:
        ticks = fork_boot_ns * self._clk_tck // 1_000_000_000
        return abs(info.stat.start_ticks - ticks) <= 1

    def _start_ticks(self, info: ProcessInfo | None, fork_boot_ns: int, exec_ts_ns: int, flags: list[str]) -> int:
        """Start time in clock ticks: exact from /proc, else estimated from the fork (or,
        lacking that, the exec) time and flagged."""
        if info is not None:
            return info.stat.start_ticks
        flags.append(FLAG_START_ESTIMATED)
        boot_ns = fork_boot_ns or exec_ts_ns + _boottime_offset_ns()
        return boot_ns * self._clk_tck // 1_000_000_000

    def _ancestors(self, ppid: int, parent_comm: str) -> list[str]:
        """Ancestors from /proc, trusted when their first one is the parent the kernel
        named at fork; else just that parent (it has exited, or its pid was reused)."""
        chain = self._lineage.ancestors(ppid) if ppid else []
        if not parent_comm or (chain and chain[0] == parent_comm):
            return chain
        return [parent_comm]

    def _cgroup_text(self, cgroup_id: int) -> str:
        path = self._cgroups.path(cgroup_id)
        return f"0::{path}\n" if path else ""

    def _remember(self, event: RawEvent) -> None:
        self._processes[event.pid] = event
        self._processes.move_to_end(event.pid)
        while len(self._processes) > PROCESS_CACHE_SIZE:
            self._processes.popitem(last=False)


def _epoch(monotonic_ns: int) -> float:
    return (time.time_ns() - time.monotonic_ns() + monotonic_ns) / 1e9


def _boottime_offset_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()


@lru_cache(maxsize=4096)
def resolved(filename: str) -> str:
    """The file an exec'd path names, as /proc/PID/exe would give it (``/bin/sh`` →
    ``/usr/bin/dash``), so a process that exited before it was read has the same program
    identity as one that did not (issue 13). Relative paths are kept as they are."""
    return os.path.realpath(filename) if filename.startswith("/") else filename
