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

from collections.abc import Iterable

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


class Prior:
    """One shard's view of its org's snapshot: how many of the org's workloads know a key.

    A shard consults it only for observations it does not know itself, so the count is
    of its *other* workloads (but for a key the shard knew at the snapshot and has let
    expire since).
    """

    __slots__ = ("known",)

    def __init__(self, known: dict[str, int]):
        self.known = known

    def others(self, key: str) -> int:
        return self.known.get(key, 0)


class OrgPriors:
    """Per org: observation key -> how many of its workloads know it."""

    def __init__(self, by_org: dict[str, dict[str, int]] | None = None):
        self.by_org = by_org or {}

    @classmethod
    def build(cls, known: Iterable[tuple[str, Iterable[str]]]) -> "OrgPriors":
        """From ``(shard key, keys it knows)`` pairs (a shard listed twice: the last wins)."""
        latest: dict[str, Iterable[str]] = dict(known)
        counts: dict[str, dict[str, int]] = {}
        for shard_key, keys in latest.items():
            table = counts.setdefault(split_shard_key(shard_key)[0], {})
            for key in keys:
                table[key] = table.get(key, 0) + 1
        return cls(counts)

    def view(self, shard_key: str) -> Prior | None:
        known = self.by_org.get(split_shard_key(shard_key)[0])
        return Prior(known) if known else None

    def __len__(self) -> int:
        return sum(len(t) for t in self.by_org.values())
