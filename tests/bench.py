"""Benchmark support for `make bench`: realistic fleet streams, and the results file.

Each benchmark calls :func:`record` for every figure it measured; figures go to
``bench-results.json`` at the repo root (git-ignored) as soon as they are measured, and
the table of this run's figures is printed at the end of the session (conftest hook).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from schemas.events import RawEvent

RESULTS = Path(__file__).resolve().parents[1] / "bench-results.json"
T0 = 1_767_225_600.0

_recorded: list["Figure"] = []


@dataclass(frozen=True)
class Figure:
    section: str
    name: str
    value: float
    unit: str
    target: str = ""
    note: str = ""


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_mib": mem, "kernel": platform.release(),
            "python": platform.python_version()}


def record(section: str, name: str, value: float, unit: str, target: str = "", note: str = "") -> None:
    """Keep one figure and write it to bench-results.json right away (a later failure
    must not lose what was measured). Figures of earlier runs under other names stay."""
    figure = Figure(section, name, float(value), unit, target, note)
    _recorded.append(figure)
    doc: dict[str, Any] = {}
    if RESULTS.exists():
        try:
            doc = json.loads(RESULTS.read_text())
        except ValueError:
            doc = {}
    doc["machine"] = machine()
    doc.setdefault("figures", {}).setdefault(section, {})[name] = {
        **{k: v for k, v in asdict(figure).items() if k not in ("section", "name")},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"BENCH {section} / {name}: {value:,.6g} {unit}" + (f" (target {target})" if target else "") + (f" — {note}" if note else ""))


def table_lines() -> list[str]:
    """This session's figures as an aligned text table."""
    if not _recorded:
        return []
    rows = [("section", "figure", "value", "unit", "target")]
    rows += [(f.section, f.name, f"{f.value:,.4g}" if abs(f.value) < 1e4 else f"{f.value:,.0f}", f.unit, f.target)
             for f in _recorded]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = machine()
    lines.append(f"machine: {m['cpus']} CPUs ({m['cpu']}), {m['mem_mib']:,} MiB, kernel {m['kernel']}, Python {m['python']}")
    lines.append(f"written to {RESULTS}")
    return lines


# -- realistic streams -------------------------------------------------------------------

_PROGRAMS = [
    ("nginx", "systemd", "root"), ("php-fpm", "systemd", "www-data"), ("python3", "bash", "app"),
    ("java", "systemd", "app"), ("node", "pm2", "app"), ("bash", "sshd", "deploy"),
    ("sh", "cron", "root"), ("curl", "bash", "app"), ("psql", "bash", "postgres"),
    ("git", "runner", "ci"), ("make", "runner", "ci"), ("gcc", "make", "ci"),
    ("tar", "cron", "backup"), ("rsync", "cron", "backup"), ("logrotate", "cron", "root"),
    ("systemctl", "bash", "root"), ("docker", "containerd", "root"), ("kubectl", "bash", "ops"),
    ("ls", "bash", "ops"), ("grep", "bash", "ops"), ("find", "cron", "root"), ("awk", "sh", "root"),
]
_WORDS = (
    "api worker sync export import report index cache queue backup restore migrate deploy build "
    "test lint check verify rotate compress upload download fetch render notify cleanup health "
    "metrics audit billing users orders invoices sessions tokens search assets thumbnails"
).split()
_FLAGS = ["-v", "-q", "--force", "--dry-run", "-j4", "--since=1d", "--format=json", "-x", "--all", "-n"]


def _behaviours(rng: np.random.Generator, count: int) -> list[tuple[str, str, str, str]]:
    """``count`` distinct (process, parent, user, cmdline) of one workload."""
    seen: set[tuple[str, str, str, str]] = set()
    out: list[tuple[str, str, str, str]] = []
    while len(out) < count:
        name, parent, user = _PROGRAMS[int(rng.integers(len(_PROGRAMS)))]
        words = [_WORDS[int(i)] for i in rng.integers(len(_WORDS), size=int(rng.integers(1, 4)))]
        flags = [_FLAGS[int(i)] for i in rng.integers(len(_FLAGS), size=int(rng.integers(0, 3)))]
        path = "/srv/" + "/".join(words[:2]) + f"/{words[-1]}-{int(rng.integers(1, 60))}.conf"
        cmd = " ".join([name, *flags, *words, path])
        item = (name, parent, user, cmd)
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def fleet(shards: int, per_shard: int, behaviours: int, seed: int = 0, zipf: float = 1.1, start: float = T0) -> list[RawEvent]:
    """A fleet stream: ``shards`` (org, workload) pairs, ``per_shard`` events each, drawn
    from ``behaviours`` distinct behaviours per shard with Zipf-like popularity (a few hot
    behaviours repeat constantly, a long tail appears once or a few times), interleaved
    in time (about one event per shard every 2 s). PIDs and hosts vary per event."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, behaviours + 1) ** zipf
    weights /= weights.sum()
    events: list[RawEvent] = []
    for s in range(shards):
        org, workload = f"org{s % 10}", f"svc-{s}"
        pool = _behaviours(rng, behaviours)
        picks = rng.choice(behaviours, size=per_shard, p=weights)
        hosts = rng.integers(0, 20, size=per_shard)
        for i, b in enumerate(picks):
            name, parent, user, cmd = pool[int(b)]
            events.append(RawEvent(
                ts=start + i * 2.0 + s * 0.001, org_id=org, workload=workload, host=f"{workload}-{int(hosts[i])}",
                event_id=f"{org}-{workload}-{i}", pid=1000 + i, ppid=1, uid=0 if user == "root" else 1000,
                user=user, process_name=name, parent_process=parent, cmdline=cmd,
            ))
    events.sort(key=lambda e: e.ts)
    return events


def endless_fleet(shards: int, behaviours: int, seed: int = 0, zipf: float = 1.1, start: float = T0) -> Iterator[RawEvent]:
    """A fleet stream without end, for soak runs: like :func:`fleet`, each shard draws from
    its own fixed pool of ``behaviours`` with Zipf-like popularity, but the stream goes
    round after round, one event per shard in shuffled order (``ts`` 2 s per round). A
    long run's shards settle on their baselines instead of learning new pools forever."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, behaviours + 1) ** zipf
    weights /= weights.sum()
    pools = [_behaviours(rng, behaviours) for _ in range(shards)]
    for i in itertools.count():
        picks = rng.choice(behaviours, size=shards, p=weights)
        hosts = rng.integers(0, 20, size=shards)
        for s in rng.permutation(shards):
            org, workload = f"org{s % 10}", f"svc-{s}"
            name, parent, user, cmd = pools[s][int(picks[s])]
            yield RawEvent(
                ts=start + i * 2.0, org_id=org, workload=workload, host=f"{workload}-{int(hosts[s])}",
                event_id=f"{org}-{workload}-{i}", pid=1000 + i % 30_000, ppid=1, uid=0 if user == "root" else 1000,
                user=user, process_name=name, parent_process=parent, cmdline=cmd,
            )


def batches(events: list[RawEvent], size: int) -> Iterator[list[RawEvent]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]
