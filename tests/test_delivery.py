"""Delivery proof across processes (issue 14, item 7): every raw message is accounted
for — a row in ClickHouse by its event_id, or a dead letter naming its raw offset — with
nothing lost and nothing doubled, after each fault below.

Real parts: the embedded broker, `ruleless worker` and `ruleless sink` processes, chdb.
Faults are hit at an exact step by failpoints (ruleless/failpoints.py) armed in the
process's environment: a SIGKILL sent from outside could not be aimed between the
sink's insert and its commit. A process killed by its failpoint is started again
unarmed, as a supervisor would.

A broker restart is not here: the embedded broker keeps topics in memory, so what it
held unconsumed is gone with it (README, Guarantees); that events captured after the
restart arrive is `tests/test_pipeline.py::test_ruleless_up_restarts_what_dies_…`.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ruleless.failpoints import ENV
from ruleless.kafka import producer
from ruleless.settings import Settings
from schemas.errors import DecodeError
from schemas.events import DeadLetter, decode, encode
from sinks.query import query_http
from tests.factories import fleet_stream
from tests.processes import QUERY_TOKEN, drain, ruleless_process

pytestmark = pytest.mark.integration

INVALID = (b"not json", b'{"ts": "yesterday"}', b"\xff\xfe", b'{"org_id": "../../etc", "workload": "w"}')


def produce_with_offsets(settings: Settings, payloads: list[tuple[bytes, bytes]]) -> dict[tuple[int, int], bytes]:
    """Publish to the raw topic; (partition, offset) -> value of every acknowledged message."""
    prod = producer(settings.kafka, **{"linger.ms": 5})
    acked: dict[tuple[int, int], bytes] = {}
    errors: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            acked[(msg.partition(), msg.offset())] = msg.value()

    for i, (key, value) in enumerate(payloads):
        prod.produce(settings.topics.raw, value, key, on_delivery=delivered)
        if i % 200 == 199:
            prod.poll(0)
            time.sleep(0.05)  # ~4,000/s: the faults land mid-stream, not after it
    assert prod.flush(60) == 0 and not errors, errors[:3]
    return acked


class Restarting:
    """`ruleless COMMAND` armed with failpoints ``armed``; :meth:`check` starts it again,
    unarmed, when it died (once: the failpoint fires once)."""

    def __init__(self, stack: ExitStack, settings: Settings, command: str, log: Path, armed: str):
        self.stack, self.settings, self.command, self.log = stack, settings, command, log
        self.exits: list[int] = []
        self.proc = stack.enter_context(ruleless_process(settings, command, log=log, env={ENV: armed} if armed else {}))

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None and not self.exits:
            self.exits.append(code)
            self.proc = self.stack.enter_context(ruleless_process(self.settings, self.command, log=self.log))


FAULTS = {
    # outputs of the third batch in flight, its learning not flushed: the next worker re-scores
    "worker killed mid-batch": ("worker.published=kill@3", ""),
    # rows of the second batch in ClickHouse, offsets not committed: the next sink re-inserts
    "sink killed between insert and commit": ("", "sink.inserted=kill@2"),
    # ten insert attempts refused (the store down for a while): retried, nothing dead-lettered
    "ClickHouse inserts failing for a while": ("", "sink.insert=error@2-11"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_raw_message_is_a_row_or_a_dead_letter_after(fault: str, topics: Settings, tmp_path: Path) -> None:
    worker_fp, sink_fp = FAULTS[fault]
    events = fleet_stream(pairs=12, per_pair=500, seed=11)
    payloads = [(e.shard_key.encode(), encode(e)) for e in events]
    for i, bad in enumerate(INVALID * 5):  # 20 invalid messages spread through the stream
        payloads.insert(300 * i + 7, (b"o/w", bad))
    url = f"http://{topics.sink.query_host}:{topics.sink.query_port}"
    table = f"{topics.clickhouse.database}.{topics.clickhouse.table}"

    def sql(query: str) -> list[dict[str, Any]]:
        return query_http(url, query, QUERY_TOKEN)

    with ExitStack() as stack:
        sink = Restarting(stack, topics, "sink", tmp_path / "sink.log", sink_fp)
        worker = Restarting(stack, topics, "worker", tmp_path / "worker.log", worker_fp)
        acked = produce_with_offsets(topics, payloads)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            sink.check()
            worker.check()
            try:
                if int(sql(f"SELECT uniqExact(event_id) AS n FROM {table}")[0]["n"]) >= len(events):
                    break
            except Exception:  # noqa: BLE001 - the sink may be restarting
                pass
            time.sleep(0.5)
        time.sleep(2)  # a late duplicate would land within a batch or two
        ids = {r["event_id"] for r in sql(f"SELECT DISTINCT event_id FROM {table}")}
        final = int(sql(f"SELECT count() AS n FROM {table} FINAL")[0]["n"])

    letters = drain(topics, [topics.topics.dead_letter], lambda got: len(got[topics.topics.dead_letter]) >= len(INVALID) * 5, timeout=30)
    dead = [msgspec.json.decode(v, type=DeadLetter) for v in letters[topics.topics.dead_letter]]
    dead_at = {(d.partition, d.offset) for d in dead if d.topic == topics.topics.raw}
    # Rows the sink's store refused on their own are dead letters too (stage "sink").
    sink_dead = {msgspec.json.decode(d.raw)["event_id"] for d in dead if d.stage == "sink"}

    # The raw count, from the broker's acknowledgements: the accounting below can fail.
    assert len(acked) == len(payloads)
    decoded_ids: dict[tuple[int, int], str] = {}
    for where, value in acked.items():
        try:
            decoded_ids[where] = decode(value).event_id
        except DecodeError:
            continue
    lost = [where for where in acked if decoded_ids.get(where) not in ids | sink_dead and where not in dead_at]
    assert not lost, f"{fault}: {len(lost)} of {len(acked)} raw messages are neither a row nor a dead letter"
    valid = {e.event_id for e in events}
    assert not sink_dead, f"{fault}: the sink dead-lettered {len(sink_dead)} good rows"
    assert ids == valid, f"{fault}: rows that are no event: {sorted(ids - valid)[:5]}"
    assert len(dead_at) == len(INVALID) * 5, f"{fault}: {len(dead_at)} dead-lettered raw offsets"
    assert final == len(valid), f"{fault}: {final} rows with FINAL for {len(valid)} events"
    # The fault really happened, and the component came back.
    exits = worker.exits if worker_fp else sink.exits
    if "kill" in worker_fp + sink_fp:
        assert exits == [-signal.SIGKILL], f"{fault}: the failpoint did not fire ({exits})"
    else:
        log = (tmp_path / "sink.log").read_text(errors="replace")
        assert "failpoint sink.insert: failure 1 of 10" in log, log[-2000:]
        assert "written after" in log or "written in parts" in log, log[-2000:]
