"""User names of uids, as the host's passwd database gives them (cached per process)."""

from __future__ import annotations

import pwd
from functools import lru_cache


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    """The user name of ``uid``, or None when it has no passwd entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
