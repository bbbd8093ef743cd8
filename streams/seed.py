"""``seed``: the article's algorithm, kept exactly as the baseline for every improvement.

Feature hashing into signed buckets (streams.featurize), score = min(1, 2 × the cosine
distance to the nearest known behaviour), 1.0 on an empty shard, then the event joins the
baseline; entries unseen for the retention window (event time) no longer count.

Identical feature vectors are stored once with a count and first/last sighting: the
nearest distance is the same as with one row per event, and a busy shard stays small.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from functools import lru_cache
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ruleless.settings import EngineSettings
from schemas.events import RawEvent
from streams.algorithm import Changes, Verdict, register
from streams.featurize import seed_tokens, seed_vector

# A reserved row carrying the shard's clock and history, so a reloaded shard expires and
# counts exactly like the one that wrote it.
META_KEY = "__meta__"
EXEMPLAR_CHARS = 200


def _schema(dims: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("key", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dims)),
            pa.field("count", pa.int64()),
            pa.field("first_ts", pa.float64()),
            pa.field("last_ts", pa.float64()),
            pa.field("exemplar", pa.string()),
            pa.field("tokens", pa.list_(pa.string())),
        ]
    )


def _key(vec: np.ndarray) -> str:
    return hashlib.blake2b(vec.tobytes(), digest_size=12).hexdigest()


@lru_cache(maxsize=1 << 15)
def _features(
    process_name: str, parent: str, event_type: str, local_port: int | None, remote_port: int | None,
    cmdline: str, dims: int,
) -> tuple[list[str], np.ndarray, str, float]:
    """Tokens, vector, key and squared norm of the fields the seed reads (and only those).

    Cached: most events repeat a known behaviour, and hashing their tokens again was a
    third of the engine's time (issue 5, make bench). Results are shared: never mutate.
    """
    probe = RawEvent(ts=0.0, org_id="x", workload="x", process_name=process_name, parent_process=parent,
                     event_type=event_type, local_port=local_port, remote_port=remote_port, cmdline=cmdline)
    tokens = seed_tokens(probe)
    vec = seed_vector(tokens, dims)
    vec.setflags(write=False)
    sq = float(np.dot(vec.astype(np.float64), vec.astype(np.float64)))
    return tokens, vec, _key(vec), sq


def _cosine(dots: np.ndarray, sq_a: float, sq_b: np.ndarray) -> np.ndarray:
    """Cosine from exact integer dot products and squared norms (0 where a norm is 0)."""
    denom = np.sqrt(sq_a * sq_b)
    out = np.zeros_like(denom)
    np.divide(dots, denom, out=out, where=denom > 0)
    return out


class SeedShard:
    """One shard's baseline under the seed algorithm."""

    def __init__(self, dims: int, retention_s: float):
        self.dims = dims
        self.retention_s = retention_s
        self._vecs = np.zeros((64, dims), dtype=np.float32)
        self._sq = np.zeros(64, dtype=np.float64)
        self._count = np.zeros(64, dtype=np.int64)
        self._first = np.zeros(64, dtype=np.float64)
        self._last = np.zeros(64, dtype=np.float64)
        self._keys: list[str] = []
        self._index: dict[str, int] = {}
        self._exemplars: list[str] = []
        self._tokens: list[list[str]] = []
        self._vocab: Counter[str] = Counter()
        self._n = 0
        self.watermark = float("-inf")
        self.history = 0
        self._dirty: set[str] = set()
        self._deleted: list[str] = []
        self._meta_dirty = False

    def __len__(self) -> int:
        return self._n

    # -- scoring -----------------------------------------------------------------

    def score_and_learn(self, events: Sequence[RawEvent], prior: object = None) -> list[Verdict]:
        # (The article's algorithm has no org priors: ``prior`` is ignored.)
        feats = [self._featurize(e) for e in events]
        n0 = self._n
        # Events whose exact behaviour is not already known need a distance row; do them
        # in one matrix product against the pre-batch entries (exact: integer values).
        need = [j for j, (_, _, key, _) in enumerate(feats) if key not in self._index]
        rows: dict[int, np.ndarray] = {}
        if need and n0:
            block = np.stack([feats[j][1] for j in need]) @ self._vecs[:n0].T
            rows = {j: block[i] for i, j in enumerate(need)}
        return [self._score_one(e, f, rows.get(j), n0) for j, (e, f) in enumerate(zip(events, feats))]

    def _featurize(self, event: RawEvent) -> tuple[list[str], np.ndarray, str, float]:
        return _features(
            event.process_name, event.parent_process, event.event_type,
            event.local_port, event.remote_port, event.cmdline, self.dims,
        )

    def _score_one(
        self,
        event: RawEvent,
        feat: tuple[list[str], np.ndarray, str, float],
        pre_row: np.ndarray | None,
        n0: int,
    ) -> Verdict:
        tokens, vec, key, sq = feat
        now = max(self.watermark, event.ts)
        cutoff = now - self.retention_s
        history = self.history
        idx = self._index.get(key)
        if idx is not None and self._last[idx] >= cutoff:
            score, nearest, dist = 0.0, idx, 0.0
        else:
            score, nearest, dist = self._nearest(vec, sq, cutoff, pre_row, n0)
        reasons = self._reasons(tokens, nearest, dist)
        self._learn(event, tokens, vec, key, sq, cutoff)
        self.watermark = now
        return (score, reasons, history, None)

    def _nearest(
        self, vec: np.ndarray, sq: float, cutoff: float, pre_row: np.ndarray | None, n0: int
    ) -> tuple[float, int | None, float]:
        n = self._n
        if n == 0:
            return 1.0, None, 1.0
        if pre_row is None:
            dots = self._vecs[:n] @ vec
        elif n > n0:
            dots = np.concatenate([pre_row, self._vecs[n0:n] @ vec])
        else:
            dots = pre_row
        cos = _cosine(dots.astype(np.float64), sq, self._sq[:n])
        cos[self._last[:n] < cutoff] = -np.inf
        best = int(np.argmax(cos))
        if cos[best] == -np.inf:
            return 1.0, None, 1.0
        dist = 1.0 - float(cos[best])
        return min(1.0, 2.0 * dist), best, dist

    def _reasons(self, tokens: list[str], nearest: int | None, dist: float) -> list[str]:
        if nearest is None:
            return ["nothing learned yet in this workload's window"]
        if dist == 0.0:
            return [f"known behaviour, seen {int(self._count[nearest])}x"]
        out = [
            f"nearest known: {self._exemplars[nearest]!r} "
            f"(seen {int(self._count[nearest])}x, distance {dist:.2f})"
        ]
        novel = [t for t in dict.fromkeys(tokens) if t and t not in self._vocab]
        if novel:
            out.append("never-seen tokens: " + " ".join(novel[:8]))
        return out

    # -- learning ----------------------------------------------------------------

    def _learn(
        self, event: RawEvent, tokens: list[str], vec: np.ndarray, key: str, sq: float, cutoff: float
    ) -> None:
        self.history += 1
        self._meta_dirty = True
        idx = self._index.get(key)
        if idx is None:
            self._append(key, vec, sq, 1, event.ts, event.ts, event.cmdline[:EXEMPLAR_CHARS], tokens)
            return
        if self._last[idx] < cutoff:
            # Expired but not yet pruned: count it as new, exactly as if it had been pruned.
            self._count[idx] = 1
            self._first[idx] = event.ts
            self._last[idx] = event.ts
        else:
            self._count[idx] += 1
            self._last[idx] = max(self._last[idx], event.ts)
        self._dirty.add(key)

    def _append(
        self, key: str, vec: np.ndarray, sq: float, count: int, first: float, last: float,
        exemplar: str, tokens: list[str],
    ) -> None:
        if self._n == len(self._count):
            self._grow()
        i = self._n
        self._vecs[i] = vec
        self._sq[i] = sq
        self._count[i] = count
        self._first[i] = first
        self._last[i] = last
        self._keys.append(key)
        self._index[key] = i
        self._exemplars.append(exemplar)
        self._tokens.append(tokens)
        self._vocab.update(set(t for t in tokens if t))
        self._dirty.add(key)
        self._n += 1

    def _grow(self) -> None:
        cap = len(self._count) * 2
        self._vecs = np.resize(self._vecs, (cap, self.dims))
        for name in ("_sq", "_count", "_first", "_last"):
            setattr(self, name, np.resize(getattr(self, name), cap))

    def feedback(self, event: RawEvent, label: str) -> None:
        """The seed has no notion of labels: benign is learned once more, malicious ignored."""
        if label == "benign":
            tokens, vec, key, sq = self._featurize(event)
            now = max(self.watermark, event.ts)
            self._learn(event, tokens, vec, key, sq, now - self.retention_s)
            self.history -= 1

    # -- retention and persistence -------------------------------------------------

    def prune(self) -> int:
        n = self._n
        keep = self._last[:n] >= self.watermark - self.retention_s
        dropped = n - int(keep.sum())
        if not dropped:
            return 0
        kept = np.flatnonzero(keep)
        for i in np.flatnonzero(~keep):
            self._deleted.append(self._keys[i])
            self._vocab.subtract(set(t for t in self._tokens[i] if t))
        self._vocab += Counter()  # drop zero counts
        self._vecs[: len(kept)] = self._vecs[kept]
        for name in ("_sq", "_count", "_first", "_last"):
            arr = getattr(self, name)
            arr[: len(kept)] = arr[kept]
        self._keys = [self._keys[i] for i in kept]
        self._exemplars = [self._exemplars[i] for i in kept]
        self._tokens = [self._tokens[i] for i in kept]
        self._index = {k: i for i, k in enumerate(self._keys)}
        self._n = len(kept)
        self._dirty &= self._index.keys()
        return dropped

    def take_changes(self) -> Changes:
        rows = sorted(self._index[k] for k in self._dirty)
        upserts = self._rows(rows, with_meta=self._meta_dirty) if rows or self._meta_dirty else None
        changes = Changes(upserts=upserts, deletes=self._deleted)
        self._dirty = set()
        self._deleted = []
        self._meta_dirty = False
        return changes

    def to_table(self) -> pa.Table:
        return self._rows(list(range(self._n)), with_meta=True)

    def _rows(self, rows: list[int], with_meta: bool) -> pa.Table:
        idx = np.asarray(rows, dtype=np.int64)
        keys = [self._keys[i] for i in rows]
        vecs = self._vecs[idx] if rows else np.zeros((0, self.dims), np.float32)
        counts = self._count[idx].tolist()
        firsts = self._first[idx].tolist()
        lasts = self._last[idx].tolist()
        exemplars = [self._exemplars[i] for i in rows]
        tokens = [self._tokens[i] for i in rows]
        if with_meta:
            keys.append(META_KEY)
            vecs = np.vstack([vecs, np.zeros((1, self.dims), np.float32)])
            counts.append(self.history)
            firsts.append(0.0)
            lasts.append(self.watermark if np.isfinite(self.watermark) else 0.0)
            exemplars.append("")
            tokens.append([])
        flat = pa.array(vecs.reshape(-1), type=pa.float32())
        return pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, self.dims),
                "count": pa.array(counts, pa.int64()),
                "first_ts": pa.array(firsts, pa.float64()),
                "last_ts": pa.array(lasts, pa.float64()),
                "exemplar": pa.array(exemplars, pa.string()),
                "tokens": pa.array(tokens, pa.list_(pa.string())),
            },
            schema=_schema(self.dims),
        )

    @classmethod
    def from_table(cls, table: pa.Table, dims: int, retention_s: float) -> "SeedShard":
        shard = cls(dims, retention_s)
        cols = table.to_pydict()
        vecs = np.asarray(table.column("vector").combine_chunks().flatten(), dtype=np.float32)
        vecs = vecs.reshape(-1, dims)
        order = np.argsort(np.asarray(cols["first_ts"]), kind="stable")
        for i in order:
            key = cols["key"][i]
            if key == META_KEY:
                shard.history = int(cols["count"][i])
                shard.watermark = float(cols["last_ts"][i]) if cols["count"][i] else float("-inf")
                continue
            vec = vecs[i]
            shard._append(
                key, vec, float(np.dot(vec.astype(np.float64), vec.astype(np.float64))),
                int(cols["count"][i]), float(cols["first_ts"][i]), float(cols["last_ts"][i]),
                cols["exemplar"][i], list(cols["tokens"][i]),
            )
        shard._dirty = set()
        return shard


class SeedAlgorithm:
    name = "seed"
    version = "1"

    def __init__(self, settings: EngineSettings):
        self.dims = settings.dims
        self.retention_s = settings.retention_for(self.name) * 86_400.0

    @property
    def model(self) -> str:
        return f"{self.name}/{self.version}"

    def schema(self) -> pa.Schema:
        return _schema(self.dims)

    def new_shard(self) -> SeedShard:
        return SeedShard(self.dims, self.retention_s)

    def load_shard(self, table: pa.Table) -> SeedShard:
        return SeedShard.from_table(table, self.dims, self.retention_s)


register("seed")(SeedAlgorithm)
