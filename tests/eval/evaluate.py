"""Detection benchmark: every registered algorithm on the recorded workloads (``make eval``).

For each workload in ``tests/eval/data`` (normal traces recorded by ``ruleless agent``,
see ``tests/eval/record``), and each algorithm of ``streams.algorithm.algorithm_names()``
(``seed`` first):

1. attack lines (``attacks_dev.jsonl``) and benign-but-new lines (``benign_dev.jsonl``)
   from the bench directory are injected into the workload's test days (after the
   warm-up, the first 30 % of its days) as one of the workload's own processes would run
   them (:func:`inject`; tests/eval/README.md explains how);
2. the merged stream is scored in time order with the offline engine
   (``streams.scoring.ScoringService``, LanceDB in a temp dir), learning every normal
   event; each injected event is scored against the baseline at its moment and then
   forgotten (the shard is restored), so an injected line never makes another look
   familiar (``--learn-injected`` keeps them in the stream instead);
3. on the test days: ROC-AUC of attacks against normal events, the threshold at which at
   most 0.5 % of normal events alert, the recall of attacks and the alert rate of
   benign-new lines at that threshold, and events/s of scoring.

Prints a table and writes ``tests/eval/results.json``. Nothing here is tuned to the
bench lines: they are sampled at random with a fixed seed.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.eval.attacks_team import team_attacks

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA_DIR = HERE / "data"
RESULTS = HERE / "results.json"
WARMUP_FRACTION = 0.30
TARGET_NORMAL_ALERT_RATE = 0.005
SEED = 20260216
DAY_S = 86_400.0
# The contract's fields; labels and provenance of bench lines are never passed on.
CONTRACT_FIELDS = ("process_name", "exe", "cmdline", "argv", "event_type")


# --------------------------------------------------------------------------- metrics
def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half.

    Rank-based (Mann-Whitney U) with average ranks for ties. NaN when a side is empty.
    """
    pos = np.asarray(positive, dtype=float)
    neg = np.asarray(negative, dtype=float)
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=float)
    # Average rank (1-based) of each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def threshold_at(normal: Sequence[float], rate: float = TARGET_NORMAL_ALERT_RATE) -> float:
    """The smallest score t such that at most ``rate`` of ``normal`` scores are ≥ t.

    With k = floor(rate × n) alerts allowed, t is the next float above the (k+1)-th
    highest normal score: every normal score strictly above it may alert, no more. When
    that score is the maximum possible (1.0) t exceeds 1 and nothing alerts.
    """
    scores = np.sort(np.asarray(normal, dtype=float))[::-1]
    if scores.size == 0:
        return float("nan")
    allowed = math.floor(rate * scores.size + 1e-9)
    if allowed >= scores.size:
        return float("-inf")
    return float(np.nextafter(scores[allowed], np.inf))


def rate_at(scores: Sequence[float], threshold: float) -> float:
    """Fraction of ``scores`` ≥ ``threshold`` (recall for attacks, alert rate otherwise)."""
    arr = np.asarray(scores, dtype=float)
    if arr.size == 0 or math.isnan(threshold):
        return float("nan")
    return float(np.mean(arr >= threshold))


# --------------------------------------------------------------------------- data
@dataclass
class Workload:
    name: str
    events: list[dict]  # normal events, time order
    t0: float  # start of day 0 on the simulated calendar
    days: int
    warmup_days: int

    def day_of(self, ts: float) -> int:
        return int((ts - self.t0) // DAY_S)

    @property
    def test_start(self) -> float:
        return self.t0 + self.warmup_days * DAY_S


def load_workloads(data_dir: Path, names: Iterable[str] | None = None) -> list[Workload]:
    manifest = json.loads((data_dir / "manifest.json").read_text())
    t0 = _parse_ts(manifest["calendar_start"])
    out = []
    for name in sorted(manifest["workloads"]) if names is None else names:
        info = manifest["workloads"][name]
        with gzip.open(data_dir / info["file"], "rt") as fh:
            events = [json.loads(line) for line in fh if line.strip()]
        events.sort(key=lambda e: e["ts"])
        days = int(info["days"])
        out.append(Workload(name, events, t0, days, warmup_days(days)))
    return out


def warmup_days(days: int) -> int:
    """Days in the warm-up: the first 30 % of them (day d is warm-up while d < 0.3 × days)."""
    return math.ceil(WARMUP_FRACTION * days - 1e-9)


def _parse_ts(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


def load_bench(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


# --------------------------------------------------------------------------- injection
@dataclass
class Parent:
    """A real process of the workload that started children: the context to inject into."""

    host: str
    ppid: int
    parent_process: str
    ancestors: list[str]
    uid: int
    user: str | None
    first: float  # ts of its first and last child seen
    last: float
    day: int


def parents_by_context(wl: Workload) -> dict[tuple, list[Parent]]:
    """Real parent processes of the test days, grouped by context.

    A context is (parent name, ancestor names, user of its children): "the cron shell of
    root", "the CI job's make as ci", "postgres' archiver as postgres", ... Each parent
    process (host, ppid, day) is known by the children it started: their user and the
    span of time it was seen starting them.
    """
    parents: dict[tuple, Parent] = {}
    for ev in wl.events:
        if ev["ts"] < wl.test_start:
            continue
        day = wl.day_of(ev["ts"])
        key = (ev.get("host", ""), ev.get("ppid", 0), day, ev.get("uid", -1))
        p = parents.get(key)
        if p is None:
            parents[key] = Parent(ev.get("host", ""), ev.get("ppid", 0), ev.get("parent_process", ""),
                                  list(ev.get("ancestors") or []), ev.get("uid", -1), ev.get("user"),
                                  ev["ts"], ev["ts"], day)  # fmt: skip
        else:
            p.last = ev["ts"]
    groups: dict[tuple, list[Parent]] = defaultdict(list)
    for p in parents.values():
        groups[(p.parent_process, tuple(p.ancestors), p.user)].append(p)
    return dict(sorted(groups.items(), key=lambda kv: repr(kv[0])))


def context_weights(wl: Workload, contexts: dict[tuple, list[Parent]]) -> list[int]:
    """How many different programs each context was seen starting (all days).

    Launchers (shells, make, cron, run-parts, the CGI runner) start many programs and
    are where an intruder's command most plausibly appears; helpers that only ever start
    one program (collect2 -> ld, tar -> gzip) keep a small chance.
    """
    programs: dict[tuple, set[str]] = defaultdict(set)
    for ev in wl.events:
        programs[(ev.get("parent_process", ""), tuple(ev.get("ancestors") or []), ev.get("user"))].add(ev.get("process_name", ""))
    return [max(1, len(programs[key])) for key in contexts]


def inject(lines: Sequence[dict], wl: Workload, contexts: dict[tuple, list[Parent]], rng: random.Random, kind: str) -> list[dict]:
    """Raw events for ``lines``, each run by one of the workload's real parent processes.

    For each line: a context is drawn among the workload's distinct contexts with weight
    = the number of different programs it was seen starting (:func:`context_weights`;
    not its number of events, so a rare launcher counts as much as a busy one), then a
    moment uniformly within one of the test days. If a parent of that context was active then (it started children
    before and after), that parent runs the line at that moment; otherwise the parent of
    that context active closest to the moment runs it just after one of its real children
    (within 2 s), when it was certainly alive. host, ppid, parent_process, ancestors, uid
    and user come from that parent; pid is a fresh pid near its ppid; argv, cmdline,
    process_name and exe come from the line.
    """
    keys = list(contexts)
    weights = context_weights(wl, contexts)
    test_days = list(range(wl.warmup_days, wl.days))
    out = []
    for i, line in enumerate(lines):
        ctx = contexts[rng.choices(keys, weights)[0]]
        day = rng.choice(test_days)
        moment = wl.t0 + day * DAY_S + rng.uniform(0, DAY_S)
        alive = [p for p in ctx if p.first <= moment <= p.last]
        if alive:
            parent, ts = rng.choice(alive), moment
        else:
            parent = min(ctx, key=lambda p: min(abs(p.first - moment), abs(p.last - moment)))
            ts = rng.choice((parent.first, parent.last)) + rng.uniform(0.001, 2.0)
        pid = parent.ppid + rng.randint(1, 400)
        event = {k: line[k] for k in CONTRACT_FIELDS if k in line}
        event.setdefault("event_type", "exec")
        event.update(
            org_id="eval", workload=wl.name, host=parent.host, ts=round(ts, 6), pid=pid, ppid=parent.ppid,
            uid=parent.uid, user=parent.user, parent_process=parent.parent_process,
            ancestors=list(parent.ancestors), source="netlink",
            exec_id=f"{parent.host}:{int(ts * 100) % 10**7}:{pid}",
        )  # fmt: skip
        if event.get("user") is None:
            event.pop("user")
        out.append({"event": event, "kind": kind, "line": line.get("event_id", str(i)), "label": line.get("technique") or line.get("function")})
    return out


def sample_disjoint(lines: Sequence[dict], names: Sequence[str], per_workload: int | None, rng: random.Random) -> dict[str, list[dict]]:
    """A different sample of ``per_workload`` lines for each workload (None: all lines each).

    The lines are shuffled once; workload i takes the i-th slice, wrapping around only
    when there are not enough lines for disjoint slices.
    """
    if per_workload is None:
        return {name: list(lines) for name in names}
    order = list(lines)
    rng.shuffle(order)
    out = {}
    for i, name in enumerate(names):
        start = (i * per_workload) % len(order)
        chunk = (order + order)[start : start + min(per_workload, len(order))]
        out[name] = chunk
    return out


def split_attacks(lines: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """The attack corpus as a *tuned* and a *held-out* half sharing no technique and no
    binary (issue 13): tune on the first, report the second.

    Techniques (MITRE id; none = its own group) go, largest first, to the half with fewer
    lines so far; each binary (the GTFOBins entry a line comes from) then goes to the half
    most of its lines are in, and a line whose binary and technique fell in different
    halves is left out of both. Deterministic: it depends on the corpus alone.
    """
    technique = lambda line: line.get("technique") or "none"  # noqa: E731
    binary = lambda line: (line.get("snippet") or line.get("process_name") or "?").split("/")[0]  # noqa: E731
    sizes: dict[str, int] = defaultdict(int)
    for line in lines:
        sizes[technique(line)] += 1
    half_of_technique: dict[str, int] = {}
    totals = [0, 0]
    for name, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        half = 0 if totals[0] <= totals[1] else 1
        half_of_technique[name] = half
        totals[half] += size
    votes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for line in lines:
        votes[binary(line)][half_of_technique[technique(line)]] += 1
    half_of_binary = {name: 0 if v[0] >= v[1] else 1 for name, v in votes.items()}
    halves: tuple[list[dict], list[dict]] = ([], [])
    for line in lines:
        half = half_of_technique[technique(line)]
        if half_of_binary[binary(line)] == half:
            halves[half].append(line)
    return halves


# --------------------------------------------------------------------------- scoring
@dataclass
class Scored:
    normal: np.ndarray  # scores of normal events, time order
    normal_ts: np.ndarray
    injected: dict[str, list[float]] = field(default_factory=dict)  # kind -> scores
    injected_labels: dict[str, list[str]] = field(default_factory=dict)
    engine_alert: dict[str, float] = field(default_factory=dict)  # kind -> rate of severity == alert (test days)
    seconds: float = 0.0  # scoring the normal stream alone (throughput)
    events: int = 0


def score_org(
    algorithm: str, workloads: Sequence[Workload], injected: dict[str, list[dict]], learn_injected: bool,
    batch: int = 1000,
) -> dict[str, Scored]:
    """Score the workloads' streams together, in time order, as one org's fleet would be
    (one service: each workload's shard sees its org's priors, streams.priors), with
    each workload's ``injected`` lines merged in (see module doc)."""
    from ruleless.settings import load_settings
    from schemas.events import decode
    from streams.scoring import ScoringService

    streams = [[decode(json.dumps(e)) for e in wl.events] for wl in workloads]
    normal = sorted(((e.ts, w, k) for w, events in enumerate(streams) for k, e in enumerate(events)), key=lambda t: t[0])
    probes = sorted(
        ((decode(json.dumps(item["event"])), w, item) for w, wl in enumerate(workloads) for item in injected[wl.name]),
        key=lambda p: p[0].ts,
    )
    normal_scores = [np.empty(len(events)) for events in streams]
    normal_alert = [np.zeros(len(events), dtype=bool) for events in streams]
    inj_scores: list[dict[str, list[float]]] = [defaultdict(list) for _ in workloads]
    inj_labels: list[dict[str, list[str]]] = [defaultdict(list) for _ in workloads]
    inj_alert: list[dict[str, list[bool]]] = [defaultdict(list) for _ in workloads]
    with tempfile.TemporaryDirectory(prefix="ruleless-eval-") as tmp:
        svc = ScoringService(load_settings(lancedb={"uri": tmp}, engine={"algorithm": algorithm}))
        i = 0

        def normal_until(ts: float) -> None:
            nonlocal i
            while i < len(normal) and normal[i][0] <= ts:
                j = i
                while j < len(normal) and normal[j][0] <= ts and j - i < batch:
                    j += 1
                chunk = normal[i:j]
                for (_, w, k), scored in zip(chunk, svc.score([streams[w][k] for _, w, k in chunk])):
                    normal_scores[w][k] = scored.score
                    normal_alert[w][k] = scored.severity == "alert"
                i = j

        for event, w, item in probes:
            normal_until(event.ts)
            key = event.shard_key
            saved = None if learn_injected else copy.deepcopy(svc.engine.shards.get(key))
            scored = svc.score([event])[0]
            if saved is not None:
                svc.engine.shards[key] = saved
            inj_scores[w][item["kind"]].append(scored.score)
            inj_labels[w][item["kind"]].append(item["label"] or "")
            inj_alert[w][item["kind"]].append(scored.severity == "alert")
        normal_until(float("inf"))
    out: dict[str, Scored] = {}
    for w, wl in enumerate(workloads):
        ts = np.array([e.ts for e in streams[w]])
        test = ts >= wl.test_start
        engine_alert = {"normal": float(normal_alert[w][test].mean()) if test.any() else float("nan")}
        engine_alert.update({k: float(np.mean(v)) for k, v in inj_alert[w].items()})
        out[wl.name] = Scored(normal_scores[w], ts, dict(inj_scores[w]), dict(inj_labels[w]), engine_alert,
                              *throughput(algorithm, streams[w]))  # fmt: skip
    return out


def throughput(algorithm: str, events: list, batch: int = 1000) -> tuple[float, int]:
    """(seconds, events) to score ``events`` in batches of ``batch`` from an empty shard.

    Measured on the normal stream alone: the isolated injection above cuts the stream
    into many small batches and would understate what the engine does in a worker.
    """
    from ruleless.settings import load_settings
    from streams.scoring import ScoringService

    with tempfile.TemporaryDirectory(prefix="ruleless-eval-") as tmp:
        svc = ScoringService(load_settings(lancedb={"uri": tmp}, engine={"algorithm": algorithm}))
        started = time.perf_counter()
        for i in range(0, len(events), batch):
            svc.score(events[i : i + batch])
        return time.perf_counter() - started, len(events)


def metrics(wl: Workload, s: Scored) -> dict:
    test = s.normal_ts >= wl.test_start
    normal = s.normal[test]
    attacks = s.injected.get("attack", [])
    held = s.injected.get("attack_held_out", [])
    team = s.injected.get("attack_team", [])
    benign = s.injected.get("benign", [])
    t = threshold_at(normal)
    return {
        "normal_events_test": int(test.sum()),
        "attacks": len(attacks),
        "held_out_attacks": len(held),
        "team_attacks": len(team),
        "benign_new": len(benign),
        "roc_auc": roc_auc(attacks, normal),
        "held_out_roc_auc": roc_auc(held, normal) if held else float("nan"),
        "team_roc_auc": roc_auc(team, normal) if team else float("nan"),
        "threshold": t,
        "normal_alert_rate": rate_at(normal, t),
        "recall": rate_at(attacks, t),
        "held_out_recall": rate_at(held, t) if held else float("nan"),
        "team_recall": rate_at(team, t) if team else float("nan"),
        "benign_new_alert_rate": rate_at(benign, t),
        "events_per_s": s.events / s.seconds if s.seconds else float("nan"),
        "engine_alert_rate": s.engine_alert,
        "recall_by_technique": _by_label(s.injected_labels.get("attack", []), attacks, t),
        "team_recall_by_technique": _by_label(s.injected_labels.get("attack_team", []), team, t),
    }


def _by_label(labels: list[str], scores: list[float], t: float) -> dict[str, dict]:
    groups: dict[str, list[float]] = defaultdict(list)
    for label, score in zip(labels, scores):
        groups[label].append(score)
    return {k: {"n": len(v), "recall": rate_at(v, t)} for k, v in sorted(groups.items())}


def overall(per_workload: dict[str, dict]) -> dict:
    """Mean over workloads and the worst workload, per figure."""
    rows = list(per_workload.values())
    out: dict[str, dict] = {"mean": {}, "worst": {}}
    for name, worst in (("roc_auc", min), ("recall", min), ("held_out_roc_auc", min), ("held_out_recall", min),
                        ("team_roc_auc", min), ("team_recall", min),
                        ("benign_new_alert_rate", max), ("normal_alert_rate", max), ("events_per_s", min)):  # fmt: skip
        if not all(name in r for r in rows):
            continue
        values = [r[name] for r in rows if not math.isnan(r[name])]
        out["mean"][name] = float(np.mean(values)) if values else float("nan")
        out["worst"][name] = worst(values) if values else float("nan")
    return out


# --------------------------------------------------------------------------- report
def print_table(results: dict, algorithms: list[str]) -> None:
    """One row per (workload, algorithm), the algorithms of a workload side by side."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title="ruleless detection benchmark",
        caption=f"test days = after the first {WARMUP_FRACTION:.0%} of each workload's days; threshold = lowest score "
        f"at which ≤ {TARGET_NORMAL_ALERT_RATE:.1%} of normal test events alert; mean over {len(results['settings']['seeds'])} injection seeds",
    )  # fmt: skip
    for name, justify in (("workload", "left"), ("algorithm", "left"), ("normal/tuned/held-out/team/benign-new", "right"),
                          ("ROC-AUC tuned", "right"), ("held-out", "right"), ("team", "right"), ("threshold", "right"),
                          ("recall tuned", "right"), ("held-out", "right"), ("team", "right"),
                          ("benign-new alerts", "right"), ("normal alerts", "right"), ("events/s", "right")):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for wl, info in results["workloads"].items():
        for i, alg in enumerate(algorithms):
            m = info["algorithms"][alg]
            table.add_row(
                wl if i == 0 else "", alg,
                "/".join(f"{int(m.get(k, 0)):,}" for k in ("normal_events_test", "attacks", "held_out_attacks", "team_attacks", "benign_new")) if i == 0 else "",
                _fmt(m["roc_auc"], "{:.3f}"), _fmt(m.get("held_out_roc_auc", float("nan")), "{:.3f}"),
                _fmt(m.get("team_roc_auc", float("nan")), "{:.3f}"),
                ">1" if m["threshold"] > 1 else _fmt(m["threshold"], "{:.3f}"), _fmt(m["recall"], "{:.1%}"),
                _fmt(m.get("held_out_recall", float("nan")), "{:.1%}"), _fmt(m.get("team_recall", float("nan")), "{:.1%}"),
                _fmt(m["benign_new_alert_rate"], "{:.1%}"), _fmt(m["normal_alert_rate"], "{:.2%}"),
                _fmt(m["events_per_s"], "{:,.0f}"), end_section=i == len(algorithms) - 1,
            )  # fmt: skip
    for agg in ("mean", "worst"):
        for i, alg in enumerate(algorithms):
            o = results["overall"][alg][agg]
            table.add_row(
                f"[bold]{agg}[/bold]" if i == 0 else "", alg, "", _fmt(o["roc_auc"], "{:.3f}"),
                _fmt(o.get("held_out_roc_auc", float("nan")), "{:.3f}"), _fmt(o.get("team_roc_auc", float("nan")), "{:.3f}"), "",
                _fmt(o["recall"], "{:.1%}"), _fmt(o.get("held_out_recall", float("nan")), "{:.1%}"),
                _fmt(o.get("team_recall", float("nan")), "{:.1%}"),
                _fmt(o["benign_new_alert_rate"], "{:.1%}"),
                _fmt(o["normal_alert_rate"], "{:.2%}"), _fmt(o["events_per_s"], "{:,.0f}"),
                end_section=i == len(algorithms) - 1,
            )  # fmt: skip
    Console(width=max(220, Console().width)).print(table)


def _fmt(value: float | None, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return ">1" if value > 0 else "<0"
    return fmt.format(value)


def algorithms_in_order() -> list[str]:
    from streams.algorithm import algorithm_names

    names = algorithm_names()
    return (["seed"] if "seed" in names else []) + [n for n in names if n != "seed"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ruleless detection benchmark on recorded workloads")
    p.add_argument("--bench-dir", type=Path, default=REPO.parent / "shared" / "bench",
                   help="directory of attacks_dev.jsonl and benign_dev.jsonl (default: ../shared/bench)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--record", action="store_true", help="re-record the workloads first (root; minutes)")
    p.add_argument("--workloads", default=None, help="comma-separated subset")
    p.add_argument("--algorithms", default=None, help="comma-separated subset (default: all registered, seed first)")
    p.add_argument("--attacks", type=int, default=200, help="attack lines per workload, different per workload")
    p.add_argument("--benign", type=int, default=300, help="benign-new lines per workload, different per workload")
    p.add_argument("--all", action="store_true", help="inject every attack and benign-new line into every workload")
    p.add_argument("--isolated", action="store_true",
                   help="score each workload alone (no org priors from the other workloads)")
    p.add_argument("--learn-injected", action="store_true", help="keep injected events in the baseline (stream mode)")
    p.add_argument("--seed", type=int, default=SEED, help="the first injection seed")
    p.add_argument("--seeds", type=int, default=3, help="injection seeds to average over (seed, seed+1, ...)")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    if args.record:
        from tests.eval.record.record import main as record

        record(["--out", str(args.data_dir)])
    names = args.workloads.split(",") if args.workloads else None
    workloads = load_workloads(args.data_dir, names)
    algorithms = args.algorithms.split(",") if args.algorithms else algorithms_in_order()
    attacks, held_out = split_attacks(load_bench(args.bench_dir / "attacks_dev.jsonl"))
    benign = load_bench(args.bench_dir / "benign_dev.jsonl")
    wl_names = [w.name for w in workloads]
    seeds = [args.seed + k for k in range(args.seeds)]
    lines = {"attack": attacks, "attack_held_out": held_out, "attack_team": team_attacks(), "benign": benign}
    per_workload = {"benign": args.benign}

    results: dict = {
        "settings": {
            "warmup_fraction": WARMUP_FRACTION, "target_normal_alert_rate": TARGET_NORMAL_ALERT_RATE,
            "seeds": seeds, "attacks_per_workload": "all" if args.all else args.attacks,
            "benign_per_workload": "all" if args.all else args.benign,
            "injected_events": "learned" if args.learn_injected else "scored then forgotten",
            "bench_dir": str(args.bench_dir), "data_dir": str(args.data_dir),
            "machine": f"{os.uname().nodename} {os.uname().release}, {os.cpu_count()} cpus",
        },  # fmt: skip
        "workloads": {},
        "overall": {},
    }
    by_seed: dict[str, dict[str, list[dict]]] = {w.name: defaultdict(list) for w in workloads}
    for seed in seeds:
        # A different sample and different moments and parents for every seed.
        rng = random.Random(seed)
        sets = {kind: sample_disjoint(pool, wl_names, None if args.all else per_workload.get(kind, args.attacks), rng)
                for kind, pool in lines.items()}  # fmt: skip
        injected: dict[str, list[dict]] = {}
        for wl in workloads:
            contexts = parents_by_context(wl)
            wl_rng = random.Random(f"{seed}:{wl.name}")
            injected[wl.name] = [item for kind in lines for item in inject(sets[kind][wl.name], wl, contexts, wl_rng, kind)]
        # One org, scored together (org priors); or each workload alone (--isolated).
        fleets = [[wl] for wl in workloads] if args.isolated else [workloads]
        for alg in algorithms:
            started = time.monotonic()
            scored = {name: s for fleet in fleets for name, s in score_org(alg, fleet, injected, args.learn_injected).items()}
            for wl in workloads:
                m = metrics(wl, scored[wl.name])
                by_seed[wl.name][alg].append(m)
                print(f"seed {seed} {wl.name:5s} {alg:9s} AUC tuned {m['roc_auc']:.4f} held-out {m['held_out_roc_auc']:.4f} "
                      f"team {m['team_roc_auc']:.4f}; recall {m['recall']:.1%} / {m['held_out_recall']:.1%} / "
                      f"{m['team_recall']:.1%}; benign-new {m['benign_new_alert_rate']:.1%} ({time.monotonic() - started:.0f}s)",
                      file=sys.stderr)  # fmt: skip
    for wl in workloads:
        results["workloads"][wl.name] = {
            "days": wl.days, "warmup_days": wl.warmup_days, "normal_events": len(wl.events),
            "contexts": len(parents_by_context(wl)),
            "algorithms": {alg: mean_over_seeds(runs) for alg, runs in by_seed[wl.name].items()},
        }  # fmt: skip
    for alg in algorithms:
        results["overall"][alg] = overall({n: w["algorithms"][alg] for n, w in results["workloads"].items()})
    args.output.write_text(json.dumps(_finite(results), indent=2, default=_json_default) + "\n")
    print_table(results, algorithms)
    print(f"results: {args.output}", file=sys.stderr)
    return 0


def mean_over_seeds(runs: list[dict]) -> dict:
    """One workload's metrics averaged over injection seeds (numbers; NaN ignored); the
    per-technique tables of the first seed, and each seed's own figures under "seeds"."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [r[key] for r in runs if not (isinstance(r[key], float) and math.isnan(r[key]))]
            out[key] = float(np.mean(values)) if values else float("nan")
    out["seeds"] = [{k: v for k, v in r.items() if not isinstance(v, dict)} for r in runs]
    return out


def _finite(value: object) -> object:
    """NaN and infinities as null, so results.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(type(value))


if __name__ == "__main__":
    sys.exit(main())
