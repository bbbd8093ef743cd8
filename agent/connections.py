"""TCP connects and listens for the backends without eBPF, from /proc.

Every ``interval_s`` the scanner reads /proc/net/tcp and /proc/net/tcp6 and reports each
socket it has not seen before: a ``listen`` event for a listening socket, a ``connect``
event for an outgoing one (SYN_SENT or ESTABLISHED whose local port is not a listening
port, so accepted connections are not mistaken for connects). The owning process is found
through /proc/PID/fd (``socket:[INODE]`` links), scanned only when new sockets appeared.

Limits, by construction (the eBPF backend has none of them): a connection opened and
closed between two scans is never seen; sockets of other network namespaces (containers
with their own network) are not in this namespace's /proc/net; a socket passed to or
shared with another process is attributed to the first owner found.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.capture import CaptureBackend
from agent.enrich import Enricher
from agent.process import read_process
from ruleless.settings import AgentSettings
from schemas.events import RawEvent

log = logging.getLogger(__name__)

# include/net/tcp_states.h
TCP_ESTABLISHED = 0x01
TCP_SYN_SENT = 0x02
TCP_LISTEN = 0x0A


@dataclass(frozen=True, slots=True)
class TcpSocket:
    """One line of /proc/net/tcp{,6}."""

    inode: int
    state: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int


def parse_proc_net_tcp(text: str) -> list[TcpSocket]:
    """The sockets of a /proc/net/tcp or tcp6 text (header skipped, bad lines ignored).

    Addresses are printed as the kernel's in-memory words, so they are decoded in this
    machine's byte order; IPv4-mapped IPv6 addresses come out as plain IPv4.
    """
    sockets: list[TcpSocket] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            local_ip, local_port = _endpoint(fields[1])
            remote_ip, remote_port = _endpoint(fields[2])
            sockets.append(TcpSocket(int(fields[9]), int(fields[3], 16), local_ip, local_port, remote_ip, remote_port))
        except ValueError:
            continue
    return sockets


def _endpoint(text: str) -> tuple[str, int]:
    address, port = text.split(":")
    words = [int(address[i : i + 8], 16) for i in range(0, len(address), 8)]
    raw = b"".join(struct.pack("=I", word) for word in words)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw)), int(port, 16)
    ip6 = ipaddress.IPv6Address(raw)
    return str(ip6.ipv4_mapped or ip6), int(port, 16)


def new_connections(sockets: Iterable[TcpSocket], seen: set[int]) -> list[TcpSocket]:
    """Listening and outgoing sockets whose inode is not in ``seen``.

    Outgoing = SYN_SENT or ESTABLISHED with a local port nobody listens on (an accepted
    connection's local port is its listener's).
    """
    sockets = list(sockets)
    listening = {s.local_port for s in sockets if s.state == TCP_LISTEN}
    fresh: list[TcpSocket] = []
    for sock in sockets:
        if sock.inode == 0 or sock.inode in seen:
            continue
        if sock.state == TCP_LISTEN or (
            sock.state in (TCP_SYN_SENT, TCP_ESTABLISHED) and sock.local_port not in listening
        ):
            fresh.append(sock)
    return fresh


def socket_owners(inodes: set[int], proc_root: str = "/proc") -> dict[int, int]:
    """inode → pid for the given socket inodes, by reading /proc/*/fd links.

    Stops as soon as every inode is found. Processes that vanish mid-scan are skipped.
    """
    owners: dict[int, int] = {}
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    try:
        pids = [int(name) for name in os.listdir(proc_root) if name.isdigit()]
    except OSError:
        return owners
    for pid in pids:
        fd_dir = f"{proc_root}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = wanted.get(target)
            if inode is not None and inode not in owners:
                owners[inode] = pid
        if len(owners) == len(wanted):
            break
    return owners


class ConnectionScanner:
    """Reports new TCP listens and outgoing connects found in /proc, at most every
    ``interval_s``. The first scan only takes a baseline (like /proc polling)."""

    def __init__(self, enricher: Enricher, *, interval_s: float, proc_root: str | Path = "/proc") -> None:
        self._enricher = enricher
        self._interval = interval_s
        self._root = str(proc_root)
        self._seen: set[int] | None = None
        self._last = 0.0

    def scan(self, force: bool = False) -> list[RawEvent]:
        """Events for sockets first seen now (empty between intervals unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return []
        self._last = now
        sockets = self._read_sockets()
        if self._seen is None:
            self._seen = {s.inode for s in sockets}
            return []
        fresh = new_connections(sockets, self._seen)
        self._seen = {s.inode for s in sockets}
        if not fresh:
            return []
        owners = socket_owners({s.inode for s in fresh}, self._root)
        events = [self._event(sock, owners[sock.inode]) for sock in fresh if sock.inode in owners]
        return [e for e in events if e is not None]

    def _read_sockets(self) -> list[TcpSocket]:
        sockets: list[TcpSocket] = []
        for name in ("tcp", "tcp6"):
            try:
                sockets.extend(parse_proc_net_tcp(Path(f"{self._root}/net/{name}").read_text()))
            except OSError:
                continue  # no IPv6 on this host
        return sockets

    def _event(self, sock: TcpSocket, pid: int) -> RawEvent | None:
        info = read_process(pid, self._root)
        if info is None:
            return None
        listen = sock.state == TCP_LISTEN
        return self._enricher.connection_event(
            info, time.time(), "listen" if listen else "connect", str(sock.inode),
            local=(sock.local_ip, sock.local_port),
            remote=None if listen else (sock.remote_ip, sock.remote_port),
        )  # fmt: skip


class WithConnections:
    """A capture backend plus /proc connection scanning (for netlink and /proc polling,
    which see no network activity themselves). Same name; drops are the inner ones."""

    def __init__(self, inner: CaptureBackend, agent: AgentSettings, source: str) -> None:
        self.name = inner.name
        self.inner = inner
        self.scanner = ConnectionScanner(Enricher(agent, source), interval_s=agent.connections_interval_s)

    def start(self) -> None:
        self.inner.start()
        self.scanner.scan(force=True)

    def poll(self) -> list[RawEvent]:
        return self.inner.poll() + self.scanner.scan()

    def stop(self) -> None:
        self.inner.stop()

    def drops(self) -> dict[str, int]:
        return self.inner.drops()
