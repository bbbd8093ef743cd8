"""Faust's floor (issue 17, `make bench`): a bare Faust agent that takes the raw topic in
micro-batches, as the worker does, and acks each message — no decoding, no scoring, no
output. The worker cannot be faster than this on the same broker; the pipeline
benchmark reports the worker's rate as a ratio to it.

Usage (the settings come from the environment, as for ``ruleless worker``)::

    python -m tests.faust_floor COUNT RESULT_FILE [stock]

With ``stock``, messages reach the agent through Faust's own per-message delivery (as
Faust ships it: the floor any Faust worker has); without, through the worker's transport,
which hands them over in bursts (streams/faust_transport.py).

Writes ``{"events": N, "seconds": S}`` to RESULT_FILE once COUNT messages were acked
(timed from the first batch), then waits to be stopped.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import faust

from ruleless.settings import load_settings
from streams.worker import faust_broker_options


def main(count: int, result: Path, stock: bool) -> None:
    settings = load_settings()
    worker = settings.worker
    datadir = Path(worker.data_dir) / "faust-floor"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{worker.group_id}-faust-floor",
        **faust_broker_options(settings, stock_delivery=stock),
        value_serializer="raw",
        key_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        web_enabled=False,
        datadir=str(datadir),
        stream_wait_empty=False,
    )
    app.fetch_wait_max_ms = settings.kafka.fetch_wait_max_ms  # type: ignore[attr-defined]
    raw = app.topic(settings.topics.raw, key_type=bytes, value_type=bytes)
    seen = 0
    started = 0.0

    @app.agent(raw, name="floor")
    async def floor(stream: Any) -> None:
        nonlocal seen, started
        async for events in stream.noack_take(worker.batch_size, within=worker.batch_window_s):
            if not started:
                started = time.perf_counter()
            for event in events:
                await stream.ack(event)
            seen += len(events)
            if seen >= count and not result.exists():
                result.write_text(json.dumps({"events": seen, "seconds": time.perf_counter() - started}))

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:] == ["stock"])
