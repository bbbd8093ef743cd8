"""Dropping root (issue 15): who may reach what, and handing the data directory over."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from ruleless.privileges import Account, _closed_ancestor, hand_over, service_account

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def nobody() -> Account:
    entry = pwd.getpwnam("nobody")
    return Account("nobody", entry.pw_uid, entry.pw_gid)


def test_a_closed_directory_above_the_data_is_found() -> None:
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(dir="/tmp"))  # (pytest's tmp_path sits under a 0700 directory)
    try:
        top.chmod(0o755)
        closed = top / "closed"
        data = closed / "open" / "data"
        data.mkdir(parents=True)
        (closed / "open").chmod(0o755)
        closed.chmod(0o700)
        assert _closed_ancestor(data, nobody()) == closed
        closed.chmod(0o711)  # traversable though not listable: enough
        assert _closed_ancestor(data, nobody()) is None
    finally:
        shutil.rmtree(top)


def test_nobody_is_refused_a_path_under_a_closed_ancestor_with_the_reason(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        assert service_account("nobody", tmp_path) == (None, "not started as root")
        return
    closed = tmp_path / "c"
    closed.mkdir(mode=0o700)
    account, why = service_account("nobody", closed / "data")
    assert account is None and "cannot reach" in why and "stay root" in why
    assert service_account("", tmp_path)[0] is None
    assert "no user" in service_account("no-such-user-x", tmp_path)[1]


@root_only
def test_the_data_directory_is_handed_over_whole(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "lancedb" / "t.lance").mkdir(parents=True)
    (data / "run").mkdir()
    (data / "run" / "settings.json").write_text("{}")
    (data / "link").symlink_to("/etc/passwd")
    who = nobody()
    hand_over(data, who)
    for path in [data, *data.rglob("*")]:
        assert path.lstat().st_uid == who.uid, path
    assert Path("/etc/passwd").stat().st_uid == 0, "a symlink's target is never chowned"
