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


@dataclass(frozen=True)
class Hit:
    table: str
    behaviour: str
    count: int
    last_ts: float
    similarity: float


def search(uri: str, text: str, limit: int = 20, shard_prefix: str = "", dims: int = 128) -> list[Hit]:
    """Behaviours most like ``text`` over every shard table (optionally one shard's)."""
    db = lancedb.connect(uri)
    hits: list[Hit] = []
    for name in db.list_tables().tables:
        if shard_prefix and shard_prefix not in name:
            continue
        table = db.open_table(name)
        if name.startswith("seed__"):
            hits += _seed_hits(name, table, text, limit, dims)
        elif name.startswith("evidence__"):
            hits += _evidence_hits(name, table, text, limit)
    hits.sort(key=lambda h: (-h.similarity, -h.count))
    return hits[:limit]


def _seed_hits(name: str, table: lancedb.table.Table, text: str, limit: int, dims: int) -> list[Hit]:
    probe = RawEvent(ts=0, org_id="q", workload="q", cmdline=text)
    # Only the command-line positions: the query has no process/parent/ports.
    vec = seed_vector([""] * 5 + seed_tokens(probe)[5:], dims)
    if not vec.any():
        return []
    rows = table.search(vec.astype(np.float32)).metric("cosine").where("key != '__meta__'").limit(limit).to_list()
    return [Hit(name, r["exemplar"], int(r["count"]), float(r["last_ts"]), 1.0 - float(r["_distance"])) for r in rows]


def _evidence_hits(name: str, table: lancedb.table.Table, text: str, limit: int) -> list[Hit]:
    words = [normalize_token(w) for w in text.split() if w]
    if not words:
        return []
    clause = " OR ".join(f"value LIKE '%{w.replace(chr(39), chr(39) * 2)}%'" for w in words)
    rows = table.search().where(f"kind IN ('args', 'prog') AND ({clause})").limit(limit * 5).to_list()
    out = []
    for r in rows:
        matched = sum(w in r["value"] for w in words) / len(words)
        behaviour = f"{r['ctx']} {r['value']}".strip() if r["kind"] == "args" else r["value"]
        out.append(Hit(name, behaviour, int(r["count"]), float(r["last_ts"]), matched))
    return out
