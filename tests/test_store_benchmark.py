"""Persistence benchmarks (`make bench`, marker ``bench``; issue 17): what a flush costs as
shards multiply, and `ruleless score` as a whole process.

Figures carry the fixed names of issue 17 (``bench-results.json``, section ``fixed``),
each with the baseline it is compared with, measured in the same run:

* ``cli_score_events_per_s`` — `ruleless score` on 200,000 events over 100 shards
  (2,000 behaviours each, Zipf: mostly repeats), JSON in and out, in a subprocess; with
  ``--state`` as ``cli_score_state_events_per_s``. Baseline: the engine alone on the same
  events in this process (``engine_events_per_s``).
* ``flush_p99_s_10k_shards`` — a stream worker's flushes (ScoringService over 12 raw
  partitions, real LanceDB) while 10,000 shards are all active; baseline the same with 100.
* ``store_10k_shards_vs_100_shards`` (issue 17's ``pipeline_10k_shards_vs_100_shards``
  measured in process) — score + flush throughput with 10,000 active shards over that
  with 100 on the same number of events, every shard settled on its baseline first.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ruleless.settings import load_settings
from schemas.events import RawEvent, encode
from streams.engine import Engine
from streams.scoring import ScoringService
from streams.store import Position, ShardStore
from tests.bench import endless_fleet, fleet, record

pytestmark = pytest.mark.bench

EVENTS = 200_000
PARTITIONS = 12
# A flush every this many events: the worker flushes every 2 s, and 5,000 events/s
# (issue 17's latency load) makes 10,000 events per flush.
PER_FLUSH = 10_000


def _ruleless(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ruleless.cli", *args], check=True, capture_output=True,
                   env={**os.environ, "RULELESS_LOG_FORMAT": "text"})
    return time.perf_counter() - started


def test_cli_score_benchmark(tmp_path: Path) -> None:
    events = fleet(shards=100, per_shard=EVENTS // 100, behaviours=2_000, seed=17)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(encode(e) for e in events) + b"\n")
    engine = Engine(load_settings().engine)
    started = time.perf_counter()
    for i in range(0, len(events), 2_000):
        engine.score(events[i : i + 2_000])
    engine_rate = len(events) / (time.perf_counter() - started)
    record("fixed", "engine_events_per_s", engine_rate, "events/s", ">= 50,000", "the same 200k events, in process")

    plain = len(events) / _ruleless("score", "-i", str(src), "-o", str(tmp_path / "out.jsonl"))
    record("fixed", "cli_score_events_per_s", plain, "events/s", ">= 40,000",
           f"whole process, JSON in and out; baseline engine_events_per_s {engine_rate:,.0f} (ratio {plain / engine_rate:.2f})")
    # The shard state alone: this stream has ~200,000 distinct behaviours, which the
    # search index would embed at ~40-60/s (README, Search), an hour on one core.
    stated = len(events) / _ruleless("score", "-i", str(src), "-o", str(tmp_path / "out2.jsonl"), "--state", str(tmp_path / "state"), "--no-index")
    record("fixed", "cli_score_state_events_per_s", stated, "events/s", ">= 30,000",
           f"with --state --no-index (shards written once at the end); ratio to cli_score_events_per_s {stated / plain:.2f}")
    assert (tmp_path / "out.jsonl").read_bytes().count(b"\n") == len(events)


# Rounds (one event per shard each) that settle every shard on its baseline before the
# timed part: 5 behaviours a shard, drawn evenly, on one of 20 hosts each time, so each
# of them is seen in > 31 episodes ("well known") within the warm-up.
WARM_ROUNDS = 200


def _flushes(tmp_path: Path, shards: int, change_log: bool = True) -> tuple[float, list[float], float]:
    """A stream worker's scoring and flushing (positions, 12 partitions, a flush every
    PER_FLUSH events, its change-log store folded once at the end as compaction does
    every minute) on ``shards`` shards that all learned their baselines first
    (WARM_ROUNDS rounds, persisted once), then EVENTS more events timed. (events/s,
    flush times, the fold's time) of the timed part: sustained work on settled shards —
    the cost of how many shards there are, not of how much each still has to learn."""
    stream = endless_fleet(shards=shards, behaviours=5, seed=3, zipf=0.0)
    partition = {f"org{s % 10}/svc-{s}": s % PARTITIONS for s in range(shards)}
    uri = str(tmp_path / f"s{shards}-{'log' if change_log else 'merge'}")
    svc = ScoringService(load_settings(lancedb={"uri": uri}), ShardStore(uri, change_log=change_log))
    svc.claim([f"raw/{p}" for p in range(PARTITIONS)], "bench")
    offset = 0

    def score(count: int) -> None:
        nonlocal offset
        for _ in range(0, count, 2_000):
            batch = list(itertools.islice(stream, 2_000))
            svc.score_new(batch, [Position(f"raw/{partition[e.shard_key]}", offset + i) for i, e in enumerate(batch)])
            offset += len(batch)

    score(WARM_ROUNDS * shards)
    svc.flush()
    took: list[float] = []
    started = time.perf_counter()
    for _ in range(EVENTS // PER_FLUSH):
        score(PER_FLUSH)
        t = time.perf_counter()
        svc.flush()
        took.append(time.perf_counter() - t)
    t = time.perf_counter()
    svc.compact()
    folded = time.perf_counter() - t
    return EVENTS / (time.perf_counter() - started), took, folded


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def test_flush_cost_follows_changes_not_shards_benchmark(tmp_path: Path) -> None:
    rate_100, flush_100, fold_100 = _flushes(tmp_path, 100)
    rate_10k, flush_10k, fold_10k = _flushes(tmp_path, 10_000)
    merge_rate, merge_flush, _ = _flushes(tmp_path, 10_000, change_log=False)
    record("fixed", "flush_p99_s_10k_shards", _p99(flush_10k), "s", "<= 2",
           f"{len(flush_10k)} flushes of {PER_FLUSH:,} events over {PARTITIONS} partitions (change log; one fold "
           f"{fold_10k:.2f} s); baseline 100 shards p99 {_p99(flush_100):.3f} s (fold {fold_100:.2f} s); "
           f"merging every flush instead: p99 {_p99(merge_flush):.2f} s")
    record("fixed", "store_10k_shards_vs_100_shards", rate_10k / rate_100, "x", ">= 0.8",
           f"score + flush in process: {rate_10k:,.0f} vs {rate_100:,.0f} events/s "
           f"(10,000 shards merging every flush: {merge_rate:,.0f} events/s)")
