"""The benchmark's metric functions on hand-made inputs, and the committed recordings."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from schemas.events import decode
from tests.eval.evaluate import (
    DATA_DIR,
    Workload,
    inject,
    parents_by_context,
    rate_at,
    roc_auc,
    sample_disjoint,
    score_org,
    threshold_at,
    warmup_days,
)

MIN_DAYS = 20
MIN_EXECS = 2_000
WORKLOADS = ("web", "db", "ci", "ops", "data", "kv", "node", "shell")


class TestRocAuc:
    def test_perfect_ranking_is_one(self) -> None:
        assert roc_auc([0.8, 0.9, 1.0], [0.1, 0.2, 0.3]) == 1.0

    def test_inverted_ranking_is_zero(self) -> None:
        assert roc_auc([0.1, 0.2], [0.5, 0.6, 0.7]) == 0.0

    def test_all_tied_is_one_half(self) -> None:
        assert roc_auc([0.5, 0.5], [0.5, 0.5, 0.5]) == 0.5

    def test_ties_count_one_half(self) -> None:
        # pairs: (0.5 vs 0.5) tie = 0.5, (0.5 vs 0.1) win = 1 -> 1.5 / 2
        assert roc_auc([0.5], [0.5, 0.1]) == pytest.approx(0.75)

    def test_random_scores_are_near_one_half(self) -> None:
        rng = np.random.default_rng(1)
        assert roc_auc(rng.random(4000), rng.random(4000)) == pytest.approx(0.5, abs=0.03)

    def test_matches_pairwise_definition(self) -> None:
        rng = np.random.default_rng(2)
        pos = rng.integers(0, 5, 40) / 4
        neg = rng.integers(0, 5, 60) / 4
        pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
        assert roc_auc(pos, neg) == pytest.approx(float(np.mean(pairs)))

    def test_empty_side_is_nan(self) -> None:
        assert np.isnan(roc_auc([], [0.1]))


class TestThreshold:
    def test_at_most_half_a_percent_of_normal_alert(self) -> None:
        normal = np.arange(1000) / 1000  # 0.000 .. 0.999
        t = threshold_at(normal)
        assert rate_at(normal, t) == pytest.approx(0.005)
        # and it is the smallest such threshold: the next normal score down would exceed it
        assert rate_at(normal, 0.994) > 0.005
        assert 0.994 < t <= 0.995

    def test_ties_at_the_cut_do_not_alert(self) -> None:
        normal = [0.0] * 990 + [1.0] * 10  # 1 % at the top score
        t = threshold_at(normal)
        assert t > 1.0
        assert rate_at(normal, t) == 0.0

    def test_small_sets_allow_no_alert(self) -> None:
        normal = [0.1, 0.2, 0.3]
        t = threshold_at(normal)
        assert rate_at(normal, t) == 0.0
        assert t == np.nextafter(0.3, np.inf)

    def test_recall_and_benign_rate_at_threshold(self) -> None:
        normal = list(np.linspace(0, 0.5, 400))
        t = threshold_at(normal)  # 2 of 400 may alert
        assert rate_at(normal, t) == 0.005
        assert rate_at([0.9, 0.95, 0.1, 0.2], t) == 0.5
        assert rate_at([0.6], t) == 1.0

    def test_warmup_is_first_30_percent_of_days(self) -> None:
        assert warmup_days(20) == 6
        assert warmup_days(28) == 9
        assert warmup_days(10) == 3


def _toy_workload() -> Workload:
    t0 = 1_000_000.0
    events = []
    for day in range(10):
        for k in range(5):
            ts = t0 + day * 86_400 + 3600 * (k + 1)
            events.append({"ts": ts, "org_id": "eval", "workload": "toy", "host": f"h{k % 2}", "pid": 1000 + day * 10 + k,
                           "ppid": 500 + day, "uid": 0, "user": "root", "process_name": "date", "exe": "/usr/bin/date",
                           "cmdline": "date", "argv": ["date"], "parent_process": "cron", "ancestors": ["cron", "systemd"]})  # fmt: skip
    return Workload("toy", events, t0, 10, warmup_days(10))


class TestInjection:
    def test_injected_events_take_context_from_a_real_parent_in_test_days(self) -> None:
        wl = _toy_workload()
        contexts = parents_by_context(wl)
        line = {"argv": ["sh", "-c", "id"], "cmdline": "sh -c id", "process_name": "sh", "exe": "/usr/bin/sh",
                "event_type": "exec", "label": "attack", "technique": "T1059", "event_id": "ad-1", "via_shell": True}  # fmt: skip
        items = inject([line] * 50, wl, contexts, random.Random(3), "attack")
        for item in items:
            ev = item["event"]
            decode(json.dumps(ev))  # a valid raw event
            assert ev["ts"] >= wl.test_start
            assert ev["parent_process"] == "cron" and ev["ancestors"] == ["cron", "systemd"]
            assert ev["ppid"] in {e["ppid"] for e in wl.events}
            assert ev["cmdline"] == "sh -c id"
            # bench labels and provenance never reach the event
            assert not {"label", "technique", "via_shell", "event_id", "function"} & set(ev)

    def test_injected_events_do_not_change_normal_scores(self) -> None:
        wl = _toy_workload()
        line = {"argv": ["vim", "-c", ":!/bin/sh"], "cmdline": "vim -c :!/bin/sh", "process_name": "vim", "exe": "/usr/bin/vim"}
        items = inject([line] * 5, wl, parents_by_context(wl), random.Random(1), "attack")
        alone = score_org("seed", [wl], {"toy": []}, learn_injected=False)["toy"]
        mixed = score_org("seed", [wl], {"toy": items}, learn_injected=False)["toy"]
        assert np.array_equal(alone.normal, mixed.normal)
        assert len(mixed.injected["attack"]) == 5
        # isolated: every copy of the line is as new as the first
        assert len(set(mixed.injected["attack"])) == 1
        learned = score_org("seed", [wl], {"toy": items}, learn_injected=True)["toy"]
        assert min(learned.injected["attack"]) < max(learned.injected["attack"])

    def test_an_orgs_workloads_scored_together_keep_their_normal_scores_whatever_is_injected(self) -> None:
        """Two workloads of one org (org priors in play): injected lines change no normal score."""
        wl = _toy_workload()
        other = Workload("toy2", [{**e, "workload": "toy2", "process_name": "id", "exe": "/usr/bin/id", "cmdline": "id",
                                   "argv": ["id"]} for e in wl.events], wl.t0, wl.days, wl.warmup_days)  # fmt: skip
        line = {"argv": ["id"], "cmdline": "id", "process_name": "id", "exe": "/usr/bin/id"}
        items = inject([line] * 5, wl, parents_by_context(wl), random.Random(1), "benign")
        alone = score_org("evidence", [wl, other], {"toy": [], "toy2": []}, learn_injected=False)
        mixed = score_org("evidence", [wl, other], {"toy": items, "toy2": []}, learn_injected=False)
        for name in ("toy", "toy2"):
            assert np.array_equal(alone[name].normal, mixed[name].normal)
        # ``id`` is routine in toy2: in toy it is new, but known to the org
        assert max(mixed["toy"].injected["benign"]) < 0.9

    def test_samples_differ_per_workload(self) -> None:
        lines = [{"event_id": str(i)} for i in range(1000)]
        sets = sample_disjoint(lines, ["a", "b", "c"], 200, random.Random(0))
        ids = [{x["event_id"] for x in v} for v in sets.values()]
        assert all(len(s) == 200 for s in ids)
        assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])


def _manifest() -> dict:
    return json.loads((DATA_DIR / "manifest.json").read_text())


class TestRecordedData:
    def test_every_workload_is_recorded(self) -> None:
        assert set(WORKLOADS) <= set(_manifest()["workloads"])

    @pytest.mark.parametrize("name", WORKLOADS)
    def test_workload_meets_size_requirements(self, name: str) -> None:
        info = _manifest()["workloads"][name]
        path: Path = DATA_DIR / info["file"]
        with gzip.open(path, "rt") as fh:
            events = [json.loads(line) for line in fh]
        t0 = min(e["ts"] for e in events)
        days = {int((e["ts"] - t0) // 86_400) for e in events}
        assert info["days"] >= MIN_DAYS and len(days) >= MIN_DAYS
        execs = [e for e in events if e.get("event_type", "exec") == "exec"]
        assert len(execs) >= MIN_EXECS and info["execs"] == len(execs) and info["events"] == len(events)
        per_day = {int((e["ts"] - t0) // 86_400) for e in execs}
        assert len(per_day) >= MIN_DAYS
        assert {e["workload"] for e in events} == {name}
        # besides execs the agent reports sockets its processes listen on / connect from
        assert {e.get("event_type", "exec") for e in events} <= {"exec", "listen", "connect"}
        assert info["backend"] != "proc", "committed data must come from a real-time agent backend"
        for line in events[:: max(1, len(events) // 200)]:
            decode(json.dumps(line))
        assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


def test_the_held_out_half_shares_no_technique_and_no_binary_with_the_tuned_one() -> None:
    from tests.eval.evaluate import split_attacks

    lines = [
        {"snippet": f"{b}/x/0/default", "technique": t}
        for b, t in [("bash", "T1059"), ("bash", "T1059"), ("bash", "T1005"), ("awk", "T1059"), ("cat", "T1005"),
                     ("cat", "T1005"), ("curl", "T1105"), ("curl", "T1105"), ("zip", None), ("awk", "T1059")]
    ]
    tuned, held = split_attacks(lines)
    tech = lambda ls: {l["technique"] or "none" for l in ls}  # noqa: E731
    binary = lambda ls: {l["snippet"].split("/")[0] for l in ls}  # noqa: E731
    assert tuned and held
    assert not tech(tuned) & tech(held) and not binary(tuned) & binary(held)
    assert len(tuned) + len(held) == len(lines) - 1  # bash's one T1005 line has no side
    assert split_attacks(list(reversed(lines)))[0] == [l for l in reversed(lines) if l in tuned]  # order-independent halves


def test_the_team_written_family_is_wide_valid_and_its_own() -> None:
    """Issue 13: ≥ 150 lines over ≥ 20 ATT&CK techniques, each a valid raw event once
    injected, run through `sh -c` when it has shell syntax, and none of them a line of
    the dev corpus (a second family, not a copy)."""
    from tests.eval.attacks_team import TECHNIQUES, team_attacks
    from tests.eval.evaluate import load_bench

    lines = team_attacks()
    assert len(lines) >= 150 and len(TECHNIQUES) >= 20
    assert len({line["cmdline"] for line in lines}) == len(lines), "a line written twice"
    for line in lines:
        event = decode(json.dumps({"ts": 1.0, "org_id": "eval", "workload": "w", **line}))
        assert event.argv and event.process_name
        if any(c in line["argv"][-1] for c in "|>;"):
            assert line["argv"][:2] == ["sh", "-c"], line
    bench = Path(__file__).resolve().parents[2].parent / "shared" / "bench" / "attacks_dev.jsonl"
    if bench.exists():
        dev = {row["cmdline"] for row in load_bench(bench)}
        assert not dev & {line["cmdline"] for line in lines}
