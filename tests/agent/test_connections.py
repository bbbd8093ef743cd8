"""agent/connections.py: /proc/net/tcp parsing and the connection scanner on this host."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from agent.connections import (
    TCP_ESTABLISHED,
    TCP_LISTEN,
    ConnectionScanner,
    TcpSocket,
    new_connections,
    parse_proc_net_tcp,
    socket_owners,
)
from agent.enrich import Enricher
from ruleless.settings import AgentSettings, Settings
from tests.agent.harness import agent_thread, events_in, fast, require_root, wait_for

AGENT = AgentSettings.model_validate({"org_id": "acme", "workload": "web-1", "host": "test-host"})
HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


@pytest.mark.skipif(sys.byteorder != "little", reason="sample lines are from a little-endian host")
def test_parse_proc_net_tcp() -> None:
    v4 = HEADER + "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n"
    v6 = HEADER + (
        "   0: 00000000000000000000000001000000:0016 00000000000000000000000001000000:C350 01 "
        "00000000:00000000 00:00000000 00000000     0        0 77 1 0 20 4 30 10 -1\n"
        "   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000200000A:01BB 02 "
        "00000000:00000000 00:00000000 00000000     0        0 78 1 0 20 4 30 10 -1\n"
    )
    assert parse_proc_net_tcp(v4) == [TcpSocket(4242, TCP_LISTEN, "127.0.0.1", 8080, "0.0.0.0", 0)]
    first, second = parse_proc_net_tcp(v6)
    assert (first.local_ip, first.local_port, first.remote_port, first.state) == ("::1", 22, 50000, TCP_ESTABLISHED)
    assert (second.local_ip, second.remote_ip, second.remote_port) == ("127.0.0.1", "10.0.0.2", 443)
    assert parse_proc_net_tcp(HEADER + "garbage\n") == []


def test_accepted_connections_are_not_connects() -> None:
    listener = TcpSocket(1, TCP_LISTEN, "0.0.0.0", 80, "0.0.0.0", 0)
    accepted = TcpSocket(2, TCP_ESTABLISHED, "10.0.0.1", 80, "10.0.0.9", 51000)
    outgoing = TcpSocket(3, TCP_ESTABLISHED, "10.0.0.1", 40000, "10.0.0.7", 5432)
    assert new_connections([listener, accepted, outgoing], seen=set()) == [listener, outgoing]
    assert new_connections([listener, accepted, outgoing], seen={1, 3}) == []


def test_socket_owners_finds_this_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        inode = os.fstat(sock.fileno()).st_ino
        assert socket_owners({inode}) == {inode: os.getpid()}


def test_scanner_reports_new_listen_and_connect_with_process_context() -> None:
    scanner = ConnectionScanner(Enricher(AGENT, "procfs"), interval_s=0)
    assert scanner.scan() == []  # baseline
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                events = scanner.scan()
                again = scanner.scan()
            client_port = client.getsockname()[1]
    mine = [e for e in events if e.pid == os.getpid()]
    (listen,) = [e for e in mine if e.event_type == "listen"]
    (connect,) = [e for e in mine if e.event_type == "connect"]
    assert (listen.local_ip, listen.local_port, listen.remote_port) == ("127.0.0.1", port, None)
    assert (connect.local_port, connect.remote_ip, connect.remote_port) == (client_port, "127.0.0.1", port)
    assert connect.process_name == Path("/proc/self/comm").read_text().strip()
    assert connect.cmdline and connect.exec_id and connect.source == "procfs"
    # The accepted side is not a connect, and nothing is reported twice.
    assert not [e for e in mine if e.event_type == "connect" and e.local_port == port]
    assert not [e for e in again if e.pid == os.getpid()]


@pytest.mark.parametrize("backend", ["proc", "netlink"])
def test_fallback_backends_report_connects_through_the_agent(tmp_path: Path, settings: Settings, backend: str) -> None:
    if backend == "netlink":
        require_root("the proc connector")
    path = tmp_path / "agent.jsonl"
    with agent_thread(fast(settings, connections_interval_s=0.1), str(path), backend):
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port)):
                wait_for(lambda: any(e.event_type == "connect" and e.remote_port == port for e in events_in(path)))
    (event,) = [e for e in events_in(path) if e.event_type == "connect" and e.remote_port == port]
    assert event.pid == os.getpid() and event.source == ("procfs" if backend == "proc" else "netlink")
