"""The behaviour index: every distinct behaviour seen, embedded once, searchable by intent.

A *behaviour* is what one (org, workload) runs, up to the values that change on every run:
the program and its command line with temp names, numbers, versions, PIDs, hashes and
addresses collapsed by :mod:`streams.normalize` (the engine's own normalisation).
:func:`behaviour_id` names it; the sink stores that id on every event row in ClickHouse,
and the LanceDB table ``behaviours`` (same URI as the shards) keeps one row per behaviour:
an exemplar (a real command line), counts, first/last time, the highest score it got, and
the embedding of its exemplar (:mod:`ruleless.embedding`).

Search ranks by two signals over the same rows:

- meaning: cosine similarity of the query's embedding to the behaviour's (LanceDB vector
  search), so "reverse shell" can reach ``bash -i >& /dev/tcp/...`` without a shared word.
  A behaviour is embedded in two views: its exemplar as it is, and the exemplar told in
  words (:func:`streams.describe.indexing_text`: the manual's one-line descriptions of the
  programs it runs and files it names, and its paths and identifiers split into words).
  The stored vector is the two embeddings side by side, weighted (``RAW_WEIGHT``), and the
  query's vector is the query's embedding twice with the same weights, so one cosine in
  LanceDB is ``RAW_WEIGHT * cos(query, exemplar) + (1 - RAW_WEIGHT) * cos(query, told)``;
- words: the share of the query's words (stemmed, stop words dropped) that appear in the
  command line's words (paths and options split into words), on the candidates of both
  the vector search and LanceDB's full-text index over those words (so a query naming a
  program, ``xmrig``, finds it even where the embedding does not).

A third, query-independent term lowers behaviours that sit in a crowd: a behaviour's
*density* is the mean cosine to its ``DENSITY_NEIGHBOURS`` nearest behaviours of the same
org, measured when it is first indexed (against the org's behaviours then and those
indexed with it). Routine lines come in families (a workload's scripts, one tool's many
invocations) and a general sentence model finds each member as near to a query as the
one line that matters; a lone behaviour is what an analyst searching for intent wants.
This is hubness reduction (CSLS, Conneau et al. 2018, which penalises a target by its
mean similarity to its nearest neighbours). Search and no other reader uses it.

``similarity = (cosine + WORD_WEIGHT * words - DENSITY_WEIGHT * density) / (1 + WORD_WEIGHT)``,
clipped to 0..1. The ranking is done twice (pseudo-relevance feedback, Rocchio): the
query's vector is moved towards the mean vector of the first ranking's top
``FEEDBACK_HITS`` (weight ``FEEDBACK_WEIGHT``) and the same candidates ranked again by
it (a second vector search for the moved query gave the same figures at twice the
latency).
Tenant filters (org, workload) are part of every LanceDB query (prefilter), never
applied to results afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import warnings
from datetime import timedelta
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Protocol

import lancedb
import numpy as np
import pyarrow as pa

from ruleless.embedding import DIM, embed
from streams.describe import indexing_text
from streams.normalize import normalize_token

log = logging.getLogger(__name__)

TABLE = "behaviours"
# Weight of the word match against the embedding's cosine (both 0..1).
WORD_WEIGHT = 0.2
# A query is embedded framed as what it is about: the model then reads "reverse shell"
# as a kind of command, not as prose (tuned queries, vector search alone: p@10 0.21 -> 0.30;
# other neutral framings, "bash command:", "command line to ...", gave 0.28-0.31).
QUERY_FRAME = "shell command: {}"
# Weight of the raw exemplar's view against the described view (tuned queries, vector
# search alone: raw only 0.35, described only 0.29, 0.5 -> 0.35, 0.7 -> 0.38, 0.8 -> 0.37).
RAW_WEIGHT = 0.7
VECTOR_DIM = 2 * DIM
# The density penalty (tuned queries, over the two views and words: none 0.37; 10
# neighbours with weight 0.1 / 0.2 / 0.3 / 0.5 -> 0.39 / 0.40 / 0.42 / 0.41; 5 or 30
# neighbours: 0.38-0.41).
DENSITY_NEIGHBOURS = 10
DENSITY_WEIGHT = 0.3
_DENSITY_BLOCK = 512
# Pseudo-relevance feedback (tuned queries, with the density penalty: none 0.42; top 3 /
# 5 / 10 hits at weight 0.3 -> 0.45 / 0.45 / 0.42, at 0.7 -> 0.45 / 0.46 / 0.43).
FEEDBACK_HITS = 5
FEEDBACK_WEIGHT = 0.5
# Candidates fetched from each of the two searches per hit asked for (at least MIN_CANDIDATES).
CANDIDATES_PER_HIT = 5
MIN_CANDIDATES = 100
# The template of a command line keeps its first words (a behaviour is what it starts with).
TEMPLATE_WORDS = 64
EXEMPLAR_CHARS = 2048
CMDLINE_KEY_CHARS = 4096
_IN_CHUNK = 500
EMBED_CHUNK = 256

SCHEMA = pa.schema([
    pa.field("org_id", pa.string()),
    pa.field("workload", pa.string()),
    pa.field("behaviour_id", pa.string()),
    pa.field("process_name", pa.string()),
    pa.field("exemplar", pa.string()),
    pa.field("words", pa.string()),
    pa.field("count", pa.int64()),
    pa.field("first_ts", pa.float64()),
    pa.field("last_ts", pa.float64()),
    pa.field("max_score", pa.float64()),
    pa.field("density", pa.float32()),
    pa.field("vector", pa.list_(pa.float32(), VECTOR_DIM)),
])  # fmt: skip
_FIELDS = [f.name for f in SCHEMA if f.name != "vector"]


class _EventLike(Protocol):
    org_id: str
    workload: str
    process_name: str
    cmdline: str


# -- vectors --------------------------------------------------------------------------

_VIEWS = np.sqrt(np.array([RAW_WEIGHT, 1.0 - RAW_WEIGHT], dtype=np.float32))


def behaviour_vectors(embedder: Callable[[Sequence[str]], np.ndarray], exemplars: Sequence[str]) -> np.ndarray:
    """What behaviours are stored with: each exemplar's embedding and its described
    text's (:func:`streams.describe.indexing_text`), side by side, weighted; unit rows."""
    if not exemplars:
        return np.zeros((0, VECTOR_DIM), np.float32)
    both = embedder([*exemplars, *(indexing_text(e) for e in exemplars)])
    n = len(exemplars)
    return np.concatenate([_VIEWS[0] * both[:n], _VIEWS[1] * both[n:]], axis=1).astype(np.float32)


def query_vector(embedder: Callable[[Sequence[str]], np.ndarray], text: str) -> np.ndarray:
    """A search's vector: the framed query's embedding against both views."""
    q = embedder([QUERY_FRAME.format(text)])[0]
    return np.concatenate([_VIEWS[0] * q, _VIEWS[1] * q]).astype(np.float32)


# -- ids ------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def template(cmdline: str) -> str:
    """A command line with its volatile values replaced by typed placeholders."""
    return " ".join(normalize_token(w) for w in cmdline.split()[:TEMPLATE_WORDS])


@lru_cache(maxsize=1 << 16)
def _behaviour_id(org_id: str, workload: str, process_name: str, cmdline: str) -> str:
    key = "\0".join((org_id, workload, process_name, template(cmdline)))
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def behaviour_id(event: _EventLike) -> str:
    """The stable id of ``event``'s behaviour: org, workload, program and command-line
    template (cached: the sink asks for every event, and most repeat)."""
    # (a bounded key for the cache: the template reads the first words only anyway)
    return _behaviour_id(event.org_id, event.workload, event.process_name, event.cmdline[:CMDLINE_KEY_CHARS])


# -- rows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BehaviourRow:
    """One behaviour's aggregate over some events (what :meth:`BehaviourIndex.add` takes)."""

    org_id: str
    workload: str
    behaviour_id: str
    exemplar: str
    process_name: str
    count: int
    first_ts: float
    last_ts: float
    max_score: float

    def merged(self, other: BehaviourRow) -> BehaviourRow:
        return replace(
            self, count=self.count + other.count, first_ts=min(self.first_ts, other.first_ts),
            last_ts=max(self.last_ts, other.last_ts), max_score=max(self.max_score, other.max_score),
        )  # fmt: skip


@dataclass(frozen=True)
class BehaviourHit(BehaviourRow):
    """A behaviour found by a search, with how similar it is to what was asked (0..1)."""

    similarity: float


class Aggregator:
    """Folds scored events into one :class:`BehaviourRow` per behaviour (``ruleless score``)."""

    def __init__(self) -> None:
        self.rows: dict[str, BehaviourRow] = {}

    def add(self, events: Iterable[Any]) -> None:
        for e in events:
            row = _event_row(e)
            old = self.rows.get(row.behaviour_id)
            self.rows[row.behaviour_id] = row if old is None else old.merged(row)


def _event_row(e: Any) -> BehaviourRow:
    return BehaviourRow(
        org_id=e.org_id, workload=e.workload, behaviour_id=behaviour_id(e), exemplar=e.cmdline[:EXEMPLAR_CHARS],
        process_name=e.process_name, count=1, first_ts=e.ts, last_ts=e.ts, max_score=float(getattr(e, "score", 0.0)),
    )  # fmt: skip


def _aggregate(rows: Iterable[Any]) -> dict[str, BehaviourRow]:
    out: dict[str, BehaviourRow] = {}
    for r in rows:
        row = r if isinstance(r, BehaviourRow) else _event_row(r)
        old = out.get(row.behaviour_id)
        out[row.behaviour_id] = row if old is None else old.merged(row)
    return out


# -- words ----------------------------------------------------------------------------

_PIECE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_STOP = frozenset(
    "a an the of to and or for by via with from into onto over out on in it its my me our is are be as at "
    "that this any all some anything something show find me look looks like which what who".split()
)
_SUFFIXES = ("ations", "ation", "ings", "ing", "ers", "er", "ies", "es", "ed", "s")


@lru_cache(maxsize=1 << 16)
def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def command_words(cmdline: str) -> str:
    """The words of a command line (paths, options and expressions split into their
    alphanumeric pieces, lower-cased, repeats dropped): what full-text search indexes."""
    seen: dict[str, None] = {}
    for piece in _PIECE.findall(cmdline):
        if len(piece) > 1:
            seen.setdefault(piece.lower(), None)
    return " ".join(seen)


def query_words(text: str) -> list[str]:
    return [_stem(w) for w in (p.lower() for p in _PIECE.findall(text)) if len(w) > 2 and w not in _STOP]


def word_match(query: list[str], words: str) -> float:
    """Share of the query's words found among a command line's words: equal after
    stemming, or one a prefix (4+ letters) of the other (``cron`` ~ ``crontab``)."""
    if not query:
        return 0.0
    have = {_stem(w) for w in words.split()}
    found = 0
    for q in query:
        found += q in have or any((len(q) >= 4 and w.startswith(q)) or (len(w) >= 4 and q.startswith(w)) for w in have)
    return found / len(query)


# -- the index ------------------------------------------------------------------------


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _filter(orgs: set[str] | None, workload: str | None) -> str | None:
    parts = []
    if orgs is not None:
        parts.append(f"org_id IN ({', '.join(_quoted(o) for o in sorted(orgs))})")
    if workload is not None:
        parts.append(f"workload = {_quoted(workload)}")
    return " AND ".join(parts) or None


class BehaviourIndex:
    """The ``behaviours`` table at LanceDB ``uri`` (created on first :meth:`add`).
    Safe to share between threads (writes are serialised)."""

    def __init__(self, uri: str, table: str = TABLE, embedder: Callable[[Sequence[str]], np.ndarray] = embed) -> None:
        """``embedder`` is :func:`ruleless.embedding.embed` unless a caller wraps it (a
        cache in tests); vectors already stored must come from the same model."""
        self.uri = uri
        self.embed = embedder
        self.name = table
        # Readers in other processes (the API, the CLI, tests) see each write of the sink's
        # indexer at their next query: without a consistency interval a table handle
        # stays at the version it opened.
        self._db = lancedb.connect(uri, read_consistency_interval=timedelta(0))
        self._table: Any = None
        self._write = threading.Lock()

    # -- writing --

    def add(self, rows: Iterable[Any]) -> int:
        """Fold scored events or :class:`BehaviourRow` aggregates into the table: new
        behaviours are embedded and inserted, known ones get their counts, last time and
        highest score updated (their vector is kept). Returns how many were new."""
        incoming = _aggregate(rows)
        if not incoming:
            return 0
        with self._write:
            existing = self._rows_by_id(list(incoming))
            new_ids = [b for b in incoming if b not in existing]
            texts = [incoming[b].exemplar for b in new_ids]
            # (in chunks: a long backlog is not one call holding every activation at once)
            vectors = np.concatenate(
                [behaviour_vectors(self.embed, texts[i : i + EMBED_CHUNK]) for i in range(0, len(texts), EMBED_CHUNK)]
                or [np.zeros((0, VECTOR_DIM), np.float32)]
            )
            densities = self._densities([incoming[b].org_id for b in new_ids], vectors)
            records: list[dict[str, Any]] = []
            for b, vector, density in zip(new_ids, vectors, densities):
                row = incoming[b]
                records.append({
                    **row.__dict__, "words": command_words(row.exemplar), "density": float(density), "vector": vector,
                })  # fmt: skip
            for b, old in existing.items():
                row = incoming[b]
                records.append({
                    **old, "count": old["count"] + row.count, "first_ts": min(old["first_ts"], row.first_ts),
                    "last_ts": max(old["last_ts"], row.last_ts), "max_score": max(old["max_score"], row.max_score),
                })  # fmt: skip
            self._upsert(records)
        return len(new_ids)

    def _densities(self, orgs: list[str], vectors: np.ndarray) -> np.ndarray:
        """Each new behaviour's mean cosine to its nearest behaviours of its org (those
        stored and the other new ones)."""
        out = np.zeros(len(orgs), np.float32)
        for org in sorted(set(orgs)):
            mine = np.flatnonzero(np.array([o == org for o in orgs]))
            pool = np.concatenate([self._org_vectors(org), vectors[mine]])
            known = pool.shape[0] - len(mine)
            k = min(DENSITY_NEIGHBOURS, pool.shape[0] - 1)
            if k <= 0:
                continue
            for start in range(0, len(mine), _DENSITY_BLOCK):
                block = np.arange(start, min(start + _DENSITY_BLOCK, len(mine)))
                sims = vectors[mine[block]] @ pool.T
                sims[np.arange(len(block)), known + block] = -np.inf  # (not its own neighbour)
                out[mine[block]] = np.partition(-sims, k - 1, axis=1)[:, :k].mean(axis=1) * -1
        return out

    def _org_vectors(self, org: str) -> np.ndarray:
        table = self._open()
        if table is None:
            return np.zeros((0, VECTOR_DIM), np.float32)
        data = table.search().where(f"org_id = {_quoted(org)}").select(["vector"]).limit(table.count_rows()).to_arrow()
        if data.num_rows == 0:
            return np.zeros((0, VECTOR_DIM), np.float32)
        flat = data.column("vector").combine_chunks().flatten()
        return np.asarray(flat, np.float32).reshape(-1, VECTOR_DIM)

    def _upsert(self, records: list[dict[str, Any]]) -> None:
        data = pa.Table.from_pylist(
            [{**r, "vector": np.asarray(r["vector"], dtype=np.float32)} for r in records], schema=SCHEMA
        )
        table = self._open()
        if table is None:
            self._table = self._db.create_table(self.name, data, schema=SCHEMA, exist_ok=True)
            if self._table.count_rows() > data.num_rows:  # (someone else created it first)
                self._merge(self._table, data)
            self._index_words()
            return
        self._merge(table, data)

    @staticmethod
    def _merge(table: Any, data: pa.Table) -> None:
        table.merge_insert("behaviour_id").when_matched_update_all().when_not_matched_insert_all().execute(data)

    def optimize(self) -> None:
        """Compact the table's versions and bring the word index up to date (the index
        also searches rows added since, unindexed, so this is for speed only)."""
        table = self._open()
        if table is not None:
            with self._write:
                table.optimize()
                self._index_words()

    def _index_words(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # (the deprecation names create_index(config=FTS()), which this lancedb's
            # LanceTable.create_index does not accept yet)
            self._table.create_fts_index("words", replace=True, stem=False, remove_stop_words=False)

    def _rows_by_id(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        table = self._open()
        if table is None:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i : i + _IN_CHUNK]
            where = f"behaviour_id IN ({', '.join(_quoted(b) for b in chunk)})"
            for r in table.search().where(where).limit(len(chunk)).to_list():
                out[r["behaviour_id"]] = {k: r[k] for k in (*_FIELDS, "vector")}
        return out

    def _open(self) -> Any:
        if self._table is None:
            try:
                self._table = self._db.open_table(self.name)
            except (ValueError, FileNotFoundError):
                return None
        return self._table

    def count(self) -> int:
        table = self._open()
        return 0 if table is None else int(table.count_rows())

    # -- reading --

    def search(self, text: str, orgs: set[str] | None, workload: str | None = None, limit: int = 20) -> list[BehaviourHit]:
        """The behaviours most like ``text`` (meaning and words, see the module), best
        first. ``orgs`` None searches every org (admin); otherwise only those orgs'
        rows are read (filter inside the LanceDB query)."""
        table = self._open()
        if table is None or not text.strip() or (orgs is not None and not orgs):
            return []
        where = _filter(orgs, workload)
        vector = query_vector(self.embed, text)
        k = max(MIN_CANDIDATES, CANDIDATES_PER_HIT * limit)
        candidates = {r["behaviour_id"]: r for r in self._nearest(table, vector, where, k)}
        for r in self._full_text(table, text, where, k):
            candidates.setdefault(r["behaviour_id"], r)
        query = query_words(text)
        hits = self._ranked(candidates, vector, query)
        if FEEDBACK_HITS and len(hits) >= FEEDBACK_HITS:
            top = np.stack([np.asarray(candidates[h.behaviour_id]["vector"], np.float32) for h in hits[:FEEDBACK_HITS]])
            centre = top.mean(axis=0)
            moved = vector + FEEDBACK_WEIGHT * centre / max(float(np.linalg.norm(centre)), 1e-9)
            vector = (moved / max(float(np.linalg.norm(moved)), 1e-9)).astype(np.float32)
            hits = self._ranked(candidates, vector, query)
        return hits[:limit]

    def _ranked(self, candidates: dict[str, dict[str, Any]], vector: np.ndarray, query: list[str]) -> list[BehaviourHit]:
        hits = [
            self._hit(r, float(np.dot(vector, np.asarray(r["vector"], np.float32))), query, float(r.get("density") or 0.0))
            for r in candidates.values()
        ]
        hits.sort(key=lambda h: (-h.similarity, -h.count, h.behaviour_id))
        return hits

    def similar(self, org_id: str, behaviour_id: str, limit: int = 10) -> list[BehaviourHit]:
        """"More like this": the org's behaviours nearest to one of its behaviours (by
        meaning; the behaviour itself left out)."""
        row = self._one(org_id, behaviour_id)
        if row is None:
            return []
        return self._by_vector(np.asarray(row["vector"], np.float32), _filter({org_id}, None), behaviour_id, limit)

    def nearest_known(self, org_id: str, workload: str, behaviour: str, limit: int = 5) -> list[BehaviourHit]:
        """The workload's known behaviours nearest to ``behaviour`` (a behaviour id of
        this org, else free text such as a command line), itself left out."""
        row = self._one(org_id, behaviour)
        vector = np.asarray(row["vector"], np.float32) if row is not None else behaviour_vectors(self.embed, [behaviour])[0]
        return self._by_vector(vector, _filter({org_id}, workload), behaviour, limit)

    def _by_vector(self, vector: np.ndarray, where: str | None, exclude: str, limit: int) -> list[BehaviourHit]:
        table = self._open()
        if table is None:
            return []
        where = f"({where}) AND behaviour_id != {_quoted(exclude)}" if where else f"behaviour_id != {_quoted(exclude)}"
        rows = self._nearest(table, vector, where, limit)
        return [self._hit(r, float(np.dot(vector, np.asarray(r["vector"], np.float32))), []) for r in rows]

    def _one(self, org_id: str, behaviour_id: str) -> dict[str, Any] | None:
        table = self._open()
        if table is None:
            return None
        where = f"org_id = {_quoted(org_id)} AND behaviour_id = {_quoted(behaviour_id)}"
        rows = table.search().where(where).limit(1).to_list()
        return rows[0] if rows else None

    @staticmethod
    def _nearest(table: Any, vector: np.ndarray, where: str | None, k: int) -> list[dict[str, Any]]:
        query = table.search(vector, vector_column_name="vector").metric("cosine")
        if where:
            query = query.where(where, prefilter=True)
        return query.limit(k).to_list()

    @staticmethod
    def _full_text(table: Any, text: str, where: str | None, k: int) -> list[dict[str, Any]]:
        words = " ".join(w.lower() for w in _PIECE.findall(text) if len(w) > 2 and w.lower() not in _STOP)
        if not words:
            return []
        query = table.search(words, query_type="fts", fts_columns="words")
        if where:
            query = query.where(where, prefilter=True)
        try:
            return query.limit(k).to_list()
        except (ValueError, RuntimeError) as exc:  # (no word index yet)
            log.debug("full-text search skipped: %s", exc)
            return []

    @staticmethod
    def _hit(r: dict[str, Any], cosine: float, query: list[str], density: float = 0.0) -> BehaviourHit:
        words = word_match(query, r["words"]) if query else 0.0
        score = cosine + WORD_WEIGHT * words - DENSITY_WEIGHT * density
        similarity = min(1.0, max(0.0, score / (1 + WORD_WEIGHT)))
        return BehaviourHit(
            org_id=r["org_id"], workload=r["workload"], behaviour_id=r["behaviour_id"], exemplar=r["exemplar"],
            process_name=r["process_name"], count=int(r["count"]), first_ts=float(r["first_ts"]),
            last_ts=float(r["last_ts"]), max_score=float(r["max_score"]), similarity=similarity,
        )  # fmt: skip
