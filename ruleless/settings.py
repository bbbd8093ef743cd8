"""The one settings model, read once at start and passed down.

Precedence (lowest first): defaults < config file (TOML) < ``RULELESS_*`` environment
< CLI flags. Nested fields use ``__`` in the environment, e.g.
``RULELESS_KAFKA__BOOTSTRAP=broker:9092`` or ``RULELESS_ENGINE__WARN=0.6``.

Nothing here reads the environment at import time: call :func:`load_settings`.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ruleless.logs import librdkafka_logger
from schemas.events import NAME_PATTERN


class KafkaSettings(BaseModel):
    """Client settings shared by every Kafka producer and consumer."""

    bootstrap: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "ruleless"
    # Longest a fetch may wait on the broker for new records. Kafka answers as soon as
    # records arrive; some compatible brokers (tansu, the embedded one) hold every fetch
    # for the whole wait, which librdkafka's 500 ms and Faust's fixed 1.5 s default add to
    # each event's latency (issue 5: p99 produce -> ClickHouse 4.1 s -> 1.9 s at 5k/s).
    fetch_wait_max_ms: int = Field(100, ge=1, le=10_000)

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka configuration for confluent-kafka clients."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
            "logger": librdkafka_logger(),
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_cafile:
            conf["ssl.ca.location"] = self.ssl_cafile
        if self.ssl_certfile:
            conf["ssl.certificate.location"] = self.ssl_certfile
        if self.ssl_keyfile:
            conf["ssl.key.location"] = self.ssl_keyfile
        return conf


class TopicSettings(BaseModel):
    raw: str = "ruleless.raw"
    scored: str = "ruleless.scored"
    alerts: str = "ruleless.alerts"
    dead_letter: str = "ruleless.deadletter"
    # Analysts' verdicts on scored events, keyed like the raw topic (co-partitioned).
    feedback: str = "ruleless.feedback"
    partitions: int = Field(8, ge=1)
    replication: int = Field(1, ge=1)


class Thresholds(BaseModel):
    """Score at or above ``warn`` is a warning, at or above ``alert`` an alert."""

    warn: float = Field(0.7, ge=0.0, le=1.0)
    alert: float = Field(0.9, ge=0.0, le=1.0)


# How long an unseen behaviour still counts, per algorithm, unless retention_days is set.
DEFAULT_RETENTION_DAYS = {"seed": 7.0, "evidence": 45.0}


class EngineSettings(BaseModel):
    algorithm: str = "evidence"
    # None = the algorithm's own default (seed: 7 days as in the article; evidence: 45,
    # so monthly jobs are remembered).
    retention_days: float | None = Field(None, gt=0)
    k: int = Field(10, ge=1)
    dims: int = Field(128, ge=8)
    warn: float = Field(0.7, ge=0.0, le=1.0)
    alert: float = Field(0.9, ge=0.0, le=1.0)
    # Algorithms that derive thresholds from a shard's own score distribution aim at
    # these fractions of events; warn/alert above are then the floors.
    target_warn_rate: float = Field(0.02, gt=0, lt=1)
    target_alert_rate: float = Field(0.005, gt=0, lt=1)
    # A shard with less history than this is "learning": its scores say so.
    learning_events: int = Field(100, ge=0)
    # Explicit per-(org, workload) overrides, keyed "org_id/workload".
    thresholds: dict[str, Thresholds] = Field(default_factory=dict)
    # Events dated further than this into the future are dead-lettered: one host with a
    # wrong clock must not age out a whole shard's baseline.
    max_future_skew_s: float = Field(86_400.0, gt=0)
    # Org priors (streams.priors): what an org's other workloads know tempers novelty
    # in this one, and a new workload starts from its org's knowledge.
    org_priors: bool = True

    def retention_for(self, algorithm: str) -> float:
        return self.retention_days or DEFAULT_RETENTION_DAYS.get(algorithm, 7.0)


class LanceSettings(BaseModel):
    uri: str = "data/lancedb"
    # Dirty shards are written at most this often; offsets are committed only after.
    flush_interval_s: float = Field(2.0, gt=0)
    # Timed flushes write at most this many changed shards per second of interval: a
    # flush's snapshot costs ~35 µs a changed shard on the scoring thread, and at 10,000
    # shards and 5,000 events/s a 2 s interval spent a quarter of it on snapshots and the
    # worker fell behind (issue 17). 10,000 changed shards: a flush every ~6.7 s; up to
    # 3,000: every flush_interval_s. Never less often than flush_interval_max_s.
    flush_shards_per_s: float = Field(1500.0, gt=0)
    flush_interval_max_s: float = Field(30.0, gt=0)
    # Shards whose changes a flush takes at a time, scoring going on in between.
    snapshot_slice_shards: int = Field(1000, ge=1)
    # Prune expired behaviours and merge each group table's small files. Every flush's
    # merge leaves a file and deletions behind: with 5 minutes between compactions a
    # 1,000-shard worker's RSS grew ~140 MiB in a probe, with 1 minute it stayed flat.
    compact_interval_s: float = Field(60.0, gt=0)
    # LanceDB's metadata and index caches, each (MiB). Its defaults are far larger: with
    # one commit per dirty shard per flush, a worker's RSS grew ~3 MiB per flush of 100
    # shards for as long as it ran (issue 14, soak).
    cache_mib: int = Field(64, ge=1)


class WorkerSettings(BaseModel):
    app_id: str = "ruleless-worker"
    group_id: str = "ruleless-worker"
    batch_size: int = Field(2000, ge=1)
    batch_window_s: float = Field(0.2, gt=0)
    # A shard without events for this long is written and dropped from memory (the next
    # event reloads it from LanceDB); 0 keeps every shard a worker owns in memory.
    idle_shard_s: float = Field(900.0, ge=0)
    metrics_port: int = 9464
    web_port: int = 6066
    data_dir: str = "data/faust"


class ClickHouseSettings(BaseModel):
    backend: Literal["chdb", "server"] = "chdb"
    path: str = "data/clickhouse"
    url: str = "http://127.0.0.1:8123"
    username: str = "default"
    password: SecretStr = SecretStr("")
    database: str = "ruleless"
    table: str = "security_events"
    ttl_days: int = Field(90, ge=1)
    # Limits of every read (the query endpoint and what the CLI asks): a query over them
    # fails instead of holding the store; reads run on `query_readers` sessions at once,
    # so one slow read does not queue the others (issue 15).
    query_timeout_s: float = Field(10.0, gt=0)
    query_max_memory_mib: int = Field(1024, ge=16)
    query_readers: int = Field(4, ge=1, le=32)


class SinkSettings(BaseModel):
    group_id: str = "ruleless-sink"
    batch_rows: int = Field(5000, ge=1)
    batch_age_s: float = Field(1.0, gt=0)
    # A batch that failed this many times (not for backpressure) is written row by row:
    # rows the store refuses on their own are dead-lettered with the reason; when every
    # row fails alike the store is the problem and the batch keeps being retried.
    max_attempts: int = Field(5, ge=1)
    # A failed write is retried after retry_min_s, doubling up to retry_max_s.
    retry_min_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(10.0, gt=0)
    metrics_port: int = 9465
    # Read-only SQL endpoint served by the sink, the process that owns an embedded store.
    # Every request needs this bearer token; unset, the sink makes one at start and writes
    # it to DATA_DIR/sink-query.token (0600), where the CLI on this host reads it.
    query_host: str = "127.0.0.1"
    query_port: int = 8124
    query_token: SecretStr | None = None
    # The search index of behaviours (sinks/indexer.py): a thread of the sink that adds
    # what was inserted to the LanceDB `behaviours` table (lancedb.uri) every interval,
    # at this niceness and on one BLAS thread, so embedding never competes with workers.
    behaviours: bool = True
    behaviours_interval_s: float = Field(5.0, gt=0)
    behaviours_nice: int = Field(10, ge=0, le=19)
    # Share of one core the indexer's embedding may use (it rests the remaining time).
    behaviours_cpu: float = Field(0.2, gt=0, le=1)


class AlertRoute(BaseModel):
    """How alerts of one (org, workload) become notifications (see sinks/throttle.py)."""

    # Wait this long after a behaviour's first alert before posting it, gathering the
    # rest of a burst (the same behaviour on 500 hosts) into the same notification.
    group_wait_s: float = Field(10.0, ge=0)
    # After a behaviour was posted, its further alerts for this long are counted and
    # posted as one follow-up at the end (nothing if none came).
    window_s: float = Field(300.0, gt=0)
    # At most this many notifications per (org, workload) per window; the rest are
    # folded into one digest posted when the window ends.
    max_per_window: int = Field(20, ge=1)
    # Alerts below this severity are not forwarded.
    min_severity: Literal["warn", "alert"] = "warn"


class AlertSettings(BaseModel):
    """`ruleless alerts`: tail the alerts topic, forward notifications to a webhook."""

    group_id: str = "ruleless-alerts"
    # A secret: hook URLs often carry their credential in the path (shown redacted).
    webhook: SecretStr | None = None
    # Sent as "Authorization: Bearer ..." when set, over https only.
    webhook_token: SecretStr | None = None
    timeout_s: float = Field(10.0, gt=0)
    retry_min_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(60.0, gt=0)
    metrics_port: int = 9467
    default: AlertRoute = Field(default_factory=AlertRoute)
    # Per-(org, workload) overrides, keyed "org_id/workload".
    routes: dict[str, AlertRoute] = Field(default_factory=dict)

    def route_for(self, shard_key: str) -> AlertRoute:
        return self.routes.get(shard_key, self.default)


class TenancySettings(BaseModel):
    """Which org a message may speak for (ruleless/tenancy.py)."""

    # Worker: accept raw events and verdicts only when signed by their org's key.
    signed: bool = False
    # Worker: org -> the key that org's agents sign raw events with.
    agent_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # Worker: org -> the key that org's analysts sign verdicts with.
    analyst_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # `ruleless feedback`: the key this analyst signs verdicts with.
    analyst_key: SecretStr | None = None


class ApiSettings(BaseModel):
    """`ruleless api`: the HTTP API and the dashboard (ruleless/api.py)."""

    # Loopback unless configured; a non-loopback bind is refused while no token exists.
    host: str = "127.0.0.1"
    port: int = Field(8600, ge=0, le=65535)
    # The token store (ruleless/tokens.py): "" = DATA_DIR/api-tokens.json (0600).
    tokens_file: str = ""
    # Where events are read: "sink" = the sink's read-only query endpoint (the process
    # that owns an embedded chdb; sink.query_host/port and its token), "server" = the
    # ClickHouse server of the clickhouse settings, read-only sessions.
    query_source: Literal["sink", "server"] = "sink"
    # The sink's query endpoint; "" = http://sink.query_host:sink.query_port.
    query_url: str = ""
    # Largest page of /api/events (and rows behind one /api/alerts grouping).
    max_page: int = Field(500, ge=1, le=10_000)
    alert_rows: int = Field(5000, ge=1, le=100_000)
    # /metrics, /healthz and /readyz (ruleless/health.py) on metrics_host; 0 = none.
    metrics_port: int = Field(9468, ge=0, le=65535)


class AgentSettings(BaseModel):
    org_id: str = "local"
    workload: str = "default"
    host: str = Field(default_factory=socket.gethostname)
    backend: Literal["auto", "ebpf", "netlink", "proc"] = "auto"
    poll_interval_s: float = Field(0.5, gt=0)
    metrics_port: int = 9466
    # The key of this agent's org (tenancy.agent_keys on the worker): every event is
    # published with its HMAC in the ruleless-sig header.
    signing_key: SecretStr | None = None
    # Where each process's workload comes from (agent/workload.py): "config" = the
    # workload above for every process; "systemd" = its service unit; "container" = its
    # container. Processes outside a unit/container keep the workload above.
    workload_from: Literal["config", "systemd", "container"] = "config"
    # Backends without eBPF find TCP connects/listens by scanning /proc this often
    # (agent/connections.py); 0 turns that off.
    connections_interval_s: float = Field(2.0, ge=0)
    # The netlink backend's reader processes, each pinned to one CPU and reading the execs
    # that happen there (agent/netlink.py); 0 = one per CPU, at most 8.
    netlink_readers: int = Field(0, ge=0)
    # Delivery (agent/spool.py): events wait on disk while Kafka is unreachable. Empty
    # spool_dir = DATA_DIR/agent-spool; spool_max_mib 0 = no spool (librdkafka's memory
    # queue only). An event that does not fit a full spool is dropped and counted.
    spool_dir: str = ""
    spool_max_mib: int = Field(256, ge=0)
    # Without an acknowledgement within this time the broker counts as unreachable.
    delivery_timeout_s: float = Field(10.0, gt=0)

    @field_validator("org_id", "workload")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a safe name (letters, digits, . _ -; max 64)")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RULELESS_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: str = "data"
    # Where every process serves /metrics (counts only, never command lines); loopback
    # unless configured.
    metrics_host: str = "127.0.0.1"
    # Started as root, `ruleless up` runs the sink and worker as this user (the agent
    # stays root to capture); "" keeps them root. See ruleless/privileges.py.
    run_as: str = "nobody"
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    lancedb: LanceSettings = Field(default_factory=LanceSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    tenancy: TenancySettings = Field(default_factory=TenancySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    # Set by load_settings; not a field a user configures.
    _config_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings]
        handed = os.environ.get(SETTINGS_FILE_ENV)
        if handed:  # a child of ruleless: exactly its parent's settings (child_env)
            sources.append(JsonConfigSettingsSource(settings_cls, json_file=Path(handed)))
        sources.append(env_settings)
        if _CONFIG_FILE is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_CONFIG_FILE))
        return tuple(sources)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data with every secret masked."""
        return json.loads(self.model_dump_json())


# Only set for the duration of one load_settings call (pydantic-settings asks the class
# for its sources, so the file has to reach settings_customise_sources somehow).
_CONFIG_FILE: Path | None = None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings.

    ``overrides`` are CLI flags as nested dicts (``{"kafka": {"bootstrap": ...}}``);
    values that are None are ignored so unset flags don't shadow lower layers.
    """
    global _CONFIG_FILE
    path = Path(config_file) if config_file else None
    if path is not None and not path.is_file():
        from schemas.errors import ConfigError

        raise ConfigError(f"config file not found: {path}")
    _CONFIG_FILE = path
    try:
        return Settings(**_drop_none(overrides))
    except ValidationError as exc:
        from schemas.errors import ConfigError

        raise ConfigError(f"invalid settings: {exc}") from None
    finally:
        _CONFIG_FILE = None


def _drop_none(value: dict[str, Any]) -> dict[str, Any]:
    cleaned: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            item = _drop_none(item)
            if not item:
                continue
        elif item is None:
            continue
        cleaned[key] = item
    return cleaned


# A child process started by ruleless reads its settings from this file (see child_env).
SETTINGS_FILE_ENV = "RULELESS_SETTINGS_FILE"


def child_env(settings: Settings, directory: str | Path | None = None) -> dict[str, str]:
    """The environment that makes a child process load exactly these settings: one
    variable naming a settings file (0600, in ``directory``, default DATA_DIR/run),
    never the settings themselves — secrets in a process's environment are readable
    by every process of that user (/proc/PID/environ) and end up in crash reports."""
    folder = Path(directory) if directory is not None else Path(settings.data_dir) / "run"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "settings.json"
    body = json.dumps(_reveal(settings.model_dump(mode="python")), default=str).encode()
    tmp = folder / f".settings.json.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)
    os.replace(tmp, path)  # (a child starting meanwhile never reads half a file)
    return {SETTINGS_FILE_ENV: str(path.resolve())}


def child_environ(settings: Settings, directory: str | Path | None = None) -> dict[str, str]:
    """This process's environment for a child: every ``RULELESS_*`` variable replaced by
    the settings file of :func:`child_env` (the file holds what they said)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RULELESS_")}
    return {**inherited, **child_env(settings, directory)}


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value
