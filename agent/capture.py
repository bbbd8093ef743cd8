"""The contract every capture backend meets, and what backends share.

A backend turns kernel activity into :class:`~schemas.events.RawEvent` objects. The agent
loop calls ``start()`` once, ``poll()`` repeatedly, then ``stop()``. Backends in order of
preference: eBPF (agent/ebpf.py), netlink process connector (agent/netlink.py), /proc
polling (agent/procfs.py), DESIGN.md.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

from schemas.events import RawEvent


@runtime_checkable
class CaptureBackend(Protocol):
    """A source of raw process events.

    - ``name`` is what goes to logs and metric labels ("proc", "ebpf", "netlink").
    - ``start()`` acquires the source and raises :class:`~schemas.errors.CaptureError`
      if it cannot; after it returns, every process that starts is eventually reported
      (event-driven backends) or reported if still alive at the next poll (polling).
    - ``poll()`` returns the events seen since the previous call, oldest first where the
      backend knows the order; it never blocks longer than one poll interval and returns
      an empty list when nothing happened.
    - ``stop()`` releases the source; it is idempotent.
    - ``drops()`` returns running totals of what the backend knows it missed, by reason
      (e.g. ``{"overrun": 3}``); empty when it cannot know (/proc polling).
    """

    name: str

    def start(self) -> None: ...

    def poll(self) -> list[RawEvent]: ...

    def stop(self) -> None: ...

    def drops(self) -> dict[str, int]: ...


def make_exec_id(host: str, start_ticks: int, pid: int) -> str:
    """The stable identity of one process: ``host:start time in clock ticks:pid``.

    Start time disambiguates PID reuse. Every backend must build it from the same clock
    (ticks since boot, as in /proc/PID/stat field 22) so that two backends seeing the same
    process agree on its id.
    """
    return f"{host}:{start_ticks}:{pid}"


def stable_event_id(exec_id: str, event_type: str, *parts: str) -> str:
    """A deterministic event id from the process identity, not from the event's content.

    Content hashes (``schemas.events.derive_event_id``) change when enrichment changes,
    e.g. a re-sent event after an agent restart whose parent has since exited. The id here
    only depends on what identifies the occurrence, so a re-sent event keeps its id and
    ClickHouse drops the copy. ``parts`` distinguish several events of one type for the
    same process (e.g. one per connection); a procfs exec event needs none.
    """
    body = "\0".join((exec_id, event_type, *parts)).encode()
    return hashlib.blake2b(body, digest_size=16).hexdigest()
