"""Soak benchmark (`make bench`, marker ``soak``): the whole pipeline under steady load
for 10 minutes, with the worker SIGKILLed and replaced half-way.

3,000 events/s over 1,000 shards (org/workload pairs) go through the real broker, one
`ruleless worker` and one `ruleless sink` into chdb, as in tests/test_pipeline_benchmark.py.
Each shard draws from a fixed pool of 50 behaviours (tests/bench.py: endless_fleet), so
its baseline is nearly complete after the first minute: what still grows after that is
not learning. ``RULELESS_SOAK_S``, ``RULELESS_SOAK_RATE`` and ``RULELESS_SOAK_SHARDS``
override the length of the load (600 s), its rate (3,000 events/s) and the shards (1,000).

Every 2 s: the RSS of the worker and of the sink (/proc/PID/status) and the consumer lag
(raw topic end offsets minus the worker group's committed offsets). Latency is produce
time (``ts``) to the first copy's ``inserted_at`` in ClickHouse, per window of ``ts``.

Windows of load time, each a fifth of the run: *start* after one tenth (for 600 s:
minutes 1-3; the first minute fills 1,000 fresh shards), *middle* from the kill (minutes
5-7: downtime and catch-up, recorded, not judged) and *end* the last fifth (minutes 8-10,
after the catch-up, which is checked). The end must match the start: RSS within 10 %;
lag and p99 latency within 10 % or an absolute floor, whichever is larger. The worker
commits only after a LanceDB flush (every 2 s), so its committed lag swings between zero
and seconds of input with the phase it is read at: the floor is 1 s of input. p99 latency
is 1-2 s when the pipeline keeps up, most of it the sink's batch age (1 s): its floor is
0.2 s, one worker batch window, below which a difference is timing, not a trend.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean

import msgspec
import pytest
from confluent_kafka import Consumer, TopicPartition

from ruleless.kafka import consumer, ensure_topics, producer
from ruleless.settings import Settings
from schemas.events import RawEvent, encode
from sinks.query import query_http
from tests.bench import endless_fleet, record
from tests.processes import QUERY_TOKEN, ruleless_process
from tests.test_pipeline_benchmark import fresh, rows, url_of, wait_rows, worker_settings

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("RULELESS_SOAK_S", "600"))
RATE = float(os.environ.get("RULELESS_SOAK_RATE", "3000"))
SHARDS = int(os.environ.get("RULELESS_SOAK_SHARDS", "1000"))
BEHAVIOURS = 50
EVERY = 2.0  # s between RSS and lag samples
TOLERANCE = 0.10
LAG_FLOOR = RATE * 1.0  # events: 1 s of input
LATENCY_FLOOR = 0.2  # s: one worker batch window
# Judged figures: unit, and the absolute floor of the end-vs-start tolerance.
FIGURES = {
    "worker RSS": ("MiB", 0.0), "sink RSS": ("MiB", 0.0),
    "consumer lag (mean)": ("events", LAG_FLOOR), "produce -> row visible p99": ("s", LATENCY_FLOOR),
}

ASSIGNED = re.compile(r"assigned (\d+) partitions of ")


@dataclass(frozen=True)
class Sample:
    t: float  # s since the load started
    worker_mib: float | None  # None between the kill and the takeover
    sink_mib: float | None
    lag: int


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(found[1]) / 1024 if found else None


def lag(cons: Consumer, parts: list[TopicPartition]) -> int:
    """Raw topic end offsets minus the group's committed offsets (start if none yet)."""
    total = 0
    for tp in cons.committed(parts, timeout=10):
        low, high = cons.get_watermark_offsets(tp, timeout=10, cached=False)
        total += high - (tp.offset if tp.offset >= 0 else low)
    return total


def sample(settings: Settings, procs: dict[str, subprocess.Popen[bytes]], t0: float, stop: threading.Event) -> list[Sample]:
    """Every EVERY s until ``stop``; ``procs`` is read each time (the worker is replaced)."""
    # Not subscribed: it only reads the worker group's offsets, it never joins the group.
    cons = consumer(settings.kafka, settings.worker.group_id)
    parts = [TopicPartition(settings.topics.raw, p) for p in range(settings.topics.partitions)]
    out: list[Sample] = []
    try:
        while not stop.wait(EVERY):
            out.append(Sample(time.monotonic() - t0, rss_mib(procs["worker"].pid), rss_mib(procs["sink"].pid), lag(cons, parts)))
    finally:
        cons.close()
    return out


def produce_for(settings: Settings, events: Iterator[RawEvent], rate: float, seconds: float, stop: threading.Event) -> tuple[int, float]:
    """Produce at ``rate``/s for ``seconds``, each event stamped with its produce time and
    an event_id starting with "soak-"; returns how many were sent and the rate achieved."""
    prod = producer(settings.kafka)
    started, sent = time.monotonic(), 0
    for e in events:
        if sent % 100 == 0:
            prod.poll(0)
            now = time.monotonic()
            if now - started >= seconds or stop.is_set():
                break
            time.sleep(max(0.0, started + sent / rate - now))
        e = msgspec.structs.replace(e, ts=time.time(), event_id=f"soak-{e.event_id}")
        prod.produce(settings.topics.raw, key=e.shard_key.encode(), value=encode(e))
        sent += 1
    assert prod.flush(60) == 0
    return sent, sent / (time.monotonic() - started)


def settle(check: Callable[[], bool], timeout: float) -> bool:
    """Poll ``check`` until it holds (True) or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except Exception:  # the sink may not answer while it is busy  # noqa: BLE001
            pass
        time.sleep(0.5)
    return False


def owns_all(log: Path, partitions: int) -> bool:
    found = ASSIGNED.findall(log.read_text(errors="replace")) if log.exists() else []
    return bool(found) and int(found[-1]) == partitions


def p99_latency(settings: Settings, since: float, until: float) -> float:
    """p99 of produce -> first copy visible, over events produced in [since, until)."""
    table = f"{settings.clickhouse.database}.{settings.clickhouse.table}"
    q = query_http(url_of(settings), (
        "SELECT quantileExact(0.99)(lat) AS p99 FROM ("
        f"SELECT event_id, min(toUnixTimestamp64Micro(inserted_at)) / 1e6 - any(ts) AS lat FROM {table} "
        f"WHERE ts >= {since} AND ts < {until} AND event_id LIKE 'soak-%' GROUP BY event_id)"
    ), QUERY_TOKEN)
    return float(q[0]["p99"])


def windows(seconds: float) -> dict[str, tuple[float, float]]:
    width = seconds / 5
    return {"start": (seconds / 10, seconds / 10 + width), "middle": (seconds / 2, seconds / 2 + width), "end": (seconds - width, seconds)}


def flat(start: float, end: float, floor: float = 0.0) -> bool:
    return abs(end - start) <= max(TOLERANCE * start, floor)


@dataclass(frozen=True)
class Run:
    samples: list[Sample]
    sent: int
    offered: float  # events/s achieved
    killed: float  # s of load when the first worker was SIGKILLed
    takeover: float  # s from the kill until the new worker owned every partition
    wall0: float  # wall-clock time the load started (event ts are wall-clock)
    worker: subprocess.Popen[bytes]  # the replacement


@pytest.mark.timeout(2 * SECONDS + 600)
def test_soak_rss_lag_latency_stay_flat_across_a_worker_crash(settings: Settings, tmp_path: Path) -> None:
    soak = fresh(settings, "soak")
    ensure_topics(soak.kafka, soak.topics)
    with ruleless_process(soak, "sink", log=tmp_path / "sink.log") as sink, ExitStack() as workers:
        wait_rows(soak, 0, 60)  # the sink serves queries: it is up
        run = load_with_a_crash(soak, sink, workers, tmp_path)
        figures = record_samples(run)
        # A pipeline that fell behind drains its backlog first (up to one run's length).
        drained = settle(lambda: rows(soak, final=True) >= run.sent, SECONDS)
        for name, (a, b) in windows(SECONDS).items():
            figures[name]["produce -> row visible p99"] = p99 = p99_latency(soak, run.wall0 + a, run.wall0 + b)
            record("soak", f"produce -> row visible p99, {name} window", p99, "s", target(name, "produce -> row visible p99"),
                   "first copy of each event produced in the window")
        stored = rows(soak, final=True)
        exited = [name for name, proc in (("sink", sink), ("worker", run.worker)) if proc.poll() is not None]
    assert drained, f"{stored:,} of {run.sent:,} events in ClickHouse {SECONDS:.0f} s after the load ended"
    assert not exited, f"exited during the run: {exited}"
    assert stored == run.sent, f"{stored:,} events in ClickHouse, {run.sent:,} produced"
    judge(run, figures)


def load_with_a_crash(settings: Settings, sink: subprocess.Popen[bytes], workers: ExitStack, logs: Path) -> Run:
    """The load, a worker SIGKILLed half-way and replaced, RSS and lag sampled throughout."""
    parts, stop = settings.topics.partitions, threading.Event()

    def start_worker(name: str) -> subprocess.Popen[bytes]:
        log = logs / f"worker-{name}.log"
        proc = workers.enter_context(ruleless_process(worker_settings(settings, name), "worker", log=log))
        assert settle(lambda: owns_all(log, parts), 120), f"worker {name} never owned every partition"
        return proc

    procs = {"sink": sink, "worker": start_worker("a")}
    with ThreadPoolExecutor(2) as pool:
        t0, wall0 = time.monotonic(), time.time()
        load = pool.submit(produce_for, settings, endless_fleet(SHARDS, BEHAVIOURS, seed=14, zipf=1.0), RATE, SECONDS, stop)
        sampler = pool.submit(sample, settings, procs, t0, stop)
        try:
            time.sleep(max(0.0, t0 + SECONDS / 2 - time.monotonic()))
            procs["worker"].send_signal(signal.SIGKILL)
            procs["worker"].wait(10)
            killed = time.monotonic() - t0
            procs["worker"] = start_worker("b")
            takeover = time.monotonic() - t0 - killed
            sent, offered = load.result()
        finally:
            stop.set()
        samples = sampler.result()
    timeline = logs / "samples.json"
    timeline.write_text(json.dumps([asdict(s) for s in samples]))
    print(f"soak: RSS and lag every {EVERY:.0f} s in {timeline}")
    return Run(samples, sent, offered, killed, takeover, wall0, procs["worker"])


def record_samples(run: Run) -> dict[str, dict[str, float]]:
    """Record the load, the restart and each window's RSS and lag; returns the windows' figures."""
    record("soak", "offered load", run.offered, "events/s", f"{RATE:,.0f}",
           f"{SECONDS:.0f} s, {SHARDS:,} shards x {BEHAVIOURS} behaviours, 1 worker SIGKILLed at {run.killed:.0f} s and replaced, 1 sink")
    record("soak", "worker restart: SIGKILL -> new worker owns every partition", run.takeover, "s")
    figures: dict[str, dict[str, float]] = {}
    for name, (a, b) in windows(SECONDS).items():
        within = [s for s in run.samples if a <= s.t < b]
        figures[name] = {
            "worker RSS": mean(s.worker_mib for s in within if s.worker_mib is not None),
            "sink RSS": mean(s.sink_mib for s in within if s.sink_mib is not None),
            "consumer lag (mean)": mean(s.lag for s in within),
        }
        span = f"{a:.0f}-{b:.0f} s of load, {len(within)} samples"
        for figure, value in figures[name].items():
            record("soak", f"{figure}, {name} window", value, FIGURES[figure][0], target(name, figure), span)
    recovered = catch_up(run, figures["start"]["consumer lag (mean)"])
    record("soak", "catch-up: SIGKILL -> lag back at its start level", recovered - run.killed, "s", "",
           f"peak lag {max(s.lag for s in run.samples if s.t >= run.killed):,} events")
    return figures


def target(window: str, figure: str) -> str:
    unit, floor = FIGURES[figure]
    if window != "end":
        return ""
    return "start ±10 %" + (f" or {floor:,.4g} {unit}" if floor else "")


def catch_up(run: Run, start_lag: float) -> float:
    """When the lag, after the new worker took over, first came back within the flatness
    bound of its start level (before the takeover it could only be low by being early)."""
    bound = start_lag + max(TOLERANCE * start_lag, LAG_FLOOR)
    return next((s.t for s in run.samples if s.t >= run.killed + run.takeover and s.lag <= bound), float("inf"))


def judge(run: Run, figures: dict[str, dict[str, float]]) -> None:
    """The end window against the start window, after a catch-up that ended before it."""
    start, end = figures["start"], figures["end"]
    problems = [f"{k} {start[k]:,.2f} -> {end[k]:,.2f}" for k, (_, floor) in FIGURES.items() if not flat(start[k], end[k], floor)]
    if catch_up(run, start["consumer lag (mean)"]) >= windows(SECONDS)["end"][0]:
        problems.insert(0, "the lag was not back at its start level before the end window")
    assert not problems, "not flat from the start to the end window: " + "; ".join(problems)
