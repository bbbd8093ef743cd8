"""``evidence``: the default algorithm — learned rarity of what a workload does, in context.

Every event is broken into *observations*, each a value seen in a context:

==========  ======================  =========================================
kind        context                 value
==========  ======================  =========================================
prog        (workload)              the program (exe path, else comm)
parent      parent comm             the program
user        user / uid              the program
lineage     ancestors (up to 3)     the program
args        the program             the argument template (data arguments by shape)
arg         the program             each normalised argument (data weighs less
                                    than vocabulary: options and plain words)
shape       the program             the shape of each data argument (``a_0.csv``)
path        the program             each directory its arguments name
paths       (workload)              the same directories, whoever names them
net         the program             peer class and port of a connection
code        the interpreter         each name the inline code of ``python3 -c``,
                                    ``perl -e``… uses
write       the program             each directory it writes into (redirections,
                                    tee, cp/mv/install/ln targets, dd of=)
writes      (workload)              the same directories, whoever writes
assign      the shell               each variable a ``sh -c`` script assigns
==========  ======================  =========================================

``sh -c`` scripts are split into their simple commands, each observed like an exec of
its own. Volatile values (PIDs, temp names, hashes, IPs, versions...) are normalised
into typed placeholders first (streams.normalize), so routine drift repeats.

How unusual an observation is depends on two learned quantities:

* its **evidence**: the number of separate *episodes* in which it was seen — a new episode
  needs another host or a gap of ``EPISODE_GAP_S`` since the current one started. A
  behaviour that comes back on a later run, day or host gains evidence quickly; an
  attacker's burst on one host stays one episode and keeps alerting. Counting stops at
  32 episodes ("well known"): beyond that a value is no surprise at all, and stopping
  makes a well-known value's sighting cost a count and a timestamp.
* how often its **context** produces novelty at all: a CI runner's shell spawns new things
  every week; a web server's worker never spawns anything. Novelty in a context that never
  changes is far more surprising than in one that always does.

Each observation gives ``s = rarity(episodes) × (1 − novelty_rate(context))``; the event's
score combines them as independent evidence, ``1 − Π(1 − w·s)``. Everything is learned
from the shard's own history: there is no list of good or bad commands.

Per-shard thresholds follow the shard's own recent score distribution (a target alert
rate), analyst feedback pins a behaviour as malicious or teaches it as benign, and the
state is a pure function of the event sequence (event time, in order), so batched,
one-by-one, streamed and reloaded shards all give the same scores.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import itertools
import math
import re
import warnings
import zlib
from array import array
from collections.abc import Sequence
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ruleless.settings import EngineSettings
from schemas.events import RawEvent
from streams.algorithm import Changes, Verdict, register
from streams.priors import KINDS as PRIOR_KINDS
from streams.priors import MIN_EPISODES as PRIOR_MIN_EPISODES
from streams.priors import Prior
from streams.normalize import (
    basename, code_words, data_shape, interpreter_code, is_vocabulary, normalize_token, program_path, script_commands, shell_script, split_args,
    write_targets,
)

SEP = "\x1f"
META_KEY = "__meta__"
EPISODE_GAP_S = 1800.0
DAY_S = 86_400.0
# Weight of each kind of observation in the combined score.
WEIGHTS = {
    "prog": 1.0,
    "parent": 0.9,
    "user": 0.7,
    "lineage": 0.5,
    "args": 0.4,
    "arg": 0.5,
    "path": 0.5,
    "net": 0.9,
    "code": 0.5,
    "write": 0.8,
    "data": 0.2,  # an argument that is data (a file name, an id), not vocabulary
    "shape": 0.5,  # the shape of a data argument
    "assign": 0.7,  # a variable a shell script assigns
    "paths": 0.5,  # a directory named by any program of the workload
}
MAX_ARGS = 24
SCRIPT_WEIGHT = 0.9  # commands inside `sh -c` count slightly less than real execs
# Recent scores kept per shard to derive its thresholds (quantised to 1/1000).
SCORE_WINDOW = 4096
# Behaviours (all shards of a process together) whose observations are kept compiled,
# per generation of the cache (see BehaviourCache).
BEHAVIOUR_CACHE = 1 << 17
THRESHOLD_EVERY = 256
# How much an org prior tempers a never-seen observation: each of the org's other
# workloads that knows it counts as PRIOR_WEIGHT episodes of its own (rarity 1/(1+e)²).
PRIOR_WEIGHT = 1.0

# Past this many episodes rarity(e) = 1/(1+e)^2 is below 1e-3: counted as no surprise.
_WELL_KNOWN_EPISODES = 31

_LABEL_MALICIOUS = "malicious"
_LABEL_BENIGN = "benign"
_BENIGN_EPISODES = 8


def _build() -> tuple[bool, bool]:
    """Whether this module is its mypyc build (`make native`), and whether its source
    changed after that build (the build would then run old code)."""
    here = Path(__file__)
    if here.suffix != ".so":
        return False, False
    built = max(p.stat().st_mtime for p in here.parent.glob("evidence*.so"))
    source = here.with_name("evidence.py")
    return True, source.exists() and source.stat().st_mtime > built


COMPILED, STALE = _build()
if STALE:
    warnings.warn("streams/evidence.py changed after it was compiled: the old code runs; `make native` rebuilds it",
                  RuntimeWarning, stacklevel=1)


def _schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("key", pa.string()),
            pa.field("kind", pa.string()),
            pa.field("ctx", pa.string()),
            pa.field("value", pa.string()),
            pa.field("episodes", pa.int64()),
            pa.field("count", pa.int64()),
            pa.field("first_ts", pa.float64()),
            pa.field("last_ts", pa.float64()),
            pa.field("ep_start", pa.float64()),
            pa.field("ep_host", pa.string()),
            pa.field("label", pa.string()),
        ]
    )


_SCHEMA = _schema()


class Observation:
    """One value seen in one context; ``key`` and ``ctx_key`` are built once."""

    __slots__ = (
        "kind", "ctx", "value", "weight", "key", "ctx_key", "rate_key", "is_args", "names_args", "own_rate", "_description",
    )

    def __init__(self, kind: str, ctx: str, value: str, weight: float, rate_kind: str | None = None):
        self.kind = kind
        self.ctx = ctx
        self.value = value
        self.weight = weight
        self.is_args = kind == "args"
        self.names_args = kind == "args" or kind == "arg"  # (reasons: the nearest known template)
        self.ctx_key = f"{kind}{SEP}{ctx}"
        self.key = f"{self.ctx_key}{SEP}{value}"
        # Whose novelty rate says how surprising a new value is (default: its own context).
        self.rate_key = f"{rate_kind}{SEP}{ctx}" if rate_kind else self.ctx_key
        self.own_rate = not rate_kind
        self._description: str | None = None

    @property
    def description(self) -> str:
        if self._description is None:
            self._description = _describe(self)
        return self._description

    def __deepcopy__(self, memo: dict) -> "Observation":
        return self  # never changed after it is built

    def __repr__(self) -> str:
        return f"Observation({self.kind!r}, {self.ctx!r}, {self.value!r}, {self.weight})"


# -- featurisation ---------------------------------------------------------------------

# Interned: most observations (a program, its parent, a common flag) are shared by many
# behaviours, so a new behaviour usually builds only its few new ones.
_observation = lru_cache(maxsize=1 << 18)(Observation)



def _program(event: RawEvent) -> str:
    if event.exe:
        return program_path(event.exe)
    return normalize_token(event.process_name) or "?"


def _user(event: RawEvent) -> str:
    return event.user or (f"uid:{event.uid}" if event.uid >= 0 else "?")


def _peer(event: RawEvent) -> str:
    ip = event.remote_ip or ""
    try:
        addr = ipaddress.ip_address(ip)
        cls = "loopback" if addr.is_loopback else "private" if addr.is_private else "public"
    except ValueError:
        cls = "none" if not ip else "name"
    port = event.remote_port
    if port is None or port == 0:
        port_s = "-"
    elif port >= 32768:
        port_s = "ephemeral"
    else:
        port_s = str(port)
    return f"{cls}:{port_s}"


def _behaviour_key(shard: int, event: RawEvent) -> tuple:
    """The shard and everything observations() reads from an event."""
    return (
        shard, event.event_type, event.process_name, event.exe, event.parent_process, event.user, event.uid,
        tuple(event.ancestors) if event.ancestors else None, event.cmdline,
        tuple(event.argv) if event.argv else None, event.remote_ip, event.remote_port, event.local_port,
    )


def observations(event: RawEvent) -> list[Observation]:
    """The observations an event is made of."""
    return list(_observations_of(event))


def _observations_of(event: RawEvent) -> tuple[Observation, ...]:
    """(Uncached: shards keep the observations of the behaviours they see.)"""
    exec_ = event.event_type == "exec"
    return _featurize(
        event.event_type, event.process_name, event.exe, event.parent_process, _user(event),
        tuple(event.ancestors or ()), event.cmdline, tuple(event.argv) if event.argv else None,
        "" if exec_ else _peer(event), None if exec_ else event.local_port,
    )


def _featurize(
    event_type: str, process_name: str, exe: str | None, parent: str, user: str,
    ancestors: tuple[str, ...], cmdline: str, argv: tuple[str, ...] | None, peer: str,
    local_port: int | None,
) -> tuple[Observation, ...]:
    program = program_path(exe) if exe else (normalize_token(process_name) or "?")
    parent_n = normalize_token(parent) or "?"
    out: list[Observation] = []
    if event_type != "exec":
        out.append(_observation("net", program, f"{event_type}:{peer}", WEIGHTS["net"]))
        if local_port:
            out.append(_observation("net", program, f"{event_type}:local:{local_port if local_port < 32768 else 'ephemeral'}", WEIGHTS["net"]))
        out.append(_observation("parent", parent_n, program, WEIGHTS["parent"] * 0.5))
        return tuple(out)
    out.append(_observation("prog", "", program, WEIGHTS["prog"]))
    out.append(_observation("parent", parent_n, program, WEIGHTS["parent"]))
    out.append(_observation("user", user, program, WEIGHTS["user"]))
    if ancestors:
        lineage = ">".join(normalize_token(a) for a in ancestors[:3])
        out.append(_observation("lineage", lineage, program, WEIGHTS["lineage"]))
    args = list(argv) if argv else split_args(cmdline, None)
    out.extend(_arg_observations(program, args[1:], 1.0))
    out.extend(_write_observations(program, args, 1.0))
    code = interpreter_code(basename(exe or process_name), args)
    if code is not None:
        # An interpreter's inline code is observed as the names it uses, not split as
        # if it were a shell script (issue 13).
        weight = WEIGHTS["code"]
        out.extend(_observation("code", program, word, weight, "args") for word in code_words(code))
        return tuple(out)
    script = shell_script(args)
    if script:
        shell = normalize_token(basename(process_name or program))
        for assigned, words in script_commands(script):
            # Variables a script sets (``HISTFILE=/dev/null``, ``HISTSIZE=0 cmd``) are
            # part of what it does, as its commands are.
            out.extend(_observation("assign", shell, name, WEIGHTS["assign"] * SCRIPT_WEIGHT) for name in assigned)
            if not words:
                continue
            sub = normalize_token(basename(words[0]))
            out.append(_observation("prog", "", f"sh:{sub}", WEIGHTS["prog"] * SCRIPT_WEIGHT))
            out.append(_observation("parent", shell, f"sh:{sub}", WEIGHTS["parent"] * SCRIPT_WEIGHT))
            out.extend(_arg_observations(f"sh:{sub}", words[1:], SCRIPT_WEIGHT))
            out.extend(_write_observations(f"sh:{sub}", words, SCRIPT_WEIGHT))
    return tuple(out)


def _write_observations(program: str, words: Sequence[str], scale: float) -> list[Observation]:
    """Where a command writes (issue 13: the danger of ``echo … >> /etc/cron.d/x`` is
    the target): the directory, by the program and for the whole workload."""
    out: list[Observation] = []
    for target in write_targets(list(words)):
        directory = _directory(normalize_token(target)) or "./"
        out.append(_observation("write", program, directory, WEIGHTS["write"] * scale))
        out.append(_observation("writes", "", directory, WEIGHTS["write"] * scale))
    return out


def _arg_observations(program: str, args: Sequence[str], scale: float) -> list[Observation]:
    """The argument list as a whole, each argument, the shapes of its data arguments and
    the directories it names.

    A new argument is judged by how often the program's whole argument list is new (a
    compiler sees new file names every build; a web server never does). New vocabulary
    (an option, a subcommand) weighs more than new data (a file name, an id), and data of
    a shape the program already takes weighs little (issue 13: a monthly job's new file
    names are drift, a new option is not). A directory the program never touched is
    judged on its own, since directories are stable.
    """
    parsed = [_argument(a) for a in args[:MAX_ARGS]]
    # (Not interned: an argument list is nearly unique to its behaviour.)
    out = [Observation("args", program, " ".join([p[2] for p in parsed]), WEIGHTS["args"] * scale)]
    seen = set()
    for token, _, _, shape in parsed:
        if token and token not in seen:
            seen.add(token)
            weight = WEIGHTS["arg"] if not shape else WEIGHTS["data"]
            out.append(_observation("arg", program, token, weight * scale, "args"))
            if shape and shape not in seen:
                seen.add(shape)
                out.append(_observation("shape", program, shape, WEIGHTS["shape"] * scale, "args"))
    weight, seen = WEIGHTS["path"] * scale, set()
    for _, directory, _, _ in parsed:
        if directory and directory not in seen:
            seen.add(directory)
            out.append(_observation("path", program, directory, weight))
            # ...and for the whole workload: a place no program of it ever names.
            out.append(_observation("paths", "", directory, WEIGHTS["paths"] * scale))
    return out


_ASSIGNED = re.compile(r"[a-z_][a-z0-9_]*=")


@lru_cache(maxsize=1 << 17)
def _argument(arg: str) -> tuple[str, str, str, str]:
    """An argument normalised, the directory it names (or ""), its part of the argument
    template, and its data shape ("" for vocabulary: options and plain words)."""
    token = normalize_token(arg)
    directory = _directory(token)
    # An option's or an assignment's value is judged on its own (``--out=/tmp/x``,
    # ``histsize=0``): the name is vocabulary.
    name, eq, value = token.partition("=") if token.startswith("-") or _ASSIGNED.match(token) else ("", "", token)
    leaf = value[len(value.rsplit("/", 1)[0]) + 1:] if directory else value
    if not leaf or is_vocabulary(leaf):
        return token, directory, token, ""
    shape = data_shape(leaf)
    template = f"{name}{eq}{value[: len(value) - len(leaf)]}{shape}"
    return token, directory, template, f"{name}{eq}{shape}"


def _directory(token: str) -> str:
    """The directory part of a path-like argument (``--out=/tmp/x`` → ``/tmp/``)."""
    value = token.rsplit("=", 1)[-1]
    if "/" not in value or "://" in value:
        return ""
    return value.rsplit("/", 1)[0] + "/"


# -- the shard ---------------------------------------------------------------------------


_shard_uids = itertools.count()


class BehaviourCache:
    """Compiled behaviours of every shard in a process, bounded however many shards.

    Two generations: lookups go to ``young``, then ``old`` (a hit there moves back to
    young); when young is full it becomes old and the previous old is dropped. Hot
    behaviours survive every turn, and memory stays under two generations' worth.
    """

    __slots__ = ("young", "old", "limit")

    def __init__(self, limit: int = BEHAVIOUR_CACHE):
        self.young: dict[tuple, list] = {}
        self.old: dict[tuple, list] = {}
        self.limit = limit

    def __len__(self) -> int:
        return len(self.young) + len(self.old)

    def put(self, key: tuple, entry: list) -> None:
        if len(self.young) >= self.limit:
            self.old, self.young = self.young, {}
        self.young[key] = entry


class Context:
    """What a shard learned of one context: episodes of all its values, and how many
    distinct values it has (its novelty rate follows from the two)."""

    __slots__ = ("episodes", "values")

    def __init__(self, episodes: int = 0, values: int = 0):
        self.episodes = episodes
        self.values = values

    def __deepcopy__(self, memo: dict) -> "Context":
        return Context(self.episodes, self.values)


class Stat:
    """What a shard learned of one observation. Mutated in place, never replaced:
    compiled behaviours hold references to their observations' stats."""

    __slots__ = ("episodes", "count", "first_ts", "last_ts", "ep_start", "ep_host", "label", "ctx")

    def __init__(
        self, episodes: int, count: int, first_ts: float, last_ts: float, ep_start: float, ep_host: str,
        label: str, ctx: Context,
    ):
        self.episodes = episodes
        self.count = count
        self.first_ts = first_ts
        self.last_ts = last_ts
        self.ep_start = ep_start  # when the current episode started, and on which host
        self.ep_host = ep_host
        self.label = label
        self.ctx = ctx

    def restart(self, episodes: int, ts: float, host: str, label: str, ctx: Context) -> None:
        self.episodes, self.count, self.first_ts, self.last_ts, self.ep_start = episodes, 1, ts, ts, ts
        self.ep_host, self.label, self.ctx = host, label, ctx

    def __deepcopy__(self, memo: dict) -> "Stat":
        ctx = copy.deepcopy(self.ctx, memo)  # (shared by its context's stats: copied once)
        return Stat(self.episodes, self.count, self.first_ts, self.last_ts, self.ep_start, self.ep_host, self.label, ctx)


# What a copy of a shard copies (all but its settings, its identity and the shared cache).
_LEARNED_STATE = (
    "stats", "contexts", "history", "watermark", "_next_day", "scores", "thresholds", "_dirty", "_touched",
    "_deleted", "_top_args", "_epoch",
)


class EvidenceShard:
    """One shard's learned observations, contexts, score window and thresholds."""

    def __init__(
        self, retention_s: float, warn: float, alert: float, warn_rate: float, alert_rate: float,
        behaviours: BehaviourCache | None = None,
    ):
        self.retention_s = retention_s
        self.defaults = (warn, alert)
        self.rates = (warn_rate, alert_rate)
        self.stats: dict[str, Stat] = {}
        self.contexts: dict[str, Context] = {}
        self.history = 0
        self.watermark = float("-inf")
        # The watermark's next day boundary (-inf: not known yet; see _advance_clock).
        self._next_day = float("-inf")
        self.scores = array("H", bytes(2 * SCORE_WINDOW))
        self.thresholds = (warn, alert)
        self._dirty: set[str] = set()
        # Observations learned since take_changes, per behaviour: marking each key dirty
        # on every event would cost more than the learning itself.
        self._touched: dict[int, tuple[Observation, ...]] = {}
        self._deleted: list[str] = []
        # program -> (key, stat) of its argument template seen in most episodes (reasons only).
        self._top_args: dict[str, tuple[str, Stat]] = {}
        # (shard uid, behaviour) -> [observations, their stats, epoch, quiet], shared by the
        # algorithm's shards (see _compiled)
        self._behaviours = behaviours if behaviours is not None else BehaviourCache()
        self._uid = next(_shard_uids)
        self._epoch = 0

    def __len__(self) -> int:
        return len(self.stats)

    def __deepcopy__(self, memo: dict) -> "EvidenceShard":
        """A copy that learns on its own: the behaviour cache is shared (it is keyed by
        shard), everything else is copied, and the copy gets its own identity."""
        warn, alert = self.defaults
        warn_rate, alert_rate = self.rates
        clone = EvidenceShard(self.retention_s, warn, alert, warn_rate, alert_rate, self._behaviours)
        for name in _LEARNED_STATE:
            setattr(clone, name, copy.deepcopy(getattr(self, name), memo))
        return clone

    # scoring ------------------------------------------------------------------------

    def score_and_learn(self, events: Sequence[RawEvent], prior: Prior | None = None) -> list[Verdict]:
        """Score then learn each event; ``prior`` is what the org's other workloads know
        (see streams.priors), consulted only for what this shard has never seen."""
        out: list[Verdict] = []
        for event in events:
            ts = event.ts
            if ts > self.watermark:
                if ts >= self._next_day:
                    self._advance_clock(ts)
                else:
                    self.watermark = ts
            entry = self._compiled(event)
            obs, stats = entry[0], entry[1]
            if entry[3]:
                # The hot path: a behaviour whose every part is well known.
                out.append((0.0, ["known behaviour"], self.history, self.thresholds))
                self.history += 1
                for stat in stats:
                    stat.count += 1
                    if ts > stat.last_ts:
                        stat.last_ts = ts
                score = 0.0
            else:
                score, reasons, entry[3] = self._score(obs, stats, ts, event.host, prior)
                out.append((score, reasons, self.history, self.thresholds))
                self._learn(obs, stats, ts, event.host)
            self._touched[id(obs)] = obs
            self.scores[self.history % SCORE_WINDOW] = round(score * 1000)
            if self.history % THRESHOLD_EVERY == 0:
                self.thresholds = self._derive_thresholds()
        return out

    def _compiled(self, event: RawEvent) -> list:
        """``[observations, their stats (None: never seen), epoch, quiet]`` of the event's behaviour.

        Most events repeat a behaviour the shard has seen, so each behaviour keeps its
        observations and references to their stat lists: a stat list is only ever
        mutated in place, never replaced, and dropping one (expiry) or labelling one
        (feedback) bumps ``_epoch``, which makes every behaviour look its stats up again.
        ``quiet`` says every observation is well known: episodes only grow within an
        epoch, so until the next one the behaviour scores exactly 0.
        """
        key = _behaviour_key(self._uid, event)
        cache = self._behaviours
        entry = cache.young.get(key)
        if entry is None:
            entry = cache.old.pop(key, None)
            if entry is None:
                obs = _observations_of(event)
                entry = [obs, [None] * len(obs), -1, False]
            cache.put(key, entry)
        obs, refs = entry[0], entry[1]
        stats = self.stats
        if entry[2] != self._epoch:
            entry[1] = [stats.get(o.key) for o in obs]
            entry[2] = self._epoch
            entry[3] = False
        elif not entry[3] and None in refs:  # (a quiet behaviour has every stat)
            for i, ref in enumerate(refs):
                if ref is None:
                    refs[i] = stats.get(obs[i].key)
        return entry

    def _advance_clock(self, ts: float) -> None:
        """Move event time to ``ts``; crossing a day boundary expires old behaviours."""
        now = max(self.watermark, ts)
        if math.isfinite(self.watermark) and math.floor(now / DAY_S) > math.floor(self.watermark / DAY_S):
            self.watermark = now
            self._expire()
        self.watermark = now
        self._next_day = (math.floor(now / DAY_S) + 1) * DAY_S

    def _score(
        self, obs: Sequence[Observation], stats: Sequence[Stat | None], ts: float, host: str, prior: Prior | None
    ) -> tuple[float, list[str], bool]:
        """Score, reasons, and whether every observation is well known (see _compiled)."""
        keep = 1.0
        well_known = 0
        parts: list[tuple[float, Observation, Stat | None, int]] = []
        cutoff = self.watermark - self.retention_s
        contexts = self.contexts
        for o, stat in zip(obs, stats):
            if stat is None or stat.last_ts < cutoff:
                episodes = 0
                stat = None
            elif stat.label:
                if stat.label == _LABEL_MALICIOUS:
                    keep *= 1.0 - o.weight
                    parts.append((o.weight, o, stat, 0))
                    continue
                episodes = stat.episodes  # benign: its own burst is evidence too
            elif stat.episodes > _WELL_KNOWN_EPISODES:
                well_known += 1
                continue  # the hot path: surprise would round to zero anyway
            else:
                # Repeats inside the episode still open on this host are not evidence:
                # a burst of retries must not wash out its own alert.
                episodes = stat.episodes - (host == stat.ep_host and ts - stat.ep_start < EPISODE_GAP_S)
            if episodes > _WELL_KNOWN_EPISODES:
                continue
            ctx = stat.ctx if stat is not None and o.own_rate else contexts.get(o.rate_key)
            novelty_rate = 0.5 if ctx is None else (ctx.values + 1.0) / (ctx.episodes + 2.0)
            others = 0
            if episodes == 0:
                s = 1.0 - novelty_rate
                if prior is not None:
                    # Known to other workloads of the org: less of a surprise here.
                    others = prior.others(o.key)
                    s /= (1.0 + PRIOR_WEIGHT * others) ** 2
            else:
                s = (1.0 - novelty_rate) / ((1.0 + episodes) ** 2)
            if s > 0.0:
                keep *= 1.0 - o.weight * s
                parts.append((o.weight * s, o, stat, others))
        score = 1.0 - keep
        quiet = well_known == len(obs) and self.retention_s >= DAY_S  # a day boundary bumps the epoch first
        return score, self._reasons(parts, score), quiet

    def _reasons(self, parts: list[tuple[float, Observation, Stat | None, int]], score: float) -> list[str]:
        if not parts or score < 0.05:
            return ["known behaviour"] if self.stats else ["nothing learned yet for this workload"]
        parts.sort(key=_CONTRIBUTION, reverse=True)  # stable: ties keep observation order
        reasons = [
            f"{o._description or o.description}: {_seen_here(stat, others)} (+{contribution:.2f})"
            for contribution, o, stat, others in parts[:4]
        ]
        known = self._nearest_known(parts)
        if known:
            reasons.append(known)
        return reasons

    def _nearest_known(self, parts: list[tuple[float, Observation, Stat | None, int]]) -> str | None:
        """The most frequent known argument template of the program in question."""
        for _, o, _, _ in parts:
            if o.names_args:
                top = self._top_args.get(o.ctx)
                if top is None:
                    return None
                return f"{_known_prefix(o.ctx, top[0])}{top[1].count}x)"
        return None

    # learning -----------------------------------------------------------------------

    def _learn(
        self, obs: Sequence[Observation], refs: list[Stat | None], ts: float, host: str,
        bonus: int = 0, label: str = "", counts: bool = True,
    ) -> None:
        """Count ``obs`` as seen at ``ts`` on ``host``; new stats are written into ``refs``.

        The caller marks ``obs`` as changed (see take_changes).
        """
        self.history += counts
        cutoff = self.watermark - self.retention_s
        stats, contexts = self.stats, self.contexts
        for i, o in enumerate(obs):
            stat = refs[i]
            if stat is None:  # may have been added by an earlier observation of this event
                stat = refs[i] = stats.get(o.key)
            if stat is not None and stat.last_ts >= cutoff:
                # The hot path: a known behaviour seen again.
                stat.count += 1
                if ts > stat.last_ts:
                    stat.last_ts = ts
                if stat.episodes > _WELL_KNOWN_EPISODES and not (bonus or label):
                    # Episodes saturate: past this, more cannot make the value itself
                    # less surprising, and its context's novelty rate is already low.
                    continue
                if host != stat.ep_host or ts - stat.ep_start >= EPISODE_GAP_S:  # a new episode
                    stat.episodes += 1 + bonus
                    stat.ep_start = ts
                    stat.ep_host = host
                    stat.ctx.episodes += 1 + bonus
                elif bonus:
                    stat.episodes += bonus
                    stat.ctx.episodes += bonus
                elif not label:
                    continue
                if label:
                    stat.label = label
                if o.is_args:
                    self._note_top_args(o, stat)
            else:
                ctx = contexts.get(o.ctx_key)
                if ctx is None:
                    ctx = contexts[o.ctx_key] = Context()
                if stat is None:
                    ctx.values += 1
                    stats[o.key] = refs[i] = stat = Stat(1 + bonus, 1, ts, ts, ts, host, label, ctx)
                else:  # expired but not yet dropped: starts over, as if it had been
                    ctx.episodes -= stat.episodes
                    stat.restart(1 + bonus, ts, host, label or stat.label, ctx)
                ctx.episodes += 1 + bonus
                if o.is_args:
                    self._note_top_args(o, stat)

    def _note_top_args(self, o: Observation, stat: Stat) -> None:
        """Keep the argument template of each program seen in the most episodes (for
        reasons). Called when episodes change, not on every sighting: that would cost a
        call per event for a text only alerts show."""
        top = self._top_args.get(o.ctx)
        if top is None or top[1] is not stat and stat.episodes > top[1].episodes:
            self._top_args[o.ctx] = (o.key, stat)

    def _derive_thresholds(self) -> tuple[float, float]:
        """Scores at which the shard's recent events would warn/alert at the target rates."""
        n = min(self.history, SCORE_WINDOW)
        if n < SCORE_WINDOW // 4:
            return self.defaults
        scores = np.frombuffer(self.scores, dtype=np.uint16)
        hist = np.bincount(scores[:n] if self.history < SCORE_WINDOW else scores, minlength=1001)
        above = np.cumsum(hist[::-1])[::-1] / n  # fraction of scores >= bin
        warn_default, alert_default = self.defaults

        def level(rate: float, floor: float) -> float:
            ok = np.flatnonzero(above <= rate)
            t = (ok[0] / 1000.0) if len(ok) else 1.0
            return float(min(0.99, max(floor, t)))

        alert = level(self.rates[1], alert_default)
        warn = min(alert, level(self.rates[0], warn_default))
        return warn, alert

    def known_keys(self) -> list[str]:
        """Observations this shard knows well enough to vouch for across its org (see
        streams.priors): seen in enough episodes, not pinned malicious, not expired."""
        cutoff = self.watermark - self.retention_s
        kinds = _PRIOR_KIND_PREFIXES
        return [
            key for key, stat in self.stats.items()
            if stat.episodes >= PRIOR_MIN_EPISODES and stat.label != _LABEL_MALICIOUS and stat.last_ts >= cutoff
            and key.startswith(kinds)
        ]  # fmt: skip

    def feedback(self, event: RawEvent, label: str) -> None:
        """An analyst's verdict on ``event``: benign teaches it, malicious pins it."""
        self._epoch += 1  # labels change how known behaviours score
        obs = observations(event)
        if label == _LABEL_BENIGN:
            refs = [self.stats.get(o.key) for o in obs]
            self._learn(obs, refs, event.ts, event.host, bonus=_BENIGN_EPISODES, label=_LABEL_BENIGN, counts=False)
            self._dirty.update(o.key for o in obs)
            return
        # Pin only what made it rare, or every later use of /bin/sh would alert too.
        rare = [o for o in obs if (st := self.stats.get(o.key)) is None or st.episodes <= 2] or obs
        refs = [self.stats.get(o.key) for o in rare]
        self._learn(rare, refs, event.ts, event.host, label=_LABEL_MALICIOUS, counts=False)
        self._dirty.update(o.key for o in rare)

    # retention and persistence ----------------------------------------------------------

    def _expire(self) -> None:
        cutoff = self.watermark - self.retention_s
        for key in [k for k, v in self.stats.items() if v.last_ts < cutoff]:
            stat = self.stats.pop(key)
            ctx_key = key.rsplit(SEP, 1)[0]
            ctx = stat.ctx
            ctx.episodes -= stat.episodes
            ctx.values -= 1
            top = self._top_args.get(ctx_key.split(SEP, 1)[1])
            if top is not None and top[1] is stat:
                del self._top_args[ctx_key.split(SEP, 1)[1]]
            if ctx.values <= 0:
                del self.contexts[ctx_key]
            self._deleted.append(key)
        self._epoch += 1

    def prune(self) -> int:
        # Expiry already happens in event time at each day boundary (see _advance_clock),
        # which keeps the state a pure function of the events; nothing else to do here.
        return 0

    def take_changes(self) -> Changes:
        dirty = self._dirty
        for obs in self._touched.values():
            dirty.update(o.key for o in obs)
        self._touched = {}
        stats = self.stats
        keys = [k for k in dirty if k in stats]
        upserts = self._rows(keys, meta=True) if keys or self._deleted else None
        changes = Changes(upserts=upserts, deletes=self._deleted)
        self._dirty = set()
        self._deleted = []
        return changes

    def to_table(self) -> pa.Table:
        return self._rows(sorted(self.stats), meta=True)

    def _rows(self, keys: list[str], meta: bool) -> pa.Table:
        """Rows of ``keys`` (column by column: this runs on the scoring thread)."""
        rows = [self.stats[k] for k in keys]
        parts = [k.split(SEP, 2) for k in keys]
        cols: dict[str, list] = {"key": list(keys)}
        for i, name in enumerate(("kind", "ctx", "value")):
            cols[name] = [p[i] for p in parts]
        cols["episodes"] = [r.episodes for r in rows]
        cols["count"] = [r.count for r in rows]
        cols["first_ts"] = [r.first_ts for r in rows]
        cols["last_ts"] = [r.last_ts for r in rows]
        cols["ep_start"] = [r.ep_start for r in rows]
        cols["ep_host"] = [r.ep_host for r in rows]
        cols["label"] = [r.label for r in rows]
        if meta:
            state = _pack_scores(self.scores)
            wm = self.watermark if math.isfinite(self.watermark) else 0.0
            row = (META_KEY, "meta", "", state, self.history, 0, 0.0, wm, self.thresholds[0], str(self.thresholds[1]), "")
            for name, v in zip(_SCHEMA.names, row):
                cols[name].append(v)
        return pa.table(cols, schema=_SCHEMA)

    @classmethod
    def load(cls, table: pa.Table, **params: Any) -> "EvidenceShard":
        shard = cls(**params)
        cols = table.to_pydict()
        for i, key in enumerate(cols["key"]):
            if key == META_KEY:
                shard.history = int(cols["episodes"][i])
                shard.watermark = float(cols["last_ts"][i]) if shard.history else float("-inf")
                shard.scores = _unpack_scores(cols["value"][i])
                shard.thresholds = (float(cols["ep_start"][i]), float(cols["ep_host"][i]))
                continue
            ctx = shard.contexts.setdefault(key.rsplit(SEP, 1)[0], Context())
            stat = Stat(
                int(cols["episodes"][i]), int(cols["count"][i]), float(cols["first_ts"][i]),
                float(cols["last_ts"][i]), float(cols["ep_start"][i]), cols["ep_host"][i], cols["label"][i], ctx,
            )
            shard.stats[key] = stat
            ctx.episodes += stat.episodes
            ctx.values += 1
            if cols["kind"][i] == "args":
                program = cols["ctx"][i]
                top = shard._top_args.get(program)
                if top is None or stat.episodes > top[1].episodes:
                    shard._top_args[program] = (key, stat)
        return shard


# The meta row's score window, compressed: mostly zeros, it is ~8 KiB raw (11 KiB as
# base64), and written with every flush of its shard. The prefix is not base64's.
_PACKED = "~"


def _pack_scores(scores: array) -> str:
    return _PACKED + base64.b64encode(zlib.compress(scores.tobytes(), 1)).decode()


def _unpack_scores(value: str) -> array:
    if value.startswith(_PACKED):
        return array("H", zlib.decompress(base64.b64decode(value[len(_PACKED):])))
    return array("H", base64.b64decode(value))  # (written before compression)


_CONTRIBUTION = itemgetter(0)
_PRIOR_KIND_PREFIXES = tuple(f"{kind}{SEP}" for kind in PRIOR_KINDS)
_SEEN = tuple(f"seen in {n} episode(s)" for n in range(_WELL_KNOWN_EPISODES + _BENIGN_EPISODES + 2))


def _seen_here(stat: Stat | None, others: int) -> str:
    if stat is not None:
        return _seen(stat.episodes)
    if others:
        return f"never seen here, known in {others} other workload(s) of this org (org prior)"
    return "never seen"


def _seen(episodes: int) -> str:
    return _SEEN[episodes] if 0 <= episodes < len(_SEEN) else f"seen in {episodes} episode(s)"


@lru_cache(maxsize=1 << 14)
def _known_prefix(program: str, key: str) -> str:
    return f"nearest known: {program} {key.rsplit(SEP, 1)[1]!r} (seen "


def _describe(o: Observation) -> str:
    if o.kind == "prog":
        return f"program {o.value}"
    if o.kind == "parent":
        return f"{o.ctx} -> {o.value}"
    if o.kind == "user":
        return f"{o.ctx} running {o.value}"
    if o.kind == "lineage":
        return f"lineage {o.ctx} -> {o.value}"
    if o.kind == "args":
        return f"{o.ctx} with arguments {o.value[:80]!r}"
    if o.kind == "arg":
        return f"{o.ctx} argument {o.value[:60]!r}"
    if o.kind == "assign":
        return f"{o.ctx} script sets {o.value[:60]}"
    if o.kind == "shape":
        return f"{o.ctx} argument shaped {o.value[:60]!r}"
    if o.kind == "code":
        return f"{o.ctx} code using {o.value[:60]!r}"
    if o.kind == "write":
        return f"{o.ctx} writes into {o.value[:80]}"
    if o.kind == "paths":
        return f"names {o.value[:80]}"
    if o.kind == "writes":
        return f"writes into {o.value[:80]}"
    return f"{o.ctx} {o.value}"


class EvidenceAlgorithm:
    name = "evidence"
    version = "1"
    build = "mypyc" if COMPILED else "python"

    def __init__(self, settings: EngineSettings):
        self.params = {
            "retention_s": settings.retention_for(self.name) * DAY_S,
            "warn": settings.warn,
            "alert": settings.alert,
            "warn_rate": settings.target_warn_rate,
            "alert_rate": settings.target_alert_rate,
        }
        # Shared by this algorithm's shards (see EvidenceShard._compiled).
        self.behaviours = BehaviourCache()

    @property
    def model(self) -> str:
        return f"{self.name}/{self.version}"

    def schema(self) -> pa.Schema:
        return _schema()

    def new_shard(self) -> EvidenceShard:
        return EvidenceShard(**self.params, behaviours=self.behaviours)

    def load_shard(self, table: pa.Table) -> EvidenceShard:
        return EvidenceShard.load(table, **self.params, behaviours=self.behaviours)


register("evidence")(EvidenceAlgorithm)
