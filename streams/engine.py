"""The scoring engine: shards in memory, events in, scored events out. No I/O.

The engine never loads or saves anything itself: an adapter (streams.scoring) installs
shards it loaded from the store before scoring, and collects changes to persist after.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from msgspec.structs import astuple
from threadpoolctl import threadpool_limits

from ruleless.settings import EngineSettings, Thresholds
from schemas.events import RawEvent, ScoredEvent
from streams.algorithm import DAY_S, Algorithm, Changes, ShardModel, make_algorithm
from streams.priors import OrgPriors

_blas_limited = False
# Engine.score builds scored events positionally (a third of the cost of keywords).
_VERDICT_FIELDS = ("score", "severity", "reasons", "model", "learning", "scored_at")
assert ScoredEvent.__struct_fields__ == RawEvent.__struct_fields__ + _VERDICT_FIELDS


def single_threaded_blas() -> None:
    """Run BLAS on one thread in this process (once; idempotent).

    The engine's matrix products are small (a batch's new behaviours × 128 × a shard's
    rows). OpenBLAS's thread pool makes them ~7x slower here — 0.40 vs 0.06 ms per
    product, the seed engine at 18k vs 33k events/s on 2 cores (issue 5, make bench) —
    and its spinning threads take the core the worker's event loop and the sink need.
    """
    global _blas_limited
    if not _blas_limited:
        threadpool_limits(limits=1, user_api="blas")
        _blas_limited = True


# CPython's default (700, 10, 10) runs a full collection over the learned state (millions
# of small containers that never die) every few batches: ~45 % of the evidence engine's
# time on the scale benchmark. Rarer older-generation passes still collect real garbage.
GC_THRESHOLDS = (700, 100, 100)


def long_lived_state_gc() -> None:
    """Collect the older generations rarely in a process that holds shards."""
    if gc.get_threshold()[1:] != GC_THRESHOLDS[1:]:
        gc.set_threshold(*GC_THRESHOLDS)


class Engine:
    def __init__(self, settings: EngineSettings, algorithm: Algorithm | None = None):
        single_threaded_blas()
        long_lived_state_gc()
        self.settings = settings
        self.algorithm = algorithm or make_algorithm(settings)
        self.shards: dict[str, ShardModel] = {}
        # Org priors (streams.priors): a snapshot taken at each event-time day boundary
        # (the engine's clock: the largest ts seen), from the shards in memory and
        # ``stored_known`` — what the store knows of shards not in memory, supplied by
        # the caller. None until the first snapshot.
        self.priors: OrgPriors | None = None
        self.stored_known: dict[str, np.ndarray] = {}  # shard -> hashes of the keys it knows
        self._prior_day = float("-inf")
        self.uses_priors = settings.org_priors and hasattr(self.algorithm.new_shard(), "known_hashes")
        # Threshold overrides set through the API (streams.thresholds), replaced whole by
        # the worker each flush interval; they win over settings.thresholds.
        self.overrides: dict[str, Thresholds] = {}

    @property
    def model(self) -> str:
        return self.algorithm.model

    def missing(self, events: Iterable[RawEvent]) -> set[str]:
        """Shard keys the events need that are not in memory yet."""
        return {e.shard_key for e in events} - self.shards.keys()

    def install(self, key: str, shard: ShardModel | None) -> None:
        """Put a loaded shard (or a new empty one when ``shard`` is None) in memory."""
        self.shards[key] = shard if shard is not None else self.algorithm.new_shard()

    def evict(self, key: str) -> None:
        self.shards.pop(key, None)

    def score(self, events: Sequence[RawEvent], now: float = 0.0) -> list[ScoredEvent]:
        """Score then learn each event, per shard in order; output keeps input order.

        ``now`` is only written into ``scored_at``; it never changes a score. With org
        priors, the events are scored in runs that end where event time enters a new
        day, and the priors are taken again before the first event of the new day: the
        same events give the same scores however they are batched.
        """
        if not self.uses_priors:
            return self._score(events, now)
        out: list[ScoredEvent] = []
        start = 0
        for i, event in enumerate(events):
            day = event.ts // DAY_S
            if day > self._prior_day:
                out.extend(self._score(events[start:i], now))
                start = i
                self._prior_day = day
                self.refresh_priors()
        out.extend(self._score(events[start:], now))
        return out

    @property
    def priors_day(self) -> float:
        """The event-time day (days since the epoch) the priors snapshot was taken on."""
        return self._prior_day

    def restore_priors(self, day: float, priors: OrgPriors) -> None:
        """Carry on with a snapshot taken earlier on ``day`` (a reloaded offline state)."""
        self.priors, self._prior_day = priors, day

    def refresh_priors(self) -> None:
        """Take the org priors again from the shards in memory and ``stored_known``."""
        known = {key: hashes for key, hashes in self.stored_known.items() if key not in self.shards}
        for key, shard in self.shards.items():
            known[key] = shard.known_hashes()  # type: ignore[attr-defined]
        self.priors = OrgPriors.build(known.items())

    def _score(self, events: Sequence[RawEvent], now: float) -> list[ScoredEvent]:
        if not events:
            return []
        priors = self.priors
        by_shard: dict[str, list[int]] = defaultdict(list)
        for i, event in enumerate(events):
            by_shard[event.shard_key].append(i)
        out: list[ScoredEvent | None] = [None] * len(events)
        model, learning_events = self.model, self.settings.learning_events
        for key, positions in by_shard.items():
            shard = self.shards.get(key)
            if shard is None:
                shard = self.shards[key] = self.algorithm.new_shard()
            override = self.overrides.get(key) or self.settings.thresholds.get(key)
            prior = priors.view(key) if priors is not None else None
            verdicts = shard.score_and_learn([events[i] for i in positions], prior)
            for i, (score, reasons, history, learned) in zip(positions, verdicts):
                if override is not None:
                    warn, alert = override.warn, override.alert
                elif learned is not None:
                    warn, alert = learned
                else:
                    warn, alert = self.settings.warn, self.settings.alert
                score = float(min(1.0, max(0.0, score)))
                # Positional: the raw event's fields, then the verdict's, in declaration order.
                out[i] = ScoredEvent(
                    *astuple(events[i]),
                    score,
                    "alert" if score >= alert else "warn" if score >= warn else "ok",
                    reasons,
                    model,
                    history < learning_events,
                    now,
                )
        return out  # type: ignore[return-value]

    def feedback(self, event: RawEvent, label: str) -> None:
        """Apply an analyst's verdict (``benign`` or ``malicious``) on a scored event."""
        if label not in ("benign", "malicious"):
            from schemas.errors import ConfigError

            raise ConfigError(f"feedback label must be benign or malicious, not {label!r}")
        shard = self.shards.get(event.shard_key)
        if shard is None:
            shard = self.shards[event.shard_key] = self.algorithm.new_shard()
        shard.feedback(event, label)

    def take_changes(self, keys: Iterable[str] | None = None) -> dict[str, Changes]:
        """Per-shard rows to persist since the last call (only shards with changes), of
        every shard or of those of ``keys`` still held."""
        shards = self.shards if keys is None else {k: self.shards[k] for k in keys if k in self.shards}
        in_bulk = getattr(self.algorithm, "take_changes", None)
        if in_bulk is not None:
            return {key: c for key, c in in_bulk(shards).items() if not c.empty}
        out = {}
        for key, shard in shards.items():
            changes = shard.take_changes()
            if not changes.empty:
                out[key] = changes
        return out

    def prune(self) -> int:
        return sum(shard.prune() for shard in self.shards.values())
