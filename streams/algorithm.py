"""The algorithm interface of the scoring engine, and the registry of implementations.

An algorithm owns the state of a shard (one (org_id, workload) baseline). Its contract:

* ``score_and_learn(events)`` scores each event against the state *before* that event,
  then learns it, strictly in order — so a batch gives exactly the scores of the same
  events fed one by one (an event repeated inside a batch sees its earlier twin);
* time is event time: the shard's clock is the largest ``ts`` it has seen, never the wall
  clock, so the same stream always gives the same scores;
* state round-trips through an Arrow table (what the LanceDB store persists) without
  changing any later score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from ruleless.settings import EngineSettings
from schemas.events import RawEvent
from streams.priors import Prior


# Event time is cut into days: expiry and org priors move at day boundaries.
DAY_S = 86_400.0

# What an algorithm says about one event: (score, reasons, history — the events the shard
# had learned before this one, which drives the "learning" flag — and the (warn, alert)
# thresholds the shard derived from its own scores, or None). A plain tuple: one is built
# per event, and a NamedTuple's constructor was 18 % of the worker's engine thread
# (py-spy, issue 17).
Verdict = tuple[float, list[str], int, "tuple[float, float] | None"]


@dataclass(frozen=True, slots=True)
class Changes:
    """Rows to upsert and keys to delete since the last ``take_changes``: by key
    (``deletes``), or as a SQL predicate over the algorithm's columns (``expired``, for
    an algorithm that keeps no key text in memory)."""

    upserts: pa.Table | None
    deletes: list[str]
    expired: str = ""

    @property
    def empty(self) -> bool:
        return (self.upserts is None or self.upserts.num_rows == 0) and not self.deletes and not self.expired


class ShardModel(Protocol):
    def score_and_learn(self, events: Sequence[RawEvent], prior: Prior | None = None) -> list[Verdict]:
        """``prior``: what the org's other workloads know (streams.priors); algorithms
        that do not use priors ignore it, and those that do also have ``known_hashes()``."""
        ...

    def feedback(self, event: RawEvent, label: str) -> None:
        """An analyst says ``event`` is ``benign`` or ``malicious``; later scores follow."""
        ...

    def prune(self) -> int:
        """Drop entries that fell out of the retention window; returns how many."""
        ...

    def take_changes(self) -> Changes: ...

    def to_table(self) -> pa.Table:
        """The whole learned state, in the persisted schema."""
        ...

    def __len__(self) -> int: ...


class Algorithm(Protocol):
    name: str
    version: str

    @property
    def model(self) -> str:
        """``name/version``, written into every scored event."""
        ...

    def schema(self) -> pa.Schema: ...

    def new_shard(self) -> ShardModel: ...

    def load_shard(self, table: pa.Table) -> ShardModel: ...


_REGISTRY: dict[str, Callable[[EngineSettings], Algorithm]] = {}


def register(name: str) -> Callable[[Callable[[EngineSettings], Algorithm]], Callable[[EngineSettings], Algorithm]]:
    def wrap(factory: Callable[[EngineSettings], Algorithm]) -> Callable[[EngineSettings], Algorithm]:
        _REGISTRY[name] = factory
        return factory

    return wrap


def algorithm_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def make_algorithm(settings: EngineSettings) -> Algorithm:
    """The algorithm named by ``settings.algorithm``."""
    _load_builtin()
    try:
        factory = _REGISTRY[settings.algorithm]
    except KeyError:
        from schemas.errors import ConfigError

        raise ConfigError(
            f"unknown algorithm {settings.algorithm!r}; choose from {', '.join(sorted(_REGISTRY))}"
        ) from None
    return factory(settings)


def _load_builtin() -> None:
    # Imported for their @register side effect.
    import streams.evidence  # noqa: F401
    import streams.seed  # noqa: F401
