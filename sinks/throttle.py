"""Alerts in, notifications out: de-duplication, grouping and throttling. No I/O, no clock.

The same *behaviour* — (org_id, workload, process_name, normalised command line) — alerting
on 500 hosts is one notification with a count, not 500 pages:

* an alert whose ``event_id`` was seen recently is a duplicate (the worker delivers at
  least once) and is dropped;
* a behaviour's first alert opens a group; ``group_wait_s`` later everything gathered is
  one ``new`` notification (the burst);
* for ``window_s`` after that, its further alerts are only counted; at the end of the
  window they become one ``repeat`` notification (none if nothing came), which opens the
  next window;
* each (org, workload) sends at most ``max_per_window`` notifications per window; what is
  over the budget is folded into one ``digest`` at the end of the shard's window.

Every notification carries the references (partition, offset) of the alerts it covers,
so the caller commits an offset only once every alert before it went out. Times are
whatever the caller passes as ``now`` (monotonic seconds in production, fake in tests).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ruleless.settings import AlertRoute, AlertSettings
from schemas.events import AlertNotification, ScoredEvent
from streams.normalize import normalize_token, split_args

# (partition, offset) of an alert message.
Ref = tuple[int, int]
# (org_id, workload, process_name, normalised command line)
BehaviourKey = tuple[str, str, str, str]

EVENT_IDS_SHOWN = 100
HOSTS_SHOWN = 50
BEHAVIOUR_CHARS = 300
SEEN_EVENT_IDS = 100_000
_RANK = {"ok": 0, "warn": 1, "alert": 2}


# mktemp's default names (tmp.XXXXXXXXXX): streams.normalize only sees a random run when
# letters and digits interleave, which about half of mktemp's names do not (e.g.
# "tmp.ahppcyoxvn"); one host's temp name must not split a burst.
_MKTEMP = re.compile(r"\btmp\.[A-Za-z0-9]{6,}")


def behaviour_of(alert: ScoredEvent) -> BehaviourKey:
    """What makes two alerts "the same behaviour": volatile values (PIDs, temp names,
    IPs, hashes...) normalised away, so the same command on many hosts matches."""
    words = " ".join(normalize_token(_MKTEMP.sub("tmp.<rnd>", t)) for t in split_args(alert.cmdline, alert.argv))
    return (alert.org_id, alert.workload, alert.process_name, words[:BEHAVIOUR_CHARS])


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A notification to deliver and the alerts it settles once accepted."""

    notification: AlertNotification
    refs: list[Ref]


@dataclass(slots=True)
class _Gathered:
    """Alerts waiting to go out together."""

    alerts: list[ScoredEvent] = field(default_factory=list)
    refs: list[Ref] = field(default_factory=list)
    behaviours: set[BehaviourKey] = field(default_factory=set)

    def add(self, alert: ScoredEvent, ref: Ref, key: BehaviourKey) -> None:
        self.alerts.append(alert)
        self.refs.append(ref)
        self.behaviours.add(key)

    def extend(self, other: "_Gathered") -> None:
        self.alerts += other.alerts
        self.refs += other.refs
        self.behaviours |= other.behaviours

    def __bool__(self) -> bool:
        return bool(self.alerts)


@dataclass(slots=True)
class _Behaviour:
    key: BehaviourKey
    partition: int
    opened: float  # arrival of the first alert not yet posted as "new"
    window_start: float | None = None  # set once "new" went out
    pending: _Gathered = field(default_factory=_Gathered)


@dataclass(slots=True)
class _Budget:
    """One (org, workload)'s notifications in its current window."""

    partition: int
    started: float | None = None
    sent: int = 0
    digest: _Gathered = field(default_factory=_Gathered)


class Throttle:
    def __init__(self, settings: AlertSettings):
        self.settings = settings
        self._behaviours: dict[BehaviourKey, _Behaviour] = {}
        self._budgets: dict[str, _Budget] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()

    def add(self, alert: ScoredEvent, ref: Ref, now: float) -> bool:
        """Take one alert; False when it is dropped (duplicate, below the route's
        severity) — the caller settles it at once."""
        route = self.settings.route_for(alert.shard_key)
        if _RANK[alert.severity] < _RANK[route.min_severity] or not self._first_sighting(alert.event_id or ""):
            return False
        key = behaviour_of(alert)
        entry = self._behaviours.get(key)
        if entry is None:
            entry = self._behaviours[key] = _Behaviour(key, ref[0], opened=now)
        entry.pending.add(alert, ref, key)
        return True

    def _first_sighting(self, event_id: str) -> bool:
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            return False
        self._seen[event_id] = None
        if len(self._seen) > SEEN_EVENT_IDS:
            self._seen.popitem(last=False)
        return True

    def due(self, now: float, everything: bool = False) -> list[Outgoing]:
        """Notifications whose time has come (all pending ones with ``everything``,
        e.g. at shutdown), in the order they should be sent."""
        out: list[Outgoing] = []
        for shard, budget in list(self._budgets.items()):
            route = self.settings.route_for(shard)
            if budget.started is not None and (everything or now >= budget.started + route.window_s):
                if budget.digest:
                    out.append(self._outgoing("digest", budget.digest))
                del self._budgets[shard]
        for key, entry in list(self._behaviours.items()):
            route = self.settings.route_for(f"{key[0]}/{key[1]}")
            if entry.window_start is None:
                if everything or now >= entry.opened + route.group_wait_s:
                    self._send("new", entry, now, out)
            elif everything or now >= entry.window_start + route.window_s:
                if entry.pending:
                    self._send("repeat", entry, now, out)
                else:
                    del self._behaviours[key]
        if everything:
            out += [self._outgoing("digest", b.digest) for b in self._budgets.values() if b.digest]
            self._budgets.clear()
            self._behaviours.clear()
        return out

    def _send(self, kind: str, entry: _Behaviour, now: float, out: list[Outgoing]) -> None:
        shard = f"{entry.key[0]}/{entry.key[1]}"
        route = self.settings.route_for(shard)
        budget = self._budgets.get(shard)
        if budget is None:
            budget = self._budgets[shard] = _Budget(entry.partition, started=now)
        gathered, entry.pending = entry.pending, _Gathered()
        entry.window_start = now
        if budget.sent < route.max_per_window:
            budget.sent += 1
            out.append(self._outgoing(kind, gathered))
        else:
            budget.digest.extend(gathered)

    def next_due(self) -> float | None:
        """The earliest ``now`` at which :meth:`due` has something (None: nothing held)."""
        times: list[float] = []
        for key, entry in self._behaviours.items():
            route = self.settings.route_for(f"{key[0]}/{key[1]}")
            if entry.window_start is None:
                times.append(entry.opened + route.group_wait_s)
            else:
                times.append(entry.window_start + route.window_s)
        for shard, budget in self._budgets.items():
            if budget.started is not None:
                times.append(budget.started + self.settings.route_for(shard).window_s)
        return min(times) if times else None

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget what came from these partitions (revoked: their next owner re-reads
        the uncommitted alerts). Returns how many held alerts were dropped."""
        gone = set(partitions)
        dropped: list[ScoredEvent] = []
        for key, entry in list(self._behaviours.items()):
            if entry.partition in gone:
                dropped += entry.pending.alerts
                del self._behaviours[key]
        for shard, budget in list(self._budgets.items()):
            if budget.partition in gone:
                dropped += budget.digest.alerts
                del self._budgets[shard]
        for alert in dropped:
            # Re-read later: must not look like a duplicate then.
            self._seen.pop(alert.event_id or "", None)
        return len(dropped)

    def held(self) -> int:
        """Alerts taken but not yet handed out in a notification."""
        return sum(len(e.pending.alerts) for e in self._behaviours.values()) + sum(
            len(b.digest.alerts) for b in self._budgets.values()
        )

    @staticmethod
    def _outgoing(kind: str, gathered: _Gathered) -> Outgoing:
        return Outgoing(notification(kind, gathered.alerts, len(gathered.behaviours)), list(gathered.refs))


def notification(kind: str, alerts: list[ScoredEvent], behaviours: int = 1) -> AlertNotification:
    """One notification for ``alerts`` (non-empty, first = the sample)."""
    first = alerts[0]
    key = behaviour_of(first)
    hosts = list(dict.fromkeys(a.host for a in alerts))
    worst = max(alerts, key=lambda a: (_RANK[a.severity], a.score))
    ident = hashlib.blake2b(f"{kind}\x1f{first.event_id}\x1f{'/'.join(key)}".encode(), digest_size=12).hexdigest()
    return AlertNotification(
        id=ident,
        kind=kind,  # type: ignore[arg-type]
        org_id=first.org_id,
        workload=first.workload,
        process_name=first.process_name if kind != "digest" else "",
        behaviour=key[3] if kind != "digest" else f"{behaviours} behaviours over the notification budget",
        severity=worst.severity,
        max_score=worst.score,
        count=len(alerts),
        host_count=len(hosts),
        hosts=hosts[:HOSTS_SHOWN],
        first_ts=min(a.ts for a in alerts),
        last_ts=max(a.ts for a in alerts),
        event_ids=[a.event_id or "" for a in alerts[:EVENT_IDS_SHOWN]],
        sample=first,
        behaviours=behaviours,
    )


def route_summary(route: AlertRoute) -> str:
    return (
        f"group_wait {route.group_wait_s:g}s, window {route.window_s:g}s, "
        f"max {route.max_per_window}/window, from {route.min_severity}"
    )
