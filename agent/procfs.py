"""The /proc polling capture backend: works everywhere, misses short-lived processes.

Each :meth:`ProcfsBackend.poll` lists /proc and reports every process it has not seen
before as one ``exec`` event with ``source="procfs"``. A process is identified by
(pid, start time in clock ticks), so a reused PID is a new process. A process that starts
and exits between two polls is never seen; that is the price of this backend, which is
why eBPF and netlink come first when they are available.

Known limits, by construction: an ``execve`` that replaces a process image in place keeps
pid and start time, so it is not reported again; a fork without exec is reported as an
``exec`` of the parent's image; ``ppid`` is the parent at scan time (an orphan shows its
reaper).

The parsers (:func:`parse_stat`, :func:`split_cmdline`, :func:`real_uid_from_status`, and
:func:`~agent.workload.container_id_from_cgroup`, re-exported here) are pure functions;
only :class:`ProcfsBackend` touches /proc.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from agent.capture import make_exec_id, stable_event_id
from agent.users import user_name
from agent.workload import WorkloadResolver
from agent.workload import container_id_from_cgroup as container_id_from_cgroup  # re-exported
from ruleless.settings import AgentSettings
from schemas.errors import CaptureError
from schemas.events import RawEvent

log = logging.getLogger(__name__)

SOURCE = "procfs"
# include/linux/sched.h: set on every kernel thread, whatever its parent.
PF_KTHREAD = 0x00200000
KTHREADD_PID = 2
MAX_ANCESTORS = 4
DEFAULT_MAX_CMDLINE_BYTES = 32 * 1024

# Flags set on events (RawEvent.flags) instead of dropping or guessing data.
FLAG_SNAPSHOT = "snapshot"  # already running when capture started; not seen starting
FLAG_ARGV_TRUNCATED = "argv_truncated"
FLAG_ARGV_NOT_UTF8 = "argv_not_utf8"
FLAG_CMDLINE_UNAVAILABLE = "cmdline_unavailable"  # zombie, or argv hidden from us
FLAG_EXE_DELETED = "exe_deleted"

@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/PID/stat this backend uses."""

    pid: int
    comm: str
    ppid: int
    flags: int
    start_ticks: int

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD) or KTHREADD_PID in (self.pid, self.ppid)


def parse_stat(raw: bytes) -> ProcStat:
    """Parse /proc/PID/stat. ``comm`` may hold spaces and parentheses, hence the rfind.

    Raises ValueError on a malformed line.
    """
    open_paren = raw.index(b"(")
    close_paren = raw.rindex(b")")
    pid = int(raw[:open_paren])
    comm = raw[open_paren + 1 : close_paren].decode("utf-8", "backslashreplace")
    # Field 3 (state) is rest[0], so field n is rest[n - 3].
    rest = raw[close_paren + 2 :].split()
    return ProcStat(
        pid=pid,
        comm=comm,
        ppid=int(rest[4 - 3]),
        flags=int(rest[9 - 3]),
        start_ticks=int(rest[22 - 3]),
    )


def split_cmdline(raw: bytes, truncated: bool = False) -> tuple[list[str], list[str]]:
    """Split /proc/PID/cmdline into argv; return (argv, flags).

    Trailing NULs are dropped (processes that rewrite their title pad with them).
    ``truncated`` says the caller cut ``raw`` short: a multi-byte character cut at the
    end is then dropped rather than flagged as invalid UTF-8.
    """
    flags: list[str] = [FLAG_ARGV_TRUNCATED] if truncated else []
    raw = raw.rstrip(b"\0")
    if not raw:
        return [], flags
    parts = raw.split(b"\0")
    if truncated:
        parts[-1] = _drop_cut_character(parts[-1])
    argv: list[str] = []
    for part in parts:
        try:
            argv.append(part.decode("utf-8"))
        except UnicodeDecodeError:
            argv.append(part.decode("utf-8", "backslashreplace"))
            if FLAG_ARGV_NOT_UTF8 not in flags:
                flags.append(FLAG_ARGV_NOT_UTF8)
    return argv, flags


def _drop_cut_character(part: bytes) -> bytes:
    try:
        part.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":
            return part[: exc.start]
    return part


def real_uid_from_status(text: str) -> int:
    """The real uid from /proc/PID/status (first value of the ``Uid:`` line).

    Raises ValueError if the line is missing.
    """
    for line in text.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ValueError("no Uid: line in status")


def ancestors_of(ppid: int, table: dict[int, ProcStat], limit: int = MAX_ANCESTORS) -> list[str]:
    """Comms of up to ``limit`` ancestors, nearest first, walking ``table`` from ``ppid``.

    Stops at pid 0 (above init), at a process missing from the table, or on a cycle
    (possible when the table mixes reads from before and after a PID was reused).
    """
    names: list[str] = []
    seen: set[int] = set()
    pid = ppid
    while pid and pid in table and pid not in seen and len(names) < limit:
        seen.add(pid)
        names.append(table[pid].comm)
        pid = table[pid].ppid
    return names


class ProcfsBackend:
    """Capture by polling /proc.

    ``start()`` takes a baseline of the running processes. By default that initial
    snapshot is NOT emitted: those processes are treated as already known, and only
    processes first seen by a later ``poll()`` are reported. With ``emit_snapshot=True``
    the first ``poll()`` also returns one event per process of the snapshot, flagged
    ``snapshot`` (their ``ts`` is their real start time, possibly long ago).

    ``event_id`` is set from ``exec_id`` (:func:`agent.capture.stable_event_id`), not left
    to the content hash: the same process re-sent after an agent restart or a producer
    retry keeps its id even if its enrichment (parent, user name) has changed meanwhile.

    Kernel threads (PF_KTHREAD, or pid/ppid 2) are skipped. Processes that exit while
    they are being read are skipped silently; that race is normal. ``proc_root`` lets an
    agent in a container read the host's /proc mounted elsewhere. Not thread-safe: one
    caller polls.
    """

    name = "proc"

    def __init__(
        self,
        agent: AgentSettings,
        *,
        emit_snapshot: bool = False,
        proc_root: str | Path = "/proc",
        max_cmdline_bytes: int = DEFAULT_MAX_CMDLINE_BYTES,
    ) -> None:
        self._agent = agent
        self._emit_snapshot = emit_snapshot
        self._root = Path(proc_root)
        self._max_cmdline = max_cmdline_bytes
        self._clk_tck = os.sysconf("SC_CLK_TCK")
        self._boot_time = 0.0
        self._seen: set[tuple[int, int, str]] = set()
        self._pending: list[RawEvent] = []
        self._started = False
        self._workloads = WorkloadResolver(agent)

    @property
    def tracked(self) -> int:
        """How many live processes the backend currently knows."""
        return len(self._seen)

    def start(self) -> None:
        """Read the boot time and take the baseline. Raises CaptureError without /proc."""
        self._boot_time = self._read_boot_time()
        self._started = True
        table = self._read_table()
        self._pending = self._new_events(table, snapshot=True) if self._emit_snapshot else []
        self._seen = set(_identities(table))
        log.info("procfs: baseline of %d processes from %s", len(self._seen), self._root)

    def poll(self) -> list[RawEvent]:
        """Events for processes first seen now, oldest start first (parents before children).

        Raises CaptureError if /proc cannot be listed at all.
        """
        if not self._started:
            raise CaptureError("procfs backend polled before start()")
        events, self._pending = self._pending, []
        table = self._read_table()
        events.extend(self._new_events(table, snapshot=False))
        # Only live identities are kept, so memory follows the process count.
        self._seen = set(_identities(table))
        return events

    def stop(self) -> None:
        self._started = False
        self._pending = []

    def drops(self) -> dict[str, int]:
        """Always empty: a poller cannot count the processes it never saw."""
        return {}

    def _read_boot_time(self) -> float:
        try:
            text = (self._root / "stat").read_text()
        except OSError as exc:
            raise CaptureError(f"cannot read {self._root / 'stat'}: {exc}") from None
        for line in text.splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
        raise CaptureError(f"no btime in {self._root / 'stat'}")

    def _read_table(self) -> dict[int, ProcStat]:
        try:
            names = os.listdir(self._root)
        except OSError as exc:
            raise CaptureError(f"cannot list {self._root}: {exc}") from None
        table: dict[int, ProcStat] = {}
        for name in names:
            if name.isdigit():
                stat = self._read_stat(int(name))
                if stat is not None:
                    table[stat.pid] = stat
        return table

    def _read_stat(self, pid: int) -> ProcStat | None:
        raw = _read_bytes(f"{self._root}/{pid}/stat")
        if raw is None:
            return None
        try:
            return parse_stat(raw)
        except (ValueError, IndexError):
            log.warning("procfs: unparsable stat for pid %d: %r", pid, raw[:200])
            return None

    def _new_events(self, table: dict[int, ProcStat], snapshot: bool) -> list[RawEvent]:
        fresh = [
            stat
            for stat in table.values()
            if (stat.pid, stat.start_ticks, stat.comm) not in self._seen and not stat.is_kernel_thread
        ]
        fresh.sort(key=lambda s: (s.start_ticks, s.pid))
        events = []
        for stat in fresh:
            event = self._build_event(stat, table, snapshot)
            if event is not None:
                events.append(event)
        return events

    def _build_event(self, stat: ProcStat, table: dict[int, ProcStat], snapshot: bool) -> RawEvent | None:
        """The exec event for one process, or None if it vanished while being read."""
        proc = self._root / str(stat.pid)
        cmdline = _read_bytes(proc / "cmdline", self._max_cmdline + 1)
        status = _read_text(proc / "status")
        if cmdline is None or status is None:
            return None
        try:
            uid = real_uid_from_status(status)
        except ValueError:
            return None
        exe, exe_flags = self._read_exe(proc)
        cgroup = _read_text(proc / "cgroup")
        # The PID may have been reaped and reused while we read: the files above would
        # then describe another process. Re-check identity last.
        again = self._read_stat(stat.pid)
        if again is None or again.start_ticks != stat.start_ticks:
            return None
        argv, flags = split_cmdline(cmdline[: self._max_cmdline], truncated=len(cmdline) > self._max_cmdline)
        if not argv:
            flags.append(FLAG_CMDLINE_UNAVAILABLE)
        flags.extend(exe_flags)
        if snapshot:
            flags.append(FLAG_SNAPSHOT)
        parent = table.get(stat.ppid)
        exec_id = make_exec_id(self._agent.host, stat.start_ticks, stat.pid)
        org_id, workload = self._workloads.resolve(cgroup or "")
        return RawEvent(
            ts=self._boot_time + stat.start_ticks / self._clk_tck,
            org_id=org_id,
            workload=workload,
            host=self._agent.host,
            event_type="exec",
            event_id=stable_event_id(exec_id, "exec"),
            pid=stat.pid,
            ppid=stat.ppid,
            uid=uid,
            user=user_name(uid),
            process_name=stat.comm,
            exe=exe,
            cmdline=" ".join(argv),
            argv=argv,
            parent_process=parent.comm if parent else "",
            ancestors=ancestors_of(stat.ppid, table),
            container_id=container_id_from_cgroup(cgroup) if cgroup else None,
            exec_id=exec_id,
            source=SOURCE,
            flags=flags or None,
        )

    def _read_exe(self, proc: Path) -> tuple[str | None, list[str]]:
        try:
            target = os.readlink(bytes(proc / "exe")).decode("utf-8", "backslashreplace")
        except OSError:
            # Permission (not root), or the process is a zombie or gone: exe is optional.
            return None, []
        if target.endswith(" (deleted)"):
            return target[: -len(" (deleted)")], [FLAG_EXE_DELETED]
        return target, []



def _identities(table: dict[int, ProcStat]) -> list[tuple[int, int, str]]:
    """A process image: pid and start time, and comm — a child seen between its fork and
    its exec still shows its parent's image; once it has exec'd, comm changed and the
    new image is reported too."""
    return [(stat.pid, stat.start_ticks, stat.comm) for stat in table.values()]


def _read_bytes(path: str | Path, limit: int = 1 << 20) -> bytes | None:
    """Up to ``limit`` bytes of a /proc file, or None when the process is gone or hides
    the file from us. Raw os.open/os.read: this runs once per process per poll."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        # ENOENT: the process exited; EACCES: hidepid or another user's file.
        return None
    try:
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(limit - size, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        # ESRCH: reaped between open and read.
        return None
    finally:
        os.close(fd)


def _read_text(path: Path) -> str | None:
    raw = _read_bytes(path)
    return raw.decode("utf-8", "backslashreplace") if raw is not None else None
