"""The agent loop: capture → publish, every poll interval, until told to stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.capture import CaptureBackend
from agent.procfs import ProcfsBackend
from agent.publish import JsonLinesOutput, KafkaPublisher, Output
from agent.spool import SpooledPublisher
from ruleless.health import HealthServer
from ruleless.kafka import ensure_topics
from ruleless.lifecycle import stop_on_signals
from ruleless.settings import AgentSettings, Settings
from schemas.errors import CaptureError, ConfigError, ServiceError

log = logging.getLogger(__name__)

# Backends in order of preference (DESIGN.md).
BACKENDS = ("ebpf", "netlink", "proc")
SUMMARY_INTERVAL_S = 60.0
# The capture loop counts as stalled (not ready) after this many poll intervals without a
# completed poll, and as dead (/healthz fails) after STALLED_S.
READY_POLLS = 5
STALLED_S = 60.0


def run(
    settings: Settings,
    output: str | None = None,
    stop: threading.Event | None = None,
    backend: str | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Capture process events and publish them until ``stop`` is set.

    ``output`` None publishes to the raw topic (created if missing); a path or "-"
    (stdout) writes JSON lines instead. ``backend`` overrides ``settings.agent.backend``.
    Without ``stop``, SIGTERM and SIGINT stop the loop when called from the main thread.
    ``ready`` is set once the backend has started: from then on every exec is captured.
    On the way out, outstanding events are flushed (Output.close, up to 30 s for Kafka).

    Publishing goes through the disk spool (agent/spool.py) unless
    ``agent.spool_max_mib`` is 0: Kafka may be down at start and at any time after.

    Raises ConfigError for an unknown or unavailable backend, CaptureError when the
    backend cannot read its source, ServiceError when the spool is in use by another
    agent (or, without a spool, when Kafka cannot be reached at start).
    """
    agent = settings.agent
    requested = backend or agent.backend
    _check_backend_name(requested)
    with ExitStack() as stack:
        stop = stack.enter_context(stop_on_signals("agent", stop))
        capture = start_backend(agent, requested)
        stack.callback(capture.stop)
        sink = stack.enter_context(_open_output(settings, output))
        metrics = AgentMetrics(capture.name)
        beat = Heartbeat(capture.name, sink, agent.poll_interval_s)
        if agent.metrics_port:
            stack.enter_context(HealthServer(
                agent.metrics_port, settings.metrics_host, ready=beat.readiness, alive=beat.liveness, registry=metrics.registry,
            ))  # fmt: skip
        log.info(
            "agent running: backend=%s shard=%s/%s host=%s output=%s every %.2fs",
            capture.name, agent.org_id, agent.workload, agent.host,
            _describe_output(settings, output), agent.poll_interval_s,
        )  # fmt: skip
        if ready is not None:
            ready.set()
        captured = _loop(capture, sink, metrics, agent.poll_interval_s, stop, beat)
        log.info("agent stopping: captured %d events, flushing; capture drops: %s", captured, capture.drops() or "none known")
    metrics.sync(sink)
    log.info("agent stopped: captured %d, delivered %d, failed %d", captured, sink.delivered, sink.failed)


def start_backend(agent: AgentSettings, requested: str) -> CaptureBackend:
    """The started backend for ``requested`` ("auto", "ebpf", "netlink", "proc").

    A backend is available when it starts. "auto" tries them best first and logs which
    one runs and why each better one did not start; an explicitly requested backend
    that does not start is a ConfigError, not a silent downgrade.
    """
    _check_backend_name(requested)
    auto = requested == "auto"
    reasons: list[str] = []
    for name in BACKENDS if auto else (requested,):
        try:
            capture = _make_backend(name, agent)
            capture.start()
        except CaptureError as exc:
            if not auto:
                raise ConfigError(f"capture backend {name!r} is unavailable: {exc}; use 'auto' or another backend") from None
            reasons.append(f"{name}: {exc}")
            continue
        if not auto:
            log.info("capture backend: %s, as requested", name)
        elif reasons:
            log.info("capture backend: %s, chosen by auto; better ones unavailable: %s", name, "; ".join(reasons))
        else:
            log.info("capture backend: %s, chosen by auto (the best one)", name)
        return capture
    raise CaptureError("no capture backend could start: " + "; ".join(reasons))


def _check_backend_name(requested: str) -> None:
    if requested != "auto" and requested not in BACKENDS:
        raise ConfigError(f"unknown capture backend {requested!r}; expected auto, {', '.join(BACKENDS)}")


def _make_backend(name: str, agent: AgentSettings) -> CaptureBackend:
    """An unstarted backend; CaptureError when its module cannot even load here.

    netlink and /proc polling see no network activity: they get the /proc connection
    scanner unless ``agent.connections_interval_s`` is 0.
    """
    if name in ("proc", "netlink"):
        inner: CaptureBackend
        if name == "proc":
            inner = ProcfsBackend(agent)
        else:
            from agent.netlink import NetlinkBackend

            inner = NetlinkBackend(agent)
        if not agent.connections_interval_s:
            return inner
        from agent.connections import WithConnections

        return WithConnections(inner, agent, source="procfs" if name == "proc" else "netlink")
    from agent.ebpf import EbpfBackend  # BCC itself is imported by start()

    return EbpfBackend(agent)


class AgentMetrics:
    """The agent's Prometheus metrics, in a registry of their own (one per run)."""

    def __init__(self, backend: str) -> None:
        self.registry = CollectorRegistry()
        self.captured = Counter(
            "ruleless_agent_events_captured", "Events reported by the capture backend",
            ["backend"], registry=self.registry,
        ).labels(backend)  # fmt: skip
        self.published = Counter(
            "ruleless_agent_events_published", "Events acknowledged by the output",
            registry=self.registry,
        )  # fmt: skip
        self.publish_errors = Counter(
            "ruleless_agent_publish_errors", "Events the output failed to deliver (spool full)",
            registry=self.registry,
        )  # fmt: skip
        self.capture_drops = Counter(
            "ruleless_agent_capture_drops", "Events the capture backend knows it missed",
            ["backend", "reason"], registry=self.registry,
        )  # fmt: skip
        self.spool_bytes = Gauge(
            "ruleless_agent_spool_bytes", "Size of the delivery spool on disk",
            registry=self.registry,
        )  # fmt: skip
        self._backend = backend
        self._drops: dict[str, int] = {}
        self.scan_duration = Histogram(
            "ruleless_agent_scan_duration_seconds", "Time of one capture poll",
            ["backend"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        ).labels(backend)  # fmt: skip
        self._delivered = 0
        self._failed = 0

    def sync(self, sink: Output) -> None:
        """Carry the output's running totals into the counters."""
        self.published.inc(sink.delivered - self._delivered)
        self.publish_errors.inc(sink.failed - self._failed)
        self._delivered, self._failed = sink.delivered, sink.failed
        if isinstance(sink, SpooledPublisher):
            self.spool_bytes.set(sink.backlog_bytes())

    def sync_drops(self, drops: dict[str, int]) -> None:
        """Carry the backend's running drop totals into the counter."""
        for reason, total in drops.items():
            self.capture_drops.labels(self._backend, reason).inc(total - self._drops.get(reason, 0))
        self._drops = dict(drops)


class Heartbeat:
    """When the capture loop last completed a poll, and what the output says: the agent's
    answers to /readyz (capturing, and its spool or publisher working) and /healthz."""

    def __init__(self, backend: str, sink: Output, interval_s: float) -> None:
        self.backend, self.sink = backend, sink
        self.ready_within_s = max(10.0, READY_POLLS * interval_s)
        self.last: float | None = None

    def beat(self) -> None:
        self.last = time.monotonic()

    def _since(self) -> float:
        return float("inf") if self.last is None else time.monotonic() - self.last

    def readiness(self) -> tuple[bool, str]:
        since = self._since()
        if since > self.ready_within_s:
            return False, "capture loop not polling yet" if self.last is None else f"capture loop stalled for {since:.0f}s"
        health = getattr(self.sink, "health", None)  # (the spool's; other outputs have no state to report)
        ok, why = health() if health is not None else (True, "writing")
        return ok, f"capturing with {self.backend}; {why}"

    def liveness(self) -> tuple[bool, str]:
        if self.last is None:
            return True, "starting"
        since = self._since()
        return since <= STALLED_S, f"last poll {since:.1f}s ago"


def _loop(
    capture: CaptureBackend, sink: Output, metrics: AgentMetrics, interval: float, stop: threading.Event, beat: Heartbeat,
) -> int:
    """Poll, publish and sleep until ``stop``; return how many events were captured."""
    captured = 0
    window = _Window()
    while not stop.is_set():
        started = time.monotonic()
        events = capture.poll()
        metrics.scan_duration.observe(time.monotonic() - started)
        for event in events:
            log.debug("exec pid=%d user=%s parent=%s: %s", event.pid, event.user, event.parent_process, event.cmdline)
            sink.publish(event)
        captured += len(events)
        metrics.captured.inc(len(events))
        sink.flush(0)
        metrics.sync(sink)
        metrics.sync_drops(capture.drops())
        window.maybe_log(captured, sink)
        beat.beat()
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
    # What an event-driven backend read since the last poll is still published.
    events = capture.poll()
    for event in events:
        sink.publish(event)
    metrics.captured.inc(len(events))
    return captured + len(events)


class _Window:
    """A readable summary line every SUMMARY_INTERVAL_S, so a quiet agent still shows life."""

    def __init__(self) -> None:
        self._since = time.monotonic()
        self._captured = self._delivered = self._failed = 0

    def maybe_log(self, captured: int, sink: Output) -> None:
        now = time.monotonic()
        if now - self._since < SUMMARY_INTERVAL_S:
            return
        log.info(
            "agent: last %.0fs captured %d, delivered %d, failed %d",
            now - self._since, captured - self._captured,
            sink.delivered - self._delivered, sink.failed - self._failed,
        )  # fmt: skip
        self._since = now
        self._captured, self._delivered, self._failed = captured, sink.delivered, sink.failed


@contextmanager
def _open_output(settings: Settings, output: str | None) -> Iterator[Output]:
    sink: Output
    if output is not None:
        sink = JsonLinesOutput(output)
    elif settings.agent.spool_max_mib:
        sink = _spooled_publisher(settings)
    else:
        ensure_topics(settings.kafka, settings.topics, names=[settings.topics.raw])
        sink = KafkaPublisher(settings.kafka, settings.topics.raw, signing_key=settings.agent.signing_key)
    try:
        yield sink
    finally:
        sink.close()


def _spooled_publisher(settings: Settings) -> SpooledPublisher:
    """The Kafka output with the disk spool. Kafka being down at start is not fatal:
    events are spooled, and the raw topic is created when the broker answers."""
    agent, topics = settings.agent, settings.topics

    def create_topic() -> None:
        ensure_topics(settings.kafka, topics, names=[topics.raw], timeout=5.0)

    try:
        create_topic()
    except ServiceError as exc:
        log.warning("kafka unreachable at start (%s): events are spooled until it answers", exc)
    spool_dir = Path(agent.spool_dir or Path(settings.data_dir) / "agent-spool")
    return SpooledPublisher(
        settings.kafka, topics.raw, spool_dir, max_bytes=agent.spool_max_mib << 20,
        delivery_timeout_s=agent.delivery_timeout_s, on_reconnect=create_topic, signing_key=agent.signing_key,
    )  # fmt: skip


def _describe_output(settings: Settings, output: str | None) -> str:
    if output is None:
        return f"kafka topic {settings.topics.raw} at {settings.kafka.bootstrap}"
    return "stdout" if output == "-" else output
