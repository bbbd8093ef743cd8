"""Hostile raw messages for the fuzz tests (issue 14): malformed JSON, wrong types,
missing and extra fields, huge command lines and argv, invalid UTF-8, NUL and control
characters, bidi and homoglyph text, extreme numbers, names built to escape a path or a
query. As hypothesis strategies, and as a seeded generator for the broker-level run."""

from __future__ import annotations

import json
import random

from hypothesis import strategies as st

NASTY_TEXT = [
    "", " ", "\x00", "a\x00b", "\x1b[31mred", "\u202eevil\u202c", "\u2066x\u2069", "раураl", "ℌ𝔢𝔩𝔩𝔬",
    "../../etc", "a'; DROP TABLE x; --", "${jndi:ldap://x}", "$(id)", "`id`", "%s%n", "\ud7ff", "\ufeff",
    "x" * 5000, "é" * 40_000,
]
NASTY_NUMBERS = [0, -1, 1, 2**31, 2**32, 2**63, -(2**63), 2**64, 10**30, 1e308, -1e308, 0.5, 1e10, 4e9]
FIELDS = [
    "ts", "org_id", "workload", "host", "event_type", "event_id", "pid", "ppid", "uid", "user", "process_name", "exe",
    "cmdline", "argv", "parent_process", "ancestors", "local_ip", "local_port", "remote_ip", "remote_port",
    "container_id", "exec_id", "source", "flags",
]

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(NASTY_NUMBERS), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(NASTY_TEXT), st.text(max_size=40),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
GOOD = {"ts": 1767225600.0, "org_id": "acme", "workload": "web", "host": "h1", "cmdline": "ls -l", "argv": ["ls", "-l"]}


@st.composite
def raw_messages(draw: st.DrawFn) -> bytes:
    """One message as an agent (or an attacker with produce rights) might send it."""
    kind = draw(st.sampled_from(["event", "event", "event", "bytes", "json"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(values)).encode()
    event: dict[str, object] = dict(GOOD)
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=6)):
        if draw(st.booleans()):
            event.pop(name, None)
        else:
            event[name] = draw(values)
    if draw(st.booleans()):
        event[draw(st.text(max_size=10))] = draw(values)  # an extra field
    if draw(st.integers(0, 9)) == 0:
        event["cmdline"] = "A" * draw(st.integers(30_000, 300_000))
        event["argv"] = ["B" * 100] * draw(st.integers(1, 3000))
    payload = json.dumps(event, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # break it: truncate, or splice in invalid UTF-8
        cut = draw(st.integers(0, len(payload)))
        payload = payload[:cut] + draw(st.sampled_from([b"", b"\xff\xfe", b"\xc0\x80", b"\x00"])) + payload[cut:]
    return payload


def seeded_messages(n: int, seed: int = 0) -> list[bytes]:
    """``n`` messages drawn the same way, reproducibly, for runs where hypothesis cannot
    drive the loop (a whole worker process reading a topic)."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for i in range(n):
        event: dict[str, object] = dict(GOOD, pid=i)
        roll = rng.random()
        if roll < 0.1:
            out.append(rng.randbytes(rng.randrange(0, 120)))
            continue
        if roll < 0.2:
            out.append(json.dumps(rng.choice([[], [1, "x"], "s", 3, None, {"a": NASTY_TEXT[rng.randrange(len(NASTY_TEXT))]}])).encode())
            continue
        for _ in range(rng.randrange(0, 4)):
            name = rng.choice(FIELDS)
            choice = rng.random()
            if choice < 0.3:
                event.pop(name, None)
            elif choice < 0.65:
                event[name] = rng.choice(NASTY_TEXT)
            else:
                event[name] = rng.choice(NASTY_NUMBERS)
        if rng.random() < 0.01:
            event["cmdline"] = "C" * rng.randrange(100_000, 400_000)
        payload = json.dumps(event, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        if rng.random() < 0.05:
            cut = rng.randrange(len(payload) + 1)
            payload = payload[:cut] + rng.choice([b"\xff", b"\x00", b"\xc3"]) + payload[cut:]
        out.append(payload)
    return out
