"""Writes tests/search/corpus/benign.jsonl: the benign half of the search corpus, real
command lines from the repository's recorded workloads (tests/eval/data).

Every distinct command-line template of every workload contributes its first line (so the
corpus spans everything the recordings ran), then further distinct lines, drawn with a
fixed seed, fill it to TARGET. Run: .venv/bin/python -m tests.search.build_corpus
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from streams.normalize import normalize_token

DATA = Path(__file__).resolve().parents[1] / "eval" / "data"
OUT = Path(__file__).resolve().parent / "corpus" / "benign.jsonl"
WORKLOADS = ("web", "db", "ci", "ops", "data", "kv", "node", "shell")
TARGET = 5200


def main() -> None:
    first: dict[tuple[str, str], dict[str, str]] = {}
    rest: list[dict[str, str]] = []
    seen: set[str] = set()
    for workload in WORKLOADS:
        with gzip.open(DATA / f"{workload}.jsonl.gz", "rt") as src:
            for line in src:
                event = json.loads(line)
                cmd = event.get("cmdline") or ""
                if event.get("event_type", "exec") != "exec" or not cmd.strip() or cmd in seen:
                    continue
                seen.add(cmd)
                row = {"workload": workload, "process_name": event.get("process_name", ""), "cmdline": cmd}
                template = " ".join(normalize_token(w) for w in cmd.split())
                if (workload, template) in first:
                    rest.append(row)
                else:
                    first[(workload, template)] = row
    picked = list(first.values())
    picked += random.Random(16).sample(rest, max(0, TARGET - len(picked)))
    with OUT.open("w") as out:
        for row in picked:
            out.write(json.dumps(row, sort_keys=True) + "\n")
    print(f"{len(picked)} benign lines ({len(first)} templates) -> {OUT}")


if __name__ == "__main__":
    main()
