#!/usr/bin/python3
"""Run one simulated day of a workload's crontab, as cron would, as fast as the jobs allow.

Usage: ``sched.py CRONTAB DAY SEED CLOCK_FILE``.

The crontab is the system format (``min hour dom mon dow user command``; the month is
ignored), with ``VAR=value``
lines exported to the jobs, as cron does. Extensions, all optional:

* a command starting with ``@p=0.3`` runs only with that probability on a given day;
* ``@jitter=N`` moves the start by up to ±N minutes (routine randomness);
* ``EVAL_SCHED_NAME=ci-runner`` renames this process (its ``comm``), so the jobs' parent
  is ``cron`` or whatever the workload's real scheduler would be;
* ``EVAL_HOSTS=a,b,c`` the pool of hosts the jobs run on; a job runs on a host chosen
  by its command (stable), or on any host of the pool if its line has ``@anyhost``.

Simulated time: day ``DAY`` is ``EVAL_T0 + DAY * 86400``. Jobs due that day run one after
the other in time order (same-minute jobs in random order), each as ``SHELL -c command``
under its user (set in the forked child, like cron: no ``su`` in the process tree), with
``EVAL_TS`` (the job's simulated epoch second), ``EVAL_DATE`` (YYYY-MM-DD), ``EVAL_DAY``,
``EVAL_SEED`` and ``EVAL_HOST`` in the environment. Before each job one JSON line goes to
CLOCK_FILE: the wall-clock time it started, its simulated time, its host and its command;
the recorder maps the captured events onto the simulated calendar with it.

This file is the workloads' driver, not part of ruleless; it only needs the standard
library (it runs under Debian's /usr/bin/python3).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import pwd
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass

T0_DEFAULT = 1771200000  # 2026-02-16 00:00:00 UTC, a Monday
PR_SET_NAME = 15


@dataclass
class Entry:
    minute: set[int]
    hour: set[int]
    dom: set[int]
    dow: set[int]
    user: str
    command: str
    prob: float
    jitter: int
    any_host: bool
    line: int


def parse_field(text: str, lo: int, hi: int) -> set[int]:
    """One cron field: ``*``, ``N``, ``a-b``, ``*/n``, ``a-b/n`` and comma lists."""
    out: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
        if part == "*":
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            start, end = int(a), int(b)
        else:
            start = end = int(part)
        out.update(range(start, end + 1, step))
    return out


def parse_crontab(text: str) -> tuple[dict[str, str], list[Entry]]:
    env: dict[str, str] = {}
    entries: list[Entry] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line)
        if match and not line[0].isdigit() and not line.startswith("*"):
            env[match.group(1)] = match.group(2)
            continue
        fields = line.split(None, 6)
        if len(fields) < 7:
            raise ValueError(f"crontab line {number}: expected min hour dom mon dow user command: {raw!r}")
        minute, hour, dom, _month, dow, user, command = fields
        prob, jitter, any_host = 1.0, 0, False
        while command.startswith("@"):
            token, _, command = command.partition(" ")
            if token.startswith("@p="):
                prob = float(token[3:])
            elif token.startswith("@jitter="):
                jitter = int(token[8:])
            elif token == "@anyhost":
                any_host = True
            else:
                raise ValueError(f"crontab line {number}: unknown option {token}")
        dows = {d % 7 for d in parse_field(dow, 0, 7)}
        entries.append(
            Entry(parse_field(minute, 0, 59), parse_field(hour, 0, 23), parse_field(dom, 1, 31),
                  dows, user, command.strip(), prob, jitter, any_host, number)
        )  # fmt: skip
    return env, entries


def day_plan(entries: list[Entry], day_start: int, rng: random.Random) -> list[tuple[int, float, Entry]]:
    """(second of day, tie-break, entry) for every run due on this day, in time order."""
    tm = time.gmtime(day_start)
    dom, dow = tm.tm_mday, (tm.tm_wday + 1) % 7  # cron: 0 = Sunday
    runs: list[tuple[int, float, Entry]] = []
    for entry in entries:
        if dom not in entry.dom or dow not in entry.dow:
            continue
        for hour in sorted(entry.hour):
            for minute in sorted(entry.minute):
                if entry.prob < 1.0 and rng.random() >= entry.prob:
                    continue
                at = hour * 3600 + minute * 60
                if entry.jitter:
                    at += rng.randint(-entry.jitter, entry.jitter) * 60
                at = min(max(at, 0), 86399)
                runs.append((at + rng.randint(0, 50), rng.random(), entry))
    runs.sort(key=lambda r: (r[0], r[1]))
    return runs


def set_comm(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def pick_host(pool: list[str], entry: Entry, rng: random.Random) -> str:
    if entry.any_host:
        return rng.choice(pool)
    digest = hashlib.blake2b(entry.command.encode(), digest_size=4).digest()
    return pool[int.from_bytes(digest, "big") % len(pool)]


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    crontab_path, day, seed, clock_path = argv[1], int(argv[2]), int(argv[3]), argv[4]
    with open(crontab_path) as fh:
        env_extra, entries = parse_crontab(fh.read())
    env_extra = {k: os.path.expandvars(v) for k, v in env_extra.items()}
    set_comm(env_extra.get("EVAL_SCHED_NAME", "cron"))
    t0 = int(os.environ.get("EVAL_T0", T0_DEFAULT))
    day_start = t0 + day * 86400
    rng = random.Random(f"{crontab_path}:{day}:{seed}")
    pool = [h for h in env_extra.get("EVAL_HOSTS", os.uname().nodename).split(",") if h]
    shell = env_extra.get("SHELL", "/bin/sh")
    failures = 0
    with open(clock_path, "a") as clock:
        for at, _, entry in day_plan(entries, day_start, rng):
            ts = day_start + at
            host = pick_host(pool, entry, rng)
            job_env = {
                "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8",
                **env_extra,
                "EVAL_TS": str(ts),
                "EVAL_DATE": time.strftime("%Y-%m-%d", time.gmtime(ts)),
                "EVAL_DAY": str(day),
                "EVAL_SEED": str(seed),
                "EVAL_HOST": host,
                "EVAL_RAND": str(rng.randrange(1 << 30)),
            }
            pw = pwd.getpwnam(entry.user)
            job_env.update(HOME=pw.pw_dir, USER=entry.user, LOGNAME=entry.user, SHELL=shell)
            clock.write(json.dumps({"wall": time.time(), "sim": ts, "host": host, "cmd": entry.command}) + "\n")
            clock.flush()
            started = time.monotonic()
            done = subprocess.run(
                [shell, "-c", entry.command],
                env=job_env,
                cwd=pw.pw_dir if os.path.isdir(pw.pw_dir) else "/",
                user=pw.pw_uid if pw.pw_uid != os.getuid() else None,
                group=pw.pw_gid if pw.pw_uid != os.getuid() else None,
                extra_groups=[] if pw.pw_uid != os.getuid() else None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            elapsed = time.monotonic() - started
            if done.returncode != 0:
                failures += 1
                tail = done.stdout.decode(errors="replace").strip().splitlines()[-3:]
                print(f"day {day} job failed rc={done.returncode} ({elapsed:.1f}s): {entry.command} :: {' | '.join(tail)}",
                      file=sys.stderr)  # fmt: skip
            elif os.environ.get("EVAL_VERBOSE"):
                print(f"day {day} {elapsed:5.2f}s {entry.command}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
