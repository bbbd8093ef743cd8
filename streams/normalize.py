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
# Applied after the identifiers (_IDS) and mktemp names; lower-cased except in options.
_RULES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[t_ ]\d{2}[:\-]?\d{2}(?:[:\-]?\d{2})?(?:\.\d+)?(?:z|[+-]\d{2}:?\d{2})?)?\b", re.I), "<date>", "-"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>", "."),
    (re.compile(r"\bv?\d+(?:\.\d+){1,3}(?:[-+~][0-9a-z.]+)?\b", re.I), "<ver>", "."),
    (re.compile(r"\d+"), "<n>", ""),
]
# Whole runs of 4+ letters and digits with at least two of each (``job-7f3a``) (the only ones
# _random_run can change: filtering here spares a Python call per plain word). The
# lookbehind makes a position inside a run fail at once instead of re-running the
# lookaheads from every character.
_ALNUM_RUN = re.compile(r"(?<![A-Za-z0-9])(?=[A-Za-z]*\d[A-Za-z]*\d)(?=\d*[A-Za-z]\d*[A-Za-z])[A-Za-z0-9]{4,}")
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


# Short values of a key (``--id=a7Kq2``, ``run=x9Qw``): 4-5 characters after "=", which
# _ALNUM_RUN (6+) leaves alone; the same test of interleaving, with one digit allowed.
_SHORT_VALUE = re.compile(r"(?<==)(?=[A-Za-z]*\d)(?=\d*[A-Za-z])[A-Za-z0-9]{4,5}\b")


def _random_value(match: re.Match[str]) -> str:
    run = match.group(0)
    switches = sum(a.isdigit() != b.isdigit() for a, b in zip(run, run[1:]))
    mixed_case = any(c.isupper() for c in run) and any(c.islower() for c in run)
    return "<rnd>" if switches >= 3 or (mixed_case and switches >= 2) else run


# mktemp-style suffixes (``tmp.XqakZwPeRt``, ``kvaudit.oXQCIYUH2U``, ``ttl.dCkpr4itrc``,
# systemd's ``-AbCdEf``): 5-16 letters and digits after a "-", "." or "_" that look
# random — after a dot, mixed case or digits inside; elsewhere, mixed case that is not
# the capitalisation of words, or digits interleaved with letters.
_SUFFIX = re.compile(r"(?<=[-._])[A-Za-z0-9]{5,16}\b")
_CASE_RUN = re.compile(r"[a-z]+|[A-Z]+")


def _random_case(letters: str) -> bool:
    """Mixed case that is not the capitalisation of words: words have lowercase runs of
    4+ (``JavaScript``, ``McDonald``, ``NetworkManager``), random letters switch case
    often in short runs (``uwTFNkabQL``, ``yyQexTIZQswZ``)."""
    runs = _CASE_RUN.findall(letters)
    return len(runs) >= 4 and max(len(r) for r in runs if r.islower()) <= 3


def _random_suffix(match: re.Match[str]) -> str:
    run = match.group(0)
    letters = "".join(c for c in run if c.isalpha())
    upper = sum(c.isupper() for c in letters)
    mixed = 0 < upper < len(letters)
    switches = sum(a.isdigit() != b.isdigit() for a, b in zip(run, run[1:]))
    if match.string[match.start() - 1] == "." and len(run) >= 6:
        # After a dot (``name.XXXXXXXXXX``: mktemp's default) words are extensions,
        # one case and digits at most at one end (``sha256``): anything else is random.
        return "<rnd>" if mixed or switches >= 2 else run
    if mixed and _random_case(letters):
        return "<rnd>"
    return "<rnd>" if switches >= 3 or (mixed and switches >= 2) else run


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
    """One argument with its volatile parts replaced; lower-cased, except an option
    (``-P`` and ``-p`` are different options of most programs)."""
    option = token.startswith("-")
    if "/" in token:
        # No rule matches across a "/", so a path is normalised a component at a time:
        # directories repeat across many paths and each is worked out once.
        return "/".join(_normalize_part(part, option) for part in token.split("/"))
    return _normalize_part(token, option)


# A whole argument of random letters and digits (``HSET user:1 last_session yyQexTIZQswZ``).
_WHOLE_RUN = re.compile(r"[A-Za-z0-9]{8,32}")


@lru_cache(maxsize=1 << 16)
def _normalize_part(token: str, keep_case: bool = False) -> str:
    if _WHOLE_RUN.fullmatch(token) and _random_case("".join(c for c in token if c.isalpha())):
        return "<rnd>"
    if _DIGIT.search(token) is None and token.count("-") < 4:
        # Every rule needs a digit, except a digit-free uuid and letter-only mktemp names.
        if ("." in token or "_" in token or "-" in token) and len(token) >= 7:
            token = _SUFFIX.sub(_random_suffix, token)
        return token if keep_case else token.lower()
    out = token
    for pattern, placeholder, needs in _IDS:
        if needs in out:
            out = pattern.sub(placeholder, out)
    out = _ALNUM_RUN.sub(_random_run, out)
    if "=" in out:
        out = _SHORT_VALUE.sub(_random_value, out)
    if "." in out or "_" in out or "-" in out:
        out = _SUFFIX.sub(_random_suffix, out)
    if not keep_case:
        out = out.lower()
    for pattern, placeholder, needs in _RULES:
        if needs in out:
            out = pattern.sub(placeholder, out)
    return out


# An argument is *vocabulary* (an option, or a plain word: a subcommand, a verb, a user
# or unit name) or *data* (file names, ids, numbers, URLs, expressions). A new word is a
# new thing asked of the program; new data of a shape it already takes is routine drift.
_WORD = re.compile(r"[a-z][a-z0-9_-]*")
_PLACEHOLDER = re.compile(r"<[a-z]+>")
_EXTENSION = re.compile(r"(?:\.[a-z][a-z0-9]{0,7})+$")
_LETTERS = re.compile(r"[a-z]+")
_DIGITS = re.compile(r"[0-9]+")


def is_vocabulary(token: str) -> bool:
    """An option or a plain word (``token`` normalised)."""
    return token.startswith("-") or _WORD.fullmatch(token) is not None


@lru_cache(maxsize=1 << 16)
def data_shape(token: str) -> str:
    """The shape of a data argument (``token`` normalised): free text is ``<text>``;
    otherwise letters become ``a`` and numbers ``0``, punctuation and the file extension
    stay (``orders_<n>.csv.gz`` -> ``a_0.csv.gz``, ``http://<ip>/x`` -> ``a://0/a``)."""
    if any(c.isspace() for c in token):
        return "<text>"
    match = _EXTENSION.search(token)
    stem, ext = (token[: match.start()], match.group(0)) if match and match.start() > 0 else (token, "")
    stem = _DIGITS.sub("0", _LETTERS.sub("a", _PLACEHOLDER.sub("0", stem)))
    return stem + ext


# Merged /usr (Debian 12, Fedora, Arch...): /bin/sh and /usr/bin/sh are one file, and
# backends report either (the path exec'd, or the resolved /proc/PID/exe).
_MERGED_USR = ("/bin/", "/sbin/", "/lib/", "/lib32/", "/lib64/", "/libx32/")


@lru_cache(maxsize=1 << 14)
def program_path(exe: str) -> str:
    """One name per program: merged-/usr aliases under /usr, normalised."""
    if exe.startswith(_MERGED_USR):
        exe = "/usr" + exe
    return normalize_token(exe)


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


# Programs whose -c/-e/-r argument is code in their own language, not a shell script:
# known by the language's name, as a shell is (this is syntax, not a verdict).
_INTERPRETER = re.compile(r"(?:python|pypy|perl|ruby|node|nodejs|php|lua|luajit|tclsh|wish|rscript)[0-9.]*")
_INLINE_CODE_FLAGS = frozenset({"-c", "-e", "-E", "-r"})
_CODE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


@lru_cache(maxsize=4096)
def _is_interpreter(program: str) -> bool:
    return _INTERPRETER.fullmatch(program.lower()) is not None


def interpreter_code(program: str, argv: list[str]) -> str | None:
    """The inline code of ``python3 -c CODE``, ``perl -e CODE``… (``program`` is the
    program's base name), else None."""
    if not _is_interpreter(program):
        return None
    for i, arg in enumerate(argv[1:4], start=1):
        if arg in _INLINE_CODE_FLAGS:
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def code_words(code: str, limit: int = 32) -> list[str]:
    """The distinct names a piece of code uses (``os.system``, ``socket``, ``import``…),
    first ``limit`` in order; strings and numbers are not names."""
    words: dict[str, None] = {}
    for word in _CODE_WORD.findall(_QUOTED.sub(" ", code)):
        words.setdefault(word, None)
        if len(words) >= limit:
            break
    return list(words)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


# Programs that write to a file their arguments name (syntax of common tools, like the
# shell's own redirections; not a verdict on any of them): the last operand of cp, mv,
# install, ln, rsync; every operand of tee; dd's of=.
_WRITES_LAST = frozenset({"cp", "mv", "install", "ln", "rsync", "scp"})
_WRITERS = _WRITES_LAST | {"tee", "dd"}
_REDIRECT = re.compile(r"^(?:\d*|&)>>?\|?(.*)$")


def write_targets(words: list[str]) -> list[str]:
    """The files a simple command writes: its redirections (``> f``, ``>> f``, ``2>f``)
    and, for a few well-known programs, the operand they write to."""
    if not words or (basename(words[0]) not in _WRITERS and not any(">" in w for w in words)):
        return []  # (most commands: no call into the loop below)
    targets: list[str] = []
    rest: list[str] = []
    take_next = False
    for word in words:
        if take_next:
            targets.append(word)
            take_next = False
            continue
        match = _REDIRECT.match(word)
        if match and not word.startswith(">&") and not match.group(1).startswith("&"):
            if match.group(1):
                targets.append(match.group(1))
            else:
                take_next = True
            continue
        if "&" in word and word.endswith((">&1", ">&2")):
            continue
        if ">" in word and not word.startswith("-") and not any(c.isspace() for c in word):
            # `echo x>>/etc/profile`: one word to shlex (a quoted string has spaces).
            head, _, tail = word.partition(">")
            tail = tail.lstrip(">|")
            if tail and not tail.startswith("&"):
                targets.append(tail)
            if head and not head.isdigit():
                rest.append(head)
            continue
        rest.append(word)
    if not rest:
        return targets
    program = basename(rest[0])
    operands = [w for w in rest[1:] if not w.startswith("-")]
    if program in _WRITES_LAST and len(operands) >= 2:
        targets.append(operands[-1])
    elif program == "tee":
        targets.extend(operands)
    elif program == "dd":
        targets.extend(w[3:] for w in operands if w.startswith("of="))
    return [t for t in targets if t and t != "/dev/null"]


_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=.*", re.S)


def script_commands(script: str, limit: int = 16) -> list[tuple[list[str], list[str]]]:
    """The simple commands of a shell script (best effort), each as the names of the
    variables it assigns first (``HISTFILE=/dev/null cmd``, or a bare assignment) and its
    word list (empty for a bare assignment)."""
    commands: list[tuple[list[str], list[str]]] = []
    for part in _SHELL_SPLIT.split(script):
        part = part.strip().lstrip("({").strip()
        if not part:
            continue
        try:
            words = shlex.split(part, comments=False, posix=True)
        except ValueError:
            words = part.split()
        assigned: list[str] = []
        while words and (match := _ASSIGNMENT.fullmatch(words[0])) is not None:
            assigned.append(match.group(1))
            words = words[1:]
        if words or assigned:
            commands.append((assigned, words))
        if len(commands) >= limit:
            break
    return commands


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1][:64] if path else ""
