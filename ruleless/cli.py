"""`ruleless`: one console script, a thin layer over each process's ``run()``.

Every flag has an environment fallback (shown in ``--help``); flags win over the
environment, which wins over the config file, which wins over defaults.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ruleless import logs
from ruleless.settings import Settings, load_settings
from schemas.errors import ConfigError, RulelessError

app = typer.Typer(
    name="ruleless",
    help="Rule-free detection of unusual processes, learned per (org, workload).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")
token_app = typer.Typer(help="API tokens: each reads one org's events (or every org's: --admin).", no_args_is_help=True)
app.add_typer(token_app, name="token")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", envvar="RULELESS_CONFIG", help="TOML config file.")]
KafkaOpt = Annotated[Optional[str], typer.Option("--kafka", envvar="RULELESS_KAFKA__BOOTSTRAP", help="Kafka bootstrap servers.")]
LogFormatOpt = Annotated[Optional[str], typer.Option("--log-format", envvar="RULELESS_LOG_FORMAT", help="text or json.")]


def _settings(config: Path | None, log_format: str | None = None, **overrides: Any) -> Settings:
    settings = load_settings(config, log_format=log_format, **overrides)
    logs.configure(settings.log_format, settings.log_level)
    return settings


def _query_token(settings: Settings) -> str | None:
    from sinks.query import read_token

    configured = settings.sink.query_token
    return read_token(configured.get_secret_value() if configured else None, settings.data_dir)


def _fail(exc: RulelessError) -> None:
    typer.secho(f"error: {exc.message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


@app.command()
def up(
    config: ConfigOpt = None,
    kafka: Annotated[Optional[str], typer.Option("--kafka", help="Use this Kafka instead of the embedded broker.")] = None,
    clickhouse: Annotated[Optional[str], typer.Option("--clickhouse", help="Use this ClickHouse server URL instead of embedded chdb.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", envvar="RULELESS_DATA_DIR", help="Where shards, ClickHouse data and logs live.")] = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Run the whole system on embedded defaults: broker, worker, sink and an agent for this host."""
    from ruleless.up import run

    try:
        settings = _settings(config, log_format, data_dir=str(data_dir) if data_dir else None)
        raise typer.Exit(run(settings, kafka=kafka, clickhouse=clickhouse))
    except RulelessError as exc:
        _fail(exc)


@app.command()
def worker(
    config: ConfigOpt = None,
    kafka: KafkaOpt = None,
    lancedb: Annotated[Optional[str], typer.Option("--lancedb", envvar="RULELESS_LANCEDB__URI", help="LanceDB URI of the shards.")] = None,
    algorithm: Annotated[Optional[str], typer.Option("--algorithm", envvar="RULELESS_ENGINE__ALGORITHM", help="Scoring algorithm.")] = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Score the raw topic into the scored, alerts and dead-letter topics (Faust worker)."""
    from streams.worker import run

    try:
        settings = _settings(
            config, log_format, kafka={"bootstrap": kafka}, lancedb={"uri": lancedb}, engine={"algorithm": algorithm}
        )
        run(settings)
    except RulelessError as exc:
        _fail(exc)


@app.command()
def sink(
    config: ConfigOpt = None,
    kafka: KafkaOpt = None,
    clickhouse: Annotated[Optional[str], typer.Option("--clickhouse", envvar="RULELESS_CLICKHOUSE__URL", help="ClickHouse server URL (switches the backend to server).")] = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Bulk-load the scored topic into ClickHouse (chdb embedded unless --clickhouse)."""
    from sinks.consume import run

    ch: dict[str, Any] = {"url": clickhouse, "backend": "server"} if clickhouse else {}
    try:
        run(_settings(config, log_format, kafka={"bootstrap": kafka}, clickhouse=ch))
    except RulelessError as exc:
        _fail(exc)


@app.command()
def agent(
    config: ConfigOpt = None,
    kafka: KafkaOpt = None,
    org: Annotated[Optional[str], typer.Option("--org", envvar="RULELESS_AGENT__ORG_ID", help="org_id of this host's events.")] = None,
    workload: Annotated[Optional[str], typer.Option("--workload", envvar="RULELESS_AGENT__WORKLOAD", help="Workload of this host's events.")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", envvar="RULELESS_AGENT__BACKEND", help="auto, ebpf, netlink or proc.")] = None,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Write JSON lines here ('-' = stdout) instead of publishing.")] = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Capture this host's process events and publish them to the raw topic."""
    from agent.run import run

    try:
        settings = _settings(
            config, log_format, kafka={"bootstrap": kafka},
            agent={"org_id": org, "workload": workload, "backend": backend},
        )
        run(settings, output=output)
    except RulelessError as exc:
        _fail(exc)


@app.command("install-agent")
def install_agent(
    org: Annotated[str, typer.Option("--org", help="org_id of this host's events.")],
    workload: Annotated[str, typer.Option("--workload", help="Workload of this host's events.")],
    kafka: Annotated[Optional[str], typer.Option("--kafka", help="Kafka bootstrap servers (default: the settings' default).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="auto, ebpf, netlink or proc (decides the unit's capabilities).")] = "auto",
    prefix: Annotated[Path, typer.Option("--prefix", help="Install under this root instead of / (systemd is then left alone).")] = Path("/"),
) -> None:
    """Install the agent as a hardened systemd service: config, unit, manifest; enabled
    and started when systemd runs here."""
    from ruleless.install import install_agent as run

    try:
        _report(run(org, workload, kafka=kafka, backend=backend, root=prefix))
    except RulelessError as exc:
        _fail(exc)


@app.command("uninstall-agent")
def uninstall_agent(
    prefix: Annotated[Path, typer.Option("--prefix", help="The root given to install-agent.")] = Path("/"),
) -> None:
    """Stop the agent's service and remove exactly what install-agent wrote."""
    from ruleless.install import uninstall_agent as run

    try:
        _report(run(prefix))
    except RulelessError as exc:
        _fail(exc)


def _report(result: Any) -> None:
    for path in result.written:
        typer.echo(f"wrote {path}")
    for cmd in result.systemd:
        typer.echo(f"ran {cmd}")
    for path in result.removed:
        typer.echo(f"removed {path}")
    for path in result.kept:
        typer.echo(f"kept {path} (edited since it was installed)")
    for note in result.notes:
        typer.echo(f"note: {note}")


@app.command()
def score(
    input: Annotated[str, typer.Option("--input", "-i", help="JSONL of raw events ('-' = stdin).")],
    output: Annotated[str, typer.Option("--output", "-o", help="JSONL of scored events ('-' = stdout).")],
    state: Annotated[Optional[Path], typer.Option("--state", help="Shard directory to read and update (default: none, nothing is kept).")] = None,
    algorithm: Annotated[Optional[str], typer.Option("--algorithm", envvar="RULELESS_ENGINE__ALGORITHM", help="Scoring algorithm.")] = None,
    errors: Annotated[Optional[str], typer.Option("--errors", help="Write invalid lines with reasons here (default: stderr).")] = None,
    max_invalid: Annotated[int, typer.Option("--max-invalid", help="Exit 0 with up to this many invalid lines (default 0: any invalid line exits 1).")] = 0,
    index: Annotated[bool, typer.Option("--index/--no-index", help="With --state: add the behaviours scored to the search index (embedding each new one: ~40-60/s on one core).")] = True,
    config: ConfigOpt = None,
) -> None:
    """Score a file offline with the stream's engine; output keeps input order.

    Invalid lines (not JSON, invalid UTF-8, not an event, longer than 16 MiB) are
    reported with their line number and reason and skipped; every valid line is still
    scored and written. Exit code: 0, or 1 when more than --max-invalid lines were
    invalid, or 2 when the input cannot be read or the settings are wrong."""
    from streams.offline import bounded_lines, score_stream
    from streams.scoring import ScoringService
    from streams.store import NoStore

    try:
        settings = _settings(config, lancedb={"uri": str(state)} if state else {}, engine={"algorithm": algorithm})
        # Without --state nothing is read or kept: no LanceDB at all.
        service = ScoringService(settings, store=None if state else NoStore())  # type: ignore[arg-type]
        with _open(input, "rb") as src, _open(output, "w") as dst, _open(errors or "-", "w", sys.stderr) as err:
            summary = score_stream(settings, bounded_lines(src), dst, errors=err, service=service, persist=state is not None,
                                   index=index, progress=err)
    except RulelessError as exc:
        _fail(exc)
    typer.echo(
        f"scored {summary.scored} events ({summary.warn} warn, {summary.alert} alert), "
        f"{summary.invalid} invalid lines" + (f"; {summary.behaviours} new behaviours in the search index" if state and index else ""),
        err=True,
    )
    if summary.invalid > max_invalid:
        typer.secho(f"error: {summary.invalid} invalid lines (more than --max-invalid {max_invalid})", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


@app.command()
def alerts(
    webhook: Annotated[Optional[str], typer.Option("--webhook", envvar="RULELESS_ALERTS__WEBHOOK", help="POST notifications here (default: JSON lines on stdout).")] = None,
    config: ConfigOpt = None,
    kafka: KafkaOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Tail the alerts topic; forward grouped, throttled notifications to a webhook or stdout."""
    from sinks.alerts import run

    try:
        run(_settings(config, log_format, kafka={"bootstrap": kafka}), webhook=webhook)
    except RulelessError as exc:
        _fail(exc)


@app.command()
def replay(
    since: Annotated[Optional[str], typer.Option("--since", help="Replay messages from this time (epoch seconds or ISO 8601, UTC by default).")] = None,
    from_offset: Annotated[Optional[int], typer.Option("--from-offset", help="Replay every partition from this offset.")] = None,
    shard: Annotated[Optional[list[str]], typer.Option("--shard", help="Only this org_id/workload (repeatable); default: every shard.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Run even though the worker group has members.")] = False,
    algorithm: Annotated[Optional[str], typer.Option("--algorithm", envvar="RULELESS_ENGINE__ALGORITHM", help="Scoring algorithm.")] = None,
    lancedb: Annotated[Optional[str], typer.Option("--lancedb", envvar="RULELESS_LANCEDB__URI", help="LanceDB URI of the shards.")] = None,
    config: ConfigOpt = None,
    kafka: KafkaOpt = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Rebuild baselines from the raw topic into fresh shards (stop the workers first)."""
    from streams.replay import parse_shards, parse_since, run

    try:
        settings = _settings(
            config, log_format, kafka={"bootstrap": kafka}, lancedb={"uri": lancedb}, engine={"algorithm": algorithm}
        )
        run(
            settings,
            since=parse_since(since) if since is not None else None,
            from_offset=from_offset,
            shards=parse_shards(shard) if shard else None,
            force=force,
        )
    except RulelessError as exc:
        _fail(exc)


@app.command()
def query(
    sql: Annotated[str, typer.Argument(help="A read-only SQL statement.")],
    url: Annotated[str, typer.Option("--url", envvar="RULELESS_QUERY_URL", help="The sink's query endpoint.")] = "http://127.0.0.1:8124",
    config: ConfigOpt = None,
) -> None:
    """Run a read-only SQL statement against the ClickHouse store through the running
    sink (its token: sink.query_token, else DATA_DIR/sink-query.token)."""
    from sinks.query import query_http

    try:
        for row in query_http(url, sql, _query_token(_settings(config))):
            typer.echo(json.dumps(row, default=str))
    except RulelessError as exc:
        _fail(exc)


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="What to look for, in words ('reverse shell') or as a command line.")],
    limit: Annotated[int, typer.Option("--limit", "-n", help="Hits to show.")] = 20,
    org: Annotated[Optional[list[str]], typer.Option("--org", help="Only this org's behaviours (repeatable); default: every org.")] = None,
    workload: Annotated[Optional[str], typer.Option("--workload", help="Only this workload's behaviours.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per hit, best first.")] = False,
    lancedb: Annotated[Optional[str], typer.Option("--lancedb", envvar="RULELESS_LANCEDB__URI", help="LanceDB URI: a `ruleless score --state` dir or a running system's.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Find behaviours by intent ("reverse shell") or by example over the search index of
    learned behaviours (written by the sink, or by `ruleless score --state`). No service
    needs to run."""
    from streams.behaviours import BehaviourIndex

    try:
        settings = _settings(config, lancedb={"uri": lancedb})
    except RulelessError as exc:
        _fail(exc)
    index = BehaviourIndex(settings.lancedb.uri)
    if not index.count():
        typer.secho(f"no behaviours indexed at {settings.lancedb.uri} (yet)", err=True)
    hits = index.search(text, set(org) if org else None, workload, limit)
    if as_json:
        for h in hits:
            typer.echo(json.dumps({
                "cmdline": h.exemplar, "org_id": h.org_id, "workload": h.workload, "score": round(h.similarity, 4),
                "behaviour_id": h.behaviour_id, "process_name": h.process_name, "count": h.count,
                "first_ts": h.first_ts, "last_ts": h.last_ts, "max_score": h.max_score,
            }))  # fmt: skip
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("similarity", "org", "workload", "seen", "max score", "command line")
    for h in hits:
        table.add_row(f"{h.similarity:.2f}", h.org_id, h.workload, str(h.count), f"{h.max_score:.2f}", h.exemplar[:120])
    Console().print(table)


@app.command()
def feedback(
    event_id: Annotated[str, typer.Argument(help="event_id of a scored event.")],
    label: Annotated[str, typer.Argument(help="benign or malicious.")],
    note: Annotated[str, typer.Option("--note", help="Free text kept with the verdict.")] = "",
    url: Annotated[str, typer.Option("--url", envvar="RULELESS_QUERY_URL", help="The sink's query endpoint, to look the event up.")] = "http://127.0.0.1:8124",
    config: ConfigOpt = None,
    kafka: KafkaOpt = None,
) -> None:
    """Tell the workload's baseline that a scored event was benign or malicious."""
    from ruleless.feedback import send_feedback

    try:
        settings = _settings(config, kafka={"bootstrap": kafka})
        event = send_feedback(settings, url, event_id, label, note, _query_token(settings))
    except RulelessError as exc:
        _fail(exc)
    typer.echo(f"{label}: {event.event_id} ({event.shard_key}: {event.cmdline[:80]})")


@app.command()
def api(
    config: ConfigOpt = None,
    host: Annotated[Optional[str], typer.Option("--host", envvar="RULELESS_API__HOST", help="Address to listen on (loopback unless told).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", envvar="RULELESS_API__PORT", help="Port to listen on.")] = None,
    log_format: LogFormatOpt = None,
) -> None:
    """Serve the HTTP API and the dashboard (reads through the sink's query endpoint)."""
    from ruleless.api import run

    try:
        run(_settings(config, log_format, api={"host": host, "port": port}))
    except RulelessError as exc:
        _fail(exc)


def _token_store(config: Path | None) -> Any:
    from ruleless.tokens import TokenStore, tokens_path

    settings = load_settings(config)
    return TokenStore(tokens_path(settings.api.tokens_file, settings.data_dir))


@token_app.command("create")
def token_create(
    org: Annotated[str, typer.Option("--org", help="The org this token reads.")],
    admin: Annotated[bool, typer.Option("--admin", help="May read every org.")] = False,
    name: Annotated[str, typer.Option("--name", help="A note on who holds it.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Make a token; it is printed once (only its hash is kept)."""
    try:
        record, secret = _token_store(config).create(org, admin, name)
    except RulelessError as exc:
        _fail(exc)
    typer.echo(secret)
    typer.echo(f"token {record.id} for org {record.org}{' (admin: every org)' if record.admin else ''}; "
               "shown once, only its hash is stored", err=True)


@token_app.command("list")
def token_list(
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per token.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Every token: id, org, admin, created, revoked (never the token)."""
    import datetime as dt

    try:
        tokens = _token_store(config).tokens()
    except RulelessError as exc:
        _fail(exc)
    for t in tokens:
        row = {"id": t.id, "org": t.org, "admin": t.admin, "name": t.name, "created_at": t.created_at, "revoked_at": t.revoked_at}
        if json_out:
            typer.echo(json.dumps(row))
            continue
        when = dt.datetime.fromtimestamp(t.created_at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        state = "revoked" if t.revoked_at else "active"
        typer.echo(f"{t.id}  {t.org:<20} {'admin' if t.admin else 'org  '}  {state:<8} {when}  {t.name}")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (ruleless token list).")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a token: refused from the API's next request on."""
    try:
        record = _token_store(config).revoke(token_id)
    except RulelessError as exc:
        _fail(exc)
    typer.echo(f"revoked {record.id} (org {record.org})")


@config_app.command("show")
def config_show(config: ConfigOpt = None) -> None:
    """Print the effective settings, secrets masked."""
    try:
        typer.echo(json.dumps(load_settings(config).masked(), indent=2))
    except RulelessError as exc:
        _fail(exc)


class _open:
    """A file by path, or stdin/stdout for '-'."""

    def __init__(self, path: str, mode: str, dash: Any = None):
        self.path, self.mode, self.dash = path, mode, dash
        self._fh: Any = None

    def __enter__(self) -> Any:
        if self.path == "-":
            std = sys.stdin if "r" in self.mode else sys.stdout
            return self.dash or (std.buffer if "b" in self.mode else std)
        try:
            self._fh = open(self.path, self.mode) if "b" in self.mode else open(self.path, self.mode, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot open {self.path}: {exc.strerror}") from None
        return self._fh

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()


# Every file a ruleless process writes (LanceDB shards, chdb, the agent's spool, logs,
# tokens) holds command lines of the monitored hosts, or a credential: owner-only
# (issue 15). Set before anything is opened; child processes inherit it.
PRIVATE_UMASK = 0o077


def main() -> None:
    os.umask(PRIVATE_UMASK)
    app()


if __name__ == "__main__":
    main()
