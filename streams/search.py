"""`ruleless search`: find learned behaviours across shards in LanceDB.

Seed shards hold hashed vectors: the query is embedded with the same hashing (as the
article's NL search did, so only words that appear in command lines can match) and the
nearest behaviours are returned. Evidence shards hold normalised observations: the query
words are matched against them. Reads go to LanceDB directly; no worker is involved.
"""

from __future__ import annotations

from dataclasses import dataclass

import lancedb
import numpy as np

from schemas.events import RawEvent
from streams.featurize import seed_tokens, seed_vector
from streams.normalize import normalize_token
from streams.store import GROUP_PREFIX, SHARD_COLUMN


@dataclass(frozen=True)
class Hit:
    algorithm: str
    shard: str
    behaviour: str
    count: int
    last_ts: float
    similarity: float


def search(uri: str, text: str, limit: int = 20, shard_prefix: str = "", dims: int = 128) -> list[Hit]:
    """Behaviours most like ``text`` over every shard (optionally those whose key starts
    with ``shard_prefix``, e.g. "acme/web")."""
    db = lancedb.connect(uri)
    scope = f"starts_with({SHARD_COLUMN}, '{_quoted(shard_prefix)}')" if shard_prefix else "true"
    hits: list[Hit] = []
    for name in db.list_tables().tables:
        if not name.startswith(GROUP_PREFIX):
            continue
        algorithm = name[len(GROUP_PREFIX):].split(".", 1)[0]
        table = db.open_table(name)
        if algorithm == "seed":
            hits += _seed_hits(table, text, limit, dims, scope)
        elif algorithm == "evidence":
            hits += _evidence_hits(table, text, limit, scope)
    # (one hit per behaviour of a shard: the nearest rows can repeat a behaviour's text)
    best: dict[tuple[str, str, str], Hit] = {}
    for hit in sorted(hits, key=lambda h: (-h.similarity, -h.count)):
        best.setdefault((hit.algorithm, hit.shard, hit.behaviour), hit)
    return list(best.values())[:limit]


def _quoted(text: str) -> str:
    return text.replace("'", "''")


def _seed_hits(table: lancedb.table.Table, text: str, limit: int, dims: int, scope: str) -> list[Hit]:
    probe = RawEvent(ts=0, org_id="q", workload="q", cmdline=text)
    # Only the command-line positions: the query has no process/parent/ports.
    vec = seed_vector([""] * 5 + seed_tokens(probe)[5:], dims)
    if not vec.any():
        return []
    rows = table.search(vec.astype(np.float32)).metric("cosine").where(f"key != '__meta__' AND {scope}", prefilter=True).limit(limit * 3).to_list()
    return [Hit("seed", r[SHARD_COLUMN], r["exemplar"], int(r["count"]), float(r["last_ts"]), 1.0 - float(r["_distance"])) for r in rows]


def _evidence_hits(table: lancedb.table.Table, text: str, limit: int, scope: str) -> list[Hit]:
    words = [normalize_token(w) for w in text.split() if w]
    if not words:
        return []
    clause = " OR ".join(f"value LIKE '%{_quoted(w)}%'" for w in words)
    rows = table.search().where(f"kind IN ('args', 'prog') AND {scope} AND ({clause})").limit(limit * 5).to_list()
    out = []
    for r in rows:
        matched = sum(w in r["value"] for w in words) / len(words)
        behaviour = f"{r['ctx']} {r['value']}".strip() if r["kind"] == "args" else r["value"]
        out.append(Hit("evidence", r[SHARD_COLUMN], behaviour, int(r["count"]), float(r["last_ts"]), matched))
    return out
