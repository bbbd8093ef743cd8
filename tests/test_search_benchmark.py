"""`make bench`: the search's embedding throughput, and the scoring engine's speed while
the sink's behaviour indexer is producing embeddings (target: at most 5 % slower).

The indexer runs as it does in the sink (sinks/indexer.py: its own thread, niceness
``sink.behaviours_nice``, one BLAS thread, ``sink.behaviours_cpu`` of a core) in a separate process over a chdb store
holding 20,000 behaviours it has not embedded yet; the engine runs here, pinned to one
core as the engine benchmark runs it. Runs alternate (alone, with the indexer) and the
best of each is compared, since the machine is shared and others only slow it down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ruleless.embedding import MAX_TOKENS, embed
from ruleless.settings import EngineSettings
from schemas.events import RawEvent
from streams.engine import Engine
from tests.bench import batches, fleet, record

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[1]
RUNS = 5
INDEXER_ROWS = 20_000

_INDEXER = textwrap.dedent(
    """
    import sys, threading, time
    from ruleless.embedding import MAX_TOKENS, embed
    from ruleless.settings import load_settings
    from sinks import indexer
    from sinks.clickhouse import ChdbBackend, event_row, rows_table
    from streams.behaviours import BehaviourIndex
    from tests.sinks.support import scored

    root, rows = sys.argv[1], int(sys.argv[2])
    settings = load_settings(data_dir=root, lancedb={"uri": root + "/lancedb"}, clickhouse={"path": root + "/ch"},
                             sink={"behaviours_interval_s": 0.1})
    backend = ChdbBackend(settings.clickhouse)
    backend.ensure_schema()
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
    def line(i):
        a, b, c = words[i % 16], words[(i // 16) % 16], words[(i // 256) % 16]
        return f"/usr/bin/{a}-{b} --mode {c} --target /srv/{b}/{c}/{a}.conf --label {words[(i // 4096) % 16]}"
    backend.insert(rows_table([event_row(scored(i, "bench", cmdline=line(i))) for i in range(rows)]))
    indexer.SETTLE_S = 0.0
    embedded = [0]
    def counting(texts):
        out = embed(texts)
        embedded[0] += len(texts)
        return out
    throttled = indexer.Throttled(counting, settings.sink.behaviours_cpu)
    sink_indexer = indexer.BehaviourIndexer(settings, backend, BehaviourIndex(settings.lancedb.uri, embedder=throttled))
    sink_indexer.start()
    started = time.monotonic()
    while True:
        time.sleep(0.5)
        print(f"{time.monotonic() - started:.2f} {embedded[0]}", flush=True)
    """
)


@pytest.fixture(scope="module")
def stream() -> list[RawEvent]:
    return fleet(50, 2_000, 500, seed=11, zipf=1.0)


def engine_rate(events: list[RawEvent]) -> float:
    """Warm events/s of a new engine on one core: the first half learns, the second is timed."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(old)})
    try:
        engine = Engine(EngineSettings())
        half = len(events) // 2
        for batch in batches(events[:half], 2000):
            engine.score(batch)
        started = time.perf_counter()
        n = sum(len(engine.score(batch)) for batch in batches(events[half:], 2000))
        return n / (time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, old)


def test_embedding_throughput() -> None:
    lines = [json.loads(line)["cmdline"] for line in (ROOT / "tests/search/corpus/benign.jsonl").read_text().splitlines()[:1000]]
    embed(lines[:10])  # (the weights loaded)
    started = time.perf_counter()
    vectors = embed(lines)
    rate = len(lines) / (time.perf_counter() - started)
    assert vectors.shape == (len(lines), 384)
    record("search", "embedding lines/s (1 core)", rate, "lines/s", "",
           "all-MiniLM-L6-v2, numpy forward pass on one BLAS thread; 1,000 recorded command lines "
           f"({MAX_TOKENS} tokens at most)")  # fmt: skip


def test_engine_keeps_its_speed_while_the_indexer_embeds(stream: list[RawEvent], tmp_path: Path) -> None:
    alone: list[float] = []
    beside: list[float] = []
    progress: list[str] = []
    for run in range(RUNS):
        alone.append(engine_rate(stream))
        root = tmp_path / f"indexer-{run}"
        root.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", _INDEXER, str(root), str(INDEXER_ROWS)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None
            # Measure only once embeddings are being produced.
            while True:
                line = proc.stdout.readline()
                assert line, "the indexer process died"
                if int(line.split()[1]) > 0:
                    break
            beside.append(engine_rate(stream))
            progress.append(proc.stdout.readline())
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        seconds, count = (float(x) for x in progress[-1].split())
        assert count > 0
    ratio = max(beside) / max(alone)
    note = (f"evidence engine on 1 core, 100k-event fleet, best of {RUNS} (alone {max(alone):,.0f}/s, "
            f"with the indexer {max(beside):,.0f}/s); indexer at nice 10, 1 BLAS thread, 20 % of a core, embedding "
            f"{count / seconds:,.0f} behaviours/s during the last run")  # fmt: skip
    record("search", "engine events/s with the indexer embedding / alone", ratio, "x", ">= 0.95", note)
    assert ratio >= 0.95, note
