"""`ruleless up`: the whole system on one machine, on embedded defaults.

Starts (unless told to use real services) the embedded Kafka-compatible broker, then the
sink (owning the embedded ClickHouse), the scoring worker and an agent for this host, each
as its own process, all on loopback. Prints where to look. Ctrl-C stops everything in
reverse order; if any part dies, the rest is stopped and the exit code says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ruleless.broker import EmbeddedBroker, free_port
from ruleless.kafka import ensure_topics
from ruleless.settings import Settings, child_env

console = Console(stderr=True, highlight=False)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


def run(settings: Settings, kafka: str | None = None, clickhouse: str | None = None) -> int:
    """Run until interrupted; returns the process exit code."""
    data = Path(settings.data_dir).resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    settings = _localise(settings, data, kafka, clickhouse)
    broker: EmbeddedBroker | None = None
    children: list[Child] = []
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if kafka is None:
            broker = EmbeddedBroker(port=_port_of(settings.kafka.bootstrap), log_path=logs / "broker.log").start()
            console.print(f"[green]✓[/] broker     embedded tansu on {broker.bootstrap} (memory storage)")
        ensure_topics(settings.kafka, settings.topics)
        env = {**os.environ, **child_env(settings)}
        for name in ("sink", "worker", "agent"):
            children.append(_spawn(name, env, logs))
            console.print(f"[green]✓[/] {name:<10} pid {children[-1].proc.pid}, log {children[-1].log}")
        _print_where_to_look(settings, logs)
        while not stopping:
            dead = next((c for c in children if c.proc.poll() is not None), None)
            if dead is not None:
                console.print(f"[red]✗[/] {dead.name} exited with {dead.proc.returncode}; see {dead.log}")
                return 1
            time.sleep(0.5)
        return 0
    finally:
        console.print("stopping…")
        for child in reversed(children):
            _stop(child)
        if broker is not None:
            broker.stop()
        console.print("stopped.")


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


def _spawn(name: str, env: dict[str, str], logs: Path) -> Child:
    log = logs / f"{name}.log"
    exe = str(Path(sys.executable).parent / "ruleless")
    with open(log, "ab") as out:
        proc = subprocess.Popen([exe, name], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Child(name, proc, log)


def _stop(child: Child) -> None:
    if child.proc.poll() is not None:
        return
    child.proc.send_signal(signal.SIGTERM)
    try:
        child.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait()
    console.print(f"  {child.name} stopped")


def _print_where_to_look(settings: Settings, logs: Path) -> None:
    sink = settings.sink
    url = f"http://{sink.query_host}:{sink.query_port}"
    console.print()
    console.print("[bold]ruleless is up.[/] Where to look:")
    console.print(f"  recent scored events  ruleless query \"SELECT ts, host, cmdline, score, severity FROM {settings.clickhouse.database}.{settings.clickhouse.table} FINAL ORDER BY ts DESC LIMIT 20\"")
    console.print(f"  SQL over HTTP         {url}/query?sql=SELECT+count()+FROM+{settings.clickhouse.database}.{settings.clickhouse.table}")
    console.print(f"  alerts topic          {settings.topics.alerts} on {settings.kafka.bootstrap}")
    console.print(f"  metrics               worker :{settings.worker.metrics_port}  sink :{sink.metrics_port}  agent :{settings.agent.metrics_port}")
    console.print(f"  logs                  {logs}")
    console.print("Ctrl-C stops everything.")
