"""Org priors: what an org's other workloads know tempers novelty in a workload, never
across orgs, and never at the cost of batch == sequential."""

from __future__ import annotations

from pathlib import Path

from ruleless.settings import EngineSettings, load_settings
from schemas.events import RawEvent
from streams.engine import Engine
from streams.priors import OrgPriors
from streams.scoring import ScoringService
from tests.factories import T0, event, workload_stream

DAY = 86_400.0


def engine(**settings: object) -> Engine:
    return Engine(EngineSettings(algorithm="evidence", **settings))  # type: ignore[arg-type]


def ci_day(org: str) -> list[RawEvent]:
    """A day of CI work in ``org`` (tar, git, make...), then a new day begins."""
    return list(workload_stream(org, "ci", "ci", 2000))


def tar_on_db(org: str, ts: float = T0 + DAY + 60) -> RawEvent:
    return event(ts=ts, org_id=org, workload="db", host="db-1", process_name="tar", parent_process="runner",
                 user="ci", uid=1000, cmdline="tar czf /tmp/artifact-7.tgz build")  # fmt: skip


def db_day(org: str) -> list[RawEvent]:
    return list(workload_stream(org, "db", "db", 2000, start=T0 + 600))


def test_a_program_routine_in_the_orgs_other_workloads_is_less_surprising_and_says_why() -> None:
    eng = engine()
    eng.score(sorted(ci_day("acme") + db_day("acme") + db_day("globex"), key=lambda e: e.ts))
    [ours, theirs] = eng.score([tar_on_db("acme"), tar_on_db("globex")])
    assert ours.score < theirs.score - 0.1, (ours.score, theirs.score)
    assert any("org prior" in r and "1 other workload" in r for r in ours.reasons), ours.reasons
    assert not any("org prior" in r for r in theirs.reasons)


def test_a_new_workload_starts_from_its_orgs_knowledge() -> None:
    eng = engine()
    eng.score(ci_day("acme"))
    [first] = eng.score([tar_on_db("acme")])  # the very first event of acme/db
    [cold] = engine().score([tar_on_db("acme")])
    assert first.score < cold.score - 0.2, (first.score, cold.score)


def test_priors_never_cross_orgs() -> None:
    """globex's scores are the same whether or not acme ran anything."""
    alone, beside = engine(), engine()
    globex = db_day("globex") + [tar_on_db("globex")]
    expected = [s.score for s in alone.score(globex)]
    beside.score(ci_day("acme"))
    assert [s.score for s in beside.score(globex)] == expected


def test_priors_can_be_turned_off() -> None:
    on, off = engine(), engine(org_priors=False)
    for eng in (on, off):
        eng.score(ci_day("acme"))
    assert on.score([tar_on_db("acme")])[0].score < off.score([tar_on_db("acme")])[0].score


def test_batches_give_the_scores_of_one_by_one_across_days_and_workloads() -> None:
    stream = sorted(
        [e for day in range(3) for e in workload_stream("acme", "ci", "ci", 300, seed=day, start=T0 + day * DAY)]
        + [e for day in range(3) for e in workload_stream("acme", "db", "db", 300, seed=day, start=T0 + day * DAY + 100)]
        + [tar_on_db("acme", T0 + day * DAY + 5000) for day in range(1, 3)],
        key=lambda e: e.ts,
    )
    one = engine()
    expected = [one.score([e])[0].score for e in stream]
    for size in (7, 250, len(stream)):
        eng = engine()
        got = [s.score for i in range(0, len(stream), size) for s in eng.score(stream[i : i + size])]
        assert got == expected, size


def test_a_restarted_service_reads_its_orgs_knowledge_from_the_store(tmp_path: Path) -> None:
    settings = load_settings(lancedb={"uri": str(tmp_path)})
    first = ScoringService(settings)
    first.score(ci_day("acme"))
    first.flush()
    restarted = ScoringService(settings)  # acme/ci is in the store, not in memory
    [scored] = restarted.score([tar_on_db("acme")])
    assert any("org prior" in r for r in scored.reasons), scored.reasons
    assert "acme/ci" not in restarted.engine.shards


def test_only_observations_seen_in_several_episodes_vouch() -> None:
    eng = engine()
    eng.score([event(ts=T0, org_id="acme", workload="ci", process_name="nc", cmdline="nc -lp 4444")])
    eng.score([event(ts=T0 + DAY, org_id="acme", workload="ci", process_name="true", cmdline="true")])
    priors = eng.priors
    assert isinstance(priors, OrgPriors)
    assert priors.view("acme/db") is None  # one episode each: nothing vouched for


def test_a_reloaded_offline_state_scores_exactly_like_a_continuous_one(tmp_path: Path) -> None:
    """Reload == continuous with org priors in play: the snapshot is saved with the state."""
    stream = sorted(
        [e for day in range(3) for e in workload_stream("acme", "ci", "ci", 300, seed=day, start=T0 + day * DAY)]
        + [e for day in range(3) for e in workload_stream("acme", "db", "db", 300, seed=day, start=T0 + day * DAY + 100)]
        + [tar_on_db("acme", T0 + day * DAY + 5000) for day in range(1, 3)]
        # learned by ci after day 1's snapshot, before the reload: not in that day's priors
        + [event(ts=T0 + DAY + t, org_id="acme", workload="ci", host=f"ci-{t}", process_name="rsync",
                 cmdline="rsync -a /srv/x/ /srv/y/") for t in (150, 160)]
        + [event(ts=T0 + DAY + 5100, org_id="acme", workload="db", host="db-1", process_name="rsync",
                 cmdline="rsync -a /srv/x/ /srv/y/")],  # fmt: skip
        key=lambda e: e.ts,
    )

    def svc(name: str) -> ScoringService:
        return ScoringService(load_settings(lancedb={"uri": str(tmp_path / name)}))

    expected = [s.score for s in svc("a").score(stream)]
    cut = next(i for i, e in enumerate(stream) if e.ts > T0 + DAY + 300)  # mid-day 1, after its snapshot
    first = svc("b")
    got = [s.score for s in first.score(stream[:cut])]
    first.flush()
    got += [s.score for s in svc("b").score(stream[cut:])]
    assert got == expected
    assert any("org prior" in r for s in svc("c").score(stream) for r in s.reasons)
