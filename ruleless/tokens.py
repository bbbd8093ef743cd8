"""API tokens: who may read which org's events through `ruleless api` (issue 16).

A token is ``rl_<id>_<secret>``: ``id`` names it (list, revoke, logs), ``secret`` is 256
random bits. Only the SHA-256 of the whole token is stored, so the file does not let its
reader in (a fast hash is enough for a random secret of that size: there is nothing to
guess). Each token is scoped to one ``org``; an ``admin`` token may read every org.

The store is one JSON file (``api.tokens_file``, default DATA_DIR/api-tokens.json),
owner-only (0600), replaced atomically on every change under an exclusive lock; a running
API reloads it when it changes, so a revoked token is refused from the next request on.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from schemas.errors import ConfigError
from schemas.events import NAME_PATTERN

PREFIX = "rl"
DEFAULT_FILE = "api-tokens.json"


@dataclass(frozen=True)
class Token:
    """One stored token (never the secret: its hash)."""

    id: str
    org: str
    admin: bool
    name: str
    created_at: float
    sha256: str
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: the token's id, org and whether it may see all orgs."""

    token_id: str
    org: str
    admin: bool


def tokens_path(tokens_file: str, data_dir: str) -> Path:
    return Path(tokens_file) if tokens_file else Path(data_dir) / DEFAULT_FILE


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """The token file. Thread-safe; reads pick up changes other processes made."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._tokens: dict[str, Token] = {}

    # -- reading -----------------------------------------------------------------------

    def tokens(self) -> list[Token]:
        """Every token, revoked ones included, oldest first."""
        with self._lock:
            self._refresh()
            return sorted(self._tokens.values(), key=lambda t: t.created_at)

    def has_active(self) -> bool:
        return any(t.active for t in self.tokens())

    def verify(self, presented: str) -> Caller | None:
        """The caller a presented token stands for, or None (unknown, forged, revoked)."""
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        with self._lock:
            self._refresh()
            token = self._tokens.get(parts[1])
        if token is None or not hmac.compare_digest(token.sha256, _digest(presented)) or not token.active:
            return None
        return Caller(token.id, token.org, token.admin)

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._tokens = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._tokens = {t.id: t for t in self._read()}
            self._stamp = stamp

    def _read(self) -> list[Token]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the token store {self.path}: {exc}") from None
        return [Token(**row) for row in doc.get("tokens", [])]

    # -- changing ----------------------------------------------------------------------

    def create(self, org: str, admin: bool = False, name: str = "") -> tuple[Token, str]:
        """A new token for ``org``: the stored record and the token itself (shown once)."""
        if not NAME_PATTERN.fullmatch(org):
            raise ConfigError(f"{org!r} is not an org name (letters, digits, . _ -; max 64)")
        with self._locked() as tokens:
            token_id = secrets.token_hex(4)
            while token_id in tokens:
                token_id = secrets.token_hex(4)
            secret = f"{PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
            record = Token(token_id, org, admin, name, time.time(), _digest(secret))
            tokens[token_id] = record
        return record, secret

    def revoke(self, token_id: str) -> Token:
        """Revoke a token by id (idempotent); raises :class:`ConfigError` if unknown."""
        with self._locked() as tokens:
            token = tokens.get(token_id)
            if token is None:
                raise ConfigError(f"no token with id {token_id!r} in {self.path}")
            if token.active:
                token = tokens[token_id] = replace(token, revoked_at=time.time())
        return token

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Token]]:
        """The tokens under an exclusive lock; written back (atomically, 0600) after."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self.path.with_name(self.path.name + ".lock")
        fresh = not lock.exists()
        lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        if fresh:
            _same_owner(lock, self.path.parent)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            tokens = {t.id: t for t in self._read()}
            yield tokens
            body = json.dumps({"tokens": [asdict(t) for t in tokens.values()]}, indent=1).encode()
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            _same_owner(tmp, self.path)
            os.replace(tmp, self.path)
        finally:
            os.close(lock_fd)
        with self._lock:
            self._stamp = None  # (read again next time)


def _same_owner(new: Path, old: Path) -> None:
    """Root replacing the file keeps it its owner's: `ruleless up` runs the API as its
    service account, which must still read the file after `sudo ruleless token create`."""
    if os.geteuid() != 0:
        return
    try:
        st = old.stat() if old.exists() else old.parent.stat()
    except OSError:
        return
    os.chown(new, st.st_uid, st.st_gid)
