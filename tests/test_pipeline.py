"""End to end on real parts: broker → worker → scored topic → sink → ClickHouse (chdb)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ruleless.broker import free_port
from ruleless.kafka import producer
from ruleless.settings import Settings
from schemas.events import encode
from sinks.query import query_http, read_token
from streams.scoring import ScoringService
from tests.factories import fleet_stream
from tests.processes import QUERY_TOKEN, RULELESS, ruleless_process

pytestmark = pytest.mark.integration


def poll_sql(url: str, sql: str, until, timeout: float = 180.0, token: Callable[[], str | None] = lambda: QUERY_TOKEN):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    rows = None
    while time.monotonic() < deadline:
        try:
            rows = query_http(url, sql, token())
            if until(rows):
                return rows
        except Exception:  # the sink may not be serving yet  # noqa: BLE001
            pass
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting on {sql!r} at {url}; last rows: {rows!r}"[:2000])


def test_every_event_lands_once_in_clickhouse_with_the_offline_score(topics: Settings, tmp_path: Path) -> None:
    events = fleet_stream(pairs=20, per_pair=500, seed=3)
    assert len(events) == 10_000
    url = f"http://{topics.sink.query_host}:{topics.sink.query_port}"
    table = f"{topics.clickhouse.database}.{topics.clickhouse.table}"
    with ruleless_process(topics, "sink", log=tmp_path / "sink.log"), ruleless_process(
        topics, "worker", log=tmp_path / "worker.log"
    ):
        prod = producer(topics.kafka)
        for e in events:
            prod.produce(topics.topics.raw, key=e.shard_key.encode(), value=encode(e))
        assert prod.flush(60) == 0
        poll_sql(url, f"SELECT count() AS n FROM {table} FINAL", lambda r: r and int(r[0]["n"]) >= len(events))
        rows = query_http(url, f"SELECT event_id, score, severity, model FROM {table} FINAL", QUERY_TOKEN)
        pairs = query_http(url, f"SELECT uniqExact(org_id, workload) AS n FROM {table} FINAL", QUERY_TOKEN)

    assert len(rows) == len(events)
    assert int(pairs[0]["n"]) == 20
    stored = {r["event_id"]: float(r["score"]) for r in rows}
    offline = ScoringService(topics.model_copy(update={"lancedb": topics.lancedb.model_copy(update={"uri": str(tmp_path / "offline")})}))
    expected = {s.event_id: s.score for s in offline.score(events)}
    assert stored == expected
    assert {r["model"] for r in rows} == {"evidence/1"}  # the default algorithm


def up_env(query_port: int, org: str) -> dict[str, str]:
    """`ruleless up` as a user runs it, on free ports (own embedded broker)."""
    return {
        **os.environ,
        "RULELESS_KAFKA__BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "RULELESS_SINK__QUERY_PORT": str(query_port),
        "RULELESS_WORKER__METRICS_PORT": str(free_port()),
        "RULELESS_SINK__METRICS_PORT": str(free_port()),
        "RULELESS_AGENT__METRICS_PORT": str(free_port()),
        "RULELESS_AGENT__ORG_ID": org,
        "RULELESS_API__PORT": str(free_port()),
        "RULELESS_API__METRICS_PORT": str(free_port()),
    }


def test_ruleless_up_scores_this_hosts_own_processes(tmp_path: Path) -> None:
    """`ruleless up` as a user runs it (own embedded broker), then this host execs a process."""
    query_port = free_port()
    # Issue 15: every secret configured, each a distinctive value to look for afterwards.
    secrets = {name: f"s3cr3t-{name}-{os.urandom(6).hex()}" for name in ("token", "sasl", "ch", "hook", "hooktoken")}
    env = {
        **up_env(query_port, "selftest"),
        "RULELESS_SINK__QUERY_TOKEN": secrets["token"],
        "RULELESS_KAFKA__SASL_PASSWORD": secrets["sasl"],
        "RULELESS_CLICKHOUSE__PASSWORD": secrets["ch"],
        "RULELESS_ALERTS__WEBHOOK": f"https://hooks.example.invalid/services/{secrets['hook']}",
        "RULELESS_ALERTS__WEBHOOK_TOKEN": secrets["hooktoken"],
    }
    up = subprocess.Popen(
        [RULELESS, "up", "--data-dir", str(tmp_path / "data")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    environs: dict[str, bytes] = {}
    try:
        url = f"http://127.0.0.1:{query_port}"
        token = lambda: secrets["token"]  # noqa: E731
        poll_sql(url, "SELECT 1 AS ok", lambda r: bool(r), timeout=120, token=token)
        environs = {role: Path(f"/proc/{pid}/environ").read_bytes() for role, pid in _children(up.pid).items()}
        time.sleep(5)  # let the worker join its group before the process we look for runs
        rows = exec_and_find(url, token, "cmdline, score, severity, org_id, host", timeout=120)
        assert rows[0]["org_id"] == "selftest"
        assert 0.0 <= float(rows[0]["score"]) <= 1.0
        # The API it started answers with the admin token it printed (issue 16).
        api_token = (tmp_path / "data" / "api-up.token").read_text().strip()
        api = f"http://127.0.0.1:{env['RULELESS_API__PORT']}"
        events = httpx.get(f"{api}/api/events", params={"limit": 5}, headers={"Authorization": f"Bearer {api_token}"}, timeout=30)
        assert events.status_code == 200 and events.json()["events"][0]["org_id"] == "selftest", events.text[:300]
        assert httpx.get(f"{api}/api/events", timeout=30).status_code == 401
        # Issue 14: with the broker gone, stopping took 62 s; it must take at most 10.
        os.kill(_children(up.pid)["broker"], signal.SIGKILL)
        time.sleep(1)
    finally:
        stopped_at = time.monotonic()
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=90)
        stop_took = time.monotonic() - stopped_at
    text = out.decode(errors="replace")
    assert up.returncode == 0, text
    assert stop_took <= 10.0, f"stopping took {stop_took:.1f}s"
    assert "ruleless is up" in text and "ruleless query" in text
    assert f"http://127.0.0.1:{env['RULELESS_API__PORT']}/" in text and api_token in text
    assert "stopped." in text
    # Everything it wrote (shards, ClickHouse, spool, logs, the query token) is owner-only.
    shared = [str(p) for p in (tmp_path / "data").rglob("*") if p.stat().st_mode & 0o077]
    assert not shared, f"readable by others: {shared[:10]}"
    # Secrets reach the parts through an owner-only settings file, never their
    # environment, and no log of the run holds one.
    assert set(environs) == {"broker", "sink", "worker", "agent", "api"}, environs.keys()
    logs = {"up's output": text, **{str(p): p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*.log")}}
    assert len(logs) >= 4, logs.keys()
    for name, value in secrets.items():
        assert not [role for role, env in environs.items() if value.encode() in env], f"{name} in a child's environment"
        assert not [where for where, body in logs.items() if value in body], f"{name} in a log"


def exec_and_find(url: str, token: Callable[[], str | None], columns: str = "cmdline", timeout: float = 180.0) -> list[dict]:
    """Exec a `sleep MARKER` on this host and wait for its row in ClickHouse; its rows."""
    marker = f"{time.time() % 1000:.3f}"
    child = subprocess.Popen(["sleep", marker])
    try:
        return poll_sql(url, f"SELECT {columns} FROM ruleless.security_events FINAL WHERE cmdline = 'sleep {marker}'",
                        lambda r: bool(r), timeout=timeout, token=token)
    finally:
        child.kill()
        child.wait()


def _children(pid: int) -> dict[str, int]:
    """The direct children of ``pid`` by role ("sink", "worker", "agent", "api", "broker")."""
    found: dict[str, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = [a.decode() for a in (stat.parent / "cmdline").read_bytes().split(b"\0") if a]
        except (OSError, IndexError):
            continue
        if int(fields[1]) != pid:
            continue
        if cmdline and "tansu" in cmdline[0]:
            found["broker"] = int(stat.parent.name)
        elif cmdline and cmdline[-1] in ("sink", "worker", "agent", "api"):  # python …/ruleless ROLE
            found[cmdline[-1]] = int(stat.parent.name)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_ruleless_up_restarts_what_dies_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """Issue 14: a SIGKILLed worker or broker is started again (and events captured after
    a broker restart still reach ClickHouse, though offsets start at 0 again); a SIGKILLed
    `ruleless up` takes every part with it."""
    query_port = free_port()
    env = up_env(query_port, "supervised")
    up = subprocess.Popen([RULELESS, "up", "--data-dir", str(tmp_path / "data")], env=env,
                          stdout=open(tmp_path / "up.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{query_port}"
    token = lambda: read_token(None, str(tmp_path / "data"))  # noqa: E731
    try:
        poll_sql(url, "SELECT 1 AS ok", lambda r: bool(r), timeout=120, token=token)
        parts = _children(up.pid)
        assert set(parts) == {"broker", "sink", "worker", "agent", "api"}, parts

        os.kill(parts["worker"], signal.SIGKILL)
        _wait("a new worker", lambda: _children(up.pid).get("worker", parts["worker"]) != parts["worker"], 30)

        os.kill(parts["broker"], signal.SIGKILL)
        _wait("a new broker", lambda: _children(up.pid).get("broker", parts["broker"]) != parts["broker"], 30)
        time.sleep(10)  # the worker's group forms again on the new broker
        exec_and_find(url, token)

        parts = _children(up.pid)
        up.kill()
        up.wait()
        _wait("every part of the killed `ruleless up` to exit", lambda: not any(_alive(p) for p in parts.values()), 30)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    text = (tmp_path / "up.log").read_text(errors="replace")
    assert "worker exited with" in text and "broker exited" in text, text


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping root needs root")
def test_ruleless_up_as_root_runs_the_sink_and_worker_unprivileged() -> None:
    """Issue 15: as root, the sink and worker run as `run_as` (nobody), the agent stays
    root, and events still flow end to end through the unprivileged parts. Where nobody
    cannot reach the interpreter (a Python under /root, mode 0700: this machine's pyenv),
    `ruleless up` says so and they stay root: the test then checks that instead."""
    import shutil
    import tempfile

    from ruleless.privileges import service_account

    data = Path(tempfile.mkdtemp(prefix="ruleless-up-", dir="/tmp"))  # /tmp: reachable by nobody
    account, why = service_account("nobody", data)
    dropped = account.uid if account is not None else 0
    query_port = free_port()
    up = subprocess.Popen([RULELESS, "up", "--data-dir", str(data)], env=up_env(query_port, "dropped"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{query_port}"
        token = lambda: read_token(None, str(data))  # noqa: E731
        poll_sql(url, "SELECT 1 AS ok", lambda r: bool(r), timeout=120, token=token)
        uids = {role: _uid(pid) for role, pid in _children(up.pid).items()}
        time.sleep(5)
        exec_and_find(url, token, timeout=120)
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=90)
        shutil.rmtree(data, ignore_errors=True)
    text = out.decode(errors="replace")
    assert uids == {"broker": 0, "agent": 0, "sink": dropped, "worker": dropped, "api": dropped}, (uids, text[-2000:])
    assert why in " ".join(text.split()), text


def _uid(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return int(line.split()[2])  # effective
