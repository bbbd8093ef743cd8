"""Named fault-injection points, for the delivery tests that cross processes (issue 14).

A failpoint is a place in the product where a test can make a process die or an
operation fail at an exact step — "SIGKILL the sink between its insert and its commit"
cannot be hit reliably with a signal sent from outside. They are off unless the
``RULELESS_FAILPOINTS`` variable names them, and then cost one dict lookup per pass.

Syntax: ``name=action[;name=action…]``, where action is

* ``kill@N`` — the process SIGKILLs itself on the Nth pass through ``name``;
* ``error@N-M`` — passes N to M (inclusive) raise the caller's error type.

Points: ``worker.published`` (a batch's outputs handed to librdkafka, its learning not
yet flushed), ``sink.insert`` (before a ClickHouse insert), ``sink.inserted`` (rows
inserted, offsets not yet committed).
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from dataclasses import dataclass

ENV = "RULELESS_FAILPOINTS"
_SPEC = re.compile(r"(?P<name>[\w.]+)=(?:kill@(?P<kill>\d+)|error@(?P<first>\d+)-(?P<last>\d+))")


@dataclass(frozen=True, slots=True)
class Action:
    kill_at: int = 0
    errors: range = range(0)


def parse(spec: str) -> dict[str, Action]:
    """The failpoints a ``RULELESS_FAILPOINTS`` value names; ValueError on a typo, so a
    test never runs without the fault it asked for."""
    actions: dict[str, Action] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        m = _SPEC.fullmatch(part)
        if m is None:
            raise ValueError(f"{ENV}: {part!r} is not name=kill@N or name=error@N-M")
        if m["kill"]:
            actions[m["name"]] = Action(kill_at=int(m["kill"]))
        else:
            actions[m["name"]] = Action(errors=range(int(m["first"]), int(m["last"]) + 1))
    return actions


_ACTIVE = parse(os.environ.get(ENV, ""))
_passes: Counter[str] = Counter()


def hit(name: str, error: type[Exception] = RuntimeError) -> None:
    """Pass through failpoint ``name``: nothing, unless a test armed it."""
    if not _ACTIVE:
        return
    action = _ACTIVE.get(name)
    if action is None:
        return
    _passes[name] += 1
    n = _passes[name]
    if n == action.kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if n in action.errors:
        raise error(f"failpoint {name}: failure {n - action.errors.start + 1} of {len(action.errors)}")
