"""Log lines a person can read, JSON on request (``--log-format json``)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time

_DIGITS = re.compile(r"\d+")


class OncePerInterval(logging.Filter):
    """Let a message through once per ``interval_s``; repeats in between (the same text
    but for its numbers: ports, counts, timings) are counted and the count is added to
    the next one let through. A client retrying an unreachable broker 20 times a second
    otherwise fills a log with thousands of identical lines (issue 14)."""

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = _DIGITS.sub("N", record.getMessage())
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval_s) < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            repeats = self._suppressed.pop(key, 0)
        if repeats:
            record.msg = f"{record.getMessage()} ({repeats} similar in the last {self.interval_s:.0f}s not logged)"
            record.args = None
        return True


def librdkafka_logger() -> logging.Logger:
    """Where librdkafka's own lines go (instead of raw stderr), rate-limited."""
    logger = logging.getLogger("librdkafka")
    if not any(isinstance(f, OncePerInterval) for f in logger.filters):
        logger.addFilter(OncePerInterval())
    return logger


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")
        formatter.converter = time.localtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter that drowns our own lines at INFO.
    for noisy in ("aiokafka", "faust", "mode", "lancedb")[int(os.environ.get("RULELESS_DEBUG_LIBS", "0")):]:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
