"""The text a behaviour is indexed with: its command line told in words.

A command line says little to a sentence embedder (``nsenter --target 1 --mount ... sh``);
the manual says what its programs do ("run program in different namespaces"). The text
has three parts:

- the programs the line runs, each with its manual's one-line description
  (:mod:`ruleless.man_descriptions`): the first word of every simple command (the line's
  own ``argv[0]``, and after ``|``, ``;``, ``&``, ``&&``, ``||``, ``$(``, backquotes,
  parentheses, ``-c``/``-e`` and ``exec``), every path into a ``bin``/``sbin`` directory
  or ``./name``, and, after a program whose own description says it runs a command or
  program (``sudo``: "execute a command as another user", ``nohup``, ``xargs``), the
  next program named;
- the files it names whose manual page says what they are (``/etc/shadow``: "shadowed
  password file");
- the command line's words: paths, options and identifiers split into lower-case words
  (``notify_on_release`` -> notify on release, ``HISTFILE`` stays one word,
  ``getStore`` -> get store).

Nothing here knows which behaviours matter: it is the system's documentation and shell
syntax, applied to every line alike.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ruleless import man_descriptions

# Where a new simple command starts (shell control operators and substitutions).
_SEPARATORS = re.compile(r"\|\||&&|[|;&\n(){}`]|\$\(|<\(|>\(")
_PATH_PROGRAM = re.compile(r"(?:^|[^\w.-])(?:/[\w.+-]+)*/s?bin/([\w.+-]+)")
_LOCAL_PROGRAM = re.compile(r"(?:^|[\s;&|(])\./([\w.+-]+)")
_PATH = re.compile(r"(?:^|[^\w.-])((?:/[\w.+-]+)+)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_RUNS_COMMANDS = re.compile(r"\b(run|runs|execute|executes)\b[^.;]{0,30}\b(command|commands|program|programs)\b", re.I)
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
MAX_PROGRAMS = 6
MAX_FILES = 4


def _name(word: str) -> str:
    return word.strip("'\"").rsplit("/", 1)[-1]


def _segments(cmdline: str) -> list[list[str]]:
    out = []
    for part in _SEPARATORS.split(cmdline):
        words = part.replace('"', " ").replace("'", " ").split()
        while words and _ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


@lru_cache(maxsize=1 << 16)
def programs(cmdline: str) -> list[str]:
    """Names of the programs ``cmdline`` runs that the manual describes, in order."""
    found: dict[str, None] = {}

    def take(word: str) -> bool:
        name = _name(word)
        if name[:1].isalpha() and man_descriptions.program(name) is not None:
            found.setdefault(name, None)
            return True
        return False

    for words in _segments(cmdline):
        follow = True  # (the word in command position)
        for i, word in enumerate(words):
            if follow and not word.startswith("-"):
                follow = False
                if take(word) and _RUNS_COMMANDS.search(man_descriptions.program(_name(word)) or ""):
                    follow = True  # (a program that runs another: look at its next word)
                continue
            if word in ("-c", "-e", "exec") and i + 1 < len(words):
                follow = True
    for m in _PATH_PROGRAM.finditer(cmdline):
        take(m.group(1))
    for m in _LOCAL_PROGRAM.finditer(cmdline):
        take(m.group(1))
    return list(found)[:MAX_PROGRAMS]


@lru_cache(maxsize=1 << 16)
def files(cmdline: str) -> list[str]:
    """Basenames of the paths in ``cmdline`` that the manual describes as files."""
    found: dict[str, None] = {}
    for m in _PATH.finditer(cmdline):
        name = m.group(1).rsplit("/", 1)[-1]
        if man_descriptions.file(name) is not None:
            found.setdefault(name, None)
    return list(found)[:MAX_FILES]


def split_words(cmdline: str) -> list[str]:
    """The line's identifiers split into lower-case words (paths, options, snake_case
    and camelCase), repeats dropped, one-letter pieces left out."""
    seen: dict[str, None] = {}
    for ident in _IDENT.findall(cmdline):
        if len(ident) > 12 and sum(c.isdigit() for c in ident) >= 3:
            continue  # (a key, hash or wallet: random letters, not words)
        for piece in _CAMEL.findall(ident) if not ident.isupper() else [ident]:
            if len(piece) > 1 and not piece.isdigit():
                seen.setdefault(piece.lower(), None)
    return list(seen)


@lru_cache(maxsize=1 << 16)
def descriptions(cmdline: str) -> str:
    """The programs and files of ``cmdline`` with what the manual says they are."""
    parts = [f"{p}: {man_descriptions.program(p)}" for p in programs(cmdline)]
    parts += [f"{f}: {man_descriptions.file(f)}" for f in files(cmdline)]
    return ". ".join(parts)


def indexing_text(cmdline: str) -> str:
    """What a behaviour is embedded as: descriptions first (the embedder cuts long texts
    at its token limit, and they say the most), then the line's words."""
    described = descriptions(cmdline)
    words = " ".join(split_words(cmdline))
    return f"{described}. {words}" if described else words
