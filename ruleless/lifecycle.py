"""How every long-running consumer waits and stops: retry backoff, and signals that
become a stop event. One copy for the sink, the alert forwarder and the agent (the
worker's stop is Faust's; its dead letters, like everyone's, are
``schemas.events.dead_letter``).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

# A target that says it is overloaded is left alone at least this long.
BACKPRESSURE_MIN_S = 2.0


def backoff(attempt: int, min_s: float, max_s: float, backpressure: bool = False) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): doubling from ``min_s`` up to
    ``max_s``, and never under :data:`BACKPRESSURE_MIN_S` after a backpressure error."""
    delay = min(max_s, min_s * 2 ** (attempt - 1))
    return max(delay, BACKPRESSURE_MIN_S) if backpressure else delay


@contextmanager
def stop_on_signals(who: str, stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """``stop`` when the caller has one; else a new event that SIGTERM and SIGINT set
    (from the main thread only: elsewhere Python cannot install handlers). The previous
    handlers are back on exit."""
    if stop is not None:
        yield stop
        return
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: %s received, stopping", who, signal.Signals(signum).name)
        event.set()

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield event
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
