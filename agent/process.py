"""Read one process's details from /proc at once, pinned to that process.

Event-driven backends (netlink, eBPF) learn that pid P just exec'd and must read its
command line before it exits: :func:`read_process` opens ``/proc/P`` as a directory
first and reads every file relative to that handle. A /proc directory handle stays bound
to the process it was opened for, so if P exits and its pid is reused mid-read, the
reads fail instead of silently describing the new process (no re-check needed).

:class:`Lineage` reads parents and ancestors the same way, on demand, so the answer is
the one at exec time, not at publish time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.procfs import (
    FLAG_ARGV_TRUNCATED,
    FLAG_CMDLINE_UNAVAILABLE,
    FLAG_EXE_DELETED,
    MAX_ANCESTORS,
    ProcStat,
    parse_stat,
    real_uid_from_status,
    split_cmdline,
)

DEFAULT_MAX_CMDLINE_BYTES = 32 * 1024
# How long a parent's ancestor chain is reused (a parent renaming itself, e.g. by exec,
# shows up in its children's ancestors after at most this long).
ANCESTORS_TTL_S = 0.5


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """What /proc said about one process at one moment.

    ``argv`` is empty and ``flags`` holds ``cmdline_unavailable`` when the process was
    already a zombie (its memory, hence its argv, is gone). ``cgroup`` is the raw text of
    /proc/P/cgroup ("" when unreadable).
    """

    stat: ProcStat
    uid: int
    gid: int
    argv: list[str]
    exe: str | None
    cgroup: str
    flags: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.stat.pid


def read_process(
    pid: int, proc_root: str | Path = "/proc", max_cmdline_bytes: int = DEFAULT_MAX_CMDLINE_BYTES
) -> ProcessInfo | None:
    """Everything the agent wants from /proc/``pid``, or None if it is gone (or hidden).

    The command line is read first: it is what disappears first when a process exits.
    """
    grabbed = grab(pid, proc_root, max_cmdline_bytes)
    return finish(grabbed, max_cmdline_bytes) if grabbed is not None else None


@dataclass(slots=True)
class Grabbed:
    """A process's /proc directory, held open, and its command line read at once."""

    dirfd: int
    cmdline: bytes


def grab(pid: int, proc_root: str | Path = "/proc", max_cmdline_bytes: int = DEFAULT_MAX_CMDLINE_BYTES) -> Grabbed | None:
    """Pin /proc/``pid`` and read its command line: the part of :func:`read_process` that
    races the process's exit. None if it is already gone. Pass the result to
    :func:`finish`, which closes the directory."""
    try:
        dirfd = os.open(f"{proc_root}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    cmdline = read_at(dirfd, "cmdline", max_cmdline_bytes + 1)
    if cmdline is None:
        os.close(dirfd)
        return None
    return Grabbed(dirfd, cmdline)


def finish(grabbed: Grabbed, max_cmdline_bytes: int = DEFAULT_MAX_CMDLINE_BYTES) -> ProcessInfo | None:
    """The rest of :func:`read_process` for a grabbed process; closes its directory."""
    dirfd = grabbed.dirfd
    try:
        raw_stat = read_at(dirfd, "stat")
        status = read_at(dirfd, "status")
        if raw_stat is None or status is None:
            return None
        exe, exe_flags = _read_exe(dirfd)
        cgroup = read_at(dirfd, "cgroup") or b""
    finally:
        os.close(dirfd)
    try:
        stat = parse_stat(raw_stat)
        status_text = status.decode("utf-8", "replace")
        uid = real_uid_from_status(status_text)
        gid = _real_gid_from_status(status_text)
    except (ValueError, IndexError):
        return None
    cmdline = grabbed.cmdline
    truncated = len(cmdline) > max_cmdline_bytes
    argv, flags = split_cmdline(cmdline[:max_cmdline_bytes], truncated=truncated)
    if not argv:
        flags.append(FLAG_CMDLINE_UNAVAILABLE)
    flags.extend(exe_flags)
    return ProcessInfo(
        stat=stat, uid=uid, gid=gid, argv=argv, exe=exe,
        cgroup=cgroup.decode("utf-8", "backslashreplace"), flags=flags,
    )  # fmt: skip


def read_stat(pid: int, proc_root: str | Path = "/proc") -> ProcStat | None:
    """/proc/``pid``/stat parsed, or None if the process is gone."""
    raw = read_file(f"{proc_root}/{pid}/stat")
    if raw is None:
        return None
    try:
        return parse_stat(raw)
    except (ValueError, IndexError):
        return None


def read_at(dirfd: int, name: str, limit: int = 1 << 20) -> bytes | None:
    """Up to ``limit`` bytes of ``name`` relative to ``dirfd``; None if gone or hidden."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError:
        # ENOENT/ESRCH: the process exited; EACCES: hidepid or another user's file.
        return None
    try:
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def read_file(path: str, limit: int = 1 << 20) -> bytes | None:
    """Up to ``limit`` bytes of a /proc file, or None when it is gone or hidden."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = os.read(fd, min(limit - size, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        # ESRCH: reaped between open and read.
        return None
    return b"".join(chunks)


def _read_exe(dirfd: int) -> tuple[str | None, list[str]]:
    try:
        target = os.readlink("exe", dir_fd=dirfd)
    except OSError:
        # A zombie or a kernel thread has no exe; exe is optional.
        return None, []
    if target.endswith(" (deleted)"):
        return target[: -len(" (deleted)")], [FLAG_EXE_DELETED]
    return target, []


def _real_gid_from_status(text: str) -> int:
    for line in text.splitlines():
        if line.startswith("Gid:"):
            return int(line.split()[1])
    raise ValueError("no Gid: line in status")


class Lineage:
    """Parent comm, ancestors and user names, read from /proc on demand.

    Not thread-safe (its user-name cache is unsynchronised): one reader thread uses it.
    """

    def __init__(self, proc_root: str | Path = "/proc", ttl_s: float = ANCESTORS_TTL_S) -> None:
        self._root = str(proc_root)
        self._ttl = ttl_s
        self._recent: dict[int, tuple[float, list[str]]] = {}

    def ancestors(self, ppid: int, limit: int = MAX_ANCESTORS) -> list[str]:
        """Comms of up to ``limit`` ancestors, nearest first, starting at ``ppid``.

        Stops above init (pid 0), at an ancestor that has exited, or on a cycle. A chain
        read less than ``ttl_s`` ago is reused: a shell loop's children share it, and
        reading four stat files per exec was a third of the agent's cost per event.
        """
        now = time.monotonic()
        hit = self._recent.get(ppid)
        if hit is not None and now - hit[0] < self._ttl:
            return list(hit[1][:limit])
        names = self._read_ancestors(ppid, limit)
        if len(self._recent) > 4096:
            self._recent = {pid: entry for pid, entry in self._recent.items() if now - entry[0] < self._ttl}
        self._recent[ppid] = (now, names)
        return list(names)

    def _read_ancestors(self, ppid: int, limit: int) -> list[str]:
        names: list[str] = []
        seen: set[int] = set()
        pid = ppid
        while pid and pid not in seen and len(names) < limit:
            seen.add(pid)
            stat = read_stat(pid, self._root)
            if stat is None:
                break
            names.append(stat.comm)
            pid = stat.ppid
        return names



__all__ = [
    "DEFAULT_MAX_CMDLINE_BYTES",
    "FLAG_ARGV_TRUNCATED",
    "Grabbed",
    "Lineage",
    "ProcessInfo",
    "finish",
    "grab",
    "read_at",
    "read_file",
    "read_process",
    "read_stat",
]
