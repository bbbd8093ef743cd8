"""`ruleless up`: the whole system on one machine, on embedded defaults.

Starts (unless told to use real services) the embedded Kafka-compatible broker, then the
sink (owning the embedded ClickHouse), the scoring worker, an agent for this host and the
HTTP API with the dashboard, each as its own process, all on loopback. Prints where to
look, and an admin API token it keeps in DATA_DIR/api-up.token (made once; made again
when it was revoked). Supervises them (see
:func:`run`); Ctrl-C stops everything within STOP_TIMEOUT_S.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from ruleless.broker import EmbeddedBroker, free_port
from ruleless.kafka import ensure_topics
from ruleless.privileges import Account, hand_over, service_account
from ruleless.settings import Settings, child_environ
from ruleless.supervise import Restarts, die_with_parent, stop_all

console = Console(stderr=True, highlight=False)


# The parts that run as `run_as` when `ruleless up` is root (the agent needs root).
UNPRIVILEGED = frozenset({"sink", "worker", "api"})

# Stopping takes at most this long (then SIGKILL), whatever state the parts are in.
STOP_TIMEOUT_S = 8.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    restarts: Restarts = field(default_factory=Restarts)
    due: float | None = None  # when a dead child is started again


def run(settings: Settings, kafka: str | None = None, clickhouse: str | None = None) -> int:
    """Run until interrupted; returns the process exit code.

    Supervises: a part that dies is started again after a backoff (the broker first: with
    memory storage its topics are created again, and the shards' positions know the new
    incarnation); a part that keeps dying stops everything with one line and exit code 1.
    Every part dies with this process, even when it is SIGKILLed."""
    data = Path(settings.data_dir).resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = _localise(settings, data, kafka, clickhouse)
    broker: EmbeddedBroker | None = None
    broker_restarts = Restarts()
    children: list[Child] = []
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if kafka is None:
            broker = _start_broker(settings, logs)
            console.print(f"[green]✓[/] broker     embedded tansu on {broker.bootstrap} (memory storage)")
        ensure_topics(settings.kafka, settings.topics)
        api_token = up_token(settings)
        env = child_environ(settings)
        account, why = service_account(settings.run_as, data)
        if account is not None:
            hand_over(data, account)
        console.print(f"[green]✓[/] privileges {why}" if account else f"[yellow]![/] privileges {why}")
        for name in ("sink", "worker", "agent", "api"):
            children.append(_spawn(name, env, logs, account if name in UNPRIVILEGED else None))
            console.print(f"[green]✓[/] {name:<10} pid {children[-1].proc.pid}, log {children[-1].log}")
        _print_where_to_look(settings, logs, api_token)
        broker_due: float | None = None  # when a dead broker is started again
        while not stopping:
            now = time.monotonic()
            if broker is not None and broker_due is None and not broker.alive():
                delay = broker_restarts.died(now)
                if delay is None:
                    console.print(f"[red]✗[/] the broker keeps dying ({broker_restarts.limit} times in {broker_restarts.window_s:.0f}s); stopping. See {logs / 'broker.log'}")
                    return 1
                console.print(f"[yellow]↻[/] broker exited; starting it again in {delay:.0f}s")
                broker_due = now + delay
            elif broker is not None and broker_due is not None and now >= broker_due:
                broker.stop(timeout=1.0)
                broker, broker_due = _start_broker(settings, logs), None
                ensure_topics(settings.kafka, settings.topics, timeout=10.0)
            for child in children:
                if child.due is None and child.proc.poll() is not None:
                    delay = child.restarts.died(now)
                    if delay is None:
                        console.print(f"[red]✗[/] {child.name} keeps dying (last exit {child.proc.returncode}, {child.restarts.limit} times in {child.restarts.window_s:.0f}s); stopping. See {child.log}")
                        return 1
                    console.print(f"[yellow]↻[/] {child.name} exited with {child.proc.returncode}; starting it again in {delay:.0f}s (see {child.log})")
                    child.due = now + delay
                elif child.due is not None and now >= child.due:
                    child.proc, child.due = _spawn(child.name, env, logs, account if child.name in UNPRIVILEGED else None).proc, None
                    console.print(f"[green]✓[/] {child.name:<10} pid {child.proc.pid} (restarted)")
            time.sleep(0.5)
        return 0
    finally:
        console.print("stopping…")
        stop_all([c.proc for c in reversed(children)], STOP_TIMEOUT_S)
        if broker is not None:
            broker.stop(timeout=2.0)
        console.print("stopped.")


def _start_broker(settings: Settings, logs: Path) -> EmbeddedBroker:
    return EmbeddedBroker(port=_port_of(settings.kafka.bootstrap), log_path=logs / "broker.log").start()


def _localise(settings: Settings, data: Path, kafka: str | None, clickhouse: str | None) -> Settings:
    """Point every store under the data dir and pick the services to use."""
    update = {
        "lancedb": settings.lancedb.model_copy(update={"uri": str(data / "lancedb")}),
        "worker": settings.worker.model_copy(update={"data_dir": str(data / "faust")}),
        "clickhouse": settings.clickhouse.model_copy(
            update={"backend": "server", "url": clickhouse} if clickhouse else {"path": str(data / "clickhouse")}
        ),
    }
    if kafka is not None:
        update["kafka"] = settings.kafka.model_copy(update={"bootstrap": kafka})
    return settings.model_copy(update=update)


def _port_of(bootstrap: str) -> int:
    port = int(bootstrap.split(",")[0].rsplit(":", 1)[1])
    return port if port else free_port()


def _spawn(name: str, env: dict[str, str], logs: Path, account: Account | None = None) -> Child:
    log = logs / f"{name}.log"
    exe = str(Path(sys.executable).parent / "ruleless")
    options: dict[str, Any] = {}
    if account is not None:
        options = account.popen_options()
        env = {**env, "HOME": str(logs.parent)}
    with open(log, "ab") as out:
        # Own session: a Ctrl-C on the terminal reaches `ruleless up` alone, which stops
        # the parts in order; die_with_parent: they never outlive it (Popen changes the
        # user before preexec_fn runs, which matters: a credential change clears it).
        proc = subprocess.Popen(
            [exe, name], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent, **options,
        )
    return Child(name, proc, log)


UP_TOKEN_FILE = "api-up.token"


def up_token(settings: Settings) -> str:
    """The admin API token `ruleless up` prints: the one in DATA_DIR/api-up.token while
    the token store still accepts it, else a new one (kept there, 0600)."""
    from ruleless.tokens import TokenStore, tokens_path

    store = TokenStore(tokens_path(settings.api.tokens_file, settings.data_dir))
    path = Path(settings.data_dir) / UP_TOKEN_FILE
    try:
        kept = path.read_text().strip()
        if store.verify(kept) is not None:
            return kept
    except OSError:
        pass
    _, token = store.create(settings.agent.org_id, admin=True, name="ruleless up")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _print_where_to_look(settings: Settings, logs: Path, api_token: str) -> None:
    sink = settings.sink
    url = f"http://{sink.query_host}:{sink.query_port}"
    api = settings.api
    console.print()
    console.print("[bold]ruleless is up.[/] Where to look:")
    console.print(f"  dashboard and API     http://{api.host}:{api.port}/  (OpenAPI: /openapi.json)")
    console.print(f"  API token (admin)     {api_token}")
    console.print(f"                        kept in {Path(settings.data_dir) / UP_TOKEN_FILE}; one per org: ruleless token create --org ORG")
    console.print(f"  recent scored events  ruleless query \"SELECT ts, host, cmdline, score, severity FROM {settings.clickhouse.database}.{settings.clickhouse.table} FINAL ORDER BY ts DESC LIMIT 20\"")
    console.print(f"  SQL over HTTP         {url}/query?sql=SELECT+count()+FROM+{settings.clickhouse.database}.{settings.clickhouse.table}")
    console.print(f"  alerts topic          {settings.topics.alerts} on {settings.kafka.bootstrap}")
    console.print(f"  metrics               worker :{settings.worker.metrics_port}  sink :{sink.metrics_port}  agent :{settings.agent.metrics_port}  api :{api.metrics_port}")
    console.print(f"  logs                  {logs}")
    console.print("Ctrl-C stops everything.")
