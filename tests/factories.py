"""Event builders shared by tests: realistic per-workload streams with routine drift."""

from __future__ import annotations

import random
from collections.abc import Iterator

from schemas.events import RawEvent, decode, encode

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def event(**fields: object) -> RawEvent:
    """A valid raw event with defaults for everything not given (event_id derived)."""
    base: dict[str, object] = {
        "ts": T0,
        "org_id": "acme",
        "workload": "web",
        "host": "web-1",
        "event_type": "exec",
        "pid": 4242,
        "ppid": 1,
        "uid": 33,
        "user": "www-data",
        "process_name": "nginx",
        "parent_process": "systemd",
        "cmdline": "nginx -g daemon off;",
    }
    base.update(fields)
    return decode(encode(RawEvent(**base)))  # type: ignore[arg-type]


# (process_name, parent, user, cmdline template) — {n} is a routine-changing number.
WORKLOADS: dict[str, list[tuple[str, str, str, str]]] = {
    "web": [
        ("nginx", "systemd", "root", "nginx -g daemon off;"),
        ("nginx", "nginx", "www-data", "nginx: worker process"),
        ("logrotate", "cron", "root", "logrotate /etc/logrotate.d/nginx"),
        ("curl", "bash", "root", "curl -fsS http://127.0.0.1/healthz"),
        ("gzip", "logrotate", "root", "gzip /var/log/nginx/access.log.{n}"),
    ],
    "db": [
        ("postgres", "systemd", "postgres", "postgres -D /var/lib/postgresql/15/main"),
        ("postgres", "postgres", "postgres", "postgres: autovacuum worker"),
        ("pg_dump", "cron", "postgres", "pg_dump -Fc -f /backup/db-{n}.dump app"),
        ("psql", "bash", "postgres", "psql -c select 1"),
    ],
    "ci": [
        ("git", "runner", "ci", "git fetch origin refs/pull/{n}/head"),
        ("make", "runner", "ci", "make -j2 build"),
        ("gcc", "make", "ci", "gcc -O2 -c src/main.c -o build/main.o"),
        ("pytest", "make", "ci", "pytest -q tests --junitxml=/tmp/junit-{n}.xml"),
        ("tar", "runner", "ci", "tar czf /tmp/artifact-{n}.tgz build"),
    ],
    "cron": [
        ("find", "cron", "root", "find /tmp -mtime +7 -delete"),
        ("rsync", "cron", "backup", "rsync -a /srv/data/ backup:/srv/data-{n}/"),
        ("apt-get", "cron", "root", "apt-get -qq update"),
    ],
}


def workload_stream(
    org_id: str, workload: str, kind: str, count: int, seed: int = 0, start: float = T0, hosts: int = 3
) -> Iterator[RawEvent]:
    """``count`` events of one workload: mostly repeats, with routine numeric drift."""
    rng = random.Random(f"{org_id}/{workload}/{seed}")
    templates = WORKLOADS[kind]
    for i in range(count):
        name, parent, user, template = rng.choice(templates)
        n = rng.randrange(1, 40) if rng.random() < 0.9 else rng.randrange(1000, 99999)
        yield event(
            ts=start + i * 0.5,
            org_id=org_id,
            workload=workload,
            host=f"{workload}-{rng.randrange(hosts)}",
            pid=rng.randrange(300, 4_000_000),
            ppid=rng.randrange(1, 4_000_000),
            uid=0 if user == "root" else 1000,
            user=user,
            process_name=name,
            parent_process=parent,
            cmdline=template.format(n=n),
        )


def fleet_stream(pairs: int, per_pair: int, seed: int = 0) -> list[RawEvent]:
    """Events of ``pairs`` (org, workload) shards interleaved in time order."""
    kinds = list(WORKLOADS)
    streams = [
        list(workload_stream(f"org{p % 5}", f"{kinds[p % len(kinds)]}-{p}", kinds[p % len(kinds)], per_pair, seed))
        for p in range(pairs)
    ]
    merged = [e for s in streams for e in s]
    merged.sort(key=lambda e: (e.ts, e.shard_key))
    return merged
