"""Dropping root for the parts that do not need it (issue 15).

Started as root (the agent needs it to capture), `ruleless up` runs the sink and the
worker — the processes that parse what every host sends and answer queries — as an
unprivileged account (``run_as``, default ``nobody``). They get the data directory
(chowned to that account) and nothing else; the agent and the embedded broker are
unchanged.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int

    def popen_options(self) -> dict[str, object]:
        """subprocess.Popen arguments that start a child as this account."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def service_account(run_as: str, data: Path) -> tuple[Account | None, str]:
    """The account to run the sink and worker as, or None with why they stay as they are."""
    if os.geteuid() != 0:
        return None, "not started as root"
    if not run_as:
        return None, "run_as is empty: they stay root"
    try:
        entry = pwd.getpwnam(run_as)
    except KeyError:
        return None, f"no user {run_as!r} on this machine: they stay root (set run_as to an existing user)"
    account = Account(run_as, entry.pw_uid, entry.pw_gid)
    for needed in (data, *runtime_paths()):
        closed = _closed_ancestor(needed, account)
        if closed is not None:
            return None, (f"{run_as} cannot reach {needed} ({closed} is closed to it): they stay root "
                          "(install ruleless and data_dir where that user can reach them, or set run_as)")
    return account, f"sink and worker run as {run_as} (uid {account.uid})"


def runtime_paths() -> list[Path]:
    """What a child needs to reach to start at all: the interpreter and every import
    path (an interpreter under /root, mode 0700, is out of reach of any other user)."""
    paths = [Path(sys.executable).resolve(), Path(sys.executable).parent / "ruleless"]
    paths += [Path(p) for p in sys.path if p and Path(p).is_dir()]
    return paths


def hand_over(data: Path, account: Account) -> None:
    """Give ``account`` the data directory tree (the stores, the settings file). Root,
    which runs the agent and `ruleless up`, keeps access regardless."""
    for root, dirs, files in os.walk(data):
        os.chown(root, account.uid, account.gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), account.uid, account.gid, follow_symlinks=False)


def _closed_ancestor(path: Path, account: Account) -> Path | None:
    """The first directory above ``path`` that ``account`` may not traverse, if any."""
    for parent in reversed(path.resolve().parents):
        st = parent.stat()
        if st.st_uid == account.uid:
            bit = 0o100
        elif st.st_gid == account.gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return parent
    return None
