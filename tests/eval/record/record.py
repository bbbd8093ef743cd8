"""Record the eval workloads' normal traces with ruleless' own agent.

Usage (root; installs what the workloads need through setup.sh)::

    .venv/bin/python -m tests.eval.record.record [--workloads web,db] [--days 28] [--backend netlink]

For each workload, in turn:

1. start ``ruleless agent --backend B --output FILE`` with ``RULELESS_AGENT__ORG_ID=eval``
   and ``RULELESS_AGENT__WORKLOAD=<name>``; it captures every exec on the machine;
2. listen to the kernel's process connector (:mod:`tests.eval.record.lineage`) so that
   the workload's processes can be told apart from everything else running here;
3. run the workload's ``init.sh`` (provisioning: services started, repositories made),
   then one ``sched.py`` per simulated day (the workload's crontab, as cron runs it),
   then ``teardown.sh``; each of these is a direct child of the recorder: a *root*;
4. stop the agent (it flushes), and keep only the captured events of the roots'
   descendants (including daemons the init started, e.g. postgres running its
   ``archive_command`` during a day), captured while a day was running; events of the
   init and teardown are provisioning, not normal work, and are dropped;
5. move each kept event onto the simulated calendar: the scheduler logged, before each
   job, the wall-clock time and the job's simulated time and host; an event gets the
   simulated time of its job plus its wall-clock offset from the job's start, and the
   job's host from the workload's pool;
6. write ``tests/eval/data/<workload>.jsonl.gz`` (raw events, the DESIGN.md contract,
   time order) and ``tests/eval/data/manifest.json``.

Other rewrites, so the data shows the simulated fleet and not this recording machine:
``exec_id`` names the simulated host; in ``ancestors``/``parent_process`` the recorder
above the scheduler and this VM's pid 1 (``process_api``) become ``systemd``, the init
of a real Debian server. ``event_id`` is left out (half of the compressed size; the
decoder derives a deterministic one). Nothing else is changed: pids, uids, users, command lines,
exe paths and parent names are what the agent captured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from bisect import bisect_right
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.eval.record import lineage

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
WORKLOADS = ("web", "db", "ci", "ops", "data", "kv", "node", "shell")
# Workloads whose recipe is in the repository (``data``'s was lost to a .gitignore rule
# before it was ever committed: its recording stays, it cannot be re-recorded).
RECORDABLE = tuple(name for name in WORKLOADS if (HERE / "workloads" / name / "crontab").exists())
SCHEDULER_COMMS = {"cron", "ci-runner", "gitlab-runner", "sshd"}  # what sched.py is named per workload
INIT_COMMS = {"process_api", "init"}  # pid 1 of this VM / of containers
SIM_INIT = "systemd"
T0 = 1771200000  # 2026-02-16 00:00:00 UTC, a Monday
BACKEND_ORDER = ("netlink", "ebpf", "proc")
AGENT_READY = "agent running"
DAY_GRACE_S = 2.0  # daemon activity a little after a day's scheduler exits still counts


@dataclass
class Run:
    """One child of the recorder: init, a day, or teardown."""

    kind: str  # "init", "day", "teardown"
    day: int
    pid: int
    start: float
    end: float = 0.0
    clock: list[dict] = field(default_factory=list)
    returncode: int = 0


class Agent:
    """``ruleless agent`` writing JSON lines, started and stopped around a recording."""

    def __init__(self, backend: str, workload: str, output: Path, log_path: Path) -> None:
        self.backend = backend
        self.output = output
        self.log_path = log_path
        env = dict(
            os.environ,
            RULELESS_AGENT__ORG_ID="eval",
            RULELESS_AGENT__WORKLOAD=workload,
            RULELESS_AGENT__METRICS_PORT="0",
            RULELESS_DATA_DIR=str(output.parent / "agent-data"),
        )
        self._log = open(log_path, "w")
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [str(REPO / ".venv/bin/ruleless"), "agent", "--backend", backend, "--output", str(output)],
            env=env, stdout=self._log, stderr=subprocess.PIPE, text=True, cwd=output.parent,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.write(line)
            self._log.flush()
            if AGENT_READY in line:
                self._ready.set()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready.wait(0.1):
                return True
            if self.proc.poll() is not None:
                return False
        return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self._log.close()
        return self.proc.returncode

    def summary(self) -> str:
        lines = [l for l in self.log_path.read_text().splitlines() if "agent stopp" in l]
        return " / ".join(l.split(": ", 1)[-1] for l in lines)


def start_agent(requested: str, workload: str, workdir: Path, strict: bool) -> Agent:
    """The agent on ``requested``, else (unless strict) the next backend that starts."""
    order = [requested] + ([b for b in BACKEND_ORDER if b != requested] if not strict else [])
    errors = []
    for backend in order:
        output = workdir / f"agent-{backend}.jsonl"
        agent = Agent(backend, workload, output, workdir / f"agent-{backend}.log")
        if agent.wait_ready():
            if backend != requested:
                print(f"  agent backend {requested!r} unavailable, recording with {backend!r}", file=sys.stderr)
            return agent
        agent.stop()
        tail = agent.log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        errors.append(f"{backend}: {tail[0]}")
    raise SystemExit("no agent backend could start: " + "; ".join(errors))


def run_child(argv: list[str], env: dict[str, str], log) -> tuple[int, float, float, int]:  # type: ignore[no-untyped-def]
    start = time.time()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    rc = proc.wait()
    return proc.pid, start, time.time(), rc


def record_workload(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    wl_dir = HERE / "workloads" / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env = dict(os.environ, EVAL_T0=str(T0), EVAL_DAYS=str(args.days), EVAL_SEED=str(args.seed))
    env.pop("EVAL_VERBOSE", None)
    started = time.time()
    agent = start_agent(args.backend, name, workdir, args.strict_backend)
    tracker = lineage.ProcConnector()
    try:
        tracker.start()
    except OSError as exc:
        print(f"  process connector unavailable ({exc}); falling back to the ppid chain", file=sys.stderr)
        tracker = None  # type: ignore[assignment]
    runs: list[Run] = []
    try:
        with open(workdir / "driver.log", "w") as log:
            pid, s, e, rc = run_child(["/bin/bash", str(wl_dir / "init.sh")], env, log)
            runs.append(Run("init", -1, pid, s, e, returncode=rc))
            if rc:
                raise SystemExit(f"{name}: init.sh failed ({rc}); see {workdir / 'driver.log'}")
            for day in range(args.days):
                clock = workdir / f"clock-{day:02d}.jsonl"
                pid, s, e, rc = run_child(
                    ["/usr/bin/python3", str(HERE / "sched.py"), str(wl_dir / "crontab"), str(day), str(args.seed), str(clock)],
                    env, log,
                )  # fmt: skip
                marks = [json.loads(line) for line in clock.read_text().splitlines()] if clock.exists() else []
                runs.append(Run("day", day, pid, s, e, marks, rc))
                print(f"  {name} day {day:2d}: {e - s:5.2f}s, {len(marks)} jobs", file=sys.stderr)
            time.sleep(DAY_GRACE_S)
    finally:
        with open(workdir / "driver.log", "a") as log:
            pid, s, e, rc = run_child(["/bin/bash", str(wl_dir / "teardown.sh")], env, log)
        runs.append(Run("teardown", -1, pid, s, e, returncode=rc))
        time.sleep(1.0)  # let the agent read the last processes
        agent.stop()
        log_data = tracker.stop() if tracker else None
    # Everything the selection needs, so it can be redone without recording (--reprocess).
    (workdir / "recording.json").write_text(json.dumps({
        "backend": agent.backend, "agent_output": agent.output.name, "agent_summary": agent.summary(),
        "wall_seconds": round(time.time() - started, 1),
        "runs": [asdict(r) for r in runs],
        "lineage": asdict(log_data) if log_data is not None else None,
    }))  # fmt: skip
    return process_recording(name, workdir)


def process_recording(name: str, workdir: Path) -> dict:
    """Select and re-time a finished recording of ``workdir`` (see the module doc)."""
    rec = json.loads((workdir / "recording.json").read_text())
    runs = [Run(**r) for r in rec["runs"]]
    log_data = None
    if rec["lineage"] is not None:
        log_data = lineage.LineageLog([tuple(r) for r in rec["lineage"]["records"]], rec["lineage"]["overruns"])
    raw = [json.loads(line) for line in (workdir / rec["agent_output"]).read_text().splitlines() if line.strip()]
    events, stats = select_and_retime(name, raw, runs, log_data)
    stats.update(
        backend=rec["backend"],
        agent_summary=rec["agent_summary"],
        wall_seconds=rec["wall_seconds"],
        failed_jobs=_count_failed(workdir / "driver.log"),
    )
    return {"events": events, "stats": stats}


def _count_failed(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if " job failed " in line)


def select_and_retime(name: str, raw: list[dict], runs: list[Run], log: lineage.LineageLog | None) -> tuple[list[dict], dict]:
    """The workload's events, moved onto the simulated calendar, and recording figures.

    With the connector's log, each captured exec is matched to the kernel's exec
    notification for its pid nearest in time (after correcting the agent's clock offset,
    the median gap over all matches); it belongs to the workload when that notification
    lies between the fork and the exit of a descendant of a root, in kernel order. Events
    without an exec notification (sockets a process listens on) are matched by time.
    """
    roots = {r.pid for r in runs}
    days = [r for r in runs if r.kind == "day"]
    offset = 0.0
    execs: dict[int, list[tuple[float, int]]] = {}
    if log is not None:
        spans = lineage.members(log, [(r.pid, r.start) for r in runs])
        execs = lineage.exec_records(log)
        diffs = [min((ev["ts"] - w for w, _ in execs[ev["pid"]]), key=abs) for ev in raw if ev["pid"] in execs]
        offset = statistics.median(diffs) if diffs else 0.0
    else:
        raw.sort(key=lambda e: e["ts"])
        inside = lineage.members_from_events(raw, roots)
    starts = [d.start for d in days]
    out: list[dict] = []
    dropped: Counter[str] = Counter()
    for ev in raw:
        wall = ev["ts"] - offset
        if log is not None:
            match = None
            if ev.get("event_type", "exec") == "exec" and ev["pid"] in execs:
                match = min(execs[ev["pid"]], key=lambda r: abs(r[0] - wall))
                if abs(match[0] - wall) > 1.0:
                    match = None
            candidates = spans.get(ev["pid"], ())
            if match is not None:
                wall = match[0]
                span = next((s for s in candidates if s.holds(match[1])), None)
            else:
                span = next((s for s in candidates if s.start <= wall <= s.end), None)
            if span is None:
                continue
        elif ev["pid"] not in inside:
            continue
        if ev["pid"] in roots:
            continue  # the scheduler's / provisioning script's own exec
        i = bisect_right(starts, wall) - 1
        if i < 0 or wall > days[i].end + DAY_GRACE_S:
            dropped["provisioning or between days"] += 1
            continue
        day = days[i]
        if not day.clock:
            dropped["day without jobs"] += 1
            continue
        marks = day.clock
        j = max(0, bisect_right([m["wall"] for m in marks], wall) - 1)
        mark = marks[j]
        out.append(_rewrite(ev, name, mark["host"], mark["sim"] + max(0.0, wall - mark["wall"]), day.day))
    out.sort(key=lambda e: e["ts"])
    member_execs = 0
    if log is not None:
        for pid, records in execs.items():
            if pid in roots:
                continue
            for wall, index in records:
                i = bisect_right(starts, wall) - 1
                if i < 0 or wall > days[i].end + DAY_GRACE_S:
                    continue
                if any(s.holds(index) for s in spans.get(pid, ())):
                    member_execs += 1
    per_day = Counter(e.pop("_day") for e in out)
    stats = {
        "days": len(days),
        "events": len(out),
        "execs": sum(1 for e in out if e.get("event_type", "exec") == "exec"),
        "event_types": dict(Counter(e.get("event_type", "exec") for e in out)),
        "events_per_day": [per_day.get(d.day, 0) for d in days],
        "distinct_cmdlines": len({e.get("cmdline", "") for e in out if e.get("event_type", "exec") == "exec"}),
        "cmdline_unavailable": sum(1 for e in out if "cmdline_unavailable" in (e.get("flags") or ())),
        "distinct_process_names": len({e.get("process_name", "") for e in out}),
        "hosts": sorted({e["host"] for e in out}),
        "kernel_execs_of_workload": member_execs if log is not None else None,
        "ts_offset_agent_minus_kernel_s": round(offset, 4),
        "dropped": dict(dropped),
        "lineage": "proc connector" if log is not None else "ppid chain",
        "proc_connector_overruns": log.overruns if log is not None else None,
    }
    return out, stats


def _rewrite(ev: dict, workload: str, host: str, ts: float, day: int) -> dict:
    ev = dict(ev)
    ev["workload"] = workload
    ev["org_id"] = "eval"
    ev["host"] = host
    ev["ts"] = round(ts, 6)
    if ev.get("exec_id"):
        ev["exec_id"] = host + ":" + ev["exec_id"].split(":", 1)[-1]
    ancestors = list(ev.get("ancestors") or [])
    for i, comm in enumerate(ancestors):
        if comm in SCHEDULER_COMMS:
            ancestors = ancestors[: i + 1] + [SIM_INIT]
            break
        if comm in INIT_COMMS:
            ancestors = ancestors[:i] + [SIM_INIT]
            break
    ev["ancestors"] = ancestors[:4]
    if ev.get("parent_process") in INIT_COMMS:
        ev["parent_process"] = SIM_INIT
    ev.pop("container_id", None)
    # The agent's random-looking ids cost most of the file's size; decode() derives one.
    ev.pop("event_id", None)
    ev["_day"] = day
    return ev


def write_outputs(out_dir: Path, name: str, events: list[dict]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.jsonl.gz"
    # mtime=0: the same events give the same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as fh:
        for ev in events:
            fh.write(json.dumps(ev, separators=(",", ":"), sort_keys=True).encode() + b"\n")
    return path


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default=",".join(RECORDABLE))
    p.add_argument("--days", type=int, default=28)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--backend", default=os.environ.get("RULELESS_EVAL_BACKEND", "netlink"),
                   help="agent capture backend (netlink, ebpf, proc); falls back in that order unless --strict-backend")  # fmt: skip
    p.add_argument("--strict-backend", action="store_true")
    p.add_argument("--out", type=Path, default=HERE.parent / "data")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/ruleless-eval-record"))
    p.add_argument("--skip-setup", action="store_true")
    p.add_argument("--reprocess", action="store_true", help="redo selection and re-timing of the last recording in --workdir")
    args = p.parse_args(argv)
    if os.geteuid() != 0 and not args.reprocess:
        raise SystemExit("recording needs root (services, users, the process connector)")
    if not args.skip_setup and not args.reprocess:
        subprocess.run(["/bin/bash", str(HERE / "setup.sh")], check=True)
    manifest_path = args.out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if args.reprocess:
        manifest["reprocessed_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    else:
        manifest.update(
            recorded_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            recorder="tests/eval/record/record.py",
            # HEAD of the repository when recording: the agent's code that captured the events.
            repo_head_at_recording=_git_commit(),
            machine=f"{platform.node()} {platform.system()} {platform.release()}, {os.cpu_count()} cpus",
            calendar_start=dt.datetime.fromtimestamp(T0, dt.timezone.utc).isoformat(),
            days=args.days,
            seed=args.seed,
        )
        manifest.pop("repo_commit", None)
    manifest.setdefault("workloads", {})
    for name in args.workloads.split(","):
        if name not in RECORDABLE and not args.reprocess:
            sys.exit(f"no recipe for workload {name!r} in {HERE / 'workloads'}: recordable are {', '.join(RECORDABLE)}")
        print(f"recording {name} ({args.days} days)", file=sys.stderr)
        if args.reprocess:
            result = process_recording(name, args.workdir / name)
        else:
            result = record_workload(name, args, args.workdir / name)
        path = write_outputs(args.out, name, result["events"])
        stats = result["stats"]
        stats["file"] = path.name
        stats["bytes"] = path.stat().st_size
        manifest["workloads"][name] = stats
        print(f"  {name}: {stats['events']} events ({stats['execs']} execs) over {stats['days']} days "
              f"({stats['distinct_cmdlines']} distinct command lines), backend {stats['backend']}, "
              f"kernel saw {stats['kernel_execs_of_workload']} execs; {stats['wall_seconds']}s", file=sys.stderr)  # fmt: skip
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
