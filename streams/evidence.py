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
import pyarrow.compute as pc

from ruleless.settings import EngineSettings
from schemas.events import RawEvent
from streams.algorithm import DAY_S, Changes, Verdict, register
from streams.priors import KINDS as PRIOR_KINDS
from streams.priors import MIN_EPISODES as PRIOR_MIN_EPISODES
from streams.priors import Prior, key_hash
from streams.normalize import (
    basename, code_words, data_shape, interpreter_code, is_vocabulary, normalize_token, program_path, script_commands, shell_script, split_args,
    write_targets,
)

SEP = "\x1f"
META_KEY = "__meta__"
EPISODE_GAP_S = 1800.0
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
        "khash", "ctx_hash", "rate_hash", "shared",
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
        # What a shard's state is indexed by (it keeps no key text: see Stats).
        self.khash = key_hash(self.key)
        self.ctx_hash = _context_hash(self.ctx_key)
        self.rate_hash = _context_hash(self.rate_key)
        self.shared = kind in PRIOR_KINDS  # (may vouch for it across the org: streams.priors)

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

_context_hash = lru_cache(maxsize=1 << 16)(key_hash)


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


class Index:
    """Rows of a shard's table by the 62-bit hash of their key: open addressing over an
    array of row numbers (-1: empty), with the hashes themselves in ``keys`` (row order).

    A dict of str to objects cost ~880 bytes per learned observation (issue 17); this
    and the column arrays beside it cost ~60, and keep no key text (LanceDB has it).
    """

    __slots__ = ("keys", "slots", "mask")

    def __init__(self, keys: array[int] | None = None):
        self.keys: array[int] = keys if keys is not None else array("q")
        self.slots: array[int] = array("i")
        self.mask = 0
        self._rebuild()

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, h: int) -> int:
        """The row of hash ``h``, or -1."""
        slots, keys, mask = self.slots, self.keys, self.mask
        i = h & mask
        while True:
            row = slots[i]
            if row < 0 or keys[row] == h:
                return row
            i = (i + 1) & mask

    def add(self, h: int) -> int:
        """A new row for hash ``h`` (not in the index yet); the caller appends its columns."""
        row = len(self.keys)
        self.keys.append(h)
        if 3 * (row + 1) > 2 * len(self.slots):
            self._rebuild()
        else:
            self._place(h, row)
        return row

    def _place(self, h: int, row: int) -> None:
        slots, mask = self.slots, self.mask
        i = h & mask
        while slots[i] >= 0:
            i = (i + 1) & mask
        slots[i] = row

    def _rebuild(self) -> None:
        size = 8
        while 3 * len(self.keys) > size:  # at most a third full after a rebuild
            size *= 2
        self.slots = array("i", b"\xff" * (4 * size))
        self.mask = size - 1
        for row, h in enumerate(self.keys):
            self._place(h, row)

    def kept(self, mask: np.ndarray) -> "Index":
        """A new index of the rows ``mask`` (boolean, by row) keeps, renumbered in order."""
        return Index(array("q", np.frombuffer(self.keys, dtype=np.int64)[mask].tobytes()))

    def __deepcopy__(self, memo: dict) -> "Index":
        return Index(array("q", self.keys))


class Contexts:
    """What a shard learned of each context, one row each: the episodes of all its values,
    and how many distinct values it has (its novelty rate follows from the two)."""

    __slots__ = ("index", "episodes", "values")

    def __init__(self) -> None:
        self.index = Index()
        self.episodes: array[int] = array("q")
        self.values: array[int] = array("q")

    def row(self, h: int) -> int:
        """The context's row, added empty if new."""
        row = self.index.find(h)
        if row < 0:
            row = self.index.add(h)
            self.episodes.append(0)
            self.values.append(0)
        return row

    def __deepcopy__(self, memo: dict) -> "Contexts":
        copied = Contexts()
        copied.index = copy.deepcopy(self.index, memo)
        copied.episodes, copied.values = array("q", self.episodes), array("q", self.values)
        return copied


# Labels in the state (0: none).
_LABEL_CODES = {"": 0, _LABEL_BENIGN: 1, _LABEL_MALICIOUS: 2}
_LABEL_NAMES = ("", _LABEL_BENIGN, _LABEL_MALICIOUS)
_BENIGN, _MALICIOUS = 1, 2


# Stats' columns and their array type codes.
_STAT_COLUMNS = (("episodes", "q"), ("count", "q"), ("first_ts", "d"), ("last_ts", "d"), ("ep_start", "d"),
                 ("ep_host", "i"), ("label", "b"), ("ctx", "i"), ("shared", "b"))  # fmt: skip


class Stats:
    """What a shard learned of each observation, one row each, column by column: its
    episodes and sightings, first and last seen, when and on which host (a number: see
    EvidenceShard.hosts) its current episode started, its label, its context's row, and
    whether it may vouch for the observation across the org (streams.priors).

    Rows are numbered in the order they were learned; expiry drops rows and renumbers
    (EvidenceShard._expire), which is when compiled behaviours look theirs up again.
    """

    __slots__ = ("index", "episodes", "count", "first_ts", "last_ts", "ep_start", "ep_host", "label", "ctx", "shared")

    def __init__(self) -> None:
        self.index = Index()
        self.episodes: array[int] = array("q")
        self.count: array[int] = array("q")
        self.first_ts: array[float] = array("d")
        self.last_ts: array[float] = array("d")
        self.ep_start: array[float] = array("d")
        self.ep_host: array[int] = array("i")
        self.label: array[int] = array("b")
        self.ctx: array[int] = array("i")
        self.shared: array[int] = array("b")

    def __len__(self) -> int:
        return len(self.index)

    def add(self, o: Observation, episodes: int, ts: float, host: int, label: int, ctx: int) -> int:
        row = self.index.add(o.khash)
        self.episodes.append(episodes)
        self.count.append(1)
        self.first_ts.append(ts)
        self.last_ts.append(ts)
        self.ep_start.append(ts)
        self.ep_host.append(host)
        self.label.append(label)
        self.ctx.append(ctx)
        self.shared.append(1 if o.shared else 0)
        return row

    def restart(self, row: int, episodes: int, ts: float, host: int, label: int) -> None:
        self.episodes[row], self.count[row] = episodes, 1
        self.first_ts[row] = self.last_ts[row] = self.ep_start[row] = ts
        self.ep_host[row], self.label[row] = host, label

    def column(self, name: str) -> np.ndarray:
        """A column as numpy (a view: nothing may be appended while it is alive)."""
        return np.frombuffer(getattr(self, name), dtype=getattr(self, name).typecode)

    def keep(self, kept: np.ndarray) -> None:
        """Keep only the rows ``kept`` (a boolean mask), renumbered in order."""
        for name, code in _STAT_COLUMNS:
            setattr(self, name, array(code, self.column(name)[kept].tobytes()))
        self.index = self.index.kept(kept)

    def __deepcopy__(self, memo: dict) -> "Stats":
        copied = Stats()
        copied.index = copy.deepcopy(self.index, memo)
        for name, code in _STAT_COLUMNS:
            setattr(copied, name, array(code, getattr(self, name)))
        return copied


# What a copy of a shard copies (all but its settings, its identity and the shared cache).
_LEARNED_STATE = (
    "stats", "contexts", "hosts", "host_ids", "history", "watermark", "_next_day", "scores", "thresholds", "_dirty",
    "_touched", "_expired_before", "_top_args", "_epoch", "_complete",
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
        self.stats = Stats()
        self.contexts = Contexts()
        # The hosts that started the stats' current episodes (Stats.ep_host numbers them).
        self.hosts: list[str] = []
        self.host_ids: dict[str, int] = {}
        self.history = 0
        self.watermark = float("-inf")
        # The watermark's next day boundary (-inf: not known yet; see _advance_clock).
        self._next_day = float("-inf")
        # Recent scores, one per event, at history % SCORE_WINDOW (grown to the window
        # as history grows: most of a small shard's window would be zeros).
        self.scores = array("H", [0])
        self.thresholds = (warn, alert)
        self._dirty: list[Observation] = []
        # Observations learned since take_changes, per behaviour: marking each key dirty
        # on every event would cost more than the learning itself.
        self._touched: dict[int, tuple[Observation, ...]] = {}
        # The last expiry's cutoff not yet taken (see take_changes), or None.
        self._expired_before: float | None = None
        # program -> (key, row) of its argument template seen in most episodes (reasons only).
        self._top_args: dict[str, tuple[str, int]] = {}
        # (shard uid, behaviour) -> [observations, their rows (-1: never seen), epoch, quiet],
        # shared by the algorithm's shards (see _compiled)
        self._behaviours = behaviours if behaviours is not None else BehaviourCache()
        self._uid = next(_shard_uids)
        self._epoch = 0
        # Whether every row's key text is at hand (see to_table): true until the first
        # take_changes or for a shard loaded from a table, whose text stays in LanceDB.
        self._complete = True

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
        # Quiet behaviours seen since their sightings were last counted into the rows
        # (see _count_quiet): counted before anything reads the rows, and at the end.
        quiet: list[list] = []
        for event in events:
            ts = event.ts
            if ts > self.watermark:
                if ts >= self._next_day:
                    if quiet:
                        self._count_quiet(quiet)
                    self._advance_clock(ts)
                else:
                    self.watermark = ts
            entry = self._compiled(event)
            obs, rows = entry[0], entry[1]
            if entry[3]:
                # The hot path: a behaviour whose every part is well known.
                out.append((0.0, ["known behaviour"], self.history, self.thresholds))
                self.history += 1
                if entry[4]:
                    entry[4] += 1
                    if ts > entry[5]:
                        entry[5] = ts
                else:
                    entry[4], entry[5] = 1, ts
                    quiet.append(entry)
                    self._touched[id(obs)] = obs
                score = 0.0
            else:
                if quiet:
                    self._count_quiet(quiet)
                host = self._host(event.host)
                score, reasons, entry[3] = self._score(obs, rows, ts, host, prior)
                out.append((score, reasons, self.history, self.thresholds))
                self._learn(obs, rows, ts, host)
                self._touched[id(obs)] = obs
            at = self.history % SCORE_WINDOW
            if at < len(self.scores):
                self.scores[at] = round(score * 1000)
            else:
                self.scores.append(round(score * 1000))
            if self.history % THRESHOLD_EVERY == 0:
                self.thresholds = self._derive_thresholds()
        if quiet:
            self._count_quiet(quiet)
        return out

    def _count_quiet(self, quiet: list[list]) -> None:
        """Count the sightings of quiet behaviours into their rows (sightings, last seen),
        and empty ``quiet``. Once per behaviour instead of once per event: a quiet
        behaviour's rows are only written, never read, until then."""
        count, last_ts = self.stats.count, self.stats.last_ts
        for entry in quiet:
            hits, ts = entry[4], entry[5]
            for row in entry[1]:
                count[row] += hits
                if ts > last_ts[row]:
                    last_ts[row] = ts
            entry[4] = 0
        quiet.clear()

    def _host(self, host: str) -> int:
        """The number of ``host`` in this shard (see hosts)."""
        number = self.host_ids.get(host)
        if number is None:
            number = self.host_ids[host] = len(self.hosts)
            self.hosts.append(host)
        return number

    def _compiled(self, event: RawEvent) -> list:
        """``[observations, their rows (-1: never seen), epoch, quiet, sightings not yet
        counted, the last one's time]`` of the event's behaviour.

        Most events repeat a behaviour the shard has seen, so each behaviour keeps its
        observations and their rows in the shard's Stats. Rows only move when expiry
        drops some (and labels change how rows score): both bump ``_epoch``, which makes
        every behaviour look its rows up again. ``quiet`` says every observation is well
        known: episodes only grow within an epoch, so until the next one the behaviour
        scores exactly 0.
        """
        key = _behaviour_key(self._uid, event)
        cache = self._behaviours
        entry = cache.young.get(key)
        if entry is None:
            entry = cache.old.pop(key, None)
            if entry is None:
                obs = _observations_of(event)
                entry = [obs, [-1] * len(obs), -1, False, 0, 0.0]
            cache.put(key, entry)
        obs, rows = entry[0], entry[1]
        index = self.stats.index
        if entry[2] != self._epoch:
            entry[1] = [index.find(o.khash) for o in obs]
            entry[2] = self._epoch
            entry[3] = False
        elif not entry[3] and -1 in rows:  # (a quiet behaviour has every row)
            for i, row in enumerate(rows):
                if row < 0:
                    rows[i] = index.find(obs[i].khash)
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
        self, obs: Sequence[Observation], rows: list[int], ts: float, host: int, prior: Prior | None
    ) -> tuple[float, list[str], bool]:
        """Score, reasons, and whether every observation is well known (see _compiled)."""
        keep = 1.0
        well_known = 0
        # (contribution, observation, episodes seen here (-1: never), org workloads knowing it)
        parts: list[tuple[float, Observation, int, int]] = []
        cutoff = self.watermark - self.retention_s
        st, contexts = self.stats, self.contexts
        episodes_of, last_ts, labels = st.episodes, st.last_ts, st.label
        for o, row in zip(obs, rows):
            seen = -1  # episodes seen here (-1: never, or expired)
            if row < 0 or last_ts[row] < cutoff:
                episodes = 0
                row = -1
            else:
                seen = episodes_of[row]
                label = labels[row]
                if label == _MALICIOUS:
                    keep *= 1.0 - o.weight
                    parts.append((o.weight, o, seen, 0))
                    continue
                if label:
                    episodes = seen  # benign: its own burst is evidence too
                elif seen > _WELL_KNOWN_EPISODES:
                    well_known += 1
                    continue  # the hot path: surprise would round to zero anyway
                else:
                    # Repeats inside the episode still open on this host are not evidence:
                    # a burst of retries must not wash out its own alert.
                    episodes = seen - (host == st.ep_host[row] and ts - st.ep_start[row] < EPISODE_GAP_S)
            if episodes > _WELL_KNOWN_EPISODES:
                continue
            ctx = st.ctx[row] if row >= 0 and o.own_rate else contexts.index.find(o.rate_hash)
            novelty_rate = 0.5 if ctx < 0 else (contexts.values[ctx] + 1.0) / (contexts.episodes[ctx] + 2.0)
            others = 0
            if episodes == 0:
                s = 1.0 - novelty_rate
                if prior is not None:
                    # Known to other workloads of the org: less of a surprise here.
                    others = prior.others(o.khash)
                    s /= (1.0 + PRIOR_WEIGHT * others) ** 2
            else:
                s = (1.0 - novelty_rate) / ((1.0 + episodes) ** 2)
            if s > 0.0:
                keep *= 1.0 - o.weight * s
                parts.append((o.weight * s, o, seen, others))
        score = 1.0 - keep
        quiet = well_known == len(obs) and self.retention_s >= DAY_S  # a day boundary bumps the epoch first
        return score, self._reasons(parts, score), quiet

    def _reasons(self, parts: list[tuple[float, Observation, int, int]], score: float) -> list[str]:
        if not parts or score < 0.05:
            return ["known behaviour"] if len(self.stats) else ["nothing learned yet for this workload"]
        parts.sort(key=_CONTRIBUTION, reverse=True)  # stable: ties keep observation order
        reasons = [
            f"{o._description or o.description}: {_seen_here(episodes, others)} (+{contribution:.2f})"
            for contribution, o, episodes, others in parts[:4]
        ]
        known = self._nearest_known(parts)
        if known:
            reasons.append(known)
        return reasons

    def _nearest_known(self, parts: list[tuple[float, Observation, int, int]]) -> str | None:
        """The most frequent known argument template of the program in question."""
        for _, o, _, _ in parts:
            if o.names_args:
                top = self._top_args.get(o.ctx)
                if top is None:
                    return None
                return f"{_known_prefix(o.ctx, top[0])}{self.stats.count[top[1]]}x)"
        return None

    # learning -----------------------------------------------------------------------

    def _learn(
        self, obs: Sequence[Observation], rows: list[int], ts: float, host: int,
        bonus: int = 0, label: int = 0, counts: bool = True,
    ) -> None:
        """Count ``obs`` as seen at ``ts`` on ``host``; new rows are written into ``rows``.

        The caller marks ``obs`` as changed (see take_changes).
        """
        self.history += counts
        cutoff = self.watermark - self.retention_s
        st, contexts = self.stats, self.contexts
        ctx_episodes = contexts.episodes
        for i, o in enumerate(obs):
            row = rows[i]
            if row < 0:  # may have been added by an earlier observation of this event
                row = rows[i] = st.index.find(o.khash)
            last = st.last_ts[row] if row >= 0 else 0.0
            if row >= 0 and last >= cutoff:
                # The hot path: a known behaviour seen again.
                st.count[row] += 1
                if ts > last:
                    st.last_ts[row] = ts
                episodes = st.episodes[row]
                if episodes > _WELL_KNOWN_EPISODES and not (bonus or label):
                    # Episodes saturate: past this, more cannot make the value itself
                    # less surprising, and its context's novelty rate is already low.
                    continue
                if host != st.ep_host[row] or ts - st.ep_start[row] >= EPISODE_GAP_S:  # a new episode
                    st.episodes[row] = episodes + 1 + bonus
                    st.ep_start[row] = ts
                    st.ep_host[row] = host
                    ctx_episodes[st.ctx[row]] += 1 + bonus
                elif bonus:
                    st.episodes[row] = episodes + bonus
                    ctx_episodes[st.ctx[row]] += bonus
                elif not label:
                    continue
                if label:
                    st.label[row] = label
                if o.is_args:
                    self._note_top_args(o, row)
            else:
                ctx = contexts.row(o.ctx_hash)
                if row < 0:
                    contexts.values[ctx] += 1
                    row = rows[i] = st.add(o, 1 + bonus, ts, host, label, ctx)
                else:  # expired but not yet dropped: starts over, as if it had been
                    ctx_episodes[ctx] -= st.episodes[row]
                    st.restart(row, 1 + bonus, ts, host, label or st.label[row])
                ctx_episodes[ctx] += 1 + bonus
                if o.is_args:
                    self._note_top_args(o, row)

    def _note_top_args(self, o: Observation, row: int) -> None:
        """Keep the argument template of each program seen in the most episodes (for
        reasons). Called when episodes change, not on every sighting: that would cost a
        call per event for a text only alerts show."""
        top = self._top_args.get(o.ctx)
        if top is None or top[1] != row and self.stats.episodes[row] > self.stats.episodes[top[1]]:
            self._top_args[o.ctx] = (o.key, row)

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

    def known_hashes(self) -> np.ndarray:
        """Hashes (streams.priors.key_hash) of the observations this shard knows well
        enough to vouch for across its org: seen in enough episodes, not pinned
        malicious, not expired, of a kind that carries over."""
        st = self.stats
        cutoff = self.watermark - self.retention_s
        known = (
            (st.column("episodes") >= PRIOR_MIN_EPISODES) & (st.column("label") != _MALICIOUS)
            & (st.column("last_ts") >= cutoff) & (st.column("shared") != 0)
        )  # fmt: skip
        return np.frombuffer(st.index.keys, dtype=np.int64)[known].astype(np.uint64)

    def feedback(self, event: RawEvent, label: str) -> None:
        """An analyst's verdict on ``event``: benign teaches it, malicious pins it."""
        self._epoch += 1  # labels change how known behaviours score
        obs = observations(event)
        host = self._host(event.host)
        index = self.stats.index
        if label == _LABEL_BENIGN:
            rows = [index.find(o.khash) for o in obs]
            self._learn(obs, rows, event.ts, host, bonus=_BENIGN_EPISODES, label=_BENIGN, counts=False)
            self._dirty.extend(obs)
            return
        # Pin only what made it rare, or every later use of /bin/sh would alert too.
        rare = [o for o in obs if (row := index.find(o.khash)) < 0 or self.stats.episodes[row] <= 2] or obs
        rows = [index.find(o.khash) for o in rare]
        self._learn(rare, rows, event.ts, host, label=_MALICIOUS, counts=False)
        self._dirty.extend(rare)

    # retention and persistence ----------------------------------------------------------

    def _expire(self) -> None:
        """Drop the rows unseen for the retention period, the contexts left without a
        value and the hosts no episode names any more; rows are renumbered."""
        cutoff = self.watermark - self.retention_s
        self._epoch += 1
        st, contexts = self.stats, self.contexts
        dead = st.column("last_ts") < cutoff
        if not dead.any():
            return
        self._expired_before = cutoff
        ctx_of = st.column("ctx")
        ctx_episodes = np.frombuffer(contexts.episodes, dtype=np.int64).copy()
        ctx_values = np.frombuffer(contexts.values, dtype=np.int64).copy()
        np.subtract.at(ctx_episodes, ctx_of[dead], st.column("episodes")[dead])
        np.subtract.at(ctx_values, ctx_of[dead], 1)
        live_ctx = ctx_values > 0
        ctx_number = np.cumsum(live_ctx) - 1
        kept = ~dead
        row_number = np.cumsum(kept) - 1
        new_ctx = ctx_number[ctx_of[kept]].astype(np.int32)
        st.keep(kept)
        st.ctx = array("i", new_ctx.tobytes())
        contexts.episodes = array("q", ctx_episodes[live_ctx].tobytes())
        contexts.values = array("q", ctx_values[live_ctx].tobytes())
        contexts.index = contexts.index.kept(live_ctx)
        for program, (key, row) in list(self._top_args.items()):
            if kept[row]:
                self._top_args[program] = (key, int(row_number[row]))
            else:
                del self._top_args[program]
        self._renumber_hosts()

    def _renumber_hosts(self) -> None:
        used, numbers = np.unique(self.stats.column("ep_host"), return_inverse=True)
        self.hosts = [self.hosts[i] for i in used]
        self.host_ids = {host: i for i, host in enumerate(self.hosts)}
        self.stats.ep_host = array("i", numbers.astype(np.int32).tobytes())

    def prune(self) -> int:
        # Expiry already happens in event time at each day boundary (see _advance_clock),
        # which keeps the state a pure function of the events; nothing else to do here.
        return 0

    def take_changes(self) -> Changes:
        columns, expired = self.take_columns()
        return Changes(upserts=None if columns is None else pa.table(columns, schema=_SCHEMA), deletes=[], expired=expired)

    def take_columns(self) -> tuple[dict[str, list] | None, str]:
        """What take_changes returns, as column lists (EvidenceAlgorithm.take_changes
        builds one table of many shards' columns: a table per shard cost ~70 µs)."""
        columns = self._pending_columns() if self._touched or self._dirty or self._expired_before is not None else None
        expired = "" if self._expired_before is None else f"key <> '{META_KEY}' AND last_ts < {self._expired_before!r}"
        self._touched = {}
        self._dirty = []
        self._expired_before = None
        self._complete = False
        return columns, expired

    def to_table(self) -> pa.Table:
        """The whole learned state, rows sorted by key. The key text is only at hand until
        the state was first persisted (take_changes) — after that it is in LanceDB."""
        if not self._complete:
            raise ValueError("the whole state of a shard is in its store once its changes were taken: read it there")
        table = pa.table(self._pending_columns(), schema=_SCHEMA)
        return table.take(pc.sort_indices(table, [("key", "ascending")]))

    def _pending_columns(self) -> dict[str, list]:
        """Rows of the observations learned since take_changes, then the meta row
        (history, watermark, thresholds and the packed score window in the schema's
        other columns), column by column."""
        by_hash: dict[int, Observation] = {}
        for obs in self._touched.values():
            for o in obs:
                by_hash[o.khash] = o
        for o in self._dirty:
            by_hash[o.khash] = o
        index = self.stats.index
        found = [(index.find(h), o) for h, o in by_hash.items()]
        rows = [row for row, _ in found if row >= 0]
        keys = [o.key for row, o in found if row >= 0]
        st = self.stats
        parts = [k.split(SEP, 2) for k in keys]
        hosts = self.hosts
        wm = self.watermark if math.isfinite(self.watermark) else 0.0
        return {
            "key": [*keys, META_KEY],
            "kind": [p[0] for p in parts] + ["meta"],
            "ctx": [p[1] for p in parts] + [""],
            "value": [p[2] for p in parts] + [_pack_scores(self.scores)],
            "episodes": [st.episodes[r] for r in rows] + [self.history],
            "count": [st.count[r] for r in rows] + [0],
            "first_ts": [st.first_ts[r] for r in rows] + [0.0],
            "last_ts": [st.last_ts[r] for r in rows] + [wm],
            "ep_start": [st.ep_start[r] for r in rows] + [self.thresholds[0]],
            "ep_host": [hosts[st.ep_host[r]] for r in rows] + [str(self.thresholds[1])],
            "label": [_LABEL_NAMES[st.label[r]] for r in rows] + [""],
        }

    @classmethod
    def load(cls, table: pa.Table, **params: Any) -> "EvidenceShard":
        shard = cls(**params)
        shard._complete = False
        keys = table.column("key").to_pylist()
        is_meta = [k == META_KEY for k in keys]
        if any(is_meta):
            i = is_meta.index(True)
            shard.history = int(table.column("episodes")[i].as_py())
            shard.watermark = float(table.column("last_ts")[i].as_py()) if shard.history else float("-inf")
            scores = _unpack_scores(table.column("value")[i].as_py())
            shard.scores = scores[: shard.history + 1] if shard.history < SCORE_WINDOW else scores
            shard.thresholds = (float(table.column("ep_start")[i].as_py()), float(table.column("ep_host")[i].as_py()))
            rows = table.filter(pa.array([not m for m in is_meta]))
            keys = [k for k, m in zip(keys, is_meta) if not m]
        else:
            rows = table
        st, contexts = shard.stats, shard.contexts
        ctx_rows = [contexts.row(_context_hash(k.rsplit(SEP, 1)[0])) for k in keys]
        st.index = Index(array("q", [key_hash(k) for k in keys]))
        st.episodes = array("q", rows.column("episodes").to_numpy().astype(np.int64).tobytes())
        st.count = array("q", rows.column("count").to_numpy().astype(np.int64).tobytes())
        for name in ("first_ts", "last_ts", "ep_start"):
            setattr(st, name, array("d", rows.column(name).to_numpy().astype(np.float64).tobytes()))
        hosts = pc.dictionary_encode(rows.column("ep_host")).combine_chunks()
        shard.hosts = [str(h) for h in hosts.dictionary.to_pylist()]
        shard.host_ids = {h: i for i, h in enumerate(shard.hosts)}
        st.ep_host = array("i", hosts.indices.to_numpy(zero_copy_only=False).astype(np.int32).tobytes())
        st.label = array("b", [_LABEL_CODES.get(x or "", 0) for x in rows.column("label").to_pylist()])
        st.ctx = array("i", ctx_rows)
        kinds = rows.column("kind").to_pylist()
        st.shared = array("b", [1 if kind in PRIOR_KINDS else 0 for kind in kinds])
        episodes = st.column("episodes")
        np.add.at(np.frombuffer(contexts.episodes, dtype=np.int64), np.array(ctx_rows, dtype=np.intp), episodes)
        np.add.at(np.frombuffer(contexts.values, dtype=np.int64), np.array(ctx_rows, dtype=np.intp), 1)
        programs = rows.column("ctx").to_pylist()
        for row, kind in enumerate(kinds):
            if kind == "args":
                top = shard._top_args.get(programs[row])
                if top is None or episodes[row] > episodes[top[1]]:
                    shard._top_args[programs[row]] = (keys[row], row)
        return shard


# The meta row's score window, written with every flush of its shard: ~8 KiB raw (11 KiB
# as base64) and mostly zeros. Stored sparse — its length, then the positions and values
# of its non-zero scores — or, while more than half are non-zero (a shard still
# learning), compressed: zlib took ~65 µs a window, 0.6 s of a flush of 10,000 shards
# with the engine held (issue 17). The prefixes are not base64's.
_PACKED = "~"
_SPARSE = "^"
_U16 = np.dtype("<u2")


def _pack_scores(scores: array) -> str:
    values = np.frombuffer(scores, dtype=_U16)
    nonzero = np.flatnonzero(values)
    if 2 * len(nonzero) >= len(values):
        return _PACKED + base64.b64encode(zlib.compress(scores.tobytes(), 1)).decode()
    body = np.concatenate(([len(values)], nonzero, values[nonzero])).astype(_U16).tobytes()
    return _SPARSE + base64.b64encode(body).decode()


def _unpack_scores(value: str) -> array:
    if value.startswith(_SPARSE):
        body = np.frombuffer(base64.b64decode(value[len(_SPARSE):]), dtype=_U16)
        half = (len(body) - 1) // 2
        window = np.zeros(int(body[0]), dtype=_U16)
        window[body[1 : 1 + half]] = body[1 + half :]
        return array("H", window.tobytes())
    if value.startswith(_PACKED):
        return array("H", zlib.decompress(base64.b64decode(value[len(_PACKED):])))
    return array("H", base64.b64decode(value))  # (written before compression)


_CONTRIBUTION = itemgetter(0)
_PRIOR_KIND_PREFIXES = tuple(f"{kind}{SEP}" for kind in PRIOR_KINDS)
_SEEN = tuple(f"seen in {n} episode(s)" for n in range(_WELL_KNOWN_EPISODES + _BENIGN_EPISODES + 2))


def _seen_here(episodes: int, others: int) -> str:
    """What the reason says of an observation seen here in ``episodes`` (-1: never)."""
    if episodes >= 0:
        return _seen(episodes)
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

    def take_changes(self, shards: dict[str, Any]) -> dict[str, Changes]:
        """Every changed shard's Changes, their rows built as one table (sliced per shard)."""
        columns: dict[str, list] = {name: [] for name in _SCHEMA.names}
        spans: list[tuple[str, int, int, str]] = []
        for key, shard in shards.items():
            piece, expired = shard.take_columns()
            if piece is None:
                if expired:
                    spans.append((key, 0, 0, expired))
                continue
            start = len(columns["key"])
            for name, values in piece.items():
                columns[name].extend(values)
            spans.append((key, start, len(columns["key"]) - start, expired))
        table = pa.table(columns, schema=_SCHEMA)
        return {key: Changes(table.slice(start, length) if length else None, [], expired) for key, start, length, expired in spans}


register("evidence")(EvidenceAlgorithm)
