"""Volatile values into typed placeholders, so routine drift does not look new.

PIDs, temp names, hashes, timestamps, IPs, ports, build numbers and versions change on
every run of perfectly normal work. Each is replaced by a placeholder naming its type
(``<n>``, ``<hex>``, ``<ip>``...), keeping the shape of the command and dropping the value.
These are shapes of *values*, not knowledge of what is good or bad.
"""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from collections.abc import Callable

# (pattern, placeholder, a substring every match contains: the rule is skipped without it)
# Applied lower-cased, after the identifiers (_IDS) and mktemp names.
_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[t_ ]\d{2}[:\-]?\d{2}(?:[:\-]?\d{2})?(?:\.\d+)?(?:z|[+-]\d{2}:?\d{2})?)?\b"), "<date>", "-"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>", "."),
    (re.compile(r"\bv?\d+(?:\.\d+){1,3}(?:[-+~][0-9a-z.]+)?\b"), "<ver>", "."),
    (re.compile(r"\d+"), "<n>", ""),
]
# Whole runs of 6+ letters and digits with at least two of each (the only ones
# _random_run can change: filtering here spares a Python call per plain word). The
# lookbehind makes a position inside a run fail at once instead of re-running the
# lookaheads from every character.
_ALNUM_RUN = re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z]*\d[A-Za-z]*\d)(?=\d*[A-Za-z]\d*[A-Za-z])[A-Za-z0-9]{6,}")
_HEX_MIN = 5
_DIGIT = re.compile(r"\d")


def _random_run(match: re.Match[str]) -> str:
    """mktemp-style names (``Ab3xYz9Q``): letters and digits interleaved, not a word."""
    run = match.group(0)
    digits = sum(c.isdigit() for c in run)
    if digits < 2 or len(run) - digits < 2:
        return run
    switches = sum(a.isdigit() != b.isdigit() for a, b in zip(run, run[1:]))
    mixed_case = any(c.isupper() for c in run) and any(c.islower() for c in run)
    return "<rnd>" if switches >= 3 or (mixed_case and switches >= 2) else run


def _hex_ok(match: re.Match[str]) -> str:
    """Hashes and ids are one case; mixed-case hex-looking runs are mktemp names."""
    run = match.group(0)
    return "<hex>" if len(run) >= _HEX_MIN and (run.islower() or run.isupper()) else run


# Identifiers first, on the original case: a uuid or a hash is not a mktemp name.
_IDS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str], str]] = [
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>", "-"),
    (re.compile(r"\b[0-9a-fA-F]*(?:[0-9][a-fA-F]|[a-fA-F][0-9])[0-9a-fA-F]*\b"), _hex_ok, ""),
]


@lru_cache(maxsize=1 << 16)
def normalize_token(token: str) -> str:
    """One argument with its volatile parts replaced; lower-cased."""
    if "/" in token:
        # No rule matches across a "/", so a path is normalised a component at a time:
        # directories repeat across many paths and each is worked out once.
        return "/".join(map(_normalize_part, token.split("/")))
    return _normalize_part(token)


@lru_cache(maxsize=1 << 16)
def _normalize_part(token: str) -> str:
    if _DIGIT.search(token) is None and token.count("-") < 4:
        return token.lower()  # every rule needs a digit, except a digit-free uuid
    out = token
    for pattern, placeholder, needs in _IDS:
        if needs in out:
            out = pattern.sub(placeholder, out)
    out = _ALNUM_RUN.sub(_random_run, out).lower()
    for pattern, placeholder, needs in _RULES:
        if needs in out:
            out = pattern.sub(placeholder, out)
    return out


def split_args(cmdline: str, argv: list[str] | None) -> list[str]:
    """argv when the agent gave it, else the command line split on whitespace."""
    if argv:
        return argv
    return cmdline.split()


# Separators of simple commands inside a shell script (`sh -c '...'`).
_SHELL_SPLIT = re.compile(r"\|\||&&|[|;&\n]|\$\(|`|\)")


def shell_script(argv: list[str]) -> str | None:
    """The script of ``sh -c SCRIPT`` style invocations, else None."""
    for i, arg in enumerate(argv[1:4], start=1):
        if arg == "-c" or (arg.startswith("-") and not arg.startswith("--") and arg.endswith("c")):
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def script_commands(script: str, limit: int = 16) -> list[list[str]]:
    """The simple commands of a shell script, each as a word list (best effort)."""
    commands: list[list[str]] = []
    for part in _SHELL_SPLIT.split(script):
        part = part.strip().lstrip("({").strip()
        if not part:
            continue
        try:
            words = shlex.split(part, comments=False, posix=True)
        except ValueError:
            words = part.split()
        # Leading VAR=value assignments are not the command.
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            commands.append(words)
        if len(commands) >= limit:
            break
    return commands


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1][:64] if path else ""
