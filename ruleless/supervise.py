"""Process supervision for `ruleless up`: children that die with their parent, and a
restart policy with backoff (issue 14: a dead broker left `ruleless up` saying "up", and a
SIGKILLed `ruleless up` left its sink holding the chdb lock)."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """(``preexec_fn``: in the child, before exec) Have the kernel send SIGTERM to this
    process when the process that started it dies, however it dies (SIGKILL included)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Restarts:
    """When a component may be started again: after 1, 2, 4 … up to ``max_delay_s``
    seconds, and not at all once it died ``limit`` times within ``window_s``."""

    limit: int = 5
    window_s: float = 300.0
    max_delay_s: float = 30.0
    _deaths: deque[float] = field(default_factory=deque)

    def died(self, now: float | None = None) -> float | None:
        """Record a death; the delay before the restart, or None to give up."""
        now = time.monotonic() if now is None else now
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - self.window_s:
            self._deaths.popleft()
        if len(self._deaths) > self.limit:
            return None
        return min(self.max_delay_s, 2.0 ** (len(self._deaths) - 1))


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every process at once, then SIGKILL what is still running at ``timeout``."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
