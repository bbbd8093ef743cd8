"""The behaviour indexer: a thread of the sink that keeps the search index current.

Every ``sink.behaviours_interval_s`` it reads what the sink inserted since its watermark
from the events table, grouped by behaviour (one row per ``behaviour_id`` with count,
first/last time, highest score and an exemplar command line), and folds that into the
LanceDB ``behaviours`` table (:class:`streams.behaviours.BehaviourIndex`), which embeds
the behaviours it has not seen. The watermark (``inserted_at``, microseconds) is kept in
the LanceDB table ``behaviours_state`` beside it and moved only after the add, so a
restart resumes where the last completed pass ended (a crash between the two re-adds one
pass: its counts are counted twice, nothing is lost).

Embedding is the only heavy work of the sink process, and it runs here, never on the
worker: this thread runs at a lower priority (``sink.behaviours_nice``) with one BLAS
thread, so on a shared machine the scoring engine keeps its speed (tests/test_search_benchmark.py).
Rows inserted in the last ``SETTLE_S`` are left for the next pass (an insert in flight
when the pass starts has ``inserted_at`` before its rows are visible).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits

from ruleless.settings import Settings
from schemas.errors import RulelessError
from sinks.clickhouse import Backend
from ruleless.embedding import embed
from streams.behaviours import BehaviourIndex, BehaviourRow

log = logging.getLogger(__name__)

STATE_TABLE = "behaviours_state"
SETTLE_S = 2.0
_KEY = "inserted_at_watermark_us"


class Throttled:
    """An embedder that works at most ``share`` of the time: it embeds ``STEP`` texts,
    then rests ``(1 / share - 1)`` times as long as that took. Measured on the 2-core
    machine: an indexer embedding flat out (nice 10, one BLAS thread, on the other core)
    slowed the engine by 25 % (shared caches and memory bandwidth, which niceness does not
    share out); a new behaviour is rare once workloads are learned, so the index can
    take its time."""

    STEP = 32

    def __init__(self, embedder: Callable[[Sequence[str]], Any], share: float, stop: threading.Event | None = None) -> None:
        self.embedder = embedder
        self.share = share
        # Set, the rest ends at once and the pass is abandoned (a prompt shutdown).
        self.stop = stop or threading.Event()

    def __call__(self, texts: Sequence[str]) -> Any:
        parts = []
        for i in range(0, max(1, len(texts)), self.STEP):
            started = time.perf_counter()
            parts.append(self.embedder(texts[i : i + self.STEP]))
            rest = (time.perf_counter() - started) * (1.0 / self.share - 1.0) if self.share < 1.0 else 0.0
            if self.stop.wait(rest):
                raise Stopped("the sink is stopping")
        return np.concatenate(parts)


class Stopped(Exception):
    """A pass abandoned because the sink stops (its watermark was not moved)."""


def grouped_sql(table: str, since_us: int, until_us: int) -> str:
    """Behaviours of the rows inserted in (since, until], one row each."""
    return (
        "SELECT org_id, workload, behaviour_id, any(process_name) AS process_name, any(cmdline) AS exemplar, "
        "count() AS n, min(ts) AS first_ts, max(ts) AS last_ts, max(score) AS max_score "
        f"FROM {table} WHERE inserted_at > fromUnixTimestamp64Micro(toInt64({since_us}), 'UTC') "
        f"AND inserted_at <= fromUnixTimestamp64Micro(toInt64({until_us}), 'UTC') AND behaviour_id != '' "
        "GROUP BY org_id, workload, behaviour_id"
    )


class BehaviourIndexer:
    """Adds the behaviours of newly inserted rows of ``backend`` to the index at
    ``settings.lancedb.uri``; :meth:`start` runs it in a thread until :meth:`close`."""

    def __init__(self, settings: Settings, backend: Backend, index: BehaviourIndex | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self._stop = threading.Event()
        self.index = index or BehaviourIndex(
            settings.lancedb.uri, embedder=Throttled(embed, settings.sink.behaviours_cpu, self._stop)
        )
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.indexed = 0

    # -- the watermark --

    def _state(self) -> Any:
        db = self.index._db
        schema = pa.schema([pa.field("key", pa.string()), pa.field("value", pa.int64())])
        return db.create_table(STATE_TABLE, schema=schema, exist_ok=True)

    def watermark(self) -> int:
        rows = self._state().search().where(f"key = '{_KEY}'").limit(1).to_list()
        return int(rows[0]["value"]) if rows else 0

    def _set_watermark(self, value: int) -> None:
        data = pa.Table.from_pylist([{"key": _KEY, "value": value}])
        self._state().merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(data)

    # -- one pass --

    def run_once(self) -> int:
        """Index what was inserted since the watermark (up to ``SETTLE_S`` ago); returns
        how many behaviours were new to the index."""
        now_us = int(self.backend.query("SELECT toUnixTimestamp64Micro(now64(6)) AS now")[0]["now"])
        until = now_us - int(SETTLE_S * 1_000_000)
        since = self.watermark()
        if until <= since:
            return 0
        rows = [
            BehaviourRow(
                org_id=r["org_id"], workload=r["workload"], behaviour_id=r["behaviour_id"], exemplar=r["exemplar"],
                process_name=r["process_name"], count=int(r["n"]), first_ts=float(r["first_ts"]),
                last_ts=float(r["last_ts"]), max_score=float(r["max_score"]),
            )  # fmt: skip
            for r in self.backend.query(grouped_sql(self.backend.table, since, until))
        ]
        new = self.index.add(rows) if rows else 0
        self._set_watermark(until)
        self.passes += 1
        self.indexed += new
        if new:
            log.info("behaviour index: %d new behaviours (%d seen in this pass), %d in all", new, len(rows), self.index.count())
        if self.passes % 100 == 0:
            self.index.optimize()
        return new

    # -- the thread --

    def start(self) -> BehaviourIndexer:
        self._thread = threading.Thread(target=self._run, name="behaviour-indexer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        lower_priority(self.settings.sink.behaviours_nice)
        interval = self.settings.sink.behaviours_interval_s
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except Stopped:
                return
            except ImportError as exc:
                # (the model's package is installed apart, --no-deps: see the Makefile)
                log.error("behaviour index disabled: the embedding model cannot be loaded: %s", exc)
                return
            except (RulelessError, OSError, ValueError, RuntimeError, pa.ArrowException) as exc:
                # The index lags behind until the next pass; the events themselves are safe.
                log.warning("behaviour index pass failed (retrying in %.0fs): %s", interval, exc)

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the pass in flight, waiting at most ``timeout`` (the thread is a
        daemon: a pass cut short by the process ending moved no watermark, and LanceDB
        commits a write whole or not at all, so the next start redoes it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def lower_priority(nice: int) -> None:
    """This thread ``nice`` steps below the process's niceness (Linux: a thread id is a process id to
    setpriority) and BLAS on one thread (the sink runs no other numpy work)."""
    threadpool_limits(limits=1, user_api="blas")
    if nice:
        try:
            me = threading.get_native_id()
            # (relative: a sink started under `nice` keeps its indexer below itself)
            os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + nice))
        except OSError as exc:
            log.warning("behaviour indexer keeps normal priority: %s", exc)
