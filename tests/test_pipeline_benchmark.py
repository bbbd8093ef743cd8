"""Pipeline benchmark (`make bench`): broker → worker → scored topic → sink → ClickHouse.

Everything runs on this machine at once (tansu broker, worker(s), sink with embedded
chdb, the load generator), as `ruleless up` would. Figures:

* sustained throughput: the raw topic is loaded first, then the worker and the sink
  drain it; the rate is the slope of visible ClickHouse rows between 10 % and 90 % of
  the load (start-up and the last batch excluded), checked exactly-once at the end;
* the same with 2 workers in one group;
* a plain consume-and-produce passthrough (confluent-kafka, same broker, same messages)
  for comparison;
* Faust's floor: a bare Faust agent that takes the same messages in the worker's
  micro-batches and acks them (tests/faust_floor.py), the most any Faust worker can do
  here; the worker's rate is reported as a ratio to it, both with the sink running
  (the pipeline) and alone (the worker draining the raw topic, as the floor does);
* latency at a fixed offered load (5,000 events/s for 30 s, and 2,000/s below the
  worker's capacity): each event's ``ts`` is its produce time, the row's ``inserted_at``
  when it became visible; p50/p99 of the difference, over the first copy of each event.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from ruleless.kafka import consumer, ensure_topics, producer
from ruleless.settings import LanceSettings, Settings, child_environ
from schemas.events import RawEvent, encode
from sinks.query import query_http
from tests.bench import fleet, record
from tests.processes import QUERY_TOKEN, produce_paced, ruleless_process

pytestmark = pytest.mark.bench
REPO = Path(__file__).resolve().parent.parent

LOAD = 200_000
# Cores the whole machine kept busy during each sustained() run, by (raw topic, workers).
BUSY: dict[tuple[str, int], float] = {}
RATE, SECONDS = 5_000, 30


@pytest.fixture(scope="module")
def stream() -> list[RawEvent]:
    # 100 shards, mostly repeats, thousands of behaviours per shard (tests/bench.py).
    return fleet(100, LOAD // 100, 10_000, seed=9, zipf=1.0)


def produce_all(settings: Settings, topic: str, events: list[RawEvent]) -> None:
    prod = producer(settings.kafka, **{"linger.ms": 50, "batch.num.messages": 10_000, "queue.buffering.max.messages": 1_000_000})
    for e in events:
        while True:
            try:
                prod.produce(topic, key=e.shard_key.encode(), value=encode(e))
                break
            except BufferError:
                prod.poll(0.05)
    assert prod.flush(120) == 0


def url_of(settings: Settings) -> str:
    return f"http://{settings.sink.query_host}:{settings.sink.query_port}"


def rows(settings: Settings, final: bool = False) -> int:
    table = f"{settings.clickhouse.database}.{settings.clickhouse.table}"
    return int(query_http(url_of(settings), f"SELECT count() AS n FROM {table}{' FINAL' if final else ''}", QUERY_TOKEN)[0]["n"])


def wait_rows(settings: Settings, target: int, timeout: float, on_sample: Callable[[float, int], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            n = rows(settings)
        except Exception:  # sink not serving yet  # noqa: BLE001
            n = 0
        if on_sample is not None:
            on_sample(time.monotonic(), n)
        if n >= target:
            return
        time.sleep(0.25)
    raise AssertionError(f"{target} rows not visible after {timeout:.0f}s (last {n})")


def slope(samples: list[tuple[float, int]], total: int) -> float:
    """Rows/s between the first sample at ≥10 % and the first at ≥90 % of ``total``."""
    lo = next((t, n) for t, n, *_ in samples if n >= total * 0.1)
    hi = next((t, n) for t, n, *_ in samples if n >= total * 0.9)
    return (hi[1] - lo[1]) / max(1e-9, hi[0] - lo[0])


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def cores_busy(samples: list[tuple[float, int, int, int]], total: int) -> float:
    """Cores the machine kept busy over the same window as :func:`slope`."""
    lo = next(s for s in samples if s[1] >= total * 0.1)
    hi = next(s for s in samples if s[1] >= total * 0.9)
    return (hi[2] - lo[2]) / max(1, hi[3] - lo[3]) * (os.cpu_count() or 1)


def worker_settings(settings: Settings, name: str) -> Settings:
    worker = settings.worker.model_copy(update={"data_dir": str(Path(settings.data_dir) / f"faust-{name}")})
    return settings.model_copy(update={"worker": worker})


def sustained(settings: Settings, events: list[RawEvent], workers: int, logs: Path) -> float:
    """Rows/s the pipeline sustains draining a loaded raw topic with ``workers`` workers
    (the machine's busy cores over the same window go to :data:`BUSY`)."""
    produce_all(settings, settings.topics.raw, events)
    samples: list[tuple[float, int, int, int]] = []
    with ruleless_process(settings, "sink", log=logs / "sink.log"):
        wait_rows(settings, 0, 60)  # the sink serves queries: it is up
        procs = [ruleless_process(worker_settings(settings, f"w{i}"), "worker", log=logs / f"worker-{i}.log") for i in range(workers)]
        for p in procs:
            p.__enter__()
        try:
            wait_rows(settings, len(events), 600, lambda t, n: samples.append((t, n, *cpu_jiffies())))
            assert rows(settings, final=True) == len(events)
        finally:
            for p in reversed(procs):
                p.__exit__(None, None, None)
    BUSY[(settings.topics.raw, workers)] = cores_busy(samples, len(events))
    return slope(samples, len(events))


def worker_alone(settings: Settings, events: list[RawEvent], logs: Path) -> float:
    """Events/s one worker scores on its own (no sink on the cores): from its first output
    on the scored topic to its last, draining a loaded raw topic, timed like Faust's floor
    (first batch to last ack). Outputs are counted by consuming them (this broker's
    high watermarks are not per record)."""
    produce_all(settings, settings.topics.raw, events)
    cons = consumer(settings.kafka, f"count-{time.time_ns()}", **{"fetch.max.bytes": 52_428_800})
    cons.subscribe([settings.topics.scored])
    first = 0.0
    seen = 0
    with ruleless_process(worker_settings(settings, "alone"), "worker", log=logs / "worker-alone.log"):
        deadline = time.monotonic() + 600
        while seen < len(events):
            assert time.monotonic() < deadline, f"{seen} of {len(events)} scored after 600 s"
            got = [m for m in cons.consume(5000, timeout=0.5) if m.error() is None]
            if got and not first:
                first = time.monotonic()
            seen += len(got)
        last = time.monotonic()
    cons.close()
    return len(events) / (last - first)


def fresh(settings: Settings, tag: str) -> Settings:
    """Same broker, own topics, group ids and stores; LanceDB flushes at the production
    default interval (the test fixture's is shorter, which costs throughput)."""
    t = settings.topics
    topics = t.model_copy(update={name: f"{getattr(t, name)}-{tag}" for name in ("raw", "scored", "alerts", "dead_letter", "feedback")})
    base = Path(settings.data_dir) / tag
    return settings.model_copy(update={
        "data_dir": str(base),
        "topics": topics,
        "lancedb": settings.lancedb.model_copy(update={"uri": str(base / "lancedb"), "flush_interval_s": LanceSettings().flush_interval_s}),
        "clickhouse": settings.clickhouse.model_copy(update={"path": str(base / "clickhouse")}),
        "worker": settings.worker.model_copy(update={"group_id": f"{settings.worker.group_id}-{tag}", "app_id": f"{settings.worker.app_id}-{tag}"}),
        "sink": settings.sink.model_copy(update={"group_id": f"{settings.sink.group_id}-{tag}"}),
    })


def test_pipeline_sustained_throughput_benchmark(settings: Settings, stream: list[RawEvent], tmp_path: Path) -> None:
    one = fresh(settings, "one")
    ensure_topics(one.kafka, one.topics)
    rate1 = sustained(one, stream, 1, tmp_path)
    record("pipeline", "sustained events/s, 1 worker", rate1, "events/s", ">= 20,000",
           f"{len(stream):,} events, 100 shards, {one.engine.algorithm}; raw topic loaded first; exactly-once checked")
    two = fresh(settings, "two")
    ensure_topics(two.kafka, two.topics)
    rate2 = sustained(two, stream, 2, tmp_path)
    record("scale", "sustained events/s, 2 workers", rate2, "events/s", "", "same load, 2 workers in one group")
    busy1, busy2 = BUSY[(one.topics.raw, 1)], BUSY[(two.topics.raw, 2)]
    record("scale", "2 workers / 1 worker", rate2 / rate1, "x", "",
           f"{os.cpu_count()} cores shared by broker, workers, sink: busy {busy1:.2f} with 1 worker, {busy2:.2f} with 2")

    passthrough = fresh(settings, "pass")
    ensure_topics(passthrough.kafka, passthrough.topics)
    produce_all(passthrough, passthrough.topics.raw, stream)
    rate_pass = copy_topic(passthrough, len(stream))
    record("pipeline", "passthrough events/s (consume+produce)", rate_pass, "events/s", "", "confluent-kafka, same broker and messages")
    record("pipeline", "pipeline / passthrough", rate1 / rate_pass, "ratio", ">= 0.5")

    bare = fresh(settings, "floor")
    ensure_topics(bare.kafka, bare.topics)
    produce_all(bare, bare.topics.raw, stream)
    floor = faust_floor(bare, len(stream), tmp_path)
    # Issue 17's fixed names, each with the baseline measured in this run.
    record("fixed", "faust_floor_events_per_s", floor, "events/s", "",
           "a bare Faust agent taking the loaded raw topic in the worker's micro-batches and acking each message, "
           "Faust's own per-message delivery")
    record("fixed", "pipeline_one_worker_events_per_s", rate1, "events/s", "", f"baseline: faust_floor_events_per_s {floor:,.0f}")
    record("fixed", "pipeline_vs_faust_floor", rate1 / floor, "x", ">= 0.8", "one worker (and the sink) / Faust's floor, same broker and messages")
    record("fixed", "pipeline_two_workers_events_per_s", rate2, "events/s", ">= 1.7 x one",
           f"ratio to one worker {rate2 / rate1:.2f}; cores busy {busy1:.2f} (1 worker) and {busy2:.2f} (2) of {os.cpu_count()}")


def test_worker_alone_vs_faust_floor_benchmark(settings: Settings, stream: list[RawEvent], tmp_path: Path) -> None:
    """The worker against Faust's floor with nothing else on the cores but the broker, as
    the floor is measured (the pipeline figure has the sink and its indexer beside it)."""
    alone = fresh(settings, "alone")
    ensure_topics(alone.kafka, alone.topics)
    rate = worker_alone(alone, stream, tmp_path)
    floors = {}
    for stock in (True, False):
        bare = fresh(settings, f"floor-{stock}")
        ensure_topics(bare.kafka, bare.topics)
        produce_all(bare, bare.topics.raw, stream)
        floors[stock] = faust_floor(bare, len(stream), tmp_path, stock=stock)
    floor, burst = floors[True], floors[False]
    record("fixed", "worker_alone_events_per_s", rate, "events/s", "", f"baseline: faust_floor_events_per_s {floor:,.0f}")
    record("fixed", "worker_alone_vs_faust_floor", rate / floor, "x", ">= 0.8",
           "one worker alone / Faust's floor (Faust's own per-message delivery), same broker and messages")
    record("pipeline", "Faust's floor with the worker's burst delivery", burst, "events/s", "",
           f"the same bare agent on streams/faust_transport.py; worker alone / it: {rate / burst:.2f}")


def test_pipeline_10k_shards_benchmark(settings: Settings, stream: list[RawEvent], tmp_path: Path) -> None:
    """The same 200,000 events' worth of load from 10,000 shards (20 events each: every
    shard new, loaded and flushed) against the 100-shard stream, both through the whole
    pipeline in this test."""
    many = fleet(10_000, LOAD // 10_000, 10, seed=9, zipf=1.0)
    base = fresh(settings, "s100")
    ensure_topics(base.kafka, base.topics)
    rate_100 = sustained(base, stream, 1, tmp_path)
    wide = fresh(settings, "s10k")
    ensure_topics(wide.kafka, wide.topics)
    rate_10k = sustained(wide, many, 1, tmp_path)
    record("fixed", "pipeline_10k_shards_vs_100_shards", rate_10k / rate_100, "x", ">= 0.8",
           f"1 worker: {rate_10k:,.0f} events/s over 10,000 shards vs {rate_100:,.0f} over 100, {LOAD:,} events each")


def faust_floor(settings: Settings, count: int, tmp_path: Path, stock: bool = True) -> float:
    """Messages/s of a bare Faust take-and-ack agent on the loaded raw topic
    (tests/faust_floor.py), in a process of its own like the worker; ``stock``: with
    Faust's own per-message delivery, else the worker's transport."""
    result = tmp_path / f"faust-floor-{stock}.json"
    env = child_environ(settings)
    with open(tmp_path / "faust-floor.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.faust_floor", str(count), str(result), *(["stock"] if stock else [])],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not result.exists():
            assert proc.poll() is None, (tmp_path / "faust-floor.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Faust floor agent did not take every message within 10 minutes"
            time.sleep(0.2)
        time.sleep(0.1)  # (the file is written in one call; let it land)
        figures = json.loads(result.read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return figures["events"] / figures["seconds"]


def copy_topic(settings: Settings, count: int) -> float:
    """Consume the raw topic and produce every message unchanged to the scored topic,
    committing as the worker would; returns messages/s once all are acknowledged."""
    cons = consumer(settings.kafka, f"pass-{time.time_ns()}", **{"fetch.max.bytes": 52_428_800})
    prod = producer(settings.kafka, **{"queue.buffering.max.messages": 1_000_000})
    cons.subscribe([settings.topics.raw])
    done = 0
    started = None
    while done < count:
        for msg in cons.consume(2000, timeout=1.0):
            if msg.error() is not None:
                assert msg.error().code() == KafkaError._PARTITION_EOF
                continue
            started = started or time.perf_counter()
            while True:
                try:
                    prod.produce(settings.topics.scored, key=msg.key(), value=msg.value())
                    break
                except BufferError:
                    prod.poll(0.05)
            done += 1
        prod.poll(0)
        cons.commit(asynchronous=True)
    assert prod.flush(120) == 0
    elapsed = time.perf_counter() - (started or time.perf_counter())
    cons.close()
    return count / elapsed


@pytest.mark.parametrize(("rate", "shards"), [(RATE, 100), (2_000, 100), (RATE, 10_000)])
def test_produce_to_clickhouse_latency_benchmark(
    settings: Settings, stream: list[RawEvent], tmp_path: Path, rate: int, shards: int
) -> None:
    lat = fresh(settings, f"lat{rate}-{shards}")
    ensure_topics(lat.kafka, lat.topics)
    total = rate * SECONDS
    if shards != 100:
        # Every event of another shard: a flush writes thousands of shards (issue 17).
        stream = fleet(shards, (total + 2000) // shards + 1, 10, seed=9)
    events = stream[:total]
    with ruleless_process(lat, "sink", log=tmp_path / "sink.log"), ruleless_process(lat, "worker", log=tmp_path / "worker.log"):
        wait_rows(lat, 0, 60)
        # Warm up: the worker joins its group and loads nothing yet (fresh shards).
        produce_stamped(lat, stream[total : total + 2000], 1000.0, prefix="warm")
        wait_rows(lat, 2000, 120)
        offered = produce_stamped(lat, events, float(rate), prefix="lat")
        wait_rows(lat, total + 2000, 300)
        table = f"{lat.clickhouse.database}.{lat.clickhouse.table}"
        # First copy of each event: lat = produce -> visible; scoring = produce -> scored
        # (broker + worker), sink = scored -> visible (scored topic + sink batch + insert).
        q = query_http(url_of(lat), (
            "SELECT quantiles(0.5, 0.99)(lat) AS q, max(lat) AS worst, count() AS n, "
            "quantiles(0.5, 0.99)(scoring) AS qs, quantiles(0.5, 0.99)(lat - scoring) AS qk FROM ("
            f"SELECT event_id, min(toUnixTimestamp64Micro(inserted_at)) / 1e6 - any(ts) AS lat, "
            f"min(toUnixTimestamp64Micro(scored_at)) / 1e6 - any(ts) AS scoring FROM {table} "
            f"WHERE event_id LIKE 'lat-%' GROUP BY event_id)"
        ), QUERY_TOKEN)[0]
    assert int(q["n"]) == total
    p50, p99 = q["q"]
    at = f"at {rate:,}/s" + (f", {shards:,} shards" if shards != 100 else "")
    record("latency", f"offered load {at}", offered, "events/s", f"{rate:,}", f"{SECONDS}s paced, 1 worker, 1 sink, {lat.engine.algorithm}")
    record("latency", f"produce -> row visible p50 {at}", p50, "s")
    record("latency", f"produce -> row visible p99 {at}", p99, "s", "<= 2" if rate == RATE else "")
    if rate == RATE:
        name = "p99_latency_s_at_5k" if shards == 100 else f"p99_latency_s_at_5k_{shards // 1000}k_shards"
        record("fixed", name, p99, "s", "<= 2", f"produce -> row visible, {SECONDS}s at {RATE:,}/s, {shards:,} shards; p50 {p50:.2f} s")
    record("latency", f"produce -> row visible max {at}", float(q["worst"]), "s")
    record("latency", f"produce -> scored (worker) p50/p99 {at}", q["qs"][0], "s", "", f"p99 {q['qs'][1]:.2f} s")
    record("latency", f"scored -> visible (sink) p50/p99 {at}", q["qk"][0], "s", "", f"p99 {q['qk'][1]:.2f} s")


def produce_stamped(settings: Settings, events: list[RawEvent], rate: float, prefix: str) -> float:
    """Produce at ``rate``/s, each event stamped with its produce time (ts) and an
    event_id starting with ``prefix``; returns the rate achieved."""
    import msgspec

    def stamp(e: RawEvent) -> RawEvent:
        return msgspec.structs.replace(e, ts=time.time(), event_id=f"{prefix}-{e.event_id}")

    return produce_paced(settings, events, rate, stamp=stamp)
