"""The `ruleless` command as a user runs it (real subprocesses, no broker needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ruleless.settings import load_settings
from schemas.events import encode
from streams.scoring import ScoringService
from tests.factories import fleet_stream
from tests.processes import RULELESS


def run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([RULELESS, *args], input=stdin, capture_output=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("algorithm", ["seed", "evidence"])
def test_score_keeps_input_order_and_gives_the_engines_scores(algorithm: str, tmp_path: Path) -> None:
    events = fleet_stream(pairs=3, per_pair=200, seed=2)
    lines = [encode(e) for e in events]
    lines.insert(10, b"{broken")
    lines.insert(300, b'{"ts": 1, "org_id": "bad/name", "workload": "w"}')
    done = run("score", "--input", "-", "--output", "-", "--algorithm", algorithm, "--max-invalid", "2", stdin=b"\n".join(lines) + b"\n")
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["event_id"] for o in out] == [e.event_id for e in events]
    assert {o["model"] for o in out} == {f"{algorithm}/1"}
    assert all(o["severity"] in ("ok", "warn", "alert") and isinstance(o["reasons"], list) for o in out)
    engine = ScoringService(load_settings(lancedb={"uri": str(tmp_path)}, engine={"algorithm": algorithm}))
    assert [o["score"] for o in out] == [s.score for s in engine.score(events)]
    errors = [json.loads(line) for line in done.stderr.splitlines() if line.startswith(b"{")]
    assert [e["line"] for e in errors] == [11, 301]
    assert b"2 invalid lines" in done.stderr


def test_score_state_dir_carries_learning_between_runs(tmp_path: Path) -> None:
    events = fleet_stream(pairs=1, per_pair=100)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(encode(e) for e in events) + b"\n")
    args = ("--state", str(tmp_path / "state"), "--algorithm", "seed")  # seed: a repeat scores exactly 0
    first = run("score", "-i", str(src), "-o", str(tmp_path / "a.jsonl"), *args)
    again = run("score", "-i", str(src), "-o", str(tmp_path / "b.jsonl"), *args)
    assert first.returncode == again.returncode == 0
    second = [json.loads(line)["score"] for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert max(second) == 0.0  # everything was learned by the first run


def test_config_show_masks_secrets_and_honours_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "ruleless.toml"
    cfg.write_text('[kafka]\nbootstrap = "file:1"\nsasl_password = "hunter2"\n[engine]\nwarn = 0.5\n')
    done = run("config", "show", "--config", str(cfg), env={"RULELESS_ENGINE__WARN": "0.6"})
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["kafka"]["bootstrap"] == "file:1"
    assert shown["engine"]["warn"] == 0.6  # environment beats the file
    assert "hunter2" not in done.stdout.decode()


def test_bad_settings_are_a_clear_error() -> None:
    done = run("config", "show", env={"RULELESS_ENGINE__WARN": "2"})
    assert done.returncode == 2
    assert b"engine.warn" in done.stderr


def test_score_takes_hostile_lines_in_its_stride(tmp_path: Path) -> None:
    """Issue 15: one line of invalid UTF-8 used to kill the run with a traceback and no
    output. Every valid line is scored and written; each bad one is reported with its
    line number; the exit code says lines were invalid."""
    events = fleet_stream(pairs=1, per_pair=50, seed=4)
    hostile = [
        b'{"ts": 1, "org_id": "a", "workload": "w", "cmdline": "\xff\xfe"}',  # invalid UTF-8
        b'{"ts": 1, "org_id": "a", "workload": "w", "cmdline": "a\x00b"}',  # raw NUL
        b"\x00\x00\x00",
        b'{"ts": 1, "org_id": "a", "workload": "w", "cmdline": "' + b"x" * (17 << 20) + b'"}',  # over 16 MiB
        b'{"ts": 1e400, "org_id": "a", "workload": "w"}',
        b'{"ts": 1, "org_id": "a", "workload": "w", "pid": 99999999999999999999999}',
    ]
    lines = [encode(e) for e in events]
    for i, bad in enumerate(hostile):
        lines.insert(5 + 7 * i, bad)
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    done = run("score", "-i", str(src), "-o", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "errors.jsonl"))
    assert done.returncode == 1 and b"6 invalid lines" in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["event_id"] for o in out] == [e.event_id for e in events]
    errors = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [6 + 7 * i for i in range(len(hostile))]
    assert all(e["reason"] for e in errors) and "16777216 bytes" in errors[3]["reason"]
    tolerated = run("score", "-i", str(src), "-o", str(tmp_path / "out2.jsonl"), "--max-invalid", "6")
    assert tolerated.returncode == 0, tolerated.stderr


def test_score_of_a_missing_file_is_one_clear_line() -> None:
    done = run("score", "-i", "/nonexistent/in.jsonl", "-o", "-")
    assert done.returncode == 2
    assert b"cannot open /nonexistent/in.jsonl" in done.stderr and b"Traceback" not in done.stderr
