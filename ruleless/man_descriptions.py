"""What programs and files are, in the system's own words: the one-line descriptions of
the manual pages (``whatis``), for the search's indexing text (streams/behaviours.py).

The data file ``ruleless/data/man_descriptions.tsv.gz`` maps a name to its description,
for programs (manual sections 1 and 8: ``nsenter`` -> "run program in different
namespaces") and for files (section 5: ``shadow`` -> "shadowed password file"). Servers and
the slim container image carry no manual pages, so the file is generated once from a
machine that has them (Debian 12's man-db, every page installed there) and committed:

    python -m ruleless.man_descriptions --build   # rewrites the data file from `apropos -l`

Nothing in it is written for ruleless: it is what `whatis NAME` prints on that machine.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "man_descriptions.tsv.gz"
# Manual sections kept, and what each describes.
PROGRAM_SECTIONS = ("1", "8")
FILE_SECTIONS = ("5",)
_LINE = re.compile(r"^(?P<names>.+?) \((?P<section>[0-9])[A-Za-z0-9]*\)\s+- (?P<description>.+)$")


def build(path: Path = DATA) -> int:
    """Write the data file from this machine's man-db (``apropos -l``); returns the number
    of names written. The first page of a name wins (sections in man-db's order)."""
    out: dict[tuple[str, str], str] = {}
    sections = ",".join(PROGRAM_SECTIONS + FILE_SECTIONS)
    listing = subprocess.run(["apropos", "-l", "-s", sections, "."], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        kind = "program" if m["section"] in PROGRAM_SECTIONS else "file"
        description = " ".join(m["description"].split()).rstrip(".")
        for name in m["names"].split(", "):
            name = name.strip()
            if name and "\t" not in name and " " not in name:
                out.setdefault((kind, name), description)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
        for (kind, name), description in sorted(out.items()):
            f.write(f"{kind}\t{name}\t{description}\n")
    return len(out)


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, str], dict[str, str]]:
    programs: dict[str, str] = {}
    files: dict[str, str] = {}
    if DATA.exists():
        with gzip.open(DATA, "rt", encoding="utf-8") as f:
            for line in f:
                kind, name, description = line.rstrip("\n").split("\t", 2)
                (programs if kind == "program" else files)[name] = description
    return programs, files


def program(name: str) -> str | None:
    """The manual's one-line description of program ``name`` (a basename), if any."""
    return _load()[0].get(name)


def file(name: str) -> str | None:
    """The manual's one-line description of file ``name`` (a basename: ``shadow``), if any."""
    return _load()[1].get(name)


if __name__ == "__main__":
    if sys.argv[1:] != ["--build"]:
        sys.exit("usage: python -m ruleless.man_descriptions --build")
    print(f"{build()} names written to {DATA}")
