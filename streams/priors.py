"""Org priors: what an org's other workloads know, to temper novelty in this one.

A program, option or directory that is new to one workload but routine in the org's
other workloads (``tar`` on a database host whose web and CI hosts run it every day) is
less surprising than one no workload of the org has ever run. A prior is a snapshot,
per org, of which workloads know each observation (seen in at least
``MIN_EPISODES`` episodes); a shard consults it only for observations it has never
seen itself, and a new workload starts from its org's knowledge instead of from nothing.

Priors never cross orgs: a snapshot is keyed by org and a shard only ever reads its
own org's. No I/O here: the engine builds snapshots from the shards it holds, and the
scoring service adds what the store knows of the shards it does not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

# An observation counts as known to a workload once seen in this many episodes: one
# sighting (perhaps an attacker's) must not vouch for it across the org.
MIN_EPISODES = 2
# The kinds of observation that carry over between workloads. Whole argument templates
# and ancestor chains are nearly unique to a workload, and are most of its keys.
KINDS = ("prog", "parent", "user", "arg", "shape", "path", "paths", "write", "writes", "code", "assign")


# The same selection over persisted rows (the evidence schema's columns).
STORED_WHERE = (
    f"kind IN ({', '.join(repr(k) for k in KINDS)}) AND episodes >= {MIN_EPISODES} AND label != 'malicious'"
)


def split_shard_key(shard_key: str) -> tuple[str, str]:
    org, _, workload = shard_key.partition("/")
    return org, workload


# Key hashes have 62 bits: what the compiled engine keeps as unboxed integers (its shard
# state is indexed by them too, see streams.evidence).
HASH_BITS = 62


def key_hash(key: str) -> int:
    """A stable 62-bit hash of an observation key (snapshots are saved and read back)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> (64 - HASH_BITS)


def key_hashes(keys: Iterable[str]) -> np.ndarray:
    return np.fromiter((key_hash(k) for k in keys), dtype=np.uint64)


class Prior:
    """One shard's view of its org's snapshot: how many of the org's workloads know a key.

    A shard consults it only for observations it does not know itself, so the count is
    of its *other* workloads (but for a key the shard knew at the snapshot and has let
    expire since).
    """

    __slots__ = ("hashes", "counts")

    def __init__(self, hashes: np.ndarray, counts: np.ndarray):
        self.hashes = hashes
        self.counts = counts

    def others(self, hashed: int) -> int:
        """How many workloads know the key whose :func:`key_hash` is ``hashed``."""
        h = np.uint64(hashed)
        i = int(np.searchsorted(self.hashes, h))
        return int(self.counts[i]) if i < len(self.hashes) and self.hashes[i] == h else 0


class OrgPriors:
    """Per org: the hashes of the observation keys its workloads know (sorted) and how
    many workloads know each — 10 bytes a key, however many shards hold it."""

    def __init__(self, by_org: dict[str, tuple[np.ndarray, np.ndarray]] | None = None):
        self.by_org = by_org or {}

    @classmethod
    def build(cls, known: Iterable[tuple[str, np.ndarray]]) -> "OrgPriors":
        """From ``(shard key, hashes of the keys it knows)`` pairs (see :func:`key_hashes`;
        a shard listed twice: the last wins)."""
        latest: dict[str, np.ndarray] = dict(known)
        per_org: dict[str, list[np.ndarray]] = {}
        for shard_key, hashes in latest.items():
            # (unique per shard: a shard counts once per key)
            per_org.setdefault(split_shard_key(shard_key)[0], []).append(np.unique(hashes))
        by_org = {}
        for org, parts in per_org.items():
            hashes, counts = np.unique(np.concatenate(parts), return_counts=True)
            by_org[org] = (hashes, np.minimum(counts, 65535).astype(np.uint16))
        return cls(by_org)

    def view(self, shard_key: str) -> Prior | None:
        table = self.by_org.get(split_shard_key(shard_key)[0])
        return Prior(*table) if table is not None and len(table[0]) else None

    def __len__(self) -> int:
        return sum(len(h) for h, _ in self.by_org.values())
