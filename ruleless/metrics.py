"""Prometheus metrics of the long-running processes (one registry per process)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from schemas.events import ScoredEvent

_SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class WorkerMetrics:
    """Counters of the scoring worker. Created once per process."""

    _instance: "WorkerMetrics | None" = None

    def __new__(cls) -> "WorkerMetrics":
        # prometheus-client refuses to register a metric name twice in one registry.
        if cls._instance is None:
            inst = super().__new__(cls)
            inst.events_in = Counter("ruleless_worker_events_in_total", "Raw messages consumed")
            inst.events_out = Counter("ruleless_worker_events_scored_total", "Events scored", ["severity"])
            inst.dead_lettered = Counter("ruleless_worker_dead_lettered_total", "Messages sent to the dead-letter topic")
            inst.scores = Histogram("ruleless_worker_score", "Scores given", buckets=_SCORE_BUCKETS)
            inst.batch_seconds = Histogram("ruleless_worker_batch_seconds", "Time to score and publish one micro-batch")
            inst.shards = Gauge("ruleless_worker_shards", "Shards held in memory")
            inst.flush_interval = Gauge(
                "ruleless_worker_flush_interval_seconds",
                "Time between timed LanceDB flushes (lancedb.flush_interval_s, stretched by lancedb.flush_shards_per_s)",
            )
            inst.already_learned = Counter(
                "ruleless_worker_already_learned_total",
                "Re-delivered raw events skipped because their shard had already learned them",
            )
            inst.positions_discarded = Counter(
                "ruleless_worker_positions_discarded_total",
                "Shard positions set aside because they were of another topic incarnation (topic re-created, broker restarted)",
            )
            inst.fenced_writes = Counter(
                "ruleless_worker_fenced_writes_total",
                "Shard writes refused because a newer owner claimed the shard's partition (a stale worker)",
            )
            cls._instance = inst
        return cls._instance

    def observe_batch(self, scored: Sequence[ScoredEvent], dead: int, seconds: float) -> None:
        self.events_in.inc(len(scored) + dead)
        self.dead_lettered.inc(dead)
        for event in scored:
            self.events_out.labels(event.severity).inc()
            self.scores.observe(event.score)
        self.batch_seconds.observe(seconds)

